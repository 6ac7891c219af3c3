//! Authorization: Kafka's ACL model, decided in one place.
//!
//! Every handler asks [`Authorizer::authorize`] whether the request's principal may perform an
//! operation on a resource and answers the matching `*_AUTHORIZATION_FAILED` code when not. The
//! decision follows Kafka's `StandardAuthorizer`:
//! 1. with no authorizer configured, everything is allowed (Kafka without
//!    `authorizer.class.name`);
//! 2. super users (`super.users`) are allowed everything;
//! 3. a DENY binding that matches (resource pattern, principal or `User:*`, host or `*`, the
//!    operation or ALL) denies;
//! 4. an ALLOW binding that matches allows, where READ, WRITE, DELETE and ALTER imply DESCRIBE
//!    and ALTER_CONFIGS implies DESCRIBE_CONFIGS;
//! 5. otherwise denied, unless no binding at all names the resource and
//!    `allow.everyone.if.no.acl.found` is set.
//!
//! The bindings live in the coordinator ([`fjord_coordinator::AclStore`]) so that every broker
//! of a cluster decides alike. Each broker keeps them in memory and reloads them when the
//! store's ACL version changes: [`Authorizer::run`] polls the version every
//! [`AuthorizerSettings::refresh_interval`], so a change made through any broker is enforced
//! by all of them within that interval plus one store round trip; the broker that made the
//! change reloads at once. Denials are logged on the `fjord::audit` target.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fjord_coordinator::security::{
    AclBinding, AclOperation, AclPermission, PatternType, ResourceType, WILDCARD,
};
use fjord_coordinator::AclStore;
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;

use crate::session::Session;

/// Authorizer settings (Kafka's names in brackets).
#[derive(Debug, Clone)]
pub struct AuthorizerSettings {
    /// Whether ACLs are enforced at all (`authorizer.class.name` set).
    pub enabled: bool,
    /// Principals allowed everything, e.g. `User:admin` (`super.users`).
    pub super_users: Vec<String>,
    /// Allow what no binding names (`allow.everyone.if.no.acl.found`; false by default).
    pub allow_everyone_if_no_acl_found: bool,
    /// How often the store's ACL version is checked.
    pub refresh_interval: Duration,
}

impl Default for AuthorizerSettings {
    fn default() -> Self {
        AuthorizerSettings {
            enabled: false,
            super_users: Vec::new(),
            allow_everyone_if_no_acl_found: false,
            refresh_interval: Duration::from_secs(1),
        }
    }
}

/// Counters (exported as metrics).
#[derive(Debug, Default)]
pub struct AuthorizerStats {
    /// Requests or resources denied.
    pub denied: AtomicU64,
    /// Reloads of the bindings.
    pub reloads: AtomicU64,
    /// Failed reloads (the previous bindings stay in force).
    pub reload_errors: AtomicU64,
}

/// The bindings of one ACL version, by resource type.
#[derive(Debug)]
struct Acls {
    /// `None` until first loaded.
    version: Option<i64>,
    by_type: HashMap<ResourceType, Vec<AclBinding>>,
}

impl Acls {
    fn unloaded() -> Arc<Acls> {
        Arc::new(Acls {
            version: None,
            by_type: HashMap::new(),
        })
    }
}

/// Decides who may do what; see the module docs.
pub struct Authorizer {
    settings: AuthorizerSettings,
    store: Option<Arc<dyn AclStore>>,
    acls: RwLock<Arc<Acls>>,
    /// Counters.
    pub stats: AuthorizerStats,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// What a request asks to do, for the audit log.
#[derive(Debug, Clone, Copy)]
pub struct Action<'a> {
    /// The operation.
    pub operation: AclOperation,
    /// The resource type.
    pub resource_type: ResourceType,
    /// The resource name.
    pub name: &'a str,
}

