//! The coordinator's state as a deterministic state machine, and the pure decisions every
//! implementation shares.
//!
//! Every change is first *decided* against the current state (pure: the `decide_*` methods read,
//! never write), then recorded as an [`Entry`] and *applied* ([`State::apply`]). Applying the same
//! entries in the same order always yields the same state, which is what lets the embedded
//! coordinator rebuild itself from its journal, and lets an implementation make an entry durable
//! before any reader can observe its effects.
//!
//! The rules themselves live in free functions that see the store only through small views, so
//! that the embedded coordinator and the PostgreSQL one decide identically:
//! - [`decide_commit`] assigns offsets and checks idempotent-producer sequences for a flush, given
//!   the partitions' high watermarks and producer states ([`CommitView`]);
//! - [`commit_effects`] turns a decided flush into the index rows, high watermarks and producer
//!   states it writes (adjacent batches of one partition merged into one row);
//! - [`producer_decision`], [`check_new_partition_count`], [`check_partition_increase`] and
//!   [`apply_config_changes`] for the other calls;
//! - [`check_group_id`], [`check_group_state`] and [`normalize_offsets`] for consumer groups;
//! - [`check_broker_registration`] and [`check_broker_lease`] for the broker registry (which is
//!   not part of [`State`]: see [`crate::embedded`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use imbl::{HashMap as SharedHashMap, OrdMap, Vector};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::*;
use crate::quota_state::{QuotaChange, QuotaState};
use crate::security_state::{SecurityEntry, SecurityState};
use crate::{CoordinatorError, Result};

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
    /// The commit watermark was raised (see [`crate::Coordinator::raise_commit_watermark`]).
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

