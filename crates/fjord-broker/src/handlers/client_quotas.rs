//! DescribeClientQuotas (API 48) and AlterClientQuotas (49): the quotas `kafka-configs
//! --entity-type users/clients`, AdminClients and consoles manage (KIP-546).
//!
//! With an authorizer, describing needs DESCRIBE_CONFIGS on the cluster and altering needs
//! ALTER_CONFIGS on it, else CLUSTER_AUTHORIZATION_FAILED (top-level for Describe, on every
//! entity for Alter). Entity types are `user` and `client-id`; `ip` quotas are not served (an
//! alteration of one is INVALID_REQUEST; a filter for one matches nothing). Keys are
//! `producer_byte_rate`, `consumer_byte_rate` and `request_percentage` (all enforced, see
//! [`crate::quotas`]). Each entity of an alteration gets its own error; the valid
//! ones are written together. After a change this broker reloads the quotas at once; other
//! brokers follow within their refresh interval.

use std::collections::BTreeSet;
use std::sync::Arc;

use fjord_coordinator::quotas::{
    normalize_entity, QuotaAlteration, QuotaEntity, QuotaEntityPart, QuotaEntityType, QuotaKey,
    QuotaOp,
};
use fjord_coordinator::security::AclOperation;
use kafka_protocol::messages::alter_client_quotas_response::{
    EntityData as AlterEntity, EntryData as AlterEntry,
};
use kafka_protocol::messages::describe_client_quotas_response::{
    EntityData as DescribeEntity, EntryData as DescribeEntry, ValueData,
};
use kafka_protocol::messages::{
    AlterClientQuotasRequest, AlterClientQuotasResponse, DescribeClientQuotasRequest,
    DescribeClientQuotasResponse,
};
use kafka_protocol::ResponseError;

use super::s;
use crate::dispatch::Client;
use crate::error::coordinator_code;
use crate::Broker;

/// Kafka's match types of a DescribeClientQuotas component.
const MATCH_EXACT: i8 = 0;
const MATCH_DEFAULT: i8 = 1;
const MATCH_ANY: i8 = 2;

/// One parsed filter component: the entity type (`None`: `ip`, which no stored entity has) and
/// what its name must be.
struct Component {
    entity_type: Option<QuotaEntityType>,
    matcher: Matcher,
}

enum Matcher {
    Exact(String),
    Default,
    Any,
}

fn parse_components(request: &DescribeClientQuotasRequest) -> Result<Vec<Component>, String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(request.components.len());
    for c in &request.components {
        let name = c.entity_type.as_str();
        if !seen.insert(name.to_string()) {
            return Err(format!("entity type {name:?} appears twice in the filter"));
        }
        let entity_type = match name {
            "ip" => None,
            other => Some(
                QuotaEntityType::from_name(other)
                    .ok_or_else(|| format!("unknown entity type {other:?}"))?,
            ),
        };
        let matcher = match c.match_type {
            MATCH_EXACT => Matcher::Exact(
                c._match
                    .as_ref()
                    .ok_or("an EXACT match needs a name")?
                    .as_str()
                    .to_string(),
            ),
            MATCH_DEFAULT => Matcher::Default,
            MATCH_ANY => Matcher::Any,
            other => return Err(format!("unknown match type {other}")),
        };
        out.push(Component {
            entity_type,
            matcher,
        });
    }
    Ok(out)
}

fn matches(components: &[Component], strict: bool, entity: &QuotaEntity) -> bool {
    if strict && entity.len() != components.len() {
        return false;
    }
    components.iter().all(|c| {
        let Some(t) = c.entity_type else {
            return false;
        };
        let Some(part) = entity.iter().find(|p| p.entity_type == t) else {
            return false;
        };
        match &c.matcher {
            Matcher::Exact(name) => part.name.as_deref() == Some(name.as_str()),
            Matcher::Default => part.name.is_none(),
            Matcher::Any => true,
        }
    })
}

fn cluster_refused(broker: &Broker, client: &Client, operation: AclOperation) -> bool {
    broker.authorizer.enabled() && !broker.authorizer.cluster(&client.session, operation)
}

