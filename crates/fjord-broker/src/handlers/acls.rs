//! CreateAcls (API 30), DescribeAcls (29) and DeleteAcls (31): the ACLs AdminClients,
//! `kafka-acls`, Terraform providers and consoles manage.
//!
//! Creating and deleting needs ALTER on the cluster, describing needs DESCRIBE on it; without an
//! authorizer every call answers SECURITY_DISABLED, as Kafka does. A binding Kafka would refuse
//! (ANY or UNKNOWN codes, a PREFIXED `*`, a principal not `Type:name`, ...) is INVALID_REQUEST
//! with the reason; the others of the same request are still created. After a change this
//! broker reloads the ACLs at once; other brokers follow within their refresh interval.

use std::collections::BTreeMap;
use std::sync::Arc;

use fjord_coordinator::security::{
    AclBinding, AclFilter, AclOperation, AclPermission, PatternFilter, PatternType, ResourceType,
    CLUSTER_RESOURCE,
};
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::s;
use crate::authz::Action;
use crate::dispatch::Client;
use crate::error::coordinator_code;
use crate::Broker;

/// Why a request cannot touch ACLs at all, if it cannot.
fn refused(broker: &Broker, client: &Client, operation: AclOperation) -> Option<ResponseError> {
    if !broker.authorizer.enabled() {
        return Some(ResponseError::SecurityDisabled);
    }
    let action = Action {
        operation,
        resource_type: ResourceType::Cluster,
        name: CLUSTER_RESOURCE,
    };
    (!broker.authorizer.authorize(&client.session, action))
        .then_some(ResponseError::ClusterAuthorizationFailed)
}

fn message(code: ResponseError) -> Option<StrBytes> {
    Some(s(match code {
        ResponseError::SecurityDisabled => {
            "no authorizer is configured (start the brokers with --authorizer acl)".to_string()
        }
        other => format!("{other:?}"),
    }))
}

#[allow(clippy::too_many_arguments)]
fn binding(
    resource_type: i8,
    resource_name: &str,
    pattern_type: i8,
    principal: &str,
    host: &str,
    operation: i8,
    permission: i8,
) -> Result<AclBinding, String> {
    let b = AclBinding {
        resource_type: ResourceType::from_code(resource_type)
            .ok_or_else(|| format!("resource type {resource_type} cannot be used in an ACL"))?,
        resource_name: resource_name.to_string(),
        pattern_type: PatternType::from_code(pattern_type)
            .ok_or_else(|| format!("pattern type {pattern_type}: use LITERAL or PREFIXED"))?,
        principal: principal.to_string(),
        host: host.to_string(),
        operation: AclOperation::from_code(operation)
            .ok_or_else(|| format!("operation {operation} cannot be used in an ACL"))?,
        permission: AclPermission::from_code(permission)
            .ok_or_else(|| format!("permission {permission}: use ALLOW or DENY"))?,
    };
    b.check()?;
    Ok(b)
}

#[allow(clippy::too_many_arguments)]
fn filter(
    resource_type: i8,
    resource_name: Option<&StrBytes>,
    pattern_type: i8,
    principal: Option<&StrBytes>,
    host: Option<&StrBytes>,
    operation: i8,
    permission: i8,
) -> Result<AclFilter, String> {
    const ANY: i8 = 1;
    let pattern = match pattern_type {
        ANY => PatternFilter::Any,
        2 => PatternFilter::Match,
        code => PatternFilter::Exactly(
            PatternType::from_code(code).ok_or_else(|| format!("pattern type filter {code}"))?,
        ),
    };
    Ok(AclFilter {
        resource_type: match resource_type {
            ANY => None,
            code => Some(
                ResourceType::from_code(code)
                    .ok_or_else(|| format!("resource type filter {code}"))?,
            ),
        },
        resource_name: resource_name.map(|n| n.as_str().to_string()),
        pattern,
        principal: principal.map(|p| p.as_str().to_string()),
        host: host.map(|h| h.as_str().to_string()),
        operation: match operation {
            ANY => None,
            code => Some(
                AclOperation::from_code(code).ok_or_else(|| format!("operation filter {code}"))?,
            ),
        },
        permission: match permission {
            ANY => None,
            code => Some(
                AclPermission::from_code(code)
                    .ok_or_else(|| format!("permission filter {code}"))?,
            ),
        },
    })
}

async fn reload(broker: &Broker) {
    if let Err(e) = broker.authorizer.refresh().await {
        tracing::warn!(error = %e, "reloading ACLs after a change failed; the refresh duty retries");
    }
}

