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
//!   [`apply_config_changes`] for the other calls.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::*;
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
    },
    /// Objects were deleted from storage and are forgotten.
    ForgetObjects(Vec<String>),
}

/// Sequence memory of one producer on one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerPartitionState {
    /// The producer epoch the batches belong to.
    pub epoch: i16,
    /// Recent batches: (first sequence, last sequence, base offset), oldest first.
    pub batches: VecDeque<(i32, i32, i64)>,
}

/// One partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// First readable offset.
    pub log_start: i64,
    /// Next offset to assign.
    pub high_watermark: i64,
    /// Index rows by base offset.
    pub rows: BTreeMap<i64, IndexRow>,
    /// Idempotent producer state by producer id.
    pub producers: HashMap<i64, ProducerPartitionState>,
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Topics by name.
    pub topics: BTreeMap<String, TopicMeta>,
    /// Partitions (serialized as a list because JSON keys must be strings).
    #[serde(with = "partitions_as_list")]
    pub partitions: HashMap<TopicPartition, PartitionState>,
    /// The next unused producer id.
    pub next_producer_id: i64,
    /// The current epoch of every producer id handed out.
    pub producer_epochs: BTreeMap<i64, i16>,
    /// Objects known to the index.
    pub objects: BTreeMap<String, ObjectState>,
    /// Outcomes of recent commits by object key, so that a repeated commit is idempotent.
    pub recent_commits: VecDeque<(String, Vec<BatchOutcome>)>,
}

/// How many commits' outcomes are remembered for idempotent re-commits.
const RECENT_COMMITS: usize = 256;

impl State {
    /// Topic by id.
    pub fn topic_by_id(&self, id: Uuid) -> Option<&TopicMeta> {
        self.topics.values().find(|t| t.id == id)
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

    /// Decides an InitProducerId.
    pub fn decide_producer(&self, request: InitProducer) -> Result<Entry> {
        let current = bump_target(request).and_then(|id| self.producer_epochs.get(&id).copied());
        Ok(match producer_decision(request, current)? {
            ProducerDecision::Bump(identity) => Entry::Producer {
                identity,
                next_producer_id: self.next_producer_id,
            },
            ProducerDecision::Fresh => Entry::Producer {
                identity: ProducerIdentity {
                    producer_id: self.next_producer_id,
                    producer_epoch: 0,
                },
                next_producer_id: self.next_producer_id + 1,
            },
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
            } => {
                self.producer_epochs
                    .insert(identity.producer_id, identity.producer_epoch);
                self.next_producer_id = *next_producer_id;
            }
            Entry::ForgetObjects(keys) => {
                for key in keys {
                    if self.objects.get(key).is_some_and(|o| o.rows == 0) {
                        self.objects.remove(key);
                    }
                }
            }
        }
    }

    fn apply_commit(&mut self, flush: &FlushCommit, outcomes: &[BatchOutcome]) {
        let effects = commit_effects(&*self, flush, outcomes);
        let mut rows_added = 0u64;
        for (tp, row) in effects.rows {
            if let Some(partition) = self.partitions.get_mut(&tp) {
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
        Ok(self
            .partition(tp)?
            .rows
            .values()
            .find(|row| row.max_timestamp >= timestamp)
            .cloned())
    }

    /// The earliest row holding the partition's largest timestamp.
    pub fn row_with_max_timestamp(&self, tp: TopicPartition) -> Result<Option<IndexRow>> {
        let mut best: Option<&IndexRow> = None;
        for row in self.partition(tp)?.rows.values() {
            if best.is_none_or(|b| row.max_timestamp > b.max_timestamp) {
                best = Some(row);
            }
        }
        Ok(best.cloned())
    }

    fn partition(&self, tp: TopicPartition) -> Result<&PartitionState> {
        self.partitions.get(&tp).ok_or_else(|| {
            CoordinatorError::UnknownTopic(format!("{}/{}", tp.topic_id, tp.partition))
        })
    }

    /// Object references for garbage collection.
    pub fn object_references(&self) -> ObjectReferences {
        let mut refs = ObjectReferences::default();
        for (key, object) in &self.objects {
            match object.dead_since {
                Some(at) if object.rows == 0 => {
                    refs.dead.insert(key.clone(), at);
                }
                _ => {
                    refs.live.insert(key.clone());
                }
            }
        }
        refs
    }
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
pub fn decide_commit(view: &impl CommitView, flush: &FlushCommit) -> Vec<BatchOutcome> {
    // Overlays of what earlier batches of this same flush change.
    let mut next_offsets: HashMap<TopicPartition, i64> = HashMap::new();
    let mut producers: HashMap<(TopicPartition, i64), ProducerPartitionState> = HashMap::new();
    let mut outcomes = Vec::with_capacity(flush.batches.len());
    for batch in &flush.batches {
        let Some(high_watermark) = view.high_watermark(batch.tp) else {
            outcomes.push(BatchOutcome::Rejected(
                BatchRejection::UnknownTopicOrPartition,
            ));
            continue;
        };
        let next = next_offsets.entry(batch.tp).or_insert(high_watermark);
        if let Some(info) = batch.producer {
            let stored = view.producer(batch.tp, info.producer_id);
            let current = producers
                .entry((batch.tp, info.producer_id))
                .or_insert_with(|| stored.cloned().unwrap_or_default());
            let known = !current.batches.is_empty() || stored.is_some();
            match check_sequence(current, known, info, batch.offset_count) {
                Err(rejection) => {
                    outcomes.push(BatchOutcome::Rejected(rejection));
                    continue;
                }
                Ok(Some(base_offset)) => {
                    outcomes.push(BatchOutcome::Duplicate { base_offset });
                    continue;
                }
                Ok(None) => remember_batch(current, info, batch.offset_count, *next),
            }
        }
        outcomes.push(BatchOutcome::Appended { base_offset: *next });
        *next += batch.offset_count;
    }
    outcomes
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
        }
    }
    effects
}

/// What an InitProducerId call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProducerDecision {
    /// Hand out a new producer id at epoch 0.
    Fresh,
    /// Keep the id, with this bumped epoch.
    Bump(ProducerIdentity),
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

mod partitions_as_list {
    use std::collections::HashMap;

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
}
