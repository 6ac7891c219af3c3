//! Security metadata: SCRAM credentials ([`CredentialStore`]) and Kafka ACLs ([`AclStore`]).
//!
//! Both live in the coordinator so that every broker of a cluster authenticates and authorizes
//! alike. The types here are plain data with Kafka's wire codes; the rules that are the same for
//! every backend (which bindings are valid, which a filter matches) are functions here, so each
//! implementation only stores and fetches.
//!
//! Invariants every implementation keeps:
//! - A SCRAM credential is stored as Kafka stores it (salt, iterations, StoredKey, ServerKey):
//!   never a password or a salted password. One credential per (user, mechanism).
//! - An ACL binding is stored at most once: creating an existing binding changes nothing.
//! - [`AclStore::acl_version`] changes whenever the set of bindings changes and never goes back,
//!   so a broker that cached the bindings of one version knows when to reload.
//! - Deleting by filters is atomic: the bindings reported deleted are exactly those removed.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::Result;

/// A SCRAM mechanism (Kafka's `ScramMechanism` codes: 1 and 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ScramMechanism {
    /// SCRAM-SHA-256.
    Sha256,
    /// SCRAM-SHA-512.
    Sha512,
}

impl ScramMechanism {
    /// Both mechanisms.
    pub const ALL: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

    /// Kafka's code for the mechanism.
    pub fn code(self) -> i8 {
        match self {
            ScramMechanism::Sha256 => 1,
            ScramMechanism::Sha512 => 2,
        }
    }

    /// The mechanism of a Kafka code.
    pub fn from_code(code: i8) -> Option<ScramMechanism> {
        match code {
            1 => Some(ScramMechanism::Sha256),
            2 => Some(ScramMechanism::Sha512),
            _ => None,
        }
    }

    /// The SASL mechanism name (`SCRAM-SHA-256`).
    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// The mechanism of a SASL mechanism name (case-insensitive).
    pub fn from_name(name: &str) -> Option<ScramMechanism> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for ScramMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One user's SCRAM credential for one mechanism (RFC 5802): what the server needs to verify a
/// client proof and to prove itself, and nothing from which the password can be computed
/// without brute force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    /// The mechanism.
    pub mechanism: ScramMechanism,
    /// PBKDF2 iterations.
    pub iterations: i32,
    /// The salt.
    pub salt: Vec<u8>,
    /// H(HMAC(SaltedPassword, "Client Key")).
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: Vec<u8>,
}

/// The smallest iteration count accepted (Kafka's minimum for SCRAM).
pub const MIN_SCRAM_ITERATIONS: i32 = 4096;
/// The largest iteration count accepted (Kafka's maximum).
pub const MAX_SCRAM_ITERATIONS: i32 = 16384;

/// What DescribeUserScramCredentials shows of a credential: its mechanism and iterations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramCredentialInfo {
    /// The mechanism.
    pub mechanism: ScramMechanism,
    /// PBKDF2 iterations.
    pub iterations: i32,
}

/// A user's credentials as described (sorted by mechanism).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramUser {
    /// The user name.
    pub user: String,
    /// One entry per mechanism the user has a credential for.
    pub credentials: Vec<ScramCredentialInfo>,
}

/// Checks a credential before it is stored: a non-empty user name, iterations within Kafka's
/// bounds, a non-empty salt and keys of the mechanism's hash length.
pub fn check_scram_credential(
    user: &str,
    credential: &ScramCredential,
) -> std::result::Result<(), String> {
    if user.is_empty() {
        return Err("the user name is empty".into());
    }
    if user.contains('\0') {
        return Err("the user name contains a NUL character".into());
    }
    if !(MIN_SCRAM_ITERATIONS..=MAX_SCRAM_ITERATIONS).contains(&credential.iterations) {
        return Err(format!(
            "{} iterations: must be from {MIN_SCRAM_ITERATIONS} to {MAX_SCRAM_ITERATIONS}",
            credential.iterations
        ));
    }
    if credential.salt.is_empty() {
        return Err("the salt is empty".into());
    }
    let len = match credential.mechanism {
        ScramMechanism::Sha256 => 32,
        ScramMechanism::Sha512 => 64,
    };
    if credential.stored_key.len() != len || credential.server_key.len() != len {
        return Err(format!("{} keys must be {len} bytes", credential.mechanism));
    }
    Ok(())
}

/// SCRAM credentials, by user and mechanism.
#[async_trait]
pub trait CredentialStore: Send + Sync {
    /// Creates or replaces `user`'s credential for its mechanism. `Invalid` if
    /// [`check_scram_credential`] refuses it.
    async fn upsert_scram_credential(&self, user: &str, credential: ScramCredential) -> Result<()>;

