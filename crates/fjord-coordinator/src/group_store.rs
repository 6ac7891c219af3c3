//! Consumer groups in the store: committed offsets and each group's metadata blob.

use async_trait::async_trait;

use crate::model::{CommittedOffset, StoredGroup};
use crate::Result;

/// The durable state of consumer groups.
///
/// A group id is any string of 1 to 32 KiB ([`crate::state::MAX_GROUP_ID_BYTES`]); every call
/// refuses another with [`CoordinatorError::Invalid`](crate::CoordinatorError::Invalid). A group
/// exists while it has a saved blob or at least one committed offset. Offsets are keyed by topic
/// *name* and outlive the topic's deletion.
///
/// Fencing. A group's blob carries a *version*: 0 while no blob is stored, and a fresh number on
/// every save, never used before by any group (so a group deleted and created again never
/// repeats a version). A broker that coordinates a group saves it by compare-and-set on the
/// version it last read or wrote ([`save_group`](Self::save_group)), and makes offset commits
/// conditional on that version ([`commit_offsets`](Self::commit_offsets)'s `fence`). A broker
/// whose view of a group is stale (another broker coordinated it meanwhile) is refused with
/// [`CoordinatorError::Fenced`](crate::CoordinatorError::Fenced) instead of overwriting newer
/// state: two brokers that both believe they coordinate a group cannot both hand out its next
/// generation, and an offset validated under one generation cannot land after the next one was
/// written.
#[async_trait]
pub trait GroupStore: Send + Sync {
    /// Stores offsets for a group (upsert per (topic, partition)); all or nothing. When one
    /// partition appears more than once, the last one wins. An empty `offsets` is a no-op (after
    /// the fence check). Topic names must be 1 to 249 bytes
    /// ([`crate::state::MAX_OFFSET_TOPIC_BYTES`]), else the whole commit is `Invalid`. With
    /// `fence: Some(v)` nothing is written unless the group's blob version is `v` (0: no blob):
    /// otherwise [`CoordinatorError::Fenced`](crate::CoordinatorError::Fenced).
    async fn commit_offsets(
        &self,
        group: &str,
        offsets: Vec<CommittedOffset>,
        fence: Option<i64>,
    ) -> Result<()>;

    /// All offsets of a group, sorted by (topic, partition); empty when none.
    async fn fetch_offsets(&self, group: &str) -> Result<Vec<CommittedOffset>>;

    /// Removes these partitions' offsets of a group (absent ones are ignored); fenced like
    /// [`commit_offsets`](Self::commit_offsets).
    async fn delete_offsets(
        &self,
        group: &str,
        partitions: Vec<(String, i32)>,
        fence: Option<i64>,
    ) -> Result<()>;

    /// Replaces the group's metadata blob (membership, generation, assignments, encoded by the
    /// broker) if its version is `expected` (0: no blob stored); returns the new version.
    /// Otherwise [`CoordinatorError::Fenced`](crate::CoordinatorError::Fenced) and nothing
    /// changes. Any bytes, empty included, up to 16 MiB
    /// ([`crate::state::MAX_GROUP_STATE_BYTES`]; a larger one is `Invalid`).
    async fn save_group(&self, group: &str, expected: i64, state: Vec<u8>) -> Result<i64>;

    /// The group's metadata blob and its version, if saved.
    async fn load_group(&self, group: &str) -> Result<Option<StoredGroup>>;

    /// Whether the group exists (a blob or an offset), without listing all groups.
    async fn group_exists(&self, group: &str) -> Result<bool>;

    /// Every group that has a saved blob or committed offsets, sorted (bytewise).
    async fn list_groups(&self) -> Result<Vec<String>>;

    /// Removes a group's blob and all its offsets; false if the group had neither. Fenced like
    /// [`commit_offsets`](Self::commit_offsets).
    async fn delete_group(&self, group: &str, fence: Option<i64>) -> Result<bool>;
}
