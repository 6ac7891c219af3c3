//! DeleteRecords (API 21): moves partitions' log start offsets forward (`kafka-delete-records`,
//! `AdminClient.delete_records`, kafkajs `deleteTopicRecords`).
//!
//! Per partition, the requested offset becomes the new log start (`-1`: the high watermark), as
//! in Kafka, even inside a stored batch: fetches below it answer OFFSET_OUT_OF_RANGE and
//! consumers reset per `auto.offset.reset`. An offset beyond the high watermark is
//! OFFSET_OUT_OF_RANGE; one at or below the current log start changes nothing. The answer is the
//! partition's log start afterwards (its low watermark). The coordinator has decided and stored
//! the change when the answer is sent, so `timeout_ms` has nothing to wait for.

use std::sync::Arc;

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use crate::dispatch::Client;
use crate::error::coordinator_code;
use crate::Broker;

/// Answers a DeleteRecords request.
pub async fn handle(
    broker: Arc<Broker>,
    request: DeleteRecordsRequest,
    client: Client,
) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.as_str().to_string();
        if !broker.authorizer.topic(
            &client.session,
            fjord_coordinator::security::AclOperation::Delete,
            &name,
        ) {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    DeleteRecordsPartitionResult::default()
                        .with_partition_index(p.partition_index)
                        .with_low_watermark(-1)
                        .with_error_code(
                            kafka_protocol::ResponseError::TopicAuthorizationFailed.code(),
                        )
                })
                .collect();
            topics.push(
                DeleteRecordsTopicResult::default()
                    .with_name(topic.name)
                    .with_partitions(partitions),
            );
            continue;
        }
        let meta = broker.coordinator.topic(&name).await;
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let mut r = DeleteRecordsPartitionResult::default()
                .with_partition_index(p.partition_index)
                .with_low_watermark(-1);
            let tp = match super::partition_of(&meta, p.partition_index) {
                Ok(tp) => tp,
                Err(code) => {
                    r.error_code = code.code();
                    partitions.push(r);
                    continue;
                }
            };
            match broker.coordinator.delete_records(tp, p.offset).await {
                Ok(offsets) => {
                    broker.offsets_cache.invalidate(tp);
                    tracing::info!(
                        topic = %name,
                        partition = p.partition_index,
                        log_start = offsets.log_start,
                        "deleted records"
                    );
                    r.low_watermark = offsets.log_start;
                }
                Err(e) => r.error_code = coordinator_code(&e).code(),
            }
            partitions.push(r);
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
