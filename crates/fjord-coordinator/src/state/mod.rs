//! The coordinator's state as a deterministic state machine, and the pure decisions every
//! implementation shares.
//!
//! Every change is first *decided* against the current state (pure: the `decide_*` methods read,
//! never write), then recorded as an [`Entry`] and *applied* ([`State::apply`]). Applying the same
//! entries in the same order always yields the same state, which is what lets the embedded
//! coordinator rebuild itself from its journal, and lets an implementation make an entry durable
//! before any reader can observe its effects.
//!
//! This module owns the state's shape ([`Entry`], [`State`], the partition and object records)
//! and [`State::apply`]; each concern's decisions live in a submodule, as free functions that see
//! the store only through small views (so that the embedded coordinator and the PostgreSQL one
//! decide identically) and as the `decide_*`/`apply_*` methods of [`State`]:
//! - `commit`: [`decide_commit`] assigns offsets and checks idempotent-producer sequences for a
//!   flush, given the partitions' high watermarks and producer states ([`CommitView`]);
//!   [`commit_effects`] turns a decided flush into the index rows, high watermarks and producer
//!   states it writes (adjacent batches of one partition merged into one row);
//! - `producers`: [`producer_decision`] for InitProducerId, the sequence rules, producer expiry;
//! - `topics`: [`check_new_partition_count`], [`check_partition_increase`],
//!   [`apply_config_changes`];
//! - `groups`: [`check_group_id`], [`check_group_state`] and [`normalize_offsets`];
//! - `lifecycle`: DeleteRecords, retention ([`retention_decision`]), compaction swaps
//!   ([`check_swap`]), pruning rows below the log start and dead objects;
//! - `reads`: offsets, index rows and timestamp lookups;
//! - `brokers`: [`check_broker_registration`] and [`check_broker_lease`] for the broker registry
//!   (which is not part of [`State`]: see [`crate::embedded`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use imbl::{HashMap as SharedHashMap, OrdMap, Vector};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::*;
use crate::quota_state::{QuotaChange, QuotaState};
use crate::security_state::{SecurityEntry, SecurityState};
use crate::{CoordinatorError, Result};

mod brokers;
mod commit;
mod groups;
mod lifecycle;
mod producers;
mod reads;
mod topics;

pub use brokers::*;
pub use commit::*;
pub use groups::*;
pub use lifecycle::*;
pub use producers::*;
pub use topics::*;

/// How many recent batches per producer and partition are remembered for de-duplication
/// (Kafka keeps five, matching `max.in.flight.requests.per.connection` of idempotent producers).
pub const PRODUCER_BATCH_MEMORY: usize = 5;