/// Answers DescribeClientQuotas.
pub async fn describe(
    broker: Arc<Broker>,
    request: DescribeClientQuotasRequest,
    client: Client,
) -> DescribeClientQuotasResponse {
    let error = |code: ResponseError, message: String| {
        DescribeClientQuotasResponse::default()
            .with_error_code(code.code())
            .with_error_message(Some(s(message)))
            .with_entries(None)
    };
    if cluster_refused(&broker, &client, AclOperation::DescribeConfigs) {
        return error(
            ResponseError::ClusterAuthorizationFailed,
            "DESCRIBE_CONFIGS on the cluster is required".into(),
        );
    }
    let components = match parse_components(&request) {
        Ok(c) => c,
        Err(reason) => return error(ResponseError::InvalidRequest, reason),
    };
    let snapshot = match broker.coordinator.client_quotas().await {
        Ok(s) => s,
        Err(e) => return error(coordinator_code(&e), e.to_string()),
    };
    let entries = snapshot
        .entries
        .into_iter()
        .filter(|e| matches(&components, request.strict, &e.entity))
        .map(|e| {
            DescribeEntry::default()
                .with_entity(
                    e.entity
                        .iter()
                        .map(|p| {
                            DescribeEntity::default()
                                .with_entity_type(s(p.entity_type.name()))
                                .with_entity_name(p.name.clone().map(s))
                        })
                        .collect(),
                )
                .with_values(
                    e.values
                        .iter()
                        .map(|(k, v)| ValueData::default().with_key(s(k.name())).with_value(*v))
                        .collect(),
                )
        })
        .collect();
    DescribeClientQuotasResponse::default()
        .with_error_message(None)
        .with_entries(Some(entries))
}

/// One entry of an AlterClientQuotas request, checked: the store alteration, or why not.
fn parse_entry(
    entry: &kafka_protocol::messages::alter_client_quotas_request::EntryData,
) -> Result<QuotaAlteration, String> {
    let mut parts = Vec::with_capacity(entry.entity.len());
    for e in &entry.entity {
        let entity_type = match e.entity_type.as_str() {
            "ip" => return Err("ip quotas are not supported by this broker".into()),
            other => QuotaEntityType::from_name(other)
                .ok_or_else(|| format!("unknown entity type {other:?}"))?,
        };
        parts.push(QuotaEntityPart {
            entity_type,
            name: e.entity_name.as_ref().map(|n| n.as_str().to_string()),
        });
    }
    let entity = normalize_entity(&parts)?;
    let mut keys = BTreeSet::new();
    let mut ops = Vec::with_capacity(entry.ops.len());
    for op in &entry.ops {
        let name = op.key.as_str();
        let key = QuotaKey::from_name(name).ok_or_else(|| format!("unknown quota key {name:?}"))?;
        if !keys.insert(key) {
            return Err(format!("quota key {name:?} appears twice"));
        }
        let value = if op.remove {
            None
        } else {
            fjord_coordinator::quotas::check_value(key, op.value)?;
            Some(op.value)
        };
        ops.push(QuotaOp {
            key: name.to_string(),
            value,
        });
    }
    Ok(QuotaAlteration { entity, ops })
}

/// One entity of an AlterClientQuotas response: the entity as given, and its error if any.
type EntityResult = (Vec<AlterEntity>, Option<(ResponseError, String)>);