/// Sequence memory of one producer on one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerPartitionState {
    /// The producer epoch the batches belong to.
    pub epoch: i16,
    /// Recent batches: (first sequence, last sequence, base offset), oldest first.
    pub batches: VecDeque<(i32, i32, i64)>,
    /// Commit time (ms) of the producer's last append to the partition; 0 when unknown (state
    /// from before this was recorded: [`producer_expiry_decision`] stamps it instead of
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

    /// Decides a topic creation.
    pub fn decide_create_topic(&self, spec: TopicSpec, id: Uuid) -> Result<Entry> {
        if self.topics.contains_key(&spec.name) {
            return Err(CoordinatorError::TopicExists(spec.name));
        }
        check_new_partition_count(spec.partitions)?;
        Ok(Entry::CreateTopic(TopicMeta {
            name: spec.name,
            id,
            partitions: spec.partitions,
            configs: spec.configs,
        }))
    }

    /// Decides a partition increase.
    pub fn decide_partitions(&self, name: &str, new_total: i32) -> Result<Entry> {
        let topic = self.known_topic(name)?;
        check_partition_increase(name, topic.partitions, new_total)?;
        Ok(Entry::SetPartitions {
            name: name.to_string(),
            partitions: new_total,
        })
    }

    /// Decides a config change.
    pub fn decide_configs(
        &self,
        name: &str,
        changes: Vec<(String, Option<String>)>,
    ) -> Result<Entry> {
        let mut configs = self.known_topic(name)?.configs.clone();
        apply_config_changes(&mut configs, changes);
        Ok(Entry::SetConfigs {
            name: name.to_string(),
            configs,
        })
    }

    /// Decides an InitProducerId: the identity to answer, and the entry to write (`None` when a
    /// retried bump is answered again and nothing changes).
    pub fn decide_producer(
        &self,
        request: InitProducer,
        at_ms: i64,
    ) -> Result<(ProducerIdentity, Option<Entry>)> {
        let current = bump_target(request).and_then(|id| self.producer_epochs.get(&id).copied());
        Ok(match producer_decision(request, current)? {
            ProducerDecision::Again(identity) => (identity, None),
            ProducerDecision::Bump(identity) => (
                identity,
                Some(Entry::Producer {
                    identity,
                    next_producer_id: self.next_producer_id,
                    at_ms,
                }),
            ),
            ProducerDecision::Fresh => {
                let identity = ProducerIdentity {
                    producer_id: self.next_producer_id,
                    producer_epoch: 0,
                };
                (
                    identity,
                    Some(Entry::Producer {
                        identity,
                        next_producer_id: self.next_producer_id + 1,
                        at_ms,
                    }),
                )
            }
        })
    }

    /// The remembered outcomes of an object committed before, if any.
    pub fn recent_commit(&self, object_key: &str) -> Option<&Vec<BatchOutcome>> {
        self.recent_commits
            .iter()
            .find(|(key, _)| key == object_key)
            .map(|(_, outcomes)| outcomes)
    }

    /// Decides the outcome of every batch of a flush, in order, without changing the state.
    pub fn decide_commit(&self, flush: &FlushCommit) -> Vec<BatchOutcome> {
        decide_commit(self, flush)
    }

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

    /// Decides a DeleteRecords on `tp`: the offsets after it, and the entry to write (`None` when
    /// the log start does not move).
    pub fn decide_delete_records(
        &self,
        tp: TopicPartition,
        before: i64,
        at_ms: i64,
    ) -> Result<(PartitionOffsets, Option<Entry>)> {
        let offsets = self.partition_offsets(tp)?;
        let log_start = delete_records_target(offsets, before)?;
        Ok(advance(tp, offsets, log_start, at_ms))
    }

    /// Decides a retention step on `tp` (see [`crate::LogLifecycle::apply_retention`]).
    pub fn decide_retention(
        &self,
        tp: TopicPartition,
        limits: &RetentionLimits,
        max_rows: usize,
        at_ms: i64,
    ) -> Result<(RetentionStep, Option<Entry>)> {
        let p = self.partition(tp)?;
        let offsets = self.partition_offsets(tp)?;
        let retained = || p.rows.range(retained_from(p)..).map(|(_, row)| row);
        let rows: Vec<RetainedRow> = retained()
            .take(max_rows)
            .map(|row| RetainedRow {
                last_offset: row.last_offset,
                length: row.length,
                max_timestamp: row.max_timestamp,
            })
            .collect();
        let retained_bytes = match limits.max_bytes {
            Some(_) => retained().map(|row| row.length).sum(),
            None => 0,
        };
        let (log_start, expired) = retention_decision(offsets, &rows, retained_bytes, limits);
        let (offsets, entry) = advance(tp, offsets, log_start, at_ms);
        Ok((
            RetentionStep {
                offsets,
                rows_expired: expired as u64,
                more: expired == max_rows && max_rows > 0,
            },
            entry,
        ))
    }

    /// Decides a compaction swap (see [`crate::LogLifecycle::swap_rows`]).
    pub fn decide_swap(&self, swap: &RowSwap) -> Result<SwapOutcome> {
        let p = self.partition(swap.tp)?;
        check_commit_watermark(&swap.object_key, self.commit_watermark_ms)?;
        check_swap(swap)?;
        if self.objects.contains_key(&swap.object_key) {
            return Err(already_known(&swap.object_key));
        }
        let (first, last) = swap_span(swap)?;
        let current: Vec<RowRef> = p.rows.range(first..=last).map(|(_, r)| r.into()).collect();
        Ok(if current == swap.replaced {
            SwapOutcome::Swapped
        } else {
            SwapOutcome::Lost
        })
    }

    /// Log compaction's checkpoint of `tp`.
    pub fn cleaned_to(&self, tp: TopicPartition) -> Result<i64> {
        Ok(self.partition(tp)?.cleaned_to)
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

    fn apply_swap(&mut self, swap: &RowSwap, outcome: SwapOutcome, at_ms: i64) {
        let swapped = outcome == SwapOutcome::Swapped && self.partitions.contains_key(&swap.tp);
        let mut released = Vec::new();
        if swapped {
            if let Some(p) = self.partitions.get_mut(&swap.tp) {
                for old in &swap.replaced {
                    if let Some(row) = p.rows.remove(&old.base_offset) {
                        released.push(row.object_key);
                    }
                }
                for row in &swap.rows {
                    p.rows.insert(row.base_offset, row.clone());
                }
                if let Some(c) = swap.cleaned_to {
                    p.cleaned_to = p.cleaned_to.max(c);
                }
                p.time_index = OrdMap::new();
                p.reindex_from_log_start();
            }
        }
        let rows = if swapped { swap.rows.len() as u64 } else { 0 };
        self.objects.insert(
            swap.object_key.clone(),
            ObjectState {
                rows,
                dead_since: (rows == 0).then_some(at_ms),
            },
        );
        for key in released {
            self.unreference(&key, at_ms);
        }
    }

    fn drop_group_if_empty(&mut self, group: &str) {
        if self.groups.get(group).is_some_and(GroupState::is_empty) {
            self.groups.remove(group);
        }
    }

    fn apply_commit(&mut self, flush: &FlushCommit, outcomes: &[BatchOutcome]) {
        let effects = commit_effects(&*self, flush, outcomes);
        let mut rows_added = 0u64;
        for (tp, row) in effects.rows {
            if let Some(partition) = self.partitions.get_mut(&tp) {
                partition.index_appended_row(&row);
                partition.rows.insert(row.base_offset, row);
                rows_added += 1;
            }
        }
        for (tp, high_watermark) in effects.high_watermarks {
            if let Some(partition) = self.partitions.get_mut(&tp) {
                partition.high_watermark = high_watermark;
            }
        }
        for ((tp, producer_id), state) in effects.producers {
            if let Some(partition) = self.partitions.get_mut(&tp) {
                partition.producers.insert(producer_id, state);
            }
        }
        if rows_added > 0 {
            let object = self.objects.entry(flush.object_key.clone()).or_default();
            object.rows += rows_added;
            object.dead_since = None;
        } else {
            // Nothing of the object is referenced: it is garbage from the start.
            self.objects
                .entry(flush.object_key.clone())
                .or_insert(ObjectState {
                    rows: 0,
                    dead_since: Some(flush.timestamp_ms),
                });
        }
        self.recent_commits
            .push_back((flush.object_key.clone(), outcomes.to_vec()));
        while self.recent_commits.len() > RECENT_COMMITS {
            self.recent_commits.pop_front();
        }
    }

    /// Deletes the index rows of `tp` wholly below its log start; their objects lose a
    /// reference each at `at_ms`.
    fn prune_rows(&mut self, tp: TopicPartition, at_ms: i64) {
        let Some(p) = self.partitions.get_mut(&tp) else {
            return;
        };
        let keep = retained_from(p);
        let (pruned, at_keep, kept) = p.rows.split_lookup(&keep);
        p.rows = kept;
        if let Some(row) = at_keep {
            p.rows.insert(keep, row);
        }
        for row in pruned.values() {
            self.unreference(&row.object_key, at_ms);
        }
    }

    /// Deletes the index rows wholly below every partition's log start (a store written before
    /// rows were deleted with the log start); their objects lose those references at `at_ms`.
    pub fn prune_all_rows(&mut self, at_ms: i64) {
        let below: Vec<TopicPartition> = self
            .partitions
            .iter()
            .filter(|(_, p)| {
                p.rows
                    .get_min()
                    .is_some_and(|(_, row)| row.last_offset < p.log_start)
            })
            .map(|(tp, _)| *tp)
            .collect();
        for tp in below {
            self.prune_rows(tp, at_ms);
        }
    }

    fn unreference(&mut self, key: &str, at_ms: i64) {
        if let Some(object) = self.objects.get_mut(key) {
            object.rows = object.rows.saturating_sub(1);
            if object.rows == 0 {
                object.dead_since = Some(at_ms);
            }
        }
    }

    /// Offsets of a partition.
    pub fn partition_offsets(&self, tp: TopicPartition) -> Result<PartitionOffsets> {
        let p = self.partition(tp)?;
        Ok(PartitionOffsets {
            log_start: p.log_start,
            high_watermark: p.high_watermark,
        })
    }

    /// Rows from an offset on, up to about `max_bytes`.
    pub fn index_rows(
        &self,
        tp: TopicPartition,
        from: i64,
        max_bytes: u64,
    ) -> Result<Vec<IndexRow>> {
        let p = self.partition(tp)?;
        let start = p
            .rows
            .range(..=from)
            .next_back()
            .filter(|(_, row)| row.last_offset >= from)
            .map(|(base, _)| *base)
            .unwrap_or(from);
        let mut rows = Vec::new();
        let mut bytes = 0u64;
        for row in p.rows.range(start..).map(|(_, row)| row) {
            if !rows.is_empty() && bytes + row.length > max_bytes {
                break;
            }
            bytes += row.length;
            rows.push(row.clone());
        }
        Ok(rows)
    }

    /// First row with a max timestamp at or after `timestamp`.
    pub fn row_for_timestamp(
        &self,
        tp: TopicPartition,
        timestamp: i64,
    ) -> Result<Option<IndexRow>> {
        let p = self.partition(tp)?;
        Ok(p.time_index
            .range(timestamp..)
            .next()
            .and_then(|(_, base)| p.rows.get(base))
            .cloned())
    }

    /// The earliest row holding the partition's largest timestamp.
    pub fn row_with_max_timestamp(&self, tp: TopicPartition) -> Result<Option<IndexRow>> {
        let p = self.partition(tp)?;
        Ok(p.time_index
            .get_max()
            .and_then(|(_, base)| p.rows.get(base))
            .cloned())
    }

    fn partition(&self, tp: TopicPartition) -> Result<&PartitionState> {
        self.partitions.get(&tp).ok_or_else(|| {
            CoordinatorError::UnknownTopic(format!("{}/{}", tp.topic_id, tp.partition))
        })
    }

    /// Up to `limit` dead objects whose last reference went at or before `dead_before_ms`,
    /// oldest first (see [`crate::ObjectLedger::dead_objects`]).
    pub fn dead_objects(&self, dead_before_ms: i64, limit: usize) -> Vec<DeadObject> {
        let mut dead: Vec<DeadObject> = self
            .objects
            .iter()
            .filter_map(|(key, object)| match object.dead_since {
                Some(at) if object.rows == 0 && at <= dead_before_ms => Some(DeadObject {
                    key: key.clone(),
                    dead_since_ms: at,
                }),
                _ => None,
            })
            .collect();
        dead.sort_by(|a, b| (a.dead_since_ms, &a.key).cmp(&(b.dead_since_ms, &b.key)));
        dead.truncate(limit);
        dead
    }
}

