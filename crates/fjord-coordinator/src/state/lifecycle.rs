//! The log's lifecycle: DeleteRecords and retention move a partition's log start, compaction
//! swaps replace rows with rows in a new object, rows wholly below the log start are pruned and
//! their objects lose references, and objects without references become dead (for GC).

use super::*;

/// The base offset of the first index row of `p` that holds offsets at or after its log start
/// (rows wholly below it are no longer part of the log).
pub(super) fn retained_from(p: &PartitionState) -> i64 {
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

impl State {
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

    pub(super) fn apply_swap(&mut self, swap: &RowSwap, outcome: SwapOutcome, at_ms: i64) {
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

    /// Deletes the index rows of `tp` wholly below its log start; their objects lose a
    /// reference each at `at_ms`.
    pub(super) fn prune_rows(&mut self, tp: TopicPartition, at_ms: i64) {
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

    pub(super) fn unreference(&mut self, key: &str, at_ms: i64) {
        if let Some(object) = self.objects.get_mut(key) {
            object.rows = object.rows.saturating_sub(1);
            if object.rows == 0 {
                object.dead_since = Some(at_ms);
            }
        }
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
