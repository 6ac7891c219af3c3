//! InitProducerId for idempotent producers (transactions are not served yet).

use fjord_coordinator::InitProducer;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;

use crate::error::coordinator_code;
use crate::Broker;
use std::sync::Arc;

/// Hands out a producer id, or bumps an existing producer's epoch (KIP-360).
pub async fn init_producer_id(
    broker: Arc<Broker>,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let failed = |e: ResponseError| {
        InitProducerIdResponse::default()
            .with_error_code(e.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if request.transactional_id.is_some() {
        tracing::warn!(
            "InitProducerId with a transactional id: transactions are not supported yet"
        );
        return failed(ResponseError::TransactionalIdAuthorizationFailed);
    }
    let existing = (request.producer_id.0 >= 0 && request.producer_epoch >= 0)
        .then_some((request.producer_id.0, request.producer_epoch));
    match broker
        .coordinator
        .init_producer_id(InitProducer { existing })
        .await
    {
        Ok(identity) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(identity.producer_id))
            .with_producer_epoch(identity.producer_epoch),
        Err(e) => failed(coordinator_code(&e)),
    }
}
