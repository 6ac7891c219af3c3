//! Metadata: brokers and topics. The brokers are the live brokers of the current
//! [`ClusterView`]; each partition's leader is the broker that serves it to this client's zone
//! (a zone hint in `client.id`) or, without one, over all brokers (see [`crate::cluster`]).

use std::sync::Arc;

use fjord_coordinator::TopicMeta;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::ResponseError;

use super::s;
use crate::cluster::{zone_hint, ClusterView};
use crate::dispatch::Client;
use crate::error::coordinator_code;
use crate::Broker;

/// Answers a Metadata request.
pub async fn handle(
    broker: Arc<Broker>,
    request: MetadataRequest,
    version: i16,
    client: Client,
) -> MetadataResponse {
    let settings = &broker.settings;
    let all = broker.view();
    // Only brokers reachable on the client's listener, at their addresses there.
    let view = all.serving(client.listener());
    let placement = Placement {
        view: &view,
        zone: zone_hint(&client.client_id),
    };
    let mut response = MetadataResponse::default()
        .with_brokers(
            view.members()
                .iter()
                .filter_map(|m| {
                    let (host, port) = m.endpoint(client.listener())?;
                    Some(
                        MetadataResponseBroker::default()
                            .with_node_id(BrokerId(m.node_id))
                            .with_host(s(host.to_string()))
                            .with_port(port)
                            .with_rack(m.rack.clone().map(s)),
                    )
                })
                .collect(),
        )
        .with_cluster_id(Some(s(settings.cluster_id.clone())))
        .with_controller_id(BrokerId(controller(&view)));
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
            // Topics the principal may not describe are left out.
            Ok(list) => list
                .iter()
                .filter(|t| broker.authorizer.can(&client.session, describe(&t.name)))
                .map(|t| topic_entry(&placement, Ok(t), None, None, version))
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
                    let n = name.0.as_str();
                    let result = if broker.authorizer.authorize(&client.session, describe(n)) {
                        let create =
                            auto_create && broker.authorizer.may_create_topic(&client.session, n);
                        broker.resolve_topic(n, create).await
                    } else {
                        Err(ResponseError::TopicAuthorizationFailed)
                    };
                    topic_entry(
                        &placement,
                        result.as_ref().map_err(|e| *e),
                        Some(name),
                        None,
                        version,
                    )
                }
                None => {
                    let id = requested.topic_id;
                    let result = match broker.coordinator.topic_by_id(id).await {
                        Ok(Some(meta))
                            if !broker
                                .authorizer
                                .authorize(&client.session, describe(&meta.name)) =>
                        {
                            Err(ResponseError::TopicAuthorizationFailed)
                        }
                        Ok(Some(meta)) => Ok(meta),
                        Ok(None) => Err(ResponseError::UnknownTopicId),
                        Err(e) => Err(coordinator_code(&e)),
                    };
                    topic_entry(
                        &placement,
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

fn describe(name: &str) -> crate::authz::Action<'_> {
    crate::authz::Action {
        operation: fjord_coordinator::security::AclOperation::Describe,
        resource_type: fjord_coordinator::security::ResourceType::Topic,
        name,
    }
}

/// The cluster's controller as clients see it: the broker running background duties.
pub fn controller(view: &ClusterView) -> i32 {
    view.members().first().map_or(view.self_id(), |m| m.node_id)
}

/// Where a client is sent.
struct Placement<'a> {
    view: &'a ClusterView,
    zone: Option<&'a str>,
}

fn topic_entry(
    placement: &Placement<'_>,
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
            entry.name = Some(TopicName(s(meta.name.clone())));
            entry.topic_id = meta.id;
            let view = placement.view;
            entry.partitions = (0..meta.partitions)
                .map(|p| {
                    let leader = view.partition_owner(meta.id, p, placement.zone);
                    let replicas: Vec<BrokerId> = view
                        .replicas(meta.id, p, leader)
                        .into_iter()
                        .map(BrokerId)
                        .collect();
                    MetadataResponsePartition::default()
                        .with_partition_index(p)
                        .with_leader_id(BrokerId(leader))
                        .with_leader_epoch(0)
                        .with_isr_nodes(replicas.clone())
                        .with_replica_nodes(replicas)
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
