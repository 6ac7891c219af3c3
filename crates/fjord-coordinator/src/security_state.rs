//! The security part of the embedded coordinator's [`State`](crate::state::State): SCRAM
//! credentials and ACL bindings, with the decisions and the journal entries that change them.
//!
//! Like the rest of the state it is a deterministic state machine: the `decide_*` methods only
//! read, the writer journals the [`SecurityEntry`] they return, and [`SecurityState::apply`]
//! applies it. Entries carry only concrete effects (the credential stored, the bindings actually
//! added or removed), so replaying a journal yields the same state, `acl_version` included.
//!
//! Invariants:
//! - [`SecurityState::acl_version`] is bumped by exactly one by every applied entry that adds or
//!   removes at least one binding, and by nothing else; it never goes down.
//! - Snapshots and journals from before security existed decode to an empty [`SecurityState`]
//!   (every field has a serde default).

use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

use crate::security::{
    check_scram_credential, AclBinding, AclFilter, AclSnapshot, ScramCredential,
    ScramCredentialInfo, ScramMechanism, ScramUser,
};
use crate::{CoordinatorError, Result};

/// SCRAM credentials and ACLs. Persistent maps, so a clone of the state stays O(1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityState {
    /// Credentials by (user, mechanism) (serialized as a list: JSON keys must be strings).
    #[serde(default, with = "credentials_as_list")]
    pub credentials: OrdMap<(String, ScramMechanism), ScramCredential>,
    /// Every ACL binding, sorted.
    #[serde(default)]
    pub acls: OrdSet<AclBinding>,
    /// Bumped by every change of [`acls`](Self::acls).
    #[serde(default)]
    pub acl_version: i64,
}

/// One decided change of the [`SecurityState`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecurityEntry {
    /// A credential was created or replaced.
    UpsertCredential {
        /// The user.
        user: String,
        /// The credential (its mechanism is part of it).
        credential: ScramCredential,
    },
    /// A credential was deleted.
    DeleteCredential {
        /// The user.
        user: String,
        /// The mechanism.
        mechanism: ScramMechanism,
    },
    /// Bindings were added (only ones that were not present, at least one).
    CreateAcls(Vec<AclBinding>),
    /// Bindings were removed (only ones that were present, at least one).
    DeleteAcls(Vec<AclBinding>),
}

impl SecurityState {
    /// Applies a decided entry.
    pub fn apply(&mut self, entry: &SecurityEntry) {
        match entry {
            SecurityEntry::UpsertCredential { user, credential } => {
                self.credentials
                    .insert((user.clone(), credential.mechanism), credential.clone());
            }
            SecurityEntry::DeleteCredential { user, mechanism } => {
                self.credentials.remove(&(user.clone(), *mechanism));
            }
            SecurityEntry::CreateAcls(bindings) => {
                let mut changed = false;
                for b in bindings {
                    changed |= self.acls.insert(b.clone()).is_none();
                }
                if changed {
                    self.acl_version += 1;
                }
            }
            SecurityEntry::DeleteAcls(bindings) => {
                let mut changed = false;
                for b in bindings {
                    changed |= self.acls.remove(b).is_some();
                }
                if changed {
                    self.acl_version += 1;
                }
            }
        }
    }

    /// The entry storing `credential` for `user`; `None` if the same one is stored already.
    pub fn decide_upsert_credential(
        &self,
        user: &str,
        credential: ScramCredential,
    ) -> Result<Option<SecurityEntry>> {
        check_scram_credential(user, &credential).map_err(CoordinatorError::Invalid)?;
        let key = (user.to_string(), credential.mechanism);
        if self.credentials.get(&key) == Some(&credential) {
            return Ok(None);
        }
        Ok(Some(SecurityEntry::UpsertCredential {
            user: key.0,
            credential,
        }))
    }

    /// The entry deleting `user`'s credential for `mechanism`; `None` if there is none.
    pub fn decide_delete_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Option<SecurityEntry> {
        let key = (user.to_string(), mechanism);
        self.credentials
            .contains_key(&key)
            .then_some(SecurityEntry::DeleteCredential {
                user: key.0,
                mechanism,
            })
    }

    /// `user`'s credential for `mechanism`.
    pub fn credential(&self, user: &str, mechanism: ScramMechanism) -> Option<ScramCredential> {
        self.credentials
            .get(&(user.to_string(), mechanism))
            .cloned()
    }

    /// Every user with a credential, sorted by name, mechanisms sorted.
    pub fn scram_users(&self) -> Vec<ScramUser> {
        let mut users: Vec<ScramUser> = Vec::new();
        // The map is sorted by (user, mechanism).
        for ((user, _), credential) in &self.credentials {
            let info = ScramCredentialInfo {
                mechanism: credential.mechanism,
                iterations: credential.iterations,
            };
            match users.last_mut() {
                Some(last) if last.user == *user => last.credentials.push(info),
                _ => users.push(ScramUser {
                    user: user.clone(),
                    credentials: vec![info],
                }),
            }
        }
        users
    }

