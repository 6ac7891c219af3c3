//! Consumer groups: the stored blob and offsets ([`GroupState`]), their fences (blob versions),
//! and the checks of group ids, blobs and offsets.

use super::*;

/// The offset a group committed for one partition (its topic and partition are the map keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOffset {
    /// The committed offset.
    pub offset: i64,
    /// Leader epoch, -1 when unknown.
    pub leader_epoch: i32,
    /// The client's metadata string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// Commit time (ms).
    pub commit_timestamp_ms: i64,
}

/// One consumer group: present in [`State::groups`] only while it has a blob or an offset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// The broker's metadata blob (hex in JSON).
    #[serde(
        default,
        with = "hex_bytes_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub state: Option<Vec<u8>>,
    /// The blob's version (0 while there is none; see [`crate::GroupStore`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: i64,
    /// When the blob was last saved (ms; 0 when unknown: saved before this was recorded).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub saved_ms: i64,
    /// Committed offsets by topic name, then partition (never an empty inner map).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub offsets: BTreeMap<String, BTreeMap<i32, StoredOffset>>,
}

impl GroupState {
    fn is_empty(&self) -> bool {
        self.state.is_none() && self.offsets.is_empty()
    }

    /// The group's offsets, sorted by (topic, partition).
    pub fn committed_offsets(&self) -> Vec<CommittedOffset> {
        self.offsets
            .iter()
            .flat_map(|(topic, partitions)| {
                partitions
                    .iter()
                    .map(move |(partition, o)| CommittedOffset {
                        topic: topic.clone(),
                        partition: *partition,
                        offset: o.offset,
                        leader_epoch: o.leader_epoch,
                        metadata: o.metadata.clone(),
                        commit_timestamp_ms: o.commit_timestamp_ms,
                    })
            })
            .collect()
    }
}

/// Longest group id accepted, in bytes.
pub const MAX_GROUP_ID_BYTES: usize = 32 * 1024;

/// Largest group metadata blob accepted, in bytes. Far above what a real group needs; it keeps a
/// journal entry of the embedded coordinator (the blob in hex) well under its frame limit.
pub const MAX_GROUP_STATE_BYTES: usize = 16 << 20;

/// Longest topic name accepted in a committed offset, in bytes (Kafka's topic name limit).
pub const MAX_OFFSET_TOPIC_BYTES: usize = 249;

/// Checks a consumer group id: any string of 1 to [`MAX_GROUP_ID_BYTES`] bytes.
pub fn check_group_id(group: &str) -> Result<()> {
    if group.is_empty() {
        return Err(CoordinatorError::Invalid("group id is empty".into()));
    }
    if group.len() > MAX_GROUP_ID_BYTES {
        return Err(CoordinatorError::Invalid(format!(
            "group id is {} bytes, at most {MAX_GROUP_ID_BYTES} allowed",
            group.len()
        )));
    }
    Ok(())
}

/// Checks a conditional group write: the group's blob version must be `expected`.
pub fn check_group_version(group: &str, expected: i64, current: i64) -> Result<()> {
    if expected == current {
        return Ok(());
    }
    Err(group_fenced(group, expected, current))
}

/// The error for a group write whose expected version is not the stored one.
pub fn group_fenced(group: &str, expected: i64, current: i64) -> CoordinatorError {
    CoordinatorError::Fenced(format!(
        "group '{group}' is at version {current}, the write expected {expected}: another broker \
         wrote it"
    ))
}

/// Checks a group's metadata blob: at most [`MAX_GROUP_STATE_BYTES`] bytes.
pub fn check_group_state(state: &[u8]) -> Result<()> {
    if state.len() > MAX_GROUP_STATE_BYTES {
        return Err(CoordinatorError::Invalid(format!(
            "group state is {} bytes, at most {MAX_GROUP_STATE_BYTES} allowed",
            state.len()
        )));
    }
    Ok(())
}

