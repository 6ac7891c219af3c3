//! Client quotas (Kafka's KIP-13/KIP-55/KIP-546): byte-rate limits per user and client id
//! ([`QuotaStore`]).
//!
//! They live in the coordinator so that every broker of a cluster enforces the same limits. The
//! types here are plain data; the rules that are the same for every backend (which entities,
//! keys and values are valid, what an alteration changes) are functions here
//! ([`alter_entries`]), so each implementation only stores and fetches.
//!
//! Invariants every implementation keeps:
//! - An entity is stored normalized: one or two parts, at most one per entity type, the user
//!   part first ([`normalize_entity`]). A stored entity has at least one value: removing its
//!   last key removes it.
//! - Values are finite and positive; keys are the ones of [`QuotaKey`].
//! - An alteration is validated as a whole before anything is written: on `Invalid` nothing
//!   changed.
//! - [`QuotaStore::quota_version`] changes whenever the stored quotas change and never goes
//!   back, so a broker that cached the quotas of one version knows when to reload.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{CoordinatorError, Result};

/// The kind of a quota entity part (Kafka's entity types; `ip` is not served).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum QuotaEntityType {
    /// `user`: the authenticated principal's name.
    User,
    /// `client-id`: the client id of the request header.
    ClientId,
}

impl QuotaEntityType {
    /// Kafka's name (`user`, `client-id`).
    pub fn name(self) -> &'static str {
        match self {
            QuotaEntityType::User => "user",
            QuotaEntityType::ClientId => "client-id",
        }
    }

    /// The type of a Kafka name.
    pub fn from_name(name: &str) -> Option<QuotaEntityType> {
        match name {
            "user" => Some(QuotaEntityType::User),
            "client-id" => Some(QuotaEntityType::ClientId),
            _ => None,
        }
    }
}

/// One part of a quota entity: a type and a name, or the type's default (`name: None`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QuotaEntityPart {
    /// The entity type.
    pub entity_type: QuotaEntityType,
    /// The name; `None` is the default entity of the type (`<default>`).
    pub name: Option<String>,
}

impl QuotaEntityPart {
    /// A named part.
    pub fn named(entity_type: QuotaEntityType, name: &str) -> QuotaEntityPart {
        QuotaEntityPart {
            entity_type,
            name: Some(name.to_string()),
        }
    }

    /// The default part of a type.
    pub fn default_of(entity_type: QuotaEntityType) -> QuotaEntityPart {
        QuotaEntityPart {
            entity_type,
            name: None,
        }
    }
}

/// A quota entity: normalized parts (see [`normalize_entity`]).
pub type QuotaEntity = Vec<QuotaEntityPart>;

/// A quota key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum QuotaKey {
    /// `producer_byte_rate`: bytes per second produced.
    ProducerByteRate,
    /// `consumer_byte_rate`: bytes per second fetched.
    ConsumerByteRate,
    /// `request_percentage`: percent of one request handler thread's time.
    RequestPercentage,
}

impl QuotaKey {
    /// Every key.
    pub const ALL: [QuotaKey; 3] = [
        QuotaKey::ProducerByteRate,
        QuotaKey::ConsumerByteRate,
        QuotaKey::RequestPercentage,
    ];

    /// Kafka's name.
    pub fn name(self) -> &'static str {
        match self {
            QuotaKey::ProducerByteRate => "producer_byte_rate",
            QuotaKey::ConsumerByteRate => "consumer_byte_rate",
            QuotaKey::RequestPercentage => "request_percentage",
        }
    }

    /// The key of a Kafka name.
    pub fn from_name(name: &str) -> Option<QuotaKey> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// The values of one entity, by key.
pub type QuotaValues = BTreeMap<QuotaKey, f64>;

/// One stored entity and its values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaEntry {
    /// The entity (normalized).
    pub entity: QuotaEntity,
    /// Its values (at least one).
    pub values: QuotaValues,
}

/// One change of a key: set it to `value`, or remove it (`None`).
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaOp {
    /// The key's name (validated by the store).
    pub key: String,
    /// The new value, or `None` to remove the key.
    pub value: Option<f64>,
}

/// The changes of one entity.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaAlteration {
    /// The entity (normalized by the store).
    pub entity: QuotaEntity,
    /// The changes, applied in order.
    pub ops: Vec<QuotaOp>,
}

/// Every stored entry, and the version they are as of.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuotaSnapshot {
    /// [`QuotaStore::quota_version`] when read.
    pub version: i64,
    /// The entries, sorted by entity.
    pub entries: Vec<QuotaEntry>,
}

/// The entity with its parts in canonical order (user first); why it is invalid if it is: no
/// parts, two parts of one type, a name with a NUL character.
pub fn normalize_entity(entity: &[QuotaEntityPart]) -> std::result::Result<QuotaEntity, String> {
    if entity.is_empty() {
        return Err("the quota entity has no parts".into());
    }
    let mut parts = entity.to_vec();
    parts.sort();
    if parts
        .windows(2)
        .any(|w| w[0].entity_type == w[1].entity_type)
    {
        return Err("the quota entity names an entity type twice".into());
    }
    if parts
        .iter()
        .any(|p| p.name.as_deref().is_some_and(|n| n.contains('\0')))
    {
        return Err("quota entity names must not contain NUL characters".into());
    }
    Ok(parts)
}

