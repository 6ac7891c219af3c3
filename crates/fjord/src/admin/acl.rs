//! `fjord acl add|list|remove`: Kafka ACLs through CreateAcls, DescribeAcls and DeleteAcls.
//!
//! A resource is named with one of `--topic`, `--group`, `--transactional-id` or `--cluster`;
//! `--prefixed` makes the name a prefix. `add` needs a principal and an operation; `list` and
//! `remove` treat every flag left out as "any" (remove with no flag at all is refused, so that
//! all ACLs are never removed by accident).

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use fjord_coordinator::security::{AclOperation, ResourceType, CLUSTER_RESOURCE};
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::{CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest};
use kafka_protocol::protocol::StrBytes;

use super::controller;

/// ACL commands.
#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Add an ACL.
    Add(Spec),
    /// List ACLs (flags narrow the list).
    List(Spec),
    /// Remove the ACLs the flags match.
    Remove(Spec),
}

/// What an ACL (or a filter) names.
#[derive(Debug, Args)]
pub struct Spec {
    /// Topic name (or prefix with --prefixed; `*` for all topics).
    #[arg(long, group = "resource")]
    topic: Option<String>,
    /// Consumer group id (or prefix).
    #[arg(long, group = "resource")]
    group: Option<String>,
    /// Transactional id (or prefix).
    #[arg(long, group = "resource")]
    transactional_id: Option<String>,
    /// The cluster.
    #[arg(long, group = "resource")]
    cluster: bool,
    /// The name is a prefix.
    #[arg(long)]
    prefixed: bool,
    /// Principal, e.g. User:alice (`User:*` for everyone).
    #[arg(long)]
    principal: Option<String>,
    /// Client host (IP address) [default for add: any].
    #[arg(long)]
    host: Option<String>,
    /// Operation: all, read, write, create, delete, alter, describe, cluster-action,
    /// describe-configs, alter-configs, idempotent-write.
    #[arg(long)]
    operation: Option<String>,
    /// Deny instead of allow.
    #[arg(long)]
    deny: bool,
}

const ANY: i8 = 1;
const MATCH_LITERAL: i8 = 3;
const MATCH_PREFIXED: i8 = 4;

fn operation(name: &str) -> anyhow::Result<i8> {
    let op = match name.to_ascii_lowercase().replace('_', "-").as_str() {
        "all" => AclOperation::All,
        "read" => AclOperation::Read,
        "write" => AclOperation::Write,
        "create" => AclOperation::Create,
        "delete" => AclOperation::Delete,
        "alter" => AclOperation::Alter,
        "describe" => AclOperation::Describe,
        "cluster-action" => AclOperation::ClusterAction,
        "describe-configs" => AclOperation::DescribeConfigs,
        "alter-configs" => AclOperation::AlterConfigs,
        "idempotent-write" => AclOperation::IdempotentWrite,
        other => bail!("unknown operation {other}"),
    };
    Ok(op.code())
}

fn op_name(code: i8) -> String {
    AclOperation::from_code(code)
        .map(|o| format!("{o:?}").to_ascii_uppercase())
        .unwrap_or_else(|| code.to_string())
}

impl Spec {
    fn resource(&self) -> Option<(ResourceType, String)> {
        if let Some(t) = &self.topic {
            Some((ResourceType::Topic, t.clone()))
        } else if let Some(g) = &self.group {
            Some((ResourceType::Group, g.clone()))
        } else if let Some(t) = &self.transactional_id {
            Some((ResourceType::TransactionalId, t.clone()))
        } else if self.cluster {
            Some((ResourceType::Cluster, CLUSTER_RESOURCE.to_string()))
        } else {
            None
        }
    }

    fn pattern(&self) -> i8 {
        if self.prefixed {
            MATCH_PREFIXED
        } else {
            MATCH_LITERAL
        }
    }

    fn permission(&self) -> i8 {
        if self.deny {
            2
        } else {
            3
        }
    }

    /// The filter the flags describe: every flag left out matches anything.
    fn filter(&self) -> anyhow::Result<DeleteAclsFilter> {
        let (kind, name, pattern) = match self.resource() {
            Some((k, n)) => (k.code(), Some(s(n)), self.pattern()),
            None => (ANY, None, ANY),
        };
        Ok(DeleteAclsFilter::default()
            .with_resource_type_filter(kind)
            .with_resource_name_filter(name)
            .with_pattern_type_filter(pattern)
            .with_principal_filter(self.principal.clone().map(s))
            .with_host_filter(self.host.clone().map(s))
            .with_operation(match &self.operation {
                Some(o) => operation(o)?,
                None => ANY,
            })
            .with_permission_type(if self.deny { 2 } else { ANY }))
    }