/// One decided change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Entry {
    /// A topic was created.
    CreateTopic(TopicMeta),
    /// A topic was deleted at this time (ms).
    DeleteTopic {
        /// Topic name.
        name: String,
        /// Deletion time in ms.
        at_ms: i64,
    },
    /// A topic's partition count was raised.
    SetPartitions {
        /// Topic name.
        name: String,
        /// New partition count.
        partitions: i32,
    },
    /// A topic's configs were replaced.
    SetConfigs {
        /// Topic name.
        name: String,
        /// The full new config map.
        configs: BTreeMap<String, String>,
    },
    /// An object was committed with these outcomes.
    Commit {
        /// The flush.
        flush: FlushCommit,
        /// One outcome per batch.
        outcomes: Vec<BatchOutcome>,
    },
    /// A producer id/epoch was handed out.
    Producer {
        /// The identity handed out.
        identity: ProducerIdentity,
        /// The next unused producer id.
        next_producer_id: i64,
        /// When it was handed out (ms; 0 in entries written before producer ids expired).
        #[serde(default, skip_serializing_if = "is_zero")]
        at_ms: i64,
    },
    /// Objects were deleted from storage and are forgotten.
    ForgetObjects(Vec<String>),
    /// A consumer group committed offsets (as [`normalize_offsets`] left them).
    CommitOffsets {
        /// Group id.
        group: String,
        /// The offsets, one per (topic, partition), sorted.
        offsets: Vec<CommittedOffset>,
    },
    /// Offsets of a consumer group were deleted (only partitions that had one are listed).
    DeleteOffsets {
        /// Group id.
        group: String,
        /// (topic, partition) pairs.
        partitions: Vec<(String, i32)>,
    },
    /// A consumer group's metadata blob was replaced.
    SaveGroup {
        /// Group id.
        group: String,
        /// The blob (hex in JSON).
        #[serde(with = "hex_bytes")]
        state: Vec<u8>,
        /// When it was saved (ms; 0 in entries written before offsets expired).
        #[serde(default, skip_serializing_if = "is_zero")]
        at_ms: i64,
    },
    /// A consumer group's blob and offsets were deleted.
    DeleteGroup {
        /// Group id.
        group: String,
    },
    /// The commit watermark was raised (see [`crate::ObjectLedger::raise_commit_watermark`]).
    CommitWatermark {
        /// The new watermark (ms).
        at_ms: i64,
    },
    /// A partition's log start was raised (retention, DeleteRecords; see
    /// [`crate::LogLifecycle`]). Applying it never lowers the log start, and deletes the index
    /// rows wholly below the new start (their objects lose those references).
    LogStart {
        /// The partition.
        tp: TopicPartition,
        /// The new log start offset.
        log_start: i64,
        /// When (ms): objects whose last reference goes are dead from then (0 in journals
        /// written before rows were deleted: such objects are collectable at once).
        #[serde(default)]
        at_ms: i64,
    },
    /// A compaction swap was decided (see [`crate::LogLifecycle::swap_rows`]).
    SwapRows {
        /// The swap.
        swap: RowSwap,
        /// Whether it replaced the rows or lost its compare-and-swap.
        outcome: SwapOutcome,
        /// When (ms): objects whose last reference goes, and a lost swap's object, are dead
        /// from then.
        at_ms: i64,
    },
    /// Idempotent-producer memory expired ([`crate::MetadataExpiry::expire_producers`]):
    /// per-partition states and producer ids removed, and states and ids from before times were
    /// kept stamped with `at_ms` (so that they expire one expiration after it).
    ExpireProducers {
        /// The time of the decision (ms).
        at_ms: i64,
        /// (partition, producer id) states removed.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        states: Vec<(TopicPartition, i64)>,
        /// Producer ids forgotten.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ids: Vec<i64>,
        /// (partition, producer id) states without a last-append time, stamped `at_ms`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        stamped_states: Vec<(TopicPartition, i64)>,
        /// Producer ids without an init time, stamped `at_ms`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        stamped_ids: Vec<i64>,
    },
    /// SCRAM credentials or ACLs changed (see [`crate::security_state`]).
    Security(SecurityEntry),
    /// Client quotas changed (see [`crate::quota_state`]).
    Quotas(QuotaChange),
}

/// Sequence memory of one producer on one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerPartitionState {
    /// The producer epoch the batches belong to.
    pub epoch: i16,
    /// Recent batches: (first sequence, last sequence, base offset), oldest first.
    pub batches: VecDeque<(i32, i32, i64)>,
    /// Commit time (ms) of the producer's last append to the partition; 0 when unknown (state
    /// from before this was recorded: [`State::decide_expire_producers`] stamps it instead of
    /// expiring it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_append_ms: i64,
}

/// One partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// First readable offset.
    pub log_start: i64,
    /// Next offset to assign.
    pub high_watermark: i64,
    /// Index rows by base offset.
    pub rows: OrdMap<i64, IndexRow>,
    /// Idempotent producer state by producer id.
    pub producers: SharedHashMap<i64, ProducerPartitionState>,
    /// Log compaction's checkpoint: the partition is deduplicated below this offset.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cleaned_to: i64,
    /// The time index: the retained rows whose max timestamp is larger than that of every
    /// retained row before them, as max timestamp -> base offset (both strictly increasing). The
    /// first row at or after the log start with a max timestamp >= T is the first entry at or
    /// above T; the earliest row with the largest timestamp is the last entry. Derived from the
    /// rows and the log start (not serialized: rebuilt on load, [`State::rebuild_time_indexes`]).
    #[serde(skip)]
    pub time_index: OrdMap<i64, i64>,
}

impl PartitionState {
    /// Notes a row appended at the end of the partition in the time index.
    fn index_appended_row(&mut self, row: &IndexRow) {
        if self
            .time_index
            .get_max()
            .is_none_or(|(max, _)| row.max_timestamp > *max)
        {
            self.time_index.insert(row.max_timestamp, row.base_offset);
        }
    }

    /// Brings the time index up to date after the log start moved up: entries for rows no
    /// longer retained go, and the retained rows before the first entry left (which the dropped
    /// rows' timestamps hid) are indexed. That costs the rows between the new start and the first
    /// retained row larger than all before it: usually a few, as timestamps mostly grow.
    fn reindex_from_log_start(&mut self) {
        let from = retained_from(self);
        while let Some((ts, base)) = self.time_index.get_min().copied() {
            if base >= from {
                break;
            }
            self.time_index.remove(&ts);
        }
        let until = self
            .time_index
            .get_min()
            .map_or(i64::MAX, |(_, base)| *base);
        let mut max = None;
        let mut found = Vec::new();
        for (base, row) in self.rows.range(from..until) {
            if max.is_none_or(|max| row.max_timestamp > max) {
                max = Some(row.max_timestamp);
                found.push((row.max_timestamp, *base));
            }
        }
        for (ts, base) in found {
            self.time_index.insert(ts, base);
        }
    }
}