/// The base offset of the first index row of `p` that holds offsets at or after its log start
/// (rows wholly below it are no longer part of the log).
fn retained_from(p: &PartitionState) -> i64 {
    p.rows
        .range(..=p.log_start)
        .next_back()
        .filter(|(_, row)| row.last_offset >= p.log_start)
        .map_or(p.log_start, |(base, _)| *base)
}

/// The offsets after raising `offsets.log_start` to `log_start`, and the entry that does it
/// (`None` when it does not move).
fn advance(
    tp: TopicPartition,
    offsets: PartitionOffsets,
    log_start: i64,
    at_ms: i64,
) -> (PartitionOffsets, Option<Entry>) {
    if log_start <= offsets.log_start {
        return (offsets, None);
    }
    (
        PartitionOffsets {
            log_start,
            high_watermark: offsets.high_watermark,
        },
        Some(Entry::LogStart {
            tp,
            log_start,
            at_ms,
        }),
    )
}

/// The log start a DeleteRecords of records before `before` asks for: `before` itself, the high
/// watermark for -1, or [`CoordinatorError::OffsetOutOfRange`] beyond the high watermark or
/// below -1. At or below the current log start it is the current log start (nothing moves).
pub fn delete_records_target(offsets: PartitionOffsets, before: i64) -> Result<i64> {
    let target = match before {
        -1 => offsets.high_watermark,
        b if b < 0 || b > offsets.high_watermark => {
            return Err(CoordinatorError::OffsetOutOfRange(format!(
                "cannot delete records before offset {before}: the log ends at {}",
                offsets.high_watermark
            )));
        }
        b => b,
    };
    Ok(target.max(offsets.log_start))
}

/// An index row as retention sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetainedRow {
    /// Last offset of the row (inclusive).
    pub last_offset: i64,
    /// Bytes the row references.
    pub length: u64,
    /// Largest timestamp in the row.
    pub max_timestamp: i64,
}

/// Retention's decision for one partition: the new log start and how many of `rows` it passes.
///
/// `rows` are the partition's first index rows from the one holding the log start on, in offset
/// order (possibly only a prefix of them); `retained_bytes` is the length of all of them (only
/// read when `limits.max_bytes` is set). Whole rows are dropped from the front while each is
/// expired by time (its max timestamp is before `limits.expire_before_ms`, Kafka's test on a
/// segment's largest timestamp; a row with no timestamp, max -1, is never expired by time) or by
/// size (what remains after dropping it is still at least
/// `limits.max_bytes`, Kafka's `retention.bytes` test); the first row that is neither stops it.
/// The new log start is one past the last dropped row, never beyond the high watermark, never
/// below the current log start.
pub fn retention_decision(
    offsets: PartitionOffsets,
    rows: &[RetainedRow],
    retained_bytes: u64,
    limits: &RetentionLimits,
) -> (i64, usize) {
    let mut log_start = offsets.log_start;
    let mut remaining = retained_bytes;
    let mut expired = 0;
    for row in rows {
        // A row without timestamps (-1: a pre-0.10 style client) has no age to expire by; it
        // goes by size or DeleteRecords only, never the moment it is written.
        let by_time = limits
            .expire_before_ms
            .is_some_and(|before| row.max_timestamp >= 0 && row.max_timestamp < before);
        let by_size = limits
            .max_bytes
            .is_some_and(|max| remaining >= row.length && remaining - row.length >= max);
        if !(by_time || by_size) {
            break;
        }
        remaining = remaining.saturating_sub(row.length);
        log_start = log_start.max(row.last_offset.saturating_add(1));
        expired += 1;
    }
    (log_start.min(offsets.high_watermark), expired)
}

impl CommitView for State {
    fn high_watermark(&self, tp: TopicPartition) -> Option<i64> {
        self.partitions.get(&tp).map(|p| p.high_watermark)
    }

    fn producer(&self, tp: TopicPartition, producer_id: i64) -> Option<&ProducerPartitionState> {
        self.partitions.get(&tp)?.producers.get(&producer_id)
    }
}

/// What a commit decision reads of the store: the partitions a flush touches, as they are before
/// the flush. An implementation must keep them from changing between the decision and the write
/// (the embedded coordinator has one writer; PostgreSQL locks the partition rows).
pub trait CommitView {
    /// The next offset to assign in `tp`, or `None` if the partition does not exist.
    fn high_watermark(&self, tp: TopicPartition) -> Option<i64>;

    /// The sequence memory of `producer_id` on `tp`, if the producer ever appended there.
    fn producer(&self, tp: TopicPartition, producer_id: i64) -> Option<&ProducerPartitionState>;
}

/// Decides the outcome of every batch of a flush, in order: rejections, idempotent duplicates, and
/// the base offset of every appended batch. Pure; later batches of the flush see what earlier ones
/// would change (offsets, producer sequences).
///
/// A partition's consecutive batches of one append ([`CommitBatch::append`]) are decided as a
/// unit: if any of them is rejected, all of them are, with the first rejection, and they change
/// nothing. A client that sent several batches for a partition in one request gets one answer
/// for the partition, so a retry after an error must not find some of them appended already.
pub fn decide_commit(view: &impl CommitView, flush: &FlushCommit) -> Vec<BatchOutcome> {
    let mut overlay = Overlay::default();
    let mut outcomes = Vec::with_capacity(flush.batches.len());
    let mut start = 0;
    while let Some(first) = flush.batches.get(start) {
        let len = flush.batches[start..]
            .iter()
            .take_while(|b| b.tp == first.tp && b.append == first.append)
            .count();
        let unit = &flush.batches[start..start + len];
        start += len;
        if let [batch] = unit {
            outcomes.push(overlay.decide(view, batch));
            continue;
        }
        let before = overlay.clone();
        let decided: Vec<BatchOutcome> = unit.iter().map(|b| overlay.decide(view, b)).collect();
        match decided.iter().find_map(|o| match o {
            BatchOutcome::Rejected(r) => Some(*r),
            _ => None,
        }) {
            Some(rejection) => {
                overlay = before;
                outcomes.extend(std::iter::repeat_n(
                    BatchOutcome::Rejected(rejection),
                    unit.len(),
                ));
            }
            None => outcomes.extend(decided),
        }
    }
    outcomes
}

/// What earlier batches of the flush being decided change: next offsets and producer states.
#[derive(Clone, Default)]
struct Overlay {
    next_offsets: HashMap<TopicPartition, i64>,
    producers: HashMap<(TopicPartition, i64), ProducerPartitionState>,
}

impl Overlay {
    fn decide(&mut self, view: &impl CommitView, batch: &CommitBatch) -> BatchOutcome {
        let Some(high_watermark) = view.high_watermark(batch.tp) else {
            return BatchOutcome::Rejected(BatchRejection::UnknownTopicOrPartition);
        };
        let next = self.next_offsets.entry(batch.tp).or_insert(high_watermark);
        if let Some(info) = batch.producer {
            let stored = view.producer(batch.tp, info.producer_id);
            let current = self
                .producers
                .entry((batch.tp, info.producer_id))
                .or_insert_with(|| stored.cloned().unwrap_or_default());
            let known = !current.batches.is_empty() || stored.is_some();
            match check_sequence(current, known, info, batch.offset_count) {
                Err(rejection) => return BatchOutcome::Rejected(rejection),
                Ok(Some(base_offset)) => return BatchOutcome::Duplicate { base_offset },
                Ok(None) => remember_batch(current, info, batch.offset_count, *next),
            }
        }
        let base_offset = *next;
        *next += batch.offset_count;
        BatchOutcome::Appended { base_offset }
    }
}