/// Answers CreateAcls.
pub async fn create(
    broker: Arc<Broker>,
    request: CreateAclsRequest,
    client: Client,
) -> CreateAclsResponse {
    if let Some(code) = refused(&broker, &client, AclOperation::Alter) {
        let results = request
            .creations
            .iter()
            .map(|_| {
                AclCreationResult::default()
                    .with_error_code(code.code())
                    .with_error_message(message(code))
            })
            .collect();
        return CreateAclsResponse::default().with_results(results);
    }
    let parsed: Vec<Result<AclBinding, String>> = request
        .creations
        .iter()
        .map(|c| {
            binding(
                c.resource_type,
                c.resource_name.as_str(),
                c.resource_pattern_type,
                c.principal.as_str(),
                c.host.as_str(),
                c.operation,
                c.permission_type,
            )
        })
        .collect();
    let valid: Vec<AclBinding> = parsed.iter().filter_map(|p| p.clone().ok()).collect();
    let stored = if valid.is_empty() {
        Ok(())
    } else {
        broker.coordinator.create_acls(valid.clone()).await
    };
    if stored.is_ok() && !valid.is_empty() {
        tracing::info!(target: "fjord::audit", event = "acls_created", principal = %client.session.principal, count = valid.len(), bindings = ?valid, "ACLs created");
        reload(&broker).await;
    }
    let results = parsed
        .into_iter()
        .map(|p| match (p, &stored) {
            (Err(reason), _) => AclCreationResult::default()
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_error_message(Some(s(reason))),
            (Ok(_), Ok(())) => AclCreationResult::default(),
            (Ok(_), Err(e)) => AclCreationResult::default()
                .with_error_code(coordinator_code(e).code())
                .with_error_message(Some(s(e.to_string()))),
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}

/// Answers DescribeAcls.
pub async fn describe(
    broker: Arc<Broker>,
    request: DescribeAclsRequest,
    client: Client,
) -> DescribeAclsResponse {
    if let Some(code) = refused(&broker, &client, AclOperation::Describe) {
        return DescribeAclsResponse::default()
            .with_error_code(code.code())
            .with_error_message(message(code));
    }
    let f = match filter(
        request.resource_type_filter,
        request.resource_name_filter.as_ref(),
        request.pattern_type_filter,
        request.principal_filter.as_ref(),
        request.host_filter.as_ref(),
        request.operation,
        request.permission_type,
    ) {
        Ok(f) => f,
        Err(reason) => {
            return DescribeAclsResponse::default()
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_error_message(Some(s(reason)))
        }
    };
    let snapshot = match broker.coordinator.acls().await {
        Ok(snapshot) => snapshot,
        Err(e) => {
            return DescribeAclsResponse::default()
                .with_error_code(coordinator_code(&e).code())
                .with_error_message(Some(s(e.to_string())))
        }
    };
    let mut resources: BTreeMap<(ResourceType, String, PatternType), Vec<AclDescription>> =
        BTreeMap::new();
    for b in snapshot.bindings.iter().filter(|b| f.matches(b)) {
        resources
            .entry((b.resource_type, b.resource_name.clone(), b.pattern_type))
            .or_default()
            .push(
                AclDescription::default()
                    .with_principal(s(b.principal.as_str()))
                    .with_host(s(b.host.as_str()))
                    .with_operation(b.operation.code())
                    .with_permission_type(b.permission.code()),
            );
    }
    let resources = resources
        .into_iter()
        .map(|((t, name, p), acls)| {
            DescribeAclsResource::default()
                .with_resource_type(t.code())
                .with_resource_name(s(name))
                .with_pattern_type(p.code())
                .with_acls(acls)
        })
        .collect();
    DescribeAclsResponse::default().with_resources(resources)
}

/// Answers DeleteAcls.
pub async fn delete(
    broker: Arc<Broker>,
    request: DeleteAclsRequest,
    client: Client,
) -> DeleteAclsResponse {
    if let Some(code) = refused(&broker, &client, AclOperation::Alter) {
        let results = request
            .filters
            .iter()
            .map(|_| {
                DeleteAclsFilterResult::default()
                    .with_error_code(code.code())
                    .with_error_message(message(code))
            })
            .collect();
        return DeleteAclsResponse::default().with_filter_results(results);
    }
    let parsed: Vec<Result<AclFilter, String>> = request
        .filters
        .iter()
        .map(|f| {
            filter(
                f.resource_type_filter,
                f.resource_name_filter.as_ref(),
                f.pattern_type_filter,
                f.principal_filter.as_ref(),
                f.host_filter.as_ref(),
                f.operation,
                f.permission_type,
            )
        })
        .collect();
    let valid: Vec<AclFilter> = parsed.iter().filter_map(|p| p.clone().ok()).collect();
    let deleted = if valid.is_empty() {
        Ok(Vec::new())
    } else {
        broker.coordinator.delete_acls(valid).await
    };
    if let Ok(matched) = &deleted {
        let count: usize = matched.iter().map(Vec::len).sum();
        if count > 0 {
            tracing::info!(target: "fjord::audit", event = "acls_deleted", principal = %client.session.principal, count, "ACLs deleted");
            reload(&broker).await;
        }
    }
    let mut matched = match &deleted {
        Ok(m) => m.clone().into_iter(),
        Err(_) => Vec::new().into_iter(),
    };
    let results = parsed
        .into_iter()
        .map(|p| match (p, &deleted) {
            (Err(reason), _) => DeleteAclsFilterResult::default()
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_error_message(Some(s(reason))),
            (Ok(_), Err(e)) => DeleteAclsFilterResult::default()
                .with_error_code(coordinator_code(e).code())
                .with_error_message(Some(s(e.to_string()))),
            (Ok(_), Ok(_)) => DeleteAclsFilterResult::default().with_matching_acls(
                matched
                    .next()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|b| {
                        DeleteAclsMatchingAcl::default()
                            .with_resource_type(b.resource_type.code())
                            .with_resource_name(s(b.resource_name))
                            .with_pattern_type(b.pattern_type.code())
                            .with_principal(s(b.principal))
                            .with_host(s(b.host))
                            .with_operation(b.operation.code())
                            .with_permission_type(b.permission.code())
                    })
                    .collect(),
            ),
        })
        .collect();
    DeleteAclsResponse::default().with_filter_results(results)
}