    /// Deletes `user`'s credential for `mechanism`; `false` if there was none.
    async fn delete_scram_credential(&self, user: &str, mechanism: ScramMechanism) -> Result<bool>;

    /// `user`'s credential for `mechanism`.
    async fn scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Result<Option<ScramCredential>>;

    /// Every user with at least one credential, sorted by name.
    async fn scram_users(&self) -> Result<Vec<ScramUser>>;
}

/// The kind of resource an ACL protects (Kafka's `ResourceType` codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceType {
    /// A topic (2).
    Topic,
    /// A consumer group (3).
    Group,
    /// The cluster (4); its one resource is named `kafka-cluster`.
    Cluster,
    /// A transactional id (5).
    TransactionalId,
}

/// The name of the one cluster resource.
pub const CLUSTER_RESOURCE: &str = "kafka-cluster";
/// The wildcard resource name and principal (`*`, `User:*`).
pub const WILDCARD: &str = "*";

impl ResourceType {
    /// Every resource type.
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Topic,
        ResourceType::Group,
        ResourceType::Cluster,
        ResourceType::TransactionalId,
    ];

    /// Kafka's code.
    pub fn code(self) -> i8 {
        match self {
            ResourceType::Topic => 2,
            ResourceType::Group => 3,
            ResourceType::Cluster => 4,
            ResourceType::TransactionalId => 5,
        }
    }

    /// The type of a Kafka code (`None` for ANY, UNKNOWN and types Fjord does not serve).
    pub fn from_code(code: i8) -> Option<ResourceType> {
        Self::ALL.into_iter().find(|t| t.code() == code)
    }

    /// The name Kafka's tools print (`TOPIC`).
    pub fn name(self) -> &'static str {
        match self {
            ResourceType::Topic => "TOPIC",
            ResourceType::Group => "GROUP",
            ResourceType::Cluster => "CLUSTER",
            ResourceType::TransactionalId => "TRANSACTIONAL_ID",
        }
    }
}

/// How a binding's resource name is matched (Kafka's `PatternType` codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PatternType {
    /// The name exactly, or every name when it is `*` (3).
    Literal,
    /// Every name that starts with it (4).
    Prefixed,
}

impl PatternType {
    /// Kafka's code.
    pub fn code(self) -> i8 {
        match self {
            PatternType::Literal => 3,
            PatternType::Prefixed => 4,
        }
    }

    /// The pattern type of a Kafka code (`None` for ANY, MATCH, UNKNOWN).
    pub fn from_code(code: i8) -> Option<PatternType> {
        match code {
            3 => Some(PatternType::Literal),
            4 => Some(PatternType::Prefixed),
            _ => None,
        }
    }
}

/// What an ACL allows or denies (Kafka's `AclOperation` codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AclOperation {
    /// Every operation (2).
    All,
    /// 3.
    Read,
    /// 4.
    Write,
    /// 5.
    Create,
    /// 6.
    Delete,
    /// 7.
    Alter,
    /// 8.
    Describe,
    /// 9.
    ClusterAction,
    /// 10.
    DescribeConfigs,
    /// 11.
    AlterConfigs,
    /// 12.
    IdempotentWrite,
}

impl AclOperation {
    /// Every operation.
    pub const ALL: [AclOperation; 11] = [
        AclOperation::All,
        AclOperation::Read,
        AclOperation::Write,
        AclOperation::Create,
        AclOperation::Delete,
        AclOperation::Alter,
        AclOperation::Describe,
        AclOperation::ClusterAction,
        AclOperation::DescribeConfigs,
        AclOperation::AlterConfigs,
        AclOperation::IdempotentWrite,
    ];

    /// Kafka's code.
    pub fn code(self) -> i8 {
        match self {
            AclOperation::All => 2,
            AclOperation::Read => 3,
            AclOperation::Write => 4,
            AclOperation::Create => 5,
            AclOperation::Delete => 6,
            AclOperation::Alter => 7,
            AclOperation::Describe => 8,
            AclOperation::ClusterAction => 9,
            AclOperation::DescribeConfigs => 10,
            AclOperation::AlterConfigs => 11,
            AclOperation::IdempotentWrite => 12,
        }
    }

    /// The operation of a Kafka code (`None` for ANY, UNKNOWN and token operations).
    pub fn from_code(code: i8) -> Option<AclOperation> {
        Self::ALL.into_iter().find(|o| o.code() == code)
    }
}

/// Whether a binding allows or denies (Kafka's `AclPermissionType` codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AclPermission {
    /// 2.
    Deny,
    /// 3.
    Allow,
}

impl AclPermission {
    /// Kafka's code.
    pub fn code(self) -> i8 {
        match self {
            AclPermission::Deny => 2,
            AclPermission::Allow => 3,
        }
    }