fn implies(granted: AclOperation, wanted: AclOperation) -> bool {
    use AclOperation::*;
    granted == wanted
        || granted == All
        || (wanted == Describe && matches!(granted, Read | Write | Delete | Alter))
        || (wanted == DescribeConfigs && granted == AlterConfigs)
}

fn names(binding: &AclBinding, name: &str) -> bool {
    match binding.pattern_type {
        PatternType::Literal => binding.resource_name == name || binding.resource_name == WILDCARD,
        PatternType::Prefixed => name.starts_with(binding.resource_name.as_str()),
    }
}

impl Authorizer {
    /// An authorizer that allows everything (no ACLs configured).
    pub fn disabled() -> Authorizer {
        Authorizer {
            settings: AuthorizerSettings::default(),
            store: None,
            acls: RwLock::new(Acls::unloaded()),
            stats: AuthorizerStats::default(),
        }
    }

    /// An authorizer enforcing the bindings of `store`. Call [`refresh`](Self::refresh) before
    /// serving, and run [`run`](Self::run) to follow changes.
    pub fn new(settings: AuthorizerSettings, store: Arc<dyn AclStore>) -> Authorizer {
        Authorizer {
            settings,
            store: Some(store),
            acls: RwLock::new(Acls::unloaded()),
            stats: AuthorizerStats::default(),
        }
    }

    /// Whether ACLs are enforced.
    pub fn enabled(&self) -> bool {
        self.settings.enabled && self.store.is_some()
    }

    /// The settings.
    pub fn settings(&self) -> &AuthorizerSettings {
        &self.settings
    }

    /// Whether `session` may perform `action`; a denial is logged and counted.
    pub fn authorize(&self, session: &Session, action: Action<'_>) -> bool {
        let allowed = self.decide(session, action);
        if !allowed {
            self.stats.denied.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                target: "fjord::audit",
                event = "authorization_denied",
                principal = %session.principal,
                source = %session.peer.map(|p| p.ip().to_string()).unwrap_or_default(),
                operation = ?action.operation,
                resource_type = action.resource_type.name(),
                resource = action.name,
                "denied"
            );
        }
        allowed
    }

    /// [`authorize`](Self::authorize) without logging a denial: for listings that leave out
    /// what the principal may not see (Metadata of all topics, ListGroups).
    pub fn can(&self, session: &Session, action: Action<'_>) -> bool {
        self.decide(session, action)
    }

    /// Whether `session` may perform `operation` on some resource of `resource_type` (Kafka's
    /// `authorizeByResourceType`, used by InitProducerId for idempotent producers): an ALLOW
    /// for the principal on any resource of the type, unless a DENY on all of them (`*` or an
    /// empty prefix) applies.
    pub fn authorize_any(
        &self,
        session: &Session,
        operation: AclOperation,
        resource_type: ResourceType,
    ) -> bool {
        if !self.enabled() || self.is_super(session) {
            return true;
        }
        let acls = self.acls.read().clone();
        let Some(bindings) = acls.by_type.get(&resource_type) else {
            return self.settings.allow_everyone_if_no_acl_found;
        };
        let ip = session.peer.map(|p| p.ip());
        let applies = |b: &&AclBinding| applies_to(b, session, ip);
        let denied_all = bindings.iter().filter(applies).any(|b| {
            b.permission == AclPermission::Deny
                && (b.operation == operation || b.operation == AclOperation::All)
                && ((b.pattern_type == PatternType::Literal && b.resource_name == WILDCARD)
                    || (b.pattern_type == PatternType::Prefixed && b.resource_name.is_empty()))
        });
        !denied_all
            && bindings
                .iter()
                .filter(applies)
                .any(|b| b.permission == AclPermission::Allow && implies(b.operation, operation))
    }

    fn is_super(&self, session: &Session) -> bool {
        let principal = session.principal.to_string();
        self.settings.super_users.contains(&principal)
    }

    fn decide(&self, session: &Session, action: Action<'_>) -> bool {
        if !self.enabled() || self.is_super(session) {
            return true;
        }
        let acls = self.acls.read().clone();
        let Some(bindings) = acls.by_type.get(&action.resource_type) else {
            return self.settings.allow_everyone_if_no_acl_found;
        };
        let mut named = false;
        let mut allowed = false;
        let ip = session.peer.map(|p| p.ip());
        for b in bindings.iter().filter(|b| names(b, action.name)) {
            named = true;
            if !applies_to(b, session, ip) {
                continue;
            }
            match b.permission {
                AclPermission::Deny => {
                    if b.operation == action.operation || b.operation == AclOperation::All {
                        return false;
                    }
                }
                AclPermission::Allow => allowed |= implies(b.operation, action.operation),
            }
        }
        allowed || (!named && self.settings.allow_everyone_if_no_acl_found)
    }

    /// Reloads the bindings if the store's version changed.
    pub async fn refresh(&self) -> fjord_coordinator::Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let version = store.acl_version().await?;
        if self.acls.read().version == Some(version) {
            return Ok(());
        }
        let snapshot = store.acls().await?;
        let mut by_type: HashMap<ResourceType, Vec<AclBinding>> = HashMap::new();
        for b in snapshot.bindings {
            by_type.entry(b.resource_type).or_default().push(b);
        }
        let count: usize = by_type.values().map(Vec::len).sum();
        *self.acls.write() = Arc::new(Acls {
            version: Some(snapshot.version),
            by_type,
        });
        self.stats.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(version = snapshot.version, bindings = count, "ACLs loaded");
        Ok(())
    }

    /// Follows the store's ACL changes until `cancel` (the `acl-refresh` duty).
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        if !self.enabled() {
            return;
        }
        // A failed reload keeps the previous ACLs in force.
        crate::duty::every(
            "acl-refresh",
            self.settings.refresh_interval,
            cancel,
            &self.stats.reload_errors,
            || self.refresh(),
        )
        .await;
    }
}

