//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for topics.
//!
//! Broker resources are described with no entries (nothing about a broker is configurable
//! through the protocol yet) and cannot be altered.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResult;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::s;
use crate::dispatch::Client;
use crate::error::coordinator_code;
use crate::topic_config::{self, ConfigType, TOPIC_CONFIGS};
use crate::Broker;
use fjord_coordinator::security::AclOperation;

const TOPIC: i8 = 2;
const BROKER: i8 = 4;
const SOURCE_TOPIC: i8 = 1;
/// STATIC_BROKER_CONFIG: a broker flag (e.g. `--log-retention-ms`), as Kafka reports
/// `log.retention.ms` from server.properties.
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

/// Describes topic (and broker) configs.
pub async fn describe(
    broker: Arc<Broker>,
    request: DescribeConfigsRequest,
    version: i16,
    client: Client,
) -> DescribeConfigsResponse {
    let mut results = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let mut r = DescribeConfigsResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        let denied = match resource.resource_type {
            TOPIC => (!broker.authorizer.topic(
                &client.session,
                AclOperation::DescribeConfigs,
                resource.resource_name.as_str(),
            ))
            .then_some(ResponseError::TopicAuthorizationFailed),
            BROKER => (!broker
                .authorizer
                .cluster(&client.session, AclOperation::DescribeConfigs))
            .then_some(ResponseError::ClusterAuthorizationFailed),
            _ => None,
        };
        if let Some(code) = denied {
            r.error_code = code.code();
            r.error_message = Some(s("not authorized to describe these configs"));
            results.push(r);
            continue;
        }
        match resource.resource_type {
            TOPIC => match broker
                .coordinator
                .topic(resource.resource_name.as_str())
                .await
            {
                Ok(Some(meta)) => {
                    // Null or empty: every config.
                    let wanted = |name: &str| match &resource.configuration_keys {
                        Some(keys) if !keys.is_empty() => keys.iter().any(|k| k.as_str() == name),
                        _ => true,
                    };
                    r.configs = TOPIC_CONFIGS
                        .iter()
                        .filter(|d| wanted(d.name))
                        .map(|d| {
                            let explicit = meta.configs.get(d.name).cloned();
                            let broker_default = broker.settings.topic_default(d.name);
                            let source = match (&explicit, &broker_default) {
                                (Some(_), _) => SOURCE_TOPIC,
                                (None, Some(_)) => SOURCE_STATIC_BROKER,
                                (None, None) => SOURCE_DEFAULT,
                            };
                            let value = explicit
                                .or(broker_default)
                                .unwrap_or_else(|| d.default.to_string());
                            let value = value.as_str();
                            let mut entry = DescribeConfigsResourceResult::default()
                                .with_name(s(d.name))
                                .with_value(Some(s(value)))
                                .with_config_source(source);
                            if request.include_synonyms {
                                entry.synonyms = vec![DescribeConfigsSynonym::default()
                                    .with_name(s(d.name))
                                    .with_value(Some(s(value)))
                                    .with_source(source)];
                            }
                            if version >= 3 {
                                entry.config_type = d.kind as i8;
                            }
                            entry
                        })
                        .collect();
                }
                Ok(None) => {
                    r.error_code = ResponseError::UnknownTopicOrPartition.code();
                    r.error_message = Some(s(format!(
                        "unknown topic '{}'",
                        resource.resource_name.as_str()
                    )));
                }
                Err(e) => {
                    r.error_code = coordinator_code(&e).code();
                    r.error_message = Some(s(e.to_string()));
                }
            },
            BROKER => {}
            other => {
                r.error_code = ResponseError::InvalidRequest.code();
                r.error_message = Some(s(format!("unsupported resource type {other}")));
            }
        }
        results.push(r);
    }
    DescribeConfigsResponse::default().with_results(results)
}

type Changes = Vec<(String, Option<String>)>;