    /// The permission of a Kafka code (`None` for ANY and UNKNOWN).
    pub fn from_code(code: i8) -> Option<AclPermission> {
        match code {
            2 => Some(AclPermission::Deny),
            3 => Some(AclPermission::Allow),
            _ => None,
        }
    }
}

/// One ACL: `principal` from `host` is allowed or denied `operation` on the resources
/// `(resource_type, resource_name, pattern_type)` names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    /// The resource type.
    pub resource_type: ResourceType,
    /// The resource name (or prefix), `*` for every resource of the type.
    pub resource_name: String,
    /// How the name is matched.
    pub pattern_type: PatternType,
    /// `User:alice`, or `User:*` for every principal.
    pub principal: String,
    /// The client's IP address, or `*` for any.
    pub host: String,
    /// The operation.
    pub operation: AclOperation,
    /// Allow or deny.
    pub permission: AclPermission,
}

impl AclBinding {
    /// Why Kafka would refuse to create this binding, if it would.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.resource_name.is_empty() {
            return Err("the resource name is empty".into());
        }
        if [&self.resource_name, &self.principal, &self.host]
            .iter()
            .any(|s| s.contains('\0'))
        {
            return Err("names, principals and hosts must not contain NUL characters".into());
        }
        if self.resource_type == ResourceType::Cluster && self.resource_name != CLUSTER_RESOURCE {
            return Err(format!(
                "the cluster resource is named {CLUSTER_RESOURCE:?}, not {:?}",
                self.resource_name
            ));
        }
        if self.pattern_type == PatternType::Prefixed && self.resource_name == WILDCARD {
            return Err("a PREFIXED pattern cannot be the wildcard '*'; use LITERAL".into());
        }
        match self.principal.split_once(':') {
            Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {}
            _ => {
                return Err(format!(
                    "principal {:?} is not of the form Type:name (e.g. User:alice)",
                    self.principal
                ))
            }
        }
        if self.host.is_empty() {
            return Err("the host is empty (use '*' for any host)".into());
        }
        Ok(())
    }
}

/// Which patterns a filter matches (Kafka's pattern type filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternFilter {
    /// Bindings of any pattern type whose name equals the filter's (ANY, 1).
    Any,
    /// Bindings that would apply to the filter's name: literal equal, literal `*`, or a prefix
    /// of it (MATCH, 2).
    Match,
    /// Bindings of this pattern type whose name equals the filter's.
    Exactly(PatternType),
}

/// A filter over bindings, as DescribeAcls and DeleteAcls take it: `None` matches anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclFilter {
    /// The resource type, or any.
    pub resource_type: Option<ResourceType>,
    /// The resource name, or any.
    pub resource_name: Option<String>,
    /// How names are compared.
    pub pattern: PatternFilter,
    /// The principal, or any.
    pub principal: Option<String>,
    /// The host, or any.
    pub host: Option<String>,
    /// The operation, or any.
    pub operation: Option<AclOperation>,
    /// The permission, or any.
    pub permission: Option<AclPermission>,
}

impl AclFilter {
    /// A filter matching every binding.
    pub fn any() -> AclFilter {
        AclFilter {
            resource_type: None,
            resource_name: None,
            pattern: PatternFilter::Any,
            principal: None,
            host: None,
            operation: None,
            permission: None,
        }
    }

    /// Whether `binding` passes the filter (Kafka's `AclBindingFilter.matches`).
    pub fn matches(&self, binding: &AclBinding) -> bool {
        fn eq<T: PartialEq>(want: &Option<T>, have: &T) -> bool {
            want.as_ref().is_none_or(|w| w == have)
        }
        eq(&self.resource_type, &binding.resource_type)
            && self.matches_name(binding)
            && self
                .principal
                .as_deref()
                .is_none_or(|p| p == binding.principal)
            && self.host.as_deref().is_none_or(|h| h == binding.host)
            && eq(&self.operation, &binding.operation)
            && eq(&self.permission, &binding.permission)
    }

    fn matches_name(&self, binding: &AclBinding) -> bool {
        let name = &binding.resource_name;
        match (self.pattern, self.resource_name.as_deref()) {
            (PatternFilter::Any, None) => true,
            (PatternFilter::Any, Some(want)) => want == name,
            (PatternFilter::Exactly(t), want) => {
                t == binding.pattern_type && want.is_none_or(|w| w == name)
            }
            (PatternFilter::Match, None) => true,
            (PatternFilter::Match, Some(want)) => match binding.pattern_type {
                PatternType::Literal => name == want || name == WILDCARD,
                PatternType::Prefixed => want.starts_with(name.as_str()),
            },
        }
    }
}