/// What a decided flush writes, besides its outcomes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitEffects {
    /// New index rows, in flush order: a run of appended batches of one partition that are
    /// adjacent both in the object and in offsets shares one row.
    pub rows: Vec<(TopicPartition, IndexRow)>,
    /// The new high watermark of every partition that got an append.
    pub high_watermarks: BTreeMap<TopicPartition, i64>,
    /// The new sequence memory of every producer that appended, by partition and producer id.
    pub producers: BTreeMap<(TopicPartition, i64), ProducerPartitionState>,
}

/// Derives what a flush writes from the flush, its decided `outcomes` (one per batch, from
/// [`decide_commit`] against the same `view`) and the producer states before it. Pure and
/// deterministic, so replaying a journalled commit rebuilds exactly the same state.
pub fn commit_effects(
    view: &impl CommitView,
    flush: &FlushCommit,
    outcomes: &[BatchOutcome],
) -> CommitEffects {
    let mut effects = CommitEffects::default();
    // The row most recently started per partition in this commit (its index in `effects.rows`),
    // to merge adjacent batches into it.
    let mut open_rows: HashMap<TopicPartition, usize> = HashMap::new();
    for (batch, outcome) in flush.batches.iter().zip(outcomes) {
        let BatchOutcome::Appended { base_offset } = *outcome else {
            continue;
        };
        let last_offset = base_offset + batch.offset_count - 1;
        let merged = open_rows
            .get(&batch.tp)
            .and_then(|i| effects.rows.get_mut(*i))
            .and_then(|(_, row)| {
                (row.position + row.length == batch.position && row.last_offset + 1 == base_offset)
                    .then(|| {
                        row.length += batch.length;
                        row.last_offset = last_offset;
                        row.max_timestamp = row.max_timestamp.max(batch.max_timestamp);
                    })
            });
        if merged.is_none() {
            open_rows.insert(batch.tp, effects.rows.len());
            effects.rows.push((
                batch.tp,
                IndexRow {
                    base_offset,
                    last_offset,
                    object_key: flush.object_key.clone(),
                    position: batch.position,
                    length: batch.length,
                    max_timestamp: batch.max_timestamp,
                },
            ));
        }
        effects.high_watermarks.insert(batch.tp, last_offset + 1);
        if let Some(info) = batch.producer {
            let state = effects
                .producers
                .entry((batch.tp, info.producer_id))
                .or_insert_with(|| {
                    view.producer(batch.tp, info.producer_id)
                        .cloned()
                        .unwrap_or_default()
                });
            remember_batch(state, info, batch.offset_count, base_offset);
            state.last_append_ms = flush.timestamp_ms;
        }
    }
    effects
}

/// When an object was made (ms since the epoch), read from its key: the UUIDv7 the writer names
/// objects with (`objects/<uuid>.fjd`). `None` for keys not made that way (they are never
/// collected as orphans, and the commit watermark does not apply to them).
pub fn object_key_time_ms(key: &str) -> Option<i64> {
    let name = key.rsplit('/').next()?;
    let stem = name.strip_suffix(".fjd").unwrap_or(name);
    let id = Uuid::parse_str(stem).ok()?;
    if id.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    i64::try_from(secs)
        .ok()?
        .checked_mul(1000)?
        .checked_add(i64::from(nanos / 1_000_000))
}

/// The offsets a swap's replaced rows span (first base, last offset).
fn swap_span(swap: &RowSwap) -> Result<(i64, i64)> {
    match (swap.replaced.first(), swap.replaced.last()) {
        (Some(first), Some(last)) => Ok((first.base_offset, last.last_offset)),
        _ => Err(CoordinatorError::Invalid(
            "a compaction swap must replace at least one row".into(),
        )),
    }
}

fn already_known(key: &str) -> CoordinatorError {
    CoordinatorError::Invalid(format!(
        "object {key} is already known: a swap needs a new object"
    ))
}

/// Checks a swap's shape: replaced rows in order and not overlapping; new rows in order, not
/// overlapping, within the replaced offsets and all in the new object.
pub fn check_swap(swap: &RowSwap) -> Result<()> {
    let (first, last) = swap_span(swap)?;
    let invalid = |why: &str| Err(CoordinatorError::Invalid(format!("compaction swap: {why}")));
    let mut prev_last = None;
    for row in &swap.replaced {
        if row.last_offset < row.base_offset || prev_last.is_some_and(|p| row.base_offset <= p) {
            return invalid("replaced rows out of order or overlapping");
        }
        prev_last = Some(row.last_offset);
    }
    let mut prev_last = None;
    for row in &swap.rows {
        if row.last_offset < row.base_offset || prev_last.is_some_and(|p| row.base_offset <= p) {
            return invalid("new rows out of order or overlapping");
        }
        if row.base_offset < first || row.last_offset > last {
            return invalid("a new row outside the replaced offsets");
        }
        if row.object_key != swap.object_key {
            return invalid("a new row in another object than the swap's");
        }
        prev_last = Some(row.last_offset);
    }
    if swap.cleaned_to.is_some_and(|c| c < 0) {
        return invalid("negative cleaned_to");
    }
    Ok(())
}

/// Refuses a commit of an object made before the commit watermark.
pub fn check_commit_watermark(object_key: &str, watermark_ms: i64) -> Result<()> {
    match object_key_time_ms(object_key) {
        Some(made) if made < watermark_ms => Err(CoordinatorError::Fenced(format!(
            "object {object_key} was made at {made} ms, before the commit watermark \
             {watermark_ms} ms: garbage collection may have deleted it (or this broker's clock \
             is behind the one collecting garbage by more than the grace period)"
        ))),
        _ => Ok(()),
    }
}

/// What an InitProducerId call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProducerDecision {
    /// Hand out a new producer id at epoch 0.
    Fresh,
    /// Keep the id, with this bumped epoch.
    Bump(ProducerIdentity),
    /// A retry of the bump that produced this (current) identity, whose answer was lost: answer
    /// it again and change nothing (KIP-360).
    Again(ProducerIdentity),
}

/// The producer id whose current epoch [`producer_decision`] needs, if any.
pub fn bump_target(request: InitProducer) -> Option<i64> {
    request.existing.map(|(id, _)| id).filter(|id| *id >= 0)
}