/// Applies (or, with `validate_only`, checks) config changes to one resource.
async fn apply(
    broker: &Broker,
    client: &Client,
    resource_type: i8,
    name: &StrBytes,
    validate_only: bool,
    changes: impl FnOnce(&BTreeMap<String, String>) -> Result<Changes, String>,
) -> Result<(), (ResponseError, String)> {
    if resource_type == TOPIC
        && !broker
            .authorizer
            .topic(&client.session, AclOperation::AlterConfigs, name.as_str())
    {
        return Err((
            ResponseError::TopicAuthorizationFailed,
            format!(
                "not authorized to alter the configs of topic '{}'",
                name.as_str()
            ),
        ));
    }
    if resource_type != TOPIC {
        return Err((
            ResponseError::InvalidRequest,
            format!("altering configs of resource type {resource_type} is not supported"),
        ));
    }
    let meta = match broker.coordinator.topic(name.as_str()).await {
        Ok(Some(meta)) => meta,
        Ok(None) => {
            return Err((
                ResponseError::UnknownTopicOrPartition,
                format!("unknown topic '{}'", name.as_str()),
            ))
        }
        Err(e) => return Err((coordinator_code(&e), e.to_string())),
    };
    let changes = changes(&meta.configs).map_err(|m| (ResponseError::InvalidConfig, m))?;
    for (key, value) in &changes {
        match value {
            Some(v) => topic_config::validate(key, v),
            None => topic_config::lookup(key)
                .map(|_| ())
                .ok_or_else(|| format!("unknown topic config '{key}'")),
        }
        .map_err(|m| (ResponseError::InvalidConfig, m))?;
    }
    if validate_only {
        return Ok(());
    }
    broker
        .coordinator
        .alter_topic_configs(name.as_str(), changes)
        .await
        .map(|_| ())
        .map_err(|e| (coordinator_code(&e), e.to_string()))
}

/// AlterConfigs: the given configs replace all of the topic's explicit configs.
pub async fn alter(
    broker: Arc<Broker>,
    request: AlterConfigsRequest,
    client: Client,
) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let result = apply(
            &broker,
            &client,
            resource.resource_type,
            &resource.resource_name,
            request.validate_only,
            |current| {
                let mut changes: Changes = current
                    .keys()
                    .filter(|k| {
                        !resource
                            .configs
                            .iter()
                            .any(|c| c.name.as_str() == k.as_str())
                    })
                    .map(|k| (k.clone(), None))
                    .collect();
                for c in &resource.configs {
                    changes.push((
                        c.name.as_str().to_string(),
                        c.value.as_ref().map(|v| v.as_str().to_string()),
                    ));
                }
                Ok(changes)
            },
        )
        .await;
        let mut r = AlterConfigsResourceResponse::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name);
        if let Err((code, message)) = result {
            r.error_code = code.code();
            r.error_message = Some(s(message));
        }
        responses.push(r);
    }
    AlterConfigsResponse::default().with_responses(responses)
}

/// IncrementalAlterConfigs: SET, DELETE, APPEND and SUBTRACT single configs.
pub async fn incremental_alter(
    broker: Arc<Broker>,
    request: IncrementalAlterConfigsRequest,
    client: Client,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let result = apply(
            &broker,
            &client,
            resource.resource_type,
            &resource.resource_name,
            request.validate_only,
            |current| {
                let mut changes = Changes::new();
                for c in &resource.configs {
                    let key = c.name.as_str().to_string();
                    let value = c.value.as_ref().map(|v| v.as_str().to_string());
                    let is_list =
                        topic_config::lookup(&key).is_some_and(|d| d.kind == ConfigType::List);
                    let list = |key: &str| -> Vec<String> {
                        let current = current
                            .get(key)
                            .cloned()
                            .or_else(|| topic_config::lookup(key).map(|d| d.default.to_string()))
                            .unwrap_or_default();
                        current
                            .split(',')
                            .map(str::trim)
                            .filter(|v| !v.is_empty())
                            .map(String::from)
                            .collect()
                    };
                    match c.config_operation {
                        0 => changes.push((key, value)),
                        1 => changes.push((key, None)),
                        2 | 3 if !is_list => {
                            return Err(format!(
                                "{key} is not a list; APPEND and SUBTRACT need a list config"
                            ))
                        }
                        2 => {
                            let mut items = list(&key);
                            for v in value.unwrap_or_default().split(',').map(str::trim) {
                                if !v.is_empty() && !items.iter().any(|i| i == v) {
                                    items.push(v.to_string());
                                }
                            }
                            changes.push((key, Some(items.join(","))));
                        }
                        3 => {
                            let remove: Vec<String> = value
                                .unwrap_or_default()
                                .split(',')
                                .map(|v| v.trim().to_string())
                                .collect();
                            let items: Vec<String> = list(&key)
                                .into_iter()
                                .filter(|i| !remove.contains(i))
                                .collect();
                            changes.push((key, Some(items.join(","))));
                        }
                        op => return Err(format!("unknown config operation {op}")),
                    }
                }
                Ok(changes)
            },
        )
        .await;
        let mut r = IncrementalResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name);
        if let Err((code, message)) = result {
            r.error_code = code.code();
            r.error_message = Some(s(message));
        }
        responses.push(r);
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