/// Reference counting of objects, for garbage collection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectState {
    /// Number of index rows referencing the object.
    pub rows: u64,
    /// When the last reference went away (ms), if it did.
    pub dead_since: Option<i64>,
}

/// The whole coordinator state.
///
/// Its maps are persistent ([`imbl`]): a clone is O(1) and shares structure with the original,
/// and a change after a clone copies only the path it touches. The embedded coordinator clones
/// the state to write a snapshot in the background while its writer goes on changing it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Topics by name.
    pub topics: OrdMap<String, TopicMeta>,
    /// Partitions (serialized as a list because JSON keys must be strings).
    #[serde(with = "partitions_as_list")]
    pub partitions: SharedHashMap<TopicPartition, PartitionState>,
    /// The next unused producer id.
    pub next_producer_id: i64,
    /// The current epoch of every producer id handed out.
    pub producer_epochs: OrdMap<i64, i16>,
    /// Objects known to the index.
    pub objects: OrdMap<String, ObjectState>,
    /// Outcomes of recent commits by object key, so that a repeated commit is idempotent.
    pub recent_commits: Vector<(String, Vec<BatchOutcome>)>,
    /// Consumer groups by id (absent from snapshots written before groups existed).
    #[serde(default)]
    pub groups: OrdMap<String, GroupState>,
    /// The last group blob version handed out (versions never repeat, across groups too).
    #[serde(default)]
    pub group_versions: i64,
    /// Objects made before this time (ms, by their key) can no longer be committed.
    #[serde(default)]
    pub commit_watermark_ms: i64,
    /// When each producer id of [`producer_epochs`](Self::producer_epochs) was last
    /// (re)initialised (ms); absent for ids handed out before producer ids expired.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub producer_init_ms: BTreeMap<i64, i64>,
    /// SCRAM credentials and ACLs (absent from snapshots written before they existed).
    #[serde(default)]
    pub security: SecurityState,
    /// Client quotas (absent from snapshots written before they existed).
    #[serde(default)]
    pub quotas: QuotaState,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// How many commits' outcomes are remembered for idempotent re-commits.
const RECENT_COMMITS: usize = 256;

impl State {
    /// Topic by id.
    pub fn topic_by_id(&self, id: Uuid) -> Option<&TopicMeta> {
        self.topics.values().find(|t| t.id == id)
    }

    /// Rebuilds every partition's time index from its rows (after loading a snapshot, which
    /// does not hold them).
    pub fn rebuild_time_indexes(&mut self) {
        for (_, p) in self.partitions.iter_mut() {
            p.time_index = OrdMap::new();
            p.reindex_from_log_start();
        }
    }

    fn known_topic(&self, name: &str) -> Result<&TopicMeta> {
        self.topics
            .get(name)
            .ok_or_else(|| CoordinatorError::UnknownTopic(name.to_string()))
    }

