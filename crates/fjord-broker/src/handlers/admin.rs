//! CreateTopics, DeleteTopics and CreatePartitions.
//!
//! Replication factors are accepted and not acted on: data lives in object storage, whose own
//! redundancy replaces broker replicas. Topics report a replication factor of 1.

use std::collections::BTreeMap;
use std::sync::Arc;

use fjord_coordinator::{CoordinatorError, TopicSpec};
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};
use kafka_protocol::ResponseError;

use super::s;
use crate::dispatch::Client;
use crate::error::coordinator_code;
use crate::topic_config::{self, TOPIC_CONFIGS};
use crate::topics::validate_name;
use crate::Broker;
use fjord_coordinator::security::AclOperation;

/// Creates topics.
pub async fn create_topics(
    broker: Arc<Broker>,
    request: CreateTopicsRequest,
    version: i16,
    client: Client,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.as_str().to_string();
        let mut result = CreatableTopicResult::default()
            .with_name(topic.name.clone())
            .with_num_partitions(-1)
            .with_replication_factor(-1);
        let fail = |mut r: CreatableTopicResult, code: ResponseError, message: String| {
            r.error_code = code.code();
            if version >= 1 {
                r.error_message = Some(s(message));
            }
            r
        };
        if !broker.authorizer.may_create_topic(&client.session, &name) {
            broker
                .authorizer
                .topic(&client.session, AclOperation::Create, &name);
            results.push(fail(
                result,
                ResponseError::TopicAuthorizationFailed,
                format!("not authorized to create topic '{name}'"),
            ));
            continue;
        }
        if let Err(message) = validate_name(&name) {
            results.push(fail(result, ResponseError::InvalidTopicException, message));
            continue;
        }
        let partitions = if !topic.assignments.is_empty() {
            if topic.num_partitions != -1 {
                results.push(fail(
                    result,
                    ResponseError::InvalidRequest,
                    "both num_partitions and replica assignments were given".into(),
                ));
                continue;
            }
            topic.assignments.len() as i32
        } else if topic.num_partitions == -1 {
            broker.settings.default_partitions
        } else {
            topic.num_partitions
        };
        let max = broker.settings.max_partitions_per_topic;
        if partitions < 1 || partitions > max {
            results.push(fail(
                result,
                ResponseError::InvalidPartitions,
                format!("number of partitions must be between 1 and {max}, got {partitions}"),
            ));
            continue;
        }
        if topic.replication_factor == 0 || topic.replication_factor < -1 {
            results.push(fail(
                result,
                ResponseError::InvalidReplicationFactor,
                format!(
                    "replication factor must be -1 or at least 1, got {}",
                    topic.replication_factor
                ),
            ));
            continue;
        }
        let mut configs = BTreeMap::new();
        let mut invalid = None;
        for c in &topic.configs {
            let key = c.name.as_str();
            let Some(value) = c.value.as_ref().map(|v| v.as_str()) else {
                continue;
            };
            if let Err(message) = topic_config::validate(key, value) {
                invalid = Some(message);
                break;
            }
            configs.insert(key.to_string(), value.to_string());
        }
        if let Some(message) = invalid {
            results.push(fail(result, ResponseError::InvalidConfig, message));
            continue;
        }
        let spec = TopicSpec {
            name: name.clone(),
            partitions,
            configs: configs.clone(),
        };
        if request.validate_only {
            if let Ok(Some(_)) = broker.coordinator.topic(&name).await {
                results.push(fail(
                    result,
                    ResponseError::TopicAlreadyExists,
                    format!("topic '{name}' already exists"),
                ));
                continue;
            }
        } else {
            match broker.coordinator.create_topic(spec).await {
                Ok(meta) => {
                    tracing::info!(topic = %name, partitions, "created topic");
                    result.topic_id = meta.id;
                }
                Err(e) => {
                    let code = coordinator_code(&e);
                    results.push(fail(result, code, e.to_string()));
                    continue;
                }
            }
        }
        if version >= 5 {
            result.num_partitions = partitions;
            result.replication_factor = 1;
            result.configs = Some(
                TOPIC_CONFIGS
                    .iter()
                    .map(|d| {
                        let broker_default = broker.settings.topic_default(d.name);
                        // Sources as in DescribeConfigs: 1 topic, 4 broker flag, 5 default.
                        let source = match (configs.get(d.name), &broker_default) {
                            (Some(_), _) => 1,
                            (None, Some(_)) => 4,
                            (None, None) => 5,
                        };
                        let value = configs
                            .get(d.name)
                            .cloned()
                            .or(broker_default)
                            .unwrap_or_else(|| d.default.to_string());
                        CreatableTopicConfigs::default()
                            .with_name(s(d.name))
                            .with_value(Some(s(&value)))
                            .with_config_source(source)
                    })
                    .collect(),
            );
        }
        results.push(result);
    }
    CreateTopicsResponse::default().with_topics(results)
}

