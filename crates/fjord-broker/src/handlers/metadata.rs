//! Metadata: brokers and topics. This broker leads every partition of every topic.

use std::sync::Arc;

use fjord_coordinator::TopicMeta;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::ResponseError;

use super::s;
use crate::error::coordinator_code;
use crate::Broker;

/// Answers a Metadata request.
pub async fn handle(
    broker: Arc<Broker>,
    request: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let settings = &broker.settings;
    let node = BrokerId(settings.node_id);
    let mut response = MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(node)
            .with_host(s(settings.advertised_host.clone()))
            .with_port(settings.advertised_port)
            .with_rack(settings.rack.clone().map(s))])
        .with_cluster_id(Some(s(settings.cluster_id.clone())))
        .with_controller_id(node);
    if version < 8 {
        response.cluster_authorized_operations = i32::MIN;
    }

    // v0: an empty list means all topics; v1+: null means all topics.
    let all = match &request.topics {
        None => true,
        Some(list) => list.is_empty() && version == 0,
    };
    let auto_create = version < 4 || request.allow_auto_topic_creation;
    let topics = if all {
        match broker.coordinator.list_topics().await {
            Ok(list) => list
                .iter()
                .map(|t| topic_entry(&broker, Ok(t), None, None, version))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "listing topics for Metadata failed");
                Vec::new()
            }
        }
    } else {
        let mut out = Vec::new();
        for requested in request.topics.unwrap_or_default() {
            let entry = match requested.name {
                Some(name) => {
                    let result = broker.resolve_topic(name.0.as_str(), auto_create).await;
                    topic_entry(
                        &broker,
                        result.as_ref().map_err(|e| *e),
                        Some(name),
                        None,
                        version,
                    )
                }
                None => {
                    let id = requested.topic_id;
                    let result = match broker.coordinator.topic_by_id(id).await {
                        Ok(Some(meta)) => Ok(meta),
                        Ok(None) => Err(ResponseError::UnknownTopicId),
                        Err(e) => Err(coordinator_code(&e)),
                    };
                    topic_entry(
                        &broker,
                        result.as_ref().map_err(|e| *e),
                        None,
                        Some(id),
                        version,
                    )
                }
            };
            out.push(entry);
        }
        out
    };
    response.topics = topics;
    response
}

fn topic_entry(
    broker: &Broker,
    result: Result<&TopicMeta, ResponseError>,
    requested_name: Option<TopicName>,
    requested_id: Option<uuid::Uuid>,
    version: i16,
) -> MetadataResponseTopic {
    let mut entry = MetadataResponseTopic::default();
    if version < 8 {
        entry.topic_authorized_operations = i32::MIN;
    }
    match result {
        Ok(meta) => {
            let node = BrokerId(broker.settings.node_id);
            entry.name = Some(TopicName(s(meta.name.clone())));
            entry.topic_id = meta.id;
            entry.partitions = (0..meta.partitions)
                .map(|p| {
                    MetadataResponsePartition::default()
                        .with_partition_index(p)
                        .with_leader_id(node)
                        .with_leader_epoch(0)
                        .with_replica_nodes(vec![node])
                        .with_isr_nodes(vec![node])
                })
                .collect();
        }
        Err(code) => {
            entry.error_code = code.code();
            entry.name = requested_name;
            entry.topic_id = requested_id.unwrap_or_default();
        }
    }
    entry
}