    /// The entry adding those of `bindings` not present yet; `None` if all are. `Invalid` if any
    /// fails [`AclBinding::check`].
    pub fn decide_create_acls(&self, bindings: Vec<AclBinding>) -> Result<Option<SecurityEntry>> {
        check_bindings(&bindings)?;
        let mut new: Vec<AclBinding> = bindings
            .into_iter()
            .filter(|b| !self.acls.contains(b))
            .collect();
        new.sort();
        new.dedup();
        Ok((!new.is_empty()).then_some(SecurityEntry::CreateAcls(new)))
    }

    /// For each filter the bindings it matches (sorted), and the entry removing them all (`None`
    /// if none matched).
    pub fn decide_delete_acls(
        &self,
        filters: &[AclFilter],
    ) -> (Vec<Vec<AclBinding>>, Option<SecurityEntry>) {
        let matched = match_filters(self.acls.iter(), filters);
        let mut removed: Vec<AclBinding> = matched.iter().flatten().cloned().collect();
        removed.sort();
        removed.dedup();
        let entry = (!removed.is_empty()).then_some(SecurityEntry::DeleteAcls(removed));
        (matched, entry)
    }

    /// Every binding, with the version.
    pub fn acl_snapshot(&self) -> AclSnapshot {
        AclSnapshot {
            version: self.acl_version,
            bindings: self.acls.iter().cloned().collect(),
        }
    }
}

/// `Invalid` with the first reason [`AclBinding::check`] gives for any of `bindings`.
pub fn check_bindings(bindings: &[AclBinding]) -> Result<()> {
    for b in bindings {
        b.check()
            .map_err(|reason| CoordinatorError::Invalid(format!("ACL binding {b:?}: {reason}")))?;
    }
    Ok(())
}

/// For each filter, the bindings of `bindings` it matches, in the order given.
pub fn match_filters<'a>(
    bindings: impl Iterator<Item = &'a AclBinding> + Clone,
    filters: &[AclFilter],
) -> Vec<Vec<AclBinding>> {
    filters
        .iter()
        .map(|f| bindings.clone().filter(|b| f.matches(b)).cloned().collect())
        .collect()
}

mod credentials_as_list {
    use imbl::OrdMap;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::security::{ScramCredential, ScramMechanism};

    pub fn serialize<S: Serializer>(
        map: &OrdMap<(String, ScramMechanism), ScramCredential>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let list: Vec<(&String, &ScramCredential)> =
            map.iter().map(|((user, _), c)| (user, c)).collect();
        list.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<OrdMap<(String, ScramMechanism), ScramCredential>, D::Error> {
        let list: Vec<(String, ScramCredential)> = Vec::deserialize(deserializer)?;
        Ok(list
            .into_iter()
            .map(|(user, c)| ((user, c.mechanism), c))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::*;
    use crate::state::{Entry, State};

    fn binding(name: &str) -> AclBinding {
        AclBinding {
            resource_type: ResourceType::Topic,
            resource_name: name.into(),
            pattern_type: PatternType::Literal,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: AclOperation::Read,
            permission: AclPermission::Allow,
        }
    }

    fn credential() -> ScramCredential {
        ScramCredential {
            mechanism: ScramMechanism::Sha256,
            iterations: 4096,
            salt: vec![1; 16],
            stored_key: vec![2; 32],
            server_key: vec![3; 32],
        }
    }

    /// A snapshot's state from before security existed decodes with an empty security state;
    /// one with security round-trips.
    #[test]
    fn old_snapshots_decode_and_new_ones_round_trip() {
        let mut old = serde_json::to_value(State::default()).unwrap();
        old.as_object_mut().unwrap().remove("security");
        let state: State = serde_json::from_value(old).unwrap();
        assert_eq!(state.security, SecurityState::default());

        let mut state = State::default();
        state.apply(&Entry::Security(SecurityEntry::UpsertCredential {
            user: "alice".into(),
            credential: credential(),
        }));
        state.apply(&Entry::Security(SecurityEntry::CreateAcls(vec![
            binding("a"),
            binding("b"),
        ])));
        let json = serde_json::to_string(&state).unwrap();
        let back: State = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        assert_eq!(back.security.acl_version, 1);
        assert_eq!(
            back.security.credential("alice", ScramMechanism::Sha256),
            Some(credential())
        );
    }

    /// Replaying entries is deterministic, and the version moves only on effective changes.
    #[test]
    fn apply_bumps_the_version_only_on_change() {
        let mut s = SecurityState::default();
        s.apply(&SecurityEntry::CreateAcls(vec![binding("a")]));
        s.apply(&SecurityEntry::CreateAcls(vec![binding("a")]));
        assert_eq!(s.acl_version, 1);
        s.apply(&SecurityEntry::DeleteAcls(vec![binding("x")]));
        assert_eq!(s.acl_version, 1);
        s.apply(&SecurityEntry::DeleteAcls(vec![binding("a")]));
        assert_eq!(s.acl_version, 2);
        assert!(s.acls.is_empty());
        assert_eq!(s.decide_create_acls(vec![]).unwrap(), None);
    }
}