/// Deletes topics, by name (all versions) or by id (v6+).
pub async fn delete_topics(
    broker: Arc<Broker>,
    request: DeleteTopicsRequest,
    version: i16,
    client: Client,
) -> DeleteTopicsResponse {
    let mut targets: Vec<(Option<String>, uuid::Uuid)> = request
        .topic_names
        .iter()
        .map(|n| (Some(n.0.as_str().to_string()), uuid::Uuid::nil()))
        .collect();
    targets.extend(request.topics.iter().map(|t| {
        (
            t.name.as_ref().map(|n| n.0.as_str().to_string()),
            t.topic_id,
        )
    }));
    let mut responses = Vec::with_capacity(targets.len());
    for (name, id) in targets {
        let mut r = DeletableTopicResult::default().with_topic_id(id);
        let name = match name {
            Some(name) => Some(name),
            None => match broker.coordinator.topic_by_id(id).await {
                Ok(found) => found.map(|m| m.name),
                Err(_) => None,
            },
        };
        let result = match &name {
            None => Err((
                ResponseError::UnknownTopicId,
                "unknown topic id".to_string(),
            )),
            Some(name)
                if !broker
                    .authorizer
                    .topic(&client.session, AclOperation::Delete, name) =>
            {
                Err((
                    ResponseError::TopicAuthorizationFailed,
                    format!("not authorized to delete topic '{name}'"),
                ))
            }
            Some(name) => match broker.coordinator.delete_topic(name).await {
                Ok(meta) => {
                    tracing::info!(topic = %name, "deleted topic");
                    r.topic_id = meta.id;
                    Ok(())
                }
                Err(e @ CoordinatorError::UnknownTopic(_)) => {
                    Err((ResponseError::UnknownTopicOrPartition, e.to_string()))
                }
                Err(e) => Err((coordinator_code(&e), e.to_string())),
            },
        };
        r.name = name.map(|n| TopicName(s(n)));
        if let Err((code, message)) = result {
            r.error_code = code.code();
            if version >= 5 {
                r.error_message = Some(s(message));
            }
        }
        responses.push(r);
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

/// Raises partition counts.
pub async fn create_partitions(
    broker: Arc<Broker>,
    request: CreatePartitionsRequest,
    client: Client,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.as_str().to_string();
        let mut r = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        let allowed = broker
            .authorizer
            .topic(&client.session, AclOperation::Alter, &name);
        let found = if allowed {
            broker.coordinator.topic(&name).await
        } else {
            Ok(None)
        };
        let outcome = match found {
            _ if !allowed => Err((
                ResponseError::TopicAuthorizationFailed,
                format!("not authorized to alter topic '{name}'"),
            )),
            Ok(None) => Err((
                ResponseError::UnknownTopicOrPartition,
                format!("unknown topic '{name}'"),
            )),
            Err(e) => Err((coordinator_code(&e), e.to_string())),
            Ok(Some(meta)) if topic.count <= meta.partitions => Err((
                ResponseError::InvalidPartitions,
                format!(
                    "topic '{name}' has {} partitions; the new count {} must be larger",
                    meta.partitions, topic.count
                ),
            )),
            Ok(Some(_)) if topic.count > broker.settings.max_partitions_per_topic => Err((
                ResponseError::InvalidPartitions,
                format!(
                    "at most {} partitions per topic, asked for {}",
                    broker.settings.max_partitions_per_topic, topic.count
                ),
            )),
            Ok(Some(_)) if request.validate_only => Ok(()),
            Ok(Some(_)) => broker
                .coordinator
                .create_partitions(&name, topic.count)
                .await
                .map(|_| ())
                .map_err(|e| (coordinator_code(&e), e.to_string())),
        };
        if let Err((code, message)) = outcome {
            r.error_code = code.code();
            r.error_message = Some(s(message));
        }
        results.push(r);
    }
    CreatePartitionsResponse::default().with_results(results)
}