/// Checks the topic names of an offset commit (1 to [`MAX_OFFSET_TOPIC_BYTES`] bytes each) and
/// returns one offset per (topic, partition), sorted: a later entry for the same partition
/// replaces an earlier one, as if they were committed one after the other.
pub fn normalize_offsets(offsets: Vec<CommittedOffset>) -> Result<Vec<CommittedOffset>> {
    let mut by_partition: BTreeMap<(String, i32), CommittedOffset> = BTreeMap::new();
    for o in offsets {
        if o.topic.is_empty() || o.topic.len() > MAX_OFFSET_TOPIC_BYTES {
            return Err(CoordinatorError::Invalid(format!(
                "offset commit for a topic name of {} bytes; 1 to {MAX_OFFSET_TOPIC_BYTES} \
                 allowed",
                o.topic.len()
            )));
        }
        by_partition.insert((o.topic.clone(), o.partition), o);
    }
    Ok(by_partition.into_values().collect())
}

impl State {
    /// The version of a group's blob (0 when it has none).
    pub fn group_version(&self, group: &str) -> i64 {
        self.groups.get(group).map_or(0, |g| g.version)
    }

    fn check_group_fence(&self, group: &str, fence: Option<i64>) -> Result<()> {
        match fence {
            Some(expected) => check_group_version(group, expected, self.group_version(group)),
            None => Ok(()),
        }
    }

    /// Decides an offset commit; `None` when there is nothing to commit.
    pub fn decide_commit_offsets(
        &self,
        group: &str,
        offsets: Vec<CommittedOffset>,
        fence: Option<i64>,
    ) -> Result<Option<Entry>> {
        check_group_id(group)?;
        let offsets = normalize_offsets(offsets)?;
        self.check_group_fence(group, fence)?;
        Ok((!offsets.is_empty()).then(|| Entry::CommitOffsets {
            group: group.to_string(),
            offsets,
        }))
    }

    /// Decides an offset deletion; `None` when none of the partitions has an offset.
    pub fn decide_delete_offsets(
        &self,
        group: &str,
        partitions: Vec<(String, i32)>,
        fence: Option<i64>,
    ) -> Result<Option<Entry>> {
        check_group_id(group)?;
        self.check_group_fence(group, fence)?;
        let Some(stored) = self.groups.get(group) else {
            return Ok(None);
        };
        let mut present: Vec<(String, i32)> = partitions
            .into_iter()
            .filter(|(topic, partition)| {
                stored
                    .offsets
                    .get(topic)
                    .is_some_and(|p| p.contains_key(partition))
            })
            .collect();
        present.sort();
        present.dedup();
        Ok((!present.is_empty()).then(|| Entry::DeleteOffsets {
            group: group.to_string(),
            partitions: present,
        }))
    }

    /// Decides saving a group's blob over version `expected`; the entry and the version the blob
    /// gets.
    pub fn decide_save_group(
        &self,
        group: &str,
        expected: i64,
        state: Vec<u8>,
        at_ms: i64,
    ) -> Result<(Entry, i64)> {
        check_group_id(group)?;
        check_group_state(&state)?;
        check_group_version(group, expected, self.group_version(group))?;
        Ok((
            Entry::SaveGroup {
                group: group.to_string(),
                state,
                at_ms,
            },
            self.group_versions + 1,
        ))
    }

    /// Decides a group deletion; `None` when the group has neither a blob nor offsets.
    pub fn decide_delete_group(&self, group: &str, fence: Option<i64>) -> Result<Option<Entry>> {
        check_group_id(group)?;
        self.check_group_fence(group, fence)?;
        Ok(self.groups.contains_key(group).then(|| Entry::DeleteGroup {
            group: group.to_string(),
        }))
    }

    pub(super) fn drop_group_if_empty(&mut self, group: &str) {
        if self.groups.get(group).is_some_and(GroupState::is_empty) {
            self.groups.remove(group);
        }
    }
}