/// Decides an InitProducerId call, given the stored epoch of [`bump_target`]'s producer (`None`
/// when there is no target or it is unknown).
pub fn producer_decision(
    request: InitProducer,
    current_epoch: Option<i16>,
) -> Result<ProducerDecision> {
    let Some((id, epoch)) = request.existing.filter(|(id, _)| *id >= 0) else {
        return Ok(ProducerDecision::Fresh);
    };
    match current_epoch {
        // Epoch exhausted: a fresh id, as Kafka does.
        Some(current) if current == epoch && epoch >= i16::MAX - 1 => Ok(ProducerDecision::Fresh),
        Some(current) if current == epoch => Ok(ProducerDecision::Bump(ProducerIdentity {
            producer_id: id,
            producer_epoch: epoch + 1,
        })),
        // The bump from `epoch` already happened: its answer was lost and the client retries.
        // Bumps are always by one, so this is exactly Kafka's "the request names the last
        // epoch" check.
        Some(current) if epoch >= 0 && i32::from(current) == i32::from(epoch) + 1 => {
            Ok(ProducerDecision::Again(ProducerIdentity {
                producer_id: id,
                producer_epoch: current,
            }))
        }
        // An unknown id (e.g. from before a topic deletion): start over.
        None => Ok(ProducerDecision::Fresh),
        Some(current) => Err(CoordinatorError::ProducerFenced(format!(
            "producer {id} has epoch {current}, the request names {epoch}"
        ))),
    }
}

/// Checks the partition count of a new topic.
pub fn check_new_partition_count(partitions: i32) -> Result<()> {
    if partitions < 1 {
        return Err(CoordinatorError::Invalid(format!(
            "partition count must be at least 1, got {partitions}"
        )));
    }
    Ok(())
}

/// Checks a partition increase of topic `name` from `current` to `new_total`.
pub fn check_partition_increase(name: &str, current: i32, new_total: i32) -> Result<()> {
    if new_total <= current {
        return Err(CoordinatorError::Invalid(format!(
            "topic '{name}' has {current} partitions; the new count {new_total} must be larger"
        )));
    }
    Ok(())
}