/// Answers AlterClientQuotas.
pub async fn alter(
    broker: Arc<Broker>,
    request: AlterClientQuotasRequest,
    client: Client,
) -> AlterClientQuotasResponse {
    let echo = |entry: &kafka_protocol::messages::alter_client_quotas_request::EntryData| {
        entry
            .entity
            .iter()
            .map(|e| {
                AlterEntity::default()
                    .with_entity_type(e.entity_type.clone())
                    .with_entity_name(e.entity_name.clone())
            })
            .collect::<Vec<_>>()
    };
    let answer = |results: Vec<EntityResult>| {
        AlterClientQuotasResponse::default().with_entries(
            results
                .into_iter()
                .map(|(entity, error)| {
                    let entry = AlterEntry::default().with_entity(entity);
                    match error {
                        None => entry.with_error_message(None),
                        Some((code, message)) => entry
                            .with_error_code(code.code())
                            .with_error_message(Some(s(message))),
                    }
                })
                .collect(),
        )
    };
    if cluster_refused(&broker, &client, AclOperation::AlterConfigs) {
        return answer(
            request
                .entries
                .iter()
                .map(|e| {
                    (
                        echo(e),
                        Some((
                            ResponseError::ClusterAuthorizationFailed,
                            "ALTER_CONFIGS on the cluster is required".to_string(),
                        )),
                    )
                })
                .collect(),
        );
    }
    let mut seen: BTreeSet<QuotaEntity> = BTreeSet::new();
    let parsed: Vec<Result<QuotaAlteration, String>> = request
        .entries
        .iter()
        .map(|e| {
            let a = parse_entry(e)?;
            if !seen.insert(a.entity.clone()) {
                return Err("the entity appears twice in the request".into());
            }
            Ok(a)
        })
        .collect();
    let valid: Vec<QuotaAlteration> = parsed.iter().filter_map(|p| p.clone().ok()).collect();
    let stored = if valid.is_empty() || request.validate_only {
        Ok(())
    } else {
        broker.coordinator.alter_client_quotas(valid.clone()).await
    };
    if stored.is_ok() && !valid.is_empty() && !request.validate_only {
        tracing::info!(target: "fjord::audit", event = "client_quotas_altered", principal = %client.session.principal, alterations = ?valid, "client quotas altered");
        if let Err(e) = broker.quotas.refresh().await {
            tracing::warn!(error = %e, "reloading client quotas after a change failed; the refresh duty retries");
        }
    }
    let results = request
        .entries
        .iter()
        .zip(parsed)
        .map(|(e, p)| {
            let error = match (p, &stored) {
                (Err(reason), _) => Some((ResponseError::InvalidRequest, reason)),
                (Ok(_), Ok(())) => None,
                (Ok(_), Err(err)) => Some((coordinator_code(err), err.to_string())),
            };
            (echo(e), error)
        })
        .collect();
    answer(results)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use kafka_protocol::messages::describe_client_quotas_request::ComponentData;

    use super::*;

    fn component(t: &str, match_type: i8, name: Option<&str>) -> ComponentData {
        ComponentData::default()
            .with_entity_type(s(t))
            .with_match_type(match_type)
            .with_match(name.map(s))
    }

    fn filter(components: Vec<ComponentData>) -> Vec<Component> {
        parse_components(&DescribeClientQuotasRequest::default().with_components(components))
            .unwrap()
    }

    #[test]
    fn filters_match_as_in_kafka() {
        let alice = QuotaEntityPart::named(QuotaEntityType::User, "alice");
        let app = QuotaEntityPart::named(QuotaEntityType::ClientId, "app");
        let du = QuotaEntityPart::default_of(QuotaEntityType::User);
        let pair = vec![alice.clone(), app.clone()];
        let user_only = vec![alice];
        let default_user = vec![du];

        let exact = filter(vec![component("user", MATCH_EXACT, Some("alice"))]);
        assert!(matches(&exact, false, &pair));
        assert!(matches(&exact, false, &user_only));
        assert!(!matches(&exact, true, &pair));
        assert!(matches(&exact, true, &user_only));
        assert!(!matches(&exact, false, &default_user));

        let default = filter(vec![component("user", MATCH_DEFAULT, None)]);
        assert!(matches(&default, false, &default_user));
        assert!(!matches(&default, false, &user_only));

        let any_client = filter(vec![component("client-id", MATCH_ANY, None)]);
        assert!(matches(&any_client, false, &pair));
        assert!(!matches(&any_client, false, &user_only));

        assert!(matches(&filter(vec![]), false, &pair));
        assert!(!matches(&filter(vec![]), true, &pair));
        let ip = filter(vec![component("ip", MATCH_ANY, None)]);
        assert!(!matches(&ip, false, &pair));

        let bad = DescribeClientQuotasRequest::default().with_components(vec![
            component("user", MATCH_ANY, None),
            component("user", MATCH_ANY, None),
        ]);
        assert!(parse_components(&bad).is_err());
        let bad = DescribeClientQuotasRequest::default().with_components(vec![component(
            "user",
            MATCH_EXACT,
            None,
        )]);
        assert!(parse_components(&bad).is_err());
    }
}