    fn is_empty(&self) -> bool {
        self.resource().is_none()
            && self.principal.is_none()
            && self.host.is_none()
            && self.operation.is_none()
    }
}

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// Runs an ACL command against the cluster at `bootstrap`.
pub async fn run(bootstrap: &str, command: AclCommand) -> anyhow::Result<()> {
    let mut client = controller(bootstrap).await?;
    match command {
        AclCommand::Add(spec) => {
            let (kind, name) = spec
                .resource()
                .context("name a resource: --topic, --group, --transactional-id or --cluster")?;
            let principal = spec.principal.clone().context("--principal is needed")?;
            let op = operation(spec.operation.as_deref().context("--operation is needed")?)?;
            let creation = AclCreation::default()
                .with_resource_type(kind.code())
                .with_resource_name(s(name.clone()))
                .with_resource_pattern_type(spec.pattern())
                .with_principal(s(principal.clone()))
                .with_host(s(spec.host.clone().unwrap_or_else(|| "*".into())))
                .with_operation(op)
                .with_permission_type(spec.permission());
            let response = client
                .call(CreateAclsRequest::default().with_creations(vec![creation]))
                .await?;
            for r in &response.results {
                if r.error_code != 0 {
                    bail!(
                        "error {}: {}",
                        r.error_code,
                        r.error_message.as_ref().map(|m| m.as_str()).unwrap_or("")
                    );
                }
            }
            println!(
                "added: {principal} {} {} {}",
                if spec.deny { "DENY" } else { "ALLOW" },
                op_name(op),
                describe_resource(kind, &name, spec.prefixed)
            );
        }
        AclCommand::List(spec) => {
            let f = spec.filter()?;
            let request = DescribeAclsRequest::default()
                .with_resource_type_filter(f.resource_type_filter)
                .with_resource_name_filter(f.resource_name_filter)
                .with_pattern_type_filter(f.pattern_type_filter)
                .with_principal_filter(f.principal_filter)
                .with_host_filter(f.host_filter)
                .with_operation(f.operation)
                .with_permission_type(f.permission_type);
            let response = client.call(request).await?;
            if response.error_code != 0 {
                bail!(
                    "error {}: {}",
                    response.error_code,
                    response
                        .error_message
                        .as_ref()
                        .map(|m| m.as_str())
                        .unwrap_or("")
                );
            }
            for resource in &response.resources {
                let kind = ResourceType::from_code(resource.resource_type);
                for acl in &resource.acls {
                    println!(
                        "{}\t{}\t{}\t{}\thost={}",
                        acl.principal.as_str(),
                        if acl.permission_type == 2 {
                            "DENY"
                        } else {
                            "ALLOW"
                        },
                        op_name(acl.operation),
                        match kind {
                            Some(k) => describe_resource(
                                k,
                                resource.resource_name.as_str(),
                                resource.pattern_type == MATCH_PREFIXED
                            ),
                            None => resource.resource_name.as_str().to_string(),
                        },
                        acl.host.as_str()
                    );
                }
            }
        }
        AclCommand::Remove(spec) => {
            if spec.is_empty() {
                bail!("remove needs at least one of --topic, --group, --transactional-id, --cluster, --principal, --host, --operation");
            }
            let filter = spec.filter()?;
            let response = client
                .call(DeleteAclsRequest::default().with_filters(vec![filter]))
                .await?;
            let mut removed = 0;
            for r in &response.filter_results {
                if r.error_code != 0 {
                    bail!(
                        "error {}: {}",
                        r.error_code,
                        r.error_message.as_ref().map(|m| m.as_str()).unwrap_or("")
                    );
                }
                removed += r.matching_acls.len();
            }
            println!("removed {removed} ACL(s)");
        }
    }
    Ok(())
}

fn describe_resource(kind: ResourceType, name: &str, prefixed: bool) -> String {
    format!(
        "{}:{}{}",
        kind.name(),
        name,
        if prefixed { " (prefix)" } else { "" }
    )
}