/// Applies config changes: a `Some` value sets the key, `None` removes it.
pub fn apply_config_changes(
    configs: &mut BTreeMap<String, String>,
    changes: Vec<(String, Option<String>)>,
) {
    for (key, value) in changes {
        match value {
            Some(v) => configs.insert(key, v),
            None => configs.remove(&key),
        };
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

/// Longest broker lease accepted, in ms (a day). Leases are meant to be a few seconds, renewed
/// often; the bound keeps `now + lease` far from overflowing.
pub const MAX_BROKER_LEASE_MS: i64 = 24 * 60 * 60 * 1000;

/// Longest broker host name or rack accepted, in bytes.
pub const MAX_BROKER_STRING_BYTES: usize = 1024;

/// Checks a broker lease: 1 to [`MAX_BROKER_LEASE_MS`] ms.
pub fn check_broker_lease(lease_ms: i64) -> Result<()> {
    if !(1..=MAX_BROKER_LEASE_MS).contains(&lease_ms) {
        return Err(CoordinatorError::Invalid(format!(
            "broker lease of {lease_ms} ms; 1 to {MAX_BROKER_LEASE_MS} ms allowed"
        )));
    }
    Ok(())
}

/// Checks a broker registration: a node id >= 0, a host of 1 to [`MAX_BROKER_STRING_BYTES`]
/// bytes, a port in 0..=65535, a rack (if any) of at most [`MAX_BROKER_STRING_BYTES`] bytes; no
/// string may hold U+0000 (PostgreSQL text cannot).
pub fn check_broker_registration(registration: &BrokerRegistration) -> Result<()> {
    let invalid = |what: String| Err(CoordinatorError::Invalid(what));
    if registration.node_id < 0 {
        return invalid(format!(
            "broker node id must be >= 0, got {}",
            registration.node_id
        ));
    }
    if !(0..=65535).contains(&registration.port) {
        return invalid(format!("broker port {} out of range", registration.port));
    }
    if registration.host.is_empty() {
        return invalid("broker host is empty".into());
    }
    let strings = [
        ("host", Some(&registration.host)),
        ("rack", registration.rack.as_ref()),
    ];
    for (what, value) in strings {
        let Some(value) = value else { continue };
        if value.len() > MAX_BROKER_STRING_BYTES || value.contains('\0') {
            return invalid(format!(
                "broker {what} must be at most {MAX_BROKER_STRING_BYTES} bytes without U+0000"
            ));
        }
    }
    if registration.listeners.len() > MAX_BROKER_LISTENERS {
        return invalid(format!(
            "a broker has at most {MAX_BROKER_LISTENERS} listeners, got {}",
            registration.listeners.len()
        ));
    }
    let mut names = BTreeSet::new();
    for l in &registration.listeners {
        if !is_listener_name(&l.name) {
            return invalid(format!(
                "listener name {:?} must be 1 to 64 letters, digits, '_' or '-'",
                l.name
            ));
        }
        if !names.insert(l.name.as_str()) {
            return invalid(format!("listener {} is named twice", l.name));
        }
        if l.host.is_empty() || l.host.len() > MAX_BROKER_STRING_BYTES || l.host.contains('\0') {
            return invalid(format!(
                "listener {} host must be 1 to {MAX_BROKER_STRING_BYTES} bytes without U+0000",
                l.name
            ));
        }
        if !(0..=65535).contains(&l.port) {
            return invalid(format!("listener {} port {} out of range", l.name, l.port));
        }
        if !SECURITY_PROTOCOLS.contains(&l.security_protocol.as_str()) {
            return invalid(format!(
                "listener {} security protocol {:?} is not one of {}",
                l.name,
                l.security_protocol,
                SECURITY_PROTOCOLS.join(", ")
            ));
        }
    }
    Ok(())
}

/// Most listeners one broker registers.
pub const MAX_BROKER_LISTENERS: usize = 16;

/// Kafka's security protocols.
pub const SECURITY_PROTOCOLS: [&str; 4] = ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"];

/// A listener name: 1 to 64 ASCII letters, digits, `_` or `-`.
pub fn is_listener_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The error for a node id held by another live incarnation.
pub fn broker_node_taken(node_id: i32) -> CoordinatorError {
    CoordinatorError::Invalid(format!(
        "broker node id {node_id} is held by another live incarnation"
    ))
}

/// The error for a renewal whose lease lapsed or was taken over.
pub fn broker_lease_lost(node_id: i32, incarnation: Uuid) -> CoordinatorError {
    CoordinatorError::Invalid(format!(
        "lease lost: broker {node_id} incarnation {incarnation} is not registered (its lease \
         lapsed or another incarnation took the node id); register again"
    ))
}

/// Checks an idempotent batch against a producer's state on one partition.
/// `Ok(Some(offset))`: a duplicate of a batch appended at `offset`; `Ok(None)`: append it.
fn check_sequence(
    state: &ProducerPartitionState,
    known: bool,
    info: ProducerBatchInfo,
    offset_count: i64,
) -> std::result::Result<Option<i64>, BatchRejection> {
    if known && info.producer_epoch < state.epoch {
        return Err(BatchRejection::ProducerFenced);
    }
    if !known || info.producer_epoch > state.epoch {
        // A new producer, or a new epoch: its sequence starts over.
        return if info.base_sequence == 0 {
            Ok(None)
        } else if known {
            Err(BatchRejection::OutOfOrderSequence)
        } else {
            Err(BatchRejection::UnknownProducerId)
        };
    }
    let last_sequence = last_sequence(info.base_sequence, offset_count);
    if let Some((_, _, offset)) = state
        .batches
        .iter()
        .find(|(first, last, _)| *first == info.base_sequence && *last == last_sequence)
    {
        return Ok(Some(*offset));
    }
    let expected = match state.batches.back() {
        Some((_, last, _)) => next_sequence(*last),
        None => 0,
    };
    if info.base_sequence == expected {
        Ok(None)
    } else {
        Err(BatchRejection::OutOfOrderSequence)
    }
}

fn remember_batch(
    state: &mut ProducerPartitionState,
    info: ProducerBatchInfo,
    offset_count: i64,
    base_offset: i64,
) {
    if state.epoch != info.producer_epoch {
        state.epoch = info.producer_epoch;
        state.batches.clear();
    }
    state.batches.push_back((
        info.base_sequence,
        last_sequence(info.base_sequence, offset_count),
        base_offset,
    ));
    while state.batches.len() > PRODUCER_BATCH_MEMORY {
        state.batches.pop_front();
    }
}

/// Sequence numbers wrap from `i32::MAX` to 0.
fn last_sequence(base: i32, offset_count: i64) -> i32 {
    let last = i64::from(base) + offset_count - 1;
    (last % (i64::from(i32::MAX) + 1)) as i32
}

fn next_sequence(last: i32) -> i32 {
    if last == i32::MAX {
        0
    } else {
        last + 1
    }
}

/// Whether idempotent-producer memory last touched at `last_ms` is expired at `now_ms` under
/// Kafka's `producer.id.expiration.ms` (`expiration_ms`): `now - last >= expiration`, as Kafka's
/// `isProducerExpired`. A time of 0 or less is unknown (memory from before times were recorded)
/// and never expired: [`State::decide_expire_producers`] stamps it instead.
pub fn producer_expired(last_ms: i64, now_ms: i64, expiration_ms: i64) -> bool {
    last_ms > 0 && now_ms.saturating_sub(last_ms) >= expiration_ms
}

/// How many changes a [`Entry::ExpireProducers`] makes (0 for any other entry), and what it
/// reports.
pub fn expiry_changes(entry: &Entry) -> usize {
    match entry {
        Entry::ExpireProducers {
            states,
            ids,
            stamped_states,
            stamped_ids,
            ..
        } => states.len() + ids.len() + stamped_states.len() + stamped_ids.len(),
        _ => 0,
    }
}

/// What an expiry entry (or none) did, as [`crate::MetadataExpiry::expire_producers`] reports
/// it; `more` when the decision used its whole budget.
pub fn expiry_step(entry: Option<&Entry>, more: bool) -> ProducerExpiryStep {
    match entry {
        Some(Entry::ExpireProducers { states, ids, .. }) => ProducerExpiryStep {
            states_expired: states.len() as u64,
            ids_expired: ids.len() as u64,
            more,
        },
        _ => ProducerExpiryStep {
            more,
            ..ProducerExpiryStep::default()
        },
    }
}

impl State {
    /// Decides one bounded step of producer expiry at `now_ms` (see
    /// [`crate::MetadataExpiry::expire_producers`]): per-partition states whose last append is
    /// expired, then producer ids with no per-partition state left whose last (re)initialisation
    /// is expired; states and ids without a time are stamped `now_ms`. At most `max` changes;
    /// `None` when there is nothing to change. One scan of all producer memory, in no particular
    /// order (the entry lists what it changes, so replaying it is deterministic).
    pub fn decide_expire_producers(
        &self,
        now_ms: i64,
        expiration_ms: i64,
        max: usize,
    ) -> Option<Entry> {
        let mut states = Vec::new();
        let mut stamped_states = Vec::new();
        let mut kept: std::collections::HashSet<i64> = std::collections::HashSet::new();
        let mut budget = max;
        for (tp, p) in &self.partitions {
            for (id, state) in &p.producers {
                if budget > 0 && state.last_append_ms <= 0 {
                    stamped_states.push((*tp, *id));
                    budget -= 1;
                } else if budget > 0
                    && producer_expired(state.last_append_ms, now_ms, expiration_ms)
                {
                    states.push((*tp, *id));
                    budget -= 1;
                    continue;
                }
                kept.insert(*id);
            }
        }
        let mut ids = Vec::new();
        let mut stamped_ids = Vec::new();
        for id in self.producer_epochs.keys() {
            if budget == 0 {
                break;
            }
            match self.producer_init_ms.get(id) {
                None => stamped_ids.push(*id),
                Some(at) if !kept.contains(id) && producer_expired(*at, now_ms, expiration_ms) => {
                    ids.push(*id)
                }
                Some(_) => continue,
            }
            budget -= 1;
        }
        let entry = Entry::ExpireProducers {
            at_ms: now_ms,
            states,
            ids,
            stamped_states,
            stamped_ids,
        };
        (expiry_changes(&entry) > 0).then_some(entry)
    }

    /// Keeps of an expiry `entry` decided earlier (against an older state, without blocking
    /// writers) what still holds now, checking only the items it lists: states still present
    /// and expired (an append meanwhile refreshed the others), ids still present and expired (a
    /// bump meanwhile refreshed the others), stamps still missing. An id that got a
    /// per-partition state meanwhile may still go: its next InitProducerId then hands out a fresh
    /// id instead of bumping the epoch, which clients accept, and its state expires on its own.
    pub fn recheck_expire_producers(&self, entry: Entry, expiration_ms: i64) -> Option<Entry> {
        let Entry::ExpireProducers {
            at_ms,
            states,
            ids,
            stamped_states,
            stamped_ids,
        } = entry
        else {
            return None;
        };
        let state = |(tp, id): &(TopicPartition, i64)| {
            self.partitions
                .get(tp)
                .and_then(|p| p.producers.get(id))
                .map(|s| s.last_append_ms)
        };
        let entry = Entry::ExpireProducers {
            at_ms,
            states: states
                .into_iter()
                .filter(|k| state(k).is_some_and(|t| producer_expired(t, at_ms, expiration_ms)))
                .collect(),
            ids: ids
                .into_iter()
                .filter(|id| {
                    self.producer_init_ms
                        .get(id)
                        .is_some_and(|t| producer_expired(*t, at_ms, expiration_ms))
                })
                .collect(),
            stamped_states: stamped_states
                .into_iter()
                .filter(|k| state(k).is_some_and(|t| t <= 0))
                .collect(),
            stamped_ids: stamped_ids
                .into_iter()
                .filter(|id| {
                    self.producer_epochs.contains_key(id) && !self.producer_init_ms.contains_key(id)
                })
                .collect(),
        };
        (expiry_changes(&entry) > 0).then_some(entry)
    }

    fn apply_expire_producers(
        &mut self,
        at_ms: i64,
        states: &[(TopicPartition, i64)],
        ids: &[i64],
        stamped_states: &[(TopicPartition, i64)],
        stamped_ids: &[i64],
    ) {
        for (tp, id) in states {
            if let Some(p) = self.partitions.get_mut(tp) {
                p.producers.remove(id);
            }
        }
        for id in ids {
            self.producer_epochs.remove(id);
            self.producer_init_ms.remove(id);
        }
        for (tp, id) in stamped_states {
            if let Some(state) = self
                .partitions
                .get_mut(tp)
                .and_then(|p| p.producers.get_mut(id))
            {
                if state.last_append_ms <= 0 {
                    state.last_append_ms = at_ms;
                }
            }
        }
        for id in stamped_ids {
            if self.producer_epochs.contains_key(id) {
                self.producer_init_ms.entry(*id).or_insert(at_ms);
            }
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
mod tests {
    use super::*;

    fn tp(partition: i32) -> TopicPartition {
        TopicPartition {
            topic_id: Uuid::nil(),
            partition,
        }
    }

    fn batch(partition: i32, position: u64, offset_count: i64) -> CommitBatch {
        CommitBatch {
            tp: tp(partition),
            position,
            length: 10,
            offset_count,
            max_timestamp: position as i64,
            producer: None,
            append: position as u32,
        }
    }

    /// A view of partitions 0 and 1 at high watermarks 100 and 0.
    struct TwoPartitions;

    impl CommitView for TwoPartitions {
        fn high_watermark(&self, tp: TopicPartition) -> Option<i64> {
            match tp.partition {
                0 => Some(100),
                1 => Some(0),
                _ => None,
            }
        }

        fn producer(&self, _: TopicPartition, _: i64) -> Option<&ProducerPartitionState> {
            None
        }
    }

    #[test]
    fn only_runs_adjacent_in_object_and_offsets_share_a_row() {
        let flush = FlushCommit {
            object_key: "o".into(),
            object_size: 50,
            timestamp_ms: 0,
            batches: vec![
                batch(0, 0, 2),
                batch(0, 10, 3), // adjacent: merged
                batch(1, 20, 1),
                batch(0, 30, 1), // a gap in the object: a new row
                batch(9, 40, 1), // unknown partition: rejected, no row
            ],
        };
        let outcomes = decide_commit(&TwoPartitions, &flush);
        assert_eq!(
            outcomes,
            vec![
                BatchOutcome::Appended { base_offset: 100 },
                BatchOutcome::Appended { base_offset: 102 },
                BatchOutcome::Appended { base_offset: 0 },
                BatchOutcome::Appended { base_offset: 105 },
                BatchOutcome::Rejected(BatchRejection::UnknownTopicOrPartition),
            ]
        );
        let effects = commit_effects(&TwoPartitions, &flush, &outcomes);
        let rows: Vec<_> = effects
            .rows
            .iter()
            .map(|(tp, r)| {
                (
                    tp.partition,
                    r.base_offset,
                    r.last_offset,
                    r.position,
                    r.length,
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (0, 100, 104, 0, 20),
                (1, 0, 0, 20, 10),
                (0, 105, 105, 30, 10)
            ]
        );
        assert_eq!(effects.high_watermarks[&tp(0)], 106);
        assert_eq!(effects.high_watermarks[&tp(1)], 1);
        assert!(effects.producers.is_empty());
    }

    #[test]
    fn retention_passes_whole_rows_by_time_or_size() {
        let row = |last_offset, max_timestamp| RetainedRow {
            last_offset,
            length: 100,
            max_timestamp,
        };
        let offsets = PartitionOffsets {
            log_start: 5,
            high_watermark: 40,
        };
        let rows = [row(9, 10), row(19, 20), row(29, -1), row(39, 5)];
        let time = |before| RetentionLimits {
            expire_before_ms: Some(before),
            max_bytes: None,
        };
        assert_eq!(retention_decision(offsets, &rows, 400, &time(10)), (5, 0));
        assert_eq!(retention_decision(offsets, &rows, 400, &time(11)), (10, 1));
        // The row without timestamps stops time retention; the older row behind it waits.
        assert_eq!(
            retention_decision(offsets, &rows, 400, &time(i64::MAX)),
            (20, 2)
        );
        let size = |max| RetentionLimits {
            expire_before_ms: None,
            max_bytes: Some(max),
        };
        // Drop rows while at least the limit remains: 200 bytes do, 100 would not.
        assert_eq!(retention_decision(offsets, &rows, 400, &size(150)), (20, 2));
        assert_eq!(retention_decision(offsets, &rows, 400, &size(100)), (30, 3));
        assert_eq!(retention_decision(offsets, &rows, 400, &size(0)), (40, 4));
        assert_eq!(retention_decision(offsets, &rows, 400, &size(401)), (5, 0));
        // Never beyond the high watermark, never below the current start.
        let short = PartitionOffsets {
            log_start: 5,
            high_watermark: 35,
        };
        assert_eq!(retention_decision(short, &rows, 400, &size(0)), (35, 4));
        assert_eq!(retention_decision(offsets, &[], 0, &size(0)), (5, 0));
    }

    #[test]
    fn delete_records_targets() {
        let offsets = PartitionOffsets {
            log_start: 5,
            high_watermark: 40,
        };
        assert_eq!(delete_records_target(offsets, -1).unwrap(), 40);
        assert_eq!(delete_records_target(offsets, 3).unwrap(), 5);
        assert_eq!(delete_records_target(offsets, 40).unwrap(), 40);
        assert!(matches!(
            delete_records_target(offsets, 41),
            Err(CoordinatorError::OffsetOutOfRange(_))
        ));
        assert!(matches!(
            delete_records_target(offsets, -2),
            Err(CoordinatorError::OffsetOutOfRange(_))
        ));
    }

    #[test]
    fn hex_round_trips_every_byte() {
        let bytes: Vec<u8> = (0..=255u8).chain([0, 255]).collect();
        let text = hex_bytes::encode(&bytes);
        assert_eq!(text.len(), bytes.len() * 2);
        assert!(text.starts_with("000102") && text.ends_with("ff00ff"));
        assert_eq!(hex_bytes::decode(&text).unwrap(), bytes);
        assert_eq!(hex_bytes::decode("0aFf").unwrap(), vec![0x0a, 0xff]);
        assert!(hex_bytes::decode("abc").is_err());
        assert!(hex_bytes::decode("zz").is_err());
    }

    fn committed(topic: &str, partition: i32, offset: i64) -> CommittedOffset {
        CommittedOffset {
            topic: topic.into(),
            partition,
            offset,
            leader_epoch: -1,
            metadata: Some(format!("m{offset}")),
            commit_timestamp_ms: offset,
        }
    }

    /// Groups go through JSON (snapshots, journal entries) unchanged; blobs are hex strings.
    #[test]
    fn groups_survive_json() {
        let mut state = State::default();
        let entries = [
            Entry::CommitOffsets {
                group: "g\0é".into(),
                offsets: vec![committed("a", -1, 1), committed("a", 10, 2)],
            },
            Entry::SaveGroup {
                group: "g\0é".into(),
                state: vec![0, 255, 16],
                at_ms: 5,
            },
            Entry::SaveGroup {
                group: "blob".into(),
                state: vec![],
                at_ms: 0,
            },
            Entry::CommitOffsets {
                group: "gone".into(),
                offsets: vec![committed("b", 0, 3)],
            },
            Entry::DeleteOffsets {
                group: "gone".into(),
                partitions: vec![("b".into(), 0)],
            },
        ];
        for entry in &entries {
            let json = serde_json::to_string(entry).unwrap();
            assert_eq!(&serde_json::from_str::<Entry>(&json).unwrap(), entry);
            state.apply(entry);
        }
        assert!(serde_json::to_string(&entries[1])
            .unwrap()
            .contains(r#""state":"00ff10""#));
        assert_eq!(
            state.groups.keys().collect::<Vec<_>>(),
            vec!["blob", "g\0é"]
        );
        let json = serde_json::to_string(&state).unwrap();
        let back: State = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        assert_eq!(
            back.groups["g\0é"].committed_offsets(),
            vec![committed("a", -1, 1), committed("a", 10, 2)]
        );
        assert_eq!(back.groups["blob"].state, Some(vec![]));
    }

    /// The expiry rule: `now - last >= expiration`; an unknown time (0) never expires.
    #[test]
    fn producer_expiry_rule() {
        assert!(!producer_expired(1_000, 1_999, 1_000));
        assert!(producer_expired(1_000, 2_000, 1_000));
        assert!(!producer_expired(0, i64::MAX, 1_000));
        assert!(!producer_expired(5, i64::MIN, 1));
    }

    /// Producer memory from before times were recorded (an old snapshot: no `last_append_ms`, no
    /// `producer_init_ms`) loads, is stamped by the first expiry step instead of expired, and
    /// expires one expiration after the stamp; the step survives JSON (the journal).
    #[test]
    fn old_producer_memory_is_stamped_then_expires() {
        let p = tp(0);
        let mut state = State::default();
        state.partitions.insert(p, PartitionState::default());
        let json = serde_json::json!({"epoch": 0, "batches": [[0, 4, 0]]});
        let old: ProducerPartitionState = serde_json::from_value(json).unwrap();
        assert_eq!(old.last_append_ms, 0);
        state
            .partitions
            .get_mut(&p)
            .unwrap()
            .producers
            .insert(7, old);
        state.producer_epochs.insert(7, 0);
        state.producer_epochs.insert(8, 2);
        let entry = state.decide_expire_producers(1_000_000, 100, 10).unwrap();
        let step = expiry_step(Some(&entry), false);
        assert_eq!((step.states_expired, step.ids_expired), (0, 0));
        assert_eq!(expiry_changes(&entry), 3); // state 7, ids 7 and 8
        let json = serde_json::to_string(&entry).unwrap();
        assert_eq!(serde_json::from_str::<Entry>(&json).unwrap(), entry);
        state.apply(&entry);
        assert_eq!(state.partitions[&p].producers[&7].last_append_ms, 1_000_000);
        assert_eq!(state.producer_init_ms[&8], 1_000_000);
        // Nothing more to stamp, nothing expired yet.
        assert_eq!(state.decide_expire_producers(1_000_099, 100, 10), None);
        // One expiration later the state goes, and with it id 7; id 8 too (no state).
        let entry = state.decide_expire_producers(1_000_100, 100, 10).unwrap();
        let step = expiry_step(Some(&entry), false);
        assert_eq!((step.states_expired, step.ids_expired), (1, 2));
        // Rechecked after an append refreshed the state: the state stays; the ids still go.
        let mut appended = state.clone();
        appended
            .partitions
            .get_mut(&p)
            .unwrap()
            .producers
            .get_mut(&7)
            .unwrap()
            .last_append_ms = 1_000_050;
        let rechecked = appended
            .recheck_expire_producers(entry.clone(), 100)
            .unwrap();
        let step = expiry_step(Some(&rechecked), false);
        assert_eq!((step.states_expired, step.ids_expired), (0, 2));
        assert_eq!(
            state.recheck_expire_producers(entry.clone(), 100),
            Some(entry.clone())
        );
        state.apply(&entry);
        assert!(state.partitions[&p].producers.is_empty());
        assert!(state.producer_epochs.is_empty() && state.producer_init_ms.is_empty());
        // A limit of one change: `more`.
        state.producer_epochs.insert(9, 0);
        state.producer_epochs.insert(10, 0);
        let entry = state.decide_expire_producers(1, 100, 1).unwrap();
        assert_eq!(expiry_changes(&entry), 1);
    }

    /// Commits stamp the producer state with the flush's time.
    #[test]
    fn commits_stamp_producer_memory() {
        let mut state = State::default();
        state.partitions.insert(tp(0), PartitionState::default());
        let mut b = batch(0, 0, 2);
        b.producer = Some(ProducerBatchInfo {
            producer_id: 3,
            producer_epoch: 0,
            base_sequence: 0,
        });
        let flush = FlushCommit {
            object_key: "o".into(),
            object_size: 10,
            timestamp_ms: 4_242,
            batches: vec![b],
        };
        let outcomes = state.decide_commit(&flush);
        state.apply(&Entry::Commit { flush, outcomes });
        assert_eq!(state.partitions[&tp(0)].producers[&3].last_append_ms, 4_242);
    }

    /// A snapshot written before consumer groups existed still loads.
    #[test]
    fn state_without_groups_loads() {
        let mut old = serde_json::to_value(State::default()).unwrap();
        old.as_object_mut().unwrap().remove("groups");
        let state: State = serde_json::from_value(old).unwrap();
        assert!(state.groups.is_empty());
    }

    /// The time index kept up to date by commits and log start moves is the one rebuilt from
    /// scratch (as after loading a snapshot), whatever the order of timestamps.
    #[test]
    fn time_index_maintained_equals_rebuilt() {
        let meta = TopicMeta {
            name: "t".into(),
            id: Uuid::nil(),
            partitions: 1,
            configs: Default::default(),
        };
        let mut state = State::default();
        state.apply(&Entry::CreateTopic(meta));
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 33
        };
        for i in 0..2000u64 {
            if next() % 5 == 0 {
                let hw = state.partitions[&tp(0)].high_watermark;
                let log_start = state.partitions[&tp(0)].log_start;
                let step = (next() % 40) as i64;
                state.apply(&Entry::LogStart {
                    tp: tp(0),
                    log_start: (log_start + step).min(hw),
                    at_ms: 0,
                });
            } else {
                let ts = (next() % 1000) as i64 + i as i64 / 4 - 1;
                let flush = FlushCommit {
                    object_key: format!("o{i}"),
                    object_size: 10,
                    timestamp_ms: 0,
                    batches: vec![CommitBatch {
                        max_timestamp: ts,
                        ..batch(0, 0, 1 + (next() % 5) as i64)
                    }],
                };
                let outcomes = decide_commit(&state, &flush);
                state.apply(&Entry::Commit { flush, outcomes });
            }
            let mut rebuilt = state.clone();
            rebuilt.rebuild_time_indexes();
            assert_eq!(
                state.partitions[&tp(0)].time_index,
                rebuilt.partitions[&tp(0)].time_index,
                "after step {i}"
            );
            let p = &state.partitions[&tp(0)];
            for target in [-1, 0, 250, 500, 999, 1500] {
                let scanned = p
                    .rows
                    .range(retained_from(p)..)
                    .map(|(_, row)| row)
                    .find(|row| row.max_timestamp >= target)
                    .cloned();
                assert_eq!(state.row_for_timestamp(tp(0), target).unwrap(), scanned);
            }
        }
    }
}