fn applies_to(b: &AclBinding, session: &Session, ip: Option<IpAddr>) -> bool {
    let principal_matches = b.principal == format!("{}:{}", session.principal.kind, WILDCARD)
        || (b.principal.split_once(':')
            == Some((
                session.principal.kind.as_str(),
                session.principal.name.as_str(),
            )));
    let host_matches = b.host == WILDCARD || ip.is_some_and(|ip| b.host == ip.to_string());
    principal_matches && host_matches
}

#[cfg(test)]
mod tests;

/// Shorthands for handlers: whether `session` may perform `operation` on a named topic or group,
/// or on the cluster.
impl Authorizer {
    /// On topic `name`.
    pub fn topic(&self, session: &Session, operation: AclOperation, name: &str) -> bool {
        self.authorize(
            session,
            Action {
                operation,
                resource_type: ResourceType::Topic,
                name,
            },
        )
    }

    /// On group `name`.
    pub fn group(&self, session: &Session, operation: AclOperation, name: &str) -> bool {
        self.authorize(
            session,
            Action {
                operation,
                resource_type: ResourceType::Group,
                name,
            },
        )
    }

    /// On the cluster.
    pub fn cluster(&self, session: &Session, operation: AclOperation) -> bool {
        self.authorize(
            session,
            Action {
                operation,
                resource_type: ResourceType::Cluster,
                name: fjord_coordinator::security::CLUSTER_RESOURCE,
            },
        )
    }

    /// Whether `session` may create topic `name`: CREATE on the cluster or on the topic (as in
    /// Kafka). Not logged as a denial on its own: the caller answers for the topic.
    pub fn may_create_topic(&self, session: &Session, name: &str) -> bool {
        let on = |resource_type, name| Action {
            operation: AclOperation::Create,
            resource_type,
            name,
        };
        self.can(
            session,
            on(
                ResourceType::Cluster,
                fjord_coordinator::security::CLUSTER_RESOURCE,
            ),
        ) || self.can(session, on(ResourceType::Topic, name))
    }
}
