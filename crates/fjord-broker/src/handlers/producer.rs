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
    client: crate::dispatch::Client,
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
    // An idempotent producer needs IDEMPOTENT_WRITE on the cluster or WRITE on some topic (as in
    // Kafka since 3.0).
    use fjord_coordinator::security::{AclOperation, ResourceType};
    let authz = &broker.authorizer;
    let session = &client.session;
    if !(authz.can(
        session,
        crate::authz::Action {
            operation: AclOperation::IdempotentWrite,
            resource_type: ResourceType::Cluster,
            name: fjord_coordinator::security::CLUSTER_RESOURCE,
        },
    ) || authz.authorize_any(session, AclOperation::Write, ResourceType::Topic))
    {
        authz.cluster(session, AclOperation::IdempotentWrite);
        return failed(ResponseError::ClusterAuthorizationFailed);
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
