//! Commits of flushes: the pure decision over a [`CommitView`] ([`decide_commit`]), what a
//! decided flush writes ([`commit_effects`]), applying it, and the commit watermark that fences
//! objects made too long ago.

use super::*;

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

impl State {
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

    pub(super) fn apply_commit(&mut self, flush: &FlushCommit, outcomes: &[BatchOutcome]) {
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
}
