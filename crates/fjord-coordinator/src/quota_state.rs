//! The client-quota part of the embedded coordinator's [`State`](crate::state::State), with the
//! decision and the journal entry that change it.
//!
//! Like the rest of the state it is a deterministic state machine: [`QuotaState::decide_alter`]
//! only reads, the writer journals the [`QuotaChange`] it returns, and [`QuotaState::apply`]
//! applies it. The entry carries only concrete effects (each changed entity with its new
//! values), so replaying a journal yields the same state, `version` included.
//!
//! Invariants:
//! - [`QuotaState::version`] is bumped by exactly one by every applied entry, and entries are
//!   only journaled when they change something; it never goes down.
//! - No stored entity has an empty value map.
//! - Snapshots and journals from before quotas existed decode to an empty [`QuotaState`].

use std::collections::BTreeMap;

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use crate::quotas::{
    alter_entries, QuotaAlteration, QuotaEntity, QuotaEntry, QuotaSnapshot, QuotaValues,
};
use crate::Result;

/// Client quotas. A persistent map, so a clone of the state stays O(1).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QuotaState {
    /// Values by entity (serialized as a list: JSON keys must be strings).
    #[serde(default, with = "entries_as_list")]
    pub entries: OrdMap<QuotaEntity, QuotaValues>,
    /// Bumped by every change of [`entries`](Self::entries).
    #[serde(default)]
    pub version: i64,
}

/// One decided change of the [`QuotaState`]: the changed entities with their new values
/// (empty: removed). Never empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaChange(pub Vec<(QuotaEntity, QuotaValues)>);

impl QuotaState {
    /// Applies a decided entry.
    pub fn apply(&mut self, change: &QuotaChange) {
        for (entity, values) in &change.0 {
            if values.is_empty() {
                self.entries.remove(entity);
            } else {
                self.entries.insert(entity.clone(), values.clone());
            }
        }
        self.version += 1;
    }

    /// The entry making `alterations`; `None` if they change nothing. `Invalid` if any is.
    pub fn decide_alter(&self, alterations: Vec<QuotaAlteration>) -> Result<Option<QuotaChange>> {
        let current: BTreeMap<QuotaEntity, QuotaValues> = alterations
            .iter()
            .filter_map(|a| {
                let entity = crate::quotas::normalize_entity(&a.entity).ok()?;
                let values = self.entries.get(&entity)?.clone();
                Some((entity, values))
            })
            .collect();
        let changed = alter_entries(&current, alterations)?;
        Ok((!changed.is_empty()).then_some(QuotaChange(changed)))
    }

    /// Every entry, with the version.
    pub fn snapshot(&self) -> QuotaSnapshot {
        QuotaSnapshot {
            version: self.version,
            entries: self
                .entries
                .iter()
                .map(|(entity, values)| QuotaEntry {
                    entity: entity.clone(),
                    values: values.clone(),
                })
                .collect(),
        }
    }
}

mod entries_as_list {
    use imbl::OrdMap;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::quotas::{QuotaEntity, QuotaValues};

    pub fn serialize<S: Serializer>(
        map: &OrdMap<QuotaEntity, QuotaValues>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let list: Vec<(&QuotaEntity, Vec<(&crate::quotas::QuotaKey, &f64)>)> = map
            .iter()
            .map(|(entity, values)| (entity, values.iter().collect()))
            .collect();
        list.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<OrdMap<QuotaEntity, QuotaValues>, D::Error> {
        let list: Vec<(QuotaEntity, Vec<(crate::quotas::QuotaKey, f64)>)> =
            Vec::deserialize(deserializer)?;
        Ok(list
            .into_iter()
            .map(|(entity, values)| (entity, values.into_iter().collect::<QuotaValues>()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quotas::*;
    use crate::state::{Entry, State};

    fn alteration(name: &str, value: Option<f64>) -> QuotaAlteration {
        QuotaAlteration {
            entity: vec![QuotaEntityPart::named(QuotaEntityType::User, name)],
            ops: vec![QuotaOp {
                key: "producer_byte_rate".into(),
                value,
            }],
        }
    }

    /// A state from before quotas decodes empty; one with quotas round-trips.
    #[test]
    fn old_snapshots_decode_and_new_ones_round_trip() {
        let mut old = serde_json::to_value(State::default()).unwrap();
        old.as_object_mut().unwrap().remove("quotas");
        let state: State = serde_json::from_value(old).unwrap();
        assert_eq!(state.quotas, QuotaState::default());

        let mut state = State::default();
        let change = state
            .quotas
            .decide_alter(vec![
                alteration("a", Some(10.0)),
                alteration("b", Some(5.0)),
            ])
            .unwrap()
            .unwrap();
        state.apply(&Entry::Quotas(change));
        let json = serde_json::to_string(&state).unwrap();
        let back: State = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        assert_eq!(back.quotas.version, 1);
        assert_eq!(back.quotas.snapshot().entries.len(), 2);
    }

    #[test]
    fn removing_the_last_key_removes_the_entity() {
        let mut s = QuotaState::default();
        let c = s
            .decide_alter(vec![alteration("a", Some(1.0))])
            .unwrap()
            .unwrap();
        s.apply(&c);
        assert_eq!(
            s.decide_alter(vec![alteration("a", Some(1.0))]).unwrap(),
            None
        );
        let c = s
            .decide_alter(vec![alteration("a", None)])
            .unwrap()
            .unwrap();
        s.apply(&c);
        assert!(s.entries.is_empty());
        assert_eq!(s.version, 2);
        assert_eq!(s.decide_alter(vec![alteration("a", None)]).unwrap(), None);
    }
}