    /// Applies a decided entry.
    pub fn apply(&mut self, entry: &Entry) {
        match entry {
            Entry::CreateTopic(meta) => {
                for partition in 0..meta.partitions {
                    self.partitions.insert(
                        TopicPartition {
                            topic_id: meta.id,
                            partition,
                        },
                        PartitionState::default(),
                    );
                }
                self.topics.insert(meta.name.clone(), meta.clone());
            }
            Entry::DeleteTopic { name, at_ms } => {
                let Some(meta) = self.topics.remove(name) else {
                    return;
                };
                for partition in 0..meta.partitions {
                    let tp = TopicPartition {
                        topic_id: meta.id,
                        partition,
                    };
                    if let Some(state) = self.partitions.remove(&tp) {
                        for row in state.rows.values() {
                            self.unreference(&row.object_key, *at_ms);
                        }
                    }
                }
            }
            Entry::SetPartitions { name, partitions } => {
                if let Some(meta) = self.topics.get_mut(name) {
                    for partition in meta.partitions..*partitions {
                        self.partitions.insert(
                            TopicPartition {
                                topic_id: meta.id,
                                partition,
                            },
                            PartitionState::default(),
                        );
                    }
                    meta.partitions = *partitions;
                }
            }
            Entry::SetConfigs { name, configs } => {
                if let Some(meta) = self.topics.get_mut(name) {
                    meta.configs = configs.clone();
                }
            }
            Entry::Commit { flush, outcomes } => self.apply_commit(flush, outcomes),
            Entry::Producer {
                identity,
                next_producer_id,
                at_ms,
            } => {
                self.producer_epochs
                    .insert(identity.producer_id, identity.producer_epoch);
                if *at_ms > 0 {
                    self.producer_init_ms.insert(identity.producer_id, *at_ms);
                }
                self.next_producer_id = *next_producer_id;
            }
            Entry::ForgetObjects(keys) => {
                for key in keys {
                    if self.objects.get(key).is_some_and(|o| o.rows == 0) {
                        self.objects.remove(key);
                    }
                }
            }
            Entry::CommitOffsets { group, offsets } => {
                let stored = self.groups.entry(group.clone()).or_default();
                for o in offsets {
                    stored.offsets.entry(o.topic.clone()).or_default().insert(
                        o.partition,
                        StoredOffset {
                            offset: o.offset,
                            leader_epoch: o.leader_epoch,
                            metadata: o.metadata.clone(),
                            commit_timestamp_ms: o.commit_timestamp_ms,
                        },
                    );
                }
                self.drop_group_if_empty(group);
            }
            Entry::DeleteOffsets { group, partitions } => {
                if let Some(stored) = self.groups.get_mut(group) {
                    for (topic, partition) in partitions {
                        if let Some(by_partition) = stored.offsets.get_mut(topic) {
                            by_partition.remove(partition);
                            if by_partition.is_empty() {
                                stored.offsets.remove(topic);
                            }
                        }
                    }
                }
                self.drop_group_if_empty(group);
            }
            Entry::SaveGroup {
                group,
                state,
                at_ms,
            } => {
                self.group_versions += 1;
                let stored = self.groups.entry(group.clone()).or_default();
                stored.state = Some(state.clone());
                stored.version = self.group_versions;
                stored.saved_ms = *at_ms;
            }
            Entry::DeleteGroup { group } => {
                self.groups.remove(group);
            }
            Entry::CommitWatermark { at_ms } => {
                self.commit_watermark_ms = self.commit_watermark_ms.max(*at_ms);
            }
            Entry::LogStart {
                tp,
                log_start,
                at_ms,
            } => {
                if let Some(p) = self.partitions.get_mut(tp) {
                    let before = p.log_start;
                    p.log_start = p.log_start.max(*log_start).min(p.high_watermark);
                    if p.log_start != before {
                        p.reindex_from_log_start();
                    }
                }
                self.prune_rows(*tp, *at_ms);
            }
            Entry::SwapRows {
                swap,
                outcome,
                at_ms,
            } => self.apply_swap(swap, *outcome, *at_ms),
            Entry::ExpireProducers {
                at_ms,
                states,
                ids,
                stamped_states,
                stamped_ids,
            } => self.apply_expire_producers(*at_ms, states, ids, stamped_states, stamped_ids),
            Entry::Security(entry) => self.security.apply(entry),
            Entry::Quotas(change) => self.quotas.apply(change),
        }
    }
}

mod partitions_as_list {
    use imbl::HashMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::PartitionState;
    use crate::TopicPartition;

    pub fn serialize<S: Serializer>(
        map: &HashMap<TopicPartition, PartitionState>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut list: Vec<_> = map.iter().collect();
        list.sort_by_key(|(tp, _)| **tp);
        list.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<HashMap<TopicPartition, PartitionState>, D::Error> {
        let list: Vec<(TopicPartition, PartitionState)> = Vec::deserialize(deserializer)?;
        Ok(list.into_iter().collect())
    }
}

/// `Vec<u8>` as a lowercase hex string (half the size of serde_json's array of numbers).
mod hex_bytes {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    const DIGITS: &[u8; 16] = b"0123456789abcdef";

    pub fn encode(bytes: &[u8]) -> String {
        let mut text = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            text.push(char::from(DIGITS[usize::from(b >> 4)]));
            text.push(char::from(DIGITS[usize::from(b & 0x0f)]));
        }
        text
    }

    pub fn decode(text: &str) -> Result<Vec<u8>, String> {
        fn digit(c: u8) -> Result<u8, String> {
            match c {
                b'0'..=b'9' => Ok(c - b'0'),
                b'a'..=b'f' => Ok(c - b'a' + 10),
                b'A'..=b'F' => Ok(c - b'A' + 10),
                _ => Err(format!("invalid hex digit {:?}", char::from(c))),
            }
        }
        let pairs = text.as_bytes().chunks_exact(2);
        if !pairs.remainder().is_empty() {
            return Err(format!("hex string of odd length {}", text.len()));
        }
        pairs
            .map(|pair| Ok((digit(pair[0])? << 4) | digit(pair[1])?))
            .collect()
    }

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        decode(&String::deserialize(deserializer)?).map_err(D::Error::custom)
    }
}

/// `Option<Vec<u8>>` as an optional hex string.
mod hex_bytes_opt {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::hex_bytes::{decode, encode};

    pub fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_some(&encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| decode(&text).map_err(D::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests;