/// Why `value` is not a valid value of `key`, if it is not: every value must be a finite
/// positive number.
pub fn check_value(key: QuotaKey, value: f64) -> std::result::Result<(), String> {
    if !value.is_finite() || value <= 0.0 {
        return Err(format!(
            "{} must be a positive number, not {value}",
            key.name()
        ));
    }
    Ok(())
}

/// What `alterations` change in `current`: the entities whose values change, each with its
/// new values (empty: the entity is removed), sorted by entity. `Invalid` (and nothing) if any
/// entity, key or value is invalid, or an entity is altered twice.
pub fn alter_entries(
    current: &BTreeMap<QuotaEntity, QuotaValues>,
    alterations: Vec<QuotaAlteration>,
) -> Result<Vec<(QuotaEntity, QuotaValues)>> {
    let mut changed: BTreeMap<QuotaEntity, QuotaValues> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for alteration in alterations {
        let entity = normalize_entity(&alteration.entity).map_err(CoordinatorError::Invalid)?;
        if !seen.insert(entity.clone()) {
            return Err(CoordinatorError::Invalid(format!(
                "quota entity {entity:?} is altered twice in one request"
            )));
        }
        let before = current.get(&entity).cloned().unwrap_or_default();
        let mut values = before.clone();
        for op in alteration.ops {
            let key = QuotaKey::from_name(&op.key).ok_or_else(|| {
                CoordinatorError::Invalid(format!("unknown quota key {:?}", op.key))
            })?;
            match op.value {
                Some(v) => {
                    check_value(key, v).map_err(CoordinatorError::Invalid)?;
                    values.insert(key, v);
                }
                None => {
                    values.remove(&key);
                }
            }
        }
        if values != before {
            changed.insert(entity, values);
        }
    }
    Ok(changed.into_iter().collect())
}

/// Client quotas.
#[async_trait]
pub trait QuotaStore: Send + Sync {
    /// Applies the alterations atomically (see [`alter_entries`]): `Invalid` and nothing
    /// changed if any is invalid. The version rises if anything changed.
    async fn alter_client_quotas(&self, alterations: Vec<QuotaAlteration>) -> Result<()>;

    /// Every entry, with the version.
    async fn client_quotas(&self) -> Result<QuotaSnapshot>;

    /// The current version: cheap, for brokers polling for changes.
    async fn quota_version(&self) -> Result<i64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> QuotaEntityPart {
        QuotaEntityPart::named(QuotaEntityType::User, name)
    }

    fn client(name: &str) -> QuotaEntityPart {
        QuotaEntityPart::named(QuotaEntityType::ClientId, name)
    }

    fn set(entity: QuotaEntity, key: &str, value: Option<f64>) -> QuotaAlteration {
        QuotaAlteration {
            entity,
            ops: vec![QuotaOp {
                key: key.into(),
                value,
            }],
        }
    }

    #[test]
    fn entities_are_normalized_and_checked() {
        assert_eq!(
            normalize_entity(&[client("c"), user("u")]).unwrap(),
            vec![user("u"), client("c")]
        );
        assert!(normalize_entity(&[]).is_err());
        assert!(normalize_entity(&[user("a"), user("b")]).is_err());
        assert!(normalize_entity(&[user("a\0")]).is_err());
        assert!(normalize_entity(&[QuotaEntityPart::default_of(QuotaEntityType::User)]).is_ok());
    }

    #[test]
    fn alterations_set_remove_and_validate() {
        let mut current = BTreeMap::new();
        let changed = alter_entries(
            &current,
            vec![set(vec![user("u")], "producer_byte_rate", Some(100.0))],
        )
        .unwrap();
        assert_eq!(changed.len(), 1);
        current.extend(changed);
        // Setting the same value changes nothing.
        let changed = alter_entries(
            &current,
            vec![set(vec![user("u")], "producer_byte_rate", Some(100.0))],
        )
        .unwrap();
        assert!(changed.is_empty());
        let changed = alter_entries(
            &current,
            vec![set(vec![user("u")], "producer_byte_rate", None)],
        )
        .unwrap();
        assert_eq!(changed, vec![(vec![user("u")], QuotaValues::new())]);
        for bad in [
            set(vec![user("u")], "bogus", Some(1.0)),
            set(vec![user("u")], "producer_byte_rate", Some(0.0)),
            set(vec![user("u")], "producer_byte_rate", Some(-1.0)),
            set(vec![user("u")], "producer_byte_rate", Some(f64::NAN)),
            set(vec![], "producer_byte_rate", Some(1.0)),
        ] {
            let r = alter_entries(&current, vec![bad]);
            assert!(matches!(r, Err(CoordinatorError::Invalid(_))), "{r:?}");
        }
    }
}