/// Every binding, and the version they are as of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclSnapshot {
    /// [`AclStore::acl_version`] when read.
    pub version: i64,
    /// The bindings, sorted.
    pub bindings: Vec<AclBinding>,
}

/// Kafka ACLs.
#[async_trait]
pub trait AclStore: Send + Sync {
    /// Adds bindings; those already present are left as they are. `Invalid` (and nothing added)
    /// if any binding fails [`AclBinding::check`].
    async fn create_acls(&self, bindings: Vec<AclBinding>) -> Result<()>;

    /// Removes every binding that matches any of `filters`, atomically; returns for each filter
    /// the bindings it matched (a binding matched by two filters is listed under both).
    async fn delete_acls(&self, filters: Vec<AclFilter>) -> Result<Vec<Vec<AclBinding>>>;

    /// Every binding, with the version.
    async fn acls(&self) -> Result<AclSnapshot>;

    /// The current version: cheap, for brokers polling for changes.
    async fn acl_version(&self) -> Result<i64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(name: &str, pattern_type: PatternType) -> AclBinding {
        AclBinding {
            resource_type: ResourceType::Topic,
            resource_name: name.into(),
            pattern_type,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: AclOperation::Write,
            permission: AclPermission::Allow,
        }
    }

    #[test]
    fn codes_round_trip() {
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::from_code(t.code()), Some(t));
        }
        for o in AclOperation::ALL {
            assert_eq!(AclOperation::from_code(o.code()), Some(o));
        }
        for m in ScramMechanism::ALL {
            assert_eq!(ScramMechanism::from_code(m.code()), Some(m));
            assert_eq!(ScramMechanism::from_name(&m.name().to_lowercase()), Some(m));
        }
        assert_eq!(ResourceType::from_code(1), None);
        assert_eq!(AclOperation::from_code(1), None);
        assert_eq!(PatternType::from_code(2), None);
        assert_eq!(AclPermission::from_code(1), None);
    }

    #[test]
    fn match_filters_find_the_bindings_that_apply_to_a_name() {
        let literal = binding("orders", PatternType::Literal);
        let wildcard = binding("*", PatternType::Literal);
        let prefix = binding("ord", PatternType::Prefixed);
        let other = binding("payments", PatternType::Literal);
        let filter = AclFilter {
            resource_name: Some("orders".into()),
            pattern: PatternFilter::Match,
            ..AclFilter::any()
        };
        for b in [&literal, &wildcard, &prefix] {
            assert!(filter.matches(b), "{b:?}");
        }
        assert!(!filter.matches(&other));
        let exact = AclFilter {
            resource_name: Some("ord".into()),
            pattern: PatternFilter::Exactly(PatternType::Prefixed),
            ..AclFilter::any()
        };
        assert!(exact.matches(&prefix) && !exact.matches(&literal));
        let any_named = AclFilter {
            resource_name: Some("ord".into()),
            ..AclFilter::any()
        };
        assert!(any_named.matches(&prefix) && !any_named.matches(&literal));
        let by_principal = AclFilter {
            principal: Some("User:bob".into()),
            ..AclFilter::any()
        };
        assert!(!by_principal.matches(&literal));
        assert!(AclFilter::any().matches(&other));
    }

    #[test]
    fn bindings_kafka_refuses_are_refused() {
        assert!(binding("orders", PatternType::Literal).check().is_ok());
        assert!(binding("*", PatternType::Prefixed).check().is_err());
        assert!(binding("", PatternType::Literal).check().is_err());
        assert!(binding("a\0", PatternType::Literal).check().is_err());
        let mut b = binding("x", PatternType::Literal);
        b.principal = "alice".into();
        assert!(b.check().is_err());
        let mut b = binding("x", PatternType::Literal);
        b.resource_type = ResourceType::Cluster;
        assert!(b.check().is_err());
        b.resource_name = CLUSTER_RESOURCE.into();
        assert!(b.check().is_ok());
    }

    #[test]
    fn credentials_are_checked_before_they_are_stored() {
        let good = ScramCredential {
            mechanism: ScramMechanism::Sha256,
            iterations: 4096,
            salt: vec![1; 16],
            stored_key: vec![2; 32],
            server_key: vec![3; 32],
        };
        assert!(check_scram_credential("alice", &good).is_ok());
        assert!(check_scram_credential("", &good).is_err());
        assert!(check_scram_credential("a\0b", &good).is_err());
        let mut c = good.clone();
        c.iterations = 100;
        assert!(check_scram_credential("alice", &c).is_err());
        let mut c = good.clone();
        c.mechanism = ScramMechanism::Sha512;
        assert!(check_scram_credential("alice", &c).is_err());
        let mut c = good;
        c.salt.clear();
        assert!(check_scram_credential("alice", &c).is_err());
    }
}
