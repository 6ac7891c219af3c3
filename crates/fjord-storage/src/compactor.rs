//! Object compaction: rewrites the data of small level-0 flush objects (many partitions, one
//! object per flush) into large per-partition objects, and swaps the many index rows that
//! referenced it for a few.
//!
//! Three pieces, usable on their own (log compaction, `cleanup.policy=compact`, rewrites the same
//! way and reuses [`read_rows`] and [`build_partition_object`]):
//! - [`plan`] (pure): which runs of a partition's rows to merge. A row takes part when it is
//!   older than [`CompactionSettings::min_age_ms`] (by the time in its object's key, when the
//!   writer made it; the client's timestamps play no part) and smaller than
//!   [`CompactionSettings::settled_row_bytes`] (rows written by an earlier merge are larger and
//!   are left alone). Consecutive such rows form runs, cut at
//!   [`CompactionSettings::target_object_bytes`]; a run becomes one new object. A run that
//!   reached the target, or is bounded by a row left alone, is merged once it has two rows; the
//!   run at the young end of the log (it may still grow) only once it has
//!   [`CompactionSettings::min_rows`] rows, so that a slow partition's tail is not rewritten on
//!   every pass.
//! - [`read_rows`]: one ranged GET per row, of exactly the row's bytes, a few at once.
//! - [`build_partition_object`]: one chunk of the existing object format ([`crate::object`]),
//!   batches copied byte for byte (base offsets stay placeholders: a row's first offset is in
//!   its index row, as for flush objects), cut into rows of at most
//!   [`CompactionSettings::max_row_bytes`] (a larger single batch is a row of its own) so that a
//!   cold catch-up read fetches one row, about 8 MiB, per GET.
//!
//! [`Compactor::compact_partition`] runs them for one partition: plan, read, build, PUT under a
//! new writer-style key ([`crate::gc::object_key`], made just before the upload so that the
//! garbage collector's commit watermark does not refuse it), then
//! [`LogLifecycle::swap_rows`](fjord_coordinator::LogLifecycle::swap_rows): a compare-and-swap
//! on the replaced rows. Losing to retention, DeleteRecords, another swap or topic deletion is
//! normal ([`SwapOutcome::Lost`]: nothing changed, the coordinator registers the new object
//! dead and garbage collection deletes it). An upload whose swap was never decided (the broker
//! died, or the call failed) is an orphan the garbage collector's sweep deletes; the compactor
//! never deletes its own upload, because a failed call may still have committed.
//!
//! Readers are never disturbed: offsets are never renumbered, and a reader that looked up the
//! old rows reads the old objects, which stay for `file.delete.delay.ms` after they die.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fjord_coordinator::state::object_key_time_ms;
use fjord_coordinator::{
    Coordinator, CoordinatorError, IndexRow, RowRef, RowSwap, SwapOutcome, TopicPartition,
};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::batch::peek_header;
use crate::object::ObjectBuilder;

/// How the compactor chooses and sizes its work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionSettings {
    /// A merged object holds about this many bytes (runs are cut here).
    pub target_object_bytes: u64,
    /// Rows of a merged object hold at most this many bytes (unless one batch is larger).
    pub max_row_bytes: u64,
    /// Rows at least this large are left alone: a merge wrote them (its rows are of even size,
    /// close to `max_row_bytes`). Flush objects' rows are smaller (4 MiB flushes by default), so
    /// that a cold read of old data fetches about `max_row_bytes` per GET. Three quarters of
    /// `max_row_bytes` by default.
    pub settled_row_bytes: u64,
    /// Rows whose object was made less than this long ago (ms) are left alone (the hot tail).
    pub min_age_ms: i64,
    /// The youngest run of a partition is merged only once it has this many rows.
    pub min_rows: usize,
    /// Most bytes of rows one scan of a partition looks at.
    pub scan_bytes: u64,
    /// Ranged GETs one merge has in flight at once.
    pub read_concurrency: usize,
    /// Written into the footers of merged objects.
    pub broker_id: i32,
}

impl Default for CompactionSettings {
    fn default() -> Self {
        CompactionSettings {
            target_object_bytes: 64 << 20,
            max_row_bytes: 8 << 20,
            settled_row_bytes: 6 << 20,
            min_age_ms: 300_000,
            min_rows: 16,
            scan_bytes: 1 << 30,
            read_concurrency: 8,
            broker_id: 0,
        }
    }
}

/// A run of consecutive rows of one partition to merge into one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    /// The rows, in offset order, each starting right after the one before.
    pub rows: Vec<IndexRow>,
}

impl Merge {
    /// Bytes of the rows.
    pub fn bytes(&self) -> u64 {
        self.rows.iter().map(|r| r.length).sum()
    }
}

/// What [`plan`] decided for one scan of a partition's rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Runs to merge, in offset order.
    pub merges: Vec<Merge>,
    /// The scan may start here next time: the rows before it are settled, or merged now
    /// (`None`: nothing was scanned).
    pub resume_from: Option<i64>,
}

/// Why a run was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// Adding the next row would pass the target size.
    Full,
    /// A row left alone (settled, or not adjacent) follows.
    Bounded,
    /// The young end of the log, or the end of the scan: the run may still grow.
    Open,
}

/// Which runs of `rows` (a partition's rows in offset order) to merge at `now_ms`. Pure.
pub fn plan(rows: &[IndexRow], now_ms: i64, settings: &CompactionSettings) -> Plan {
    let cutoff = now_ms.saturating_sub(settings.min_age_ms);
    let mut merges = Vec::new();
    let mut run: Vec<IndexRow> = Vec::new();
    let mut run_bytes = 0u64;
    // The first row that a later pass must look at again.
    let mut resume_from: Option<i64> = None;
    let mut close = |run: &mut Vec<IndexRow>, how: Close, resume_from: &mut Option<i64>| {
        let rows = std::mem::take(run);
        let Some(first) = rows.first().map(|r| r.base_offset) else {
            return;
        };
        let merge = rows.len() >= 2 && (how != Close::Open || rows.len() >= settings.min_rows);
        if merge {
            merges.push(Merge { rows });
        }
        if how == Close::Open {
            // The run may still grow (or, merged, its new last row may merge with what comes
            // next): a later scan starts here. A run bounded by a settled row never changes.
            resume_from.get_or_insert(first);
        }
    };
    let mut young = false;
    let mut last_seen = None;
    for row in rows {
        let old = object_key_time_ms(&row.object_key).is_none_or(|made| made <= cutoff);
        if !old {
            young = true;
            close(&mut run, Close::Open, &mut resume_from);
            resume_from.get_or_insert(row.base_offset);
            break;
        }
        last_seen = Some(row.last_offset + 1);
        let adjacent = run
            .last()
            .is_none_or(|prev| prev.last_offset + 1 == row.base_offset);
        if row.length >= settings.settled_row_bytes || !adjacent {
            close(&mut run, Close::Bounded, &mut resume_from);
            run_bytes = 0;
            if row.length >= settings.settled_row_bytes {
                continue;
            }
        }
        if !run.is_empty() && run_bytes + row.length > settings.target_object_bytes {
            close(&mut run, Close::Full, &mut resume_from);
            run_bytes = 0;
        }
        run_bytes += row.length;
        run.push(row.clone());
    }
    if !young {
        close(&mut run, Close::Open, &mut resume_from);
    }
    Plan {
        merges,
        resume_from: resume_from.or(last_seen),
    }
}

/// Errors of a merge (the next pass tries again).
#[derive(Debug, thiserror::Error)]
pub enum CompactionError {
    /// Reading or writing object storage failed.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// The coordinator failed.
    #[error("coordinator: {0}")]
    Coordinator(#[from] CoordinatorError),
    /// Stored data does not match its index rows.
    #[error("row of {key} at offset {offset}: {reason}")]
    Corrupt {
        /// Object key.
        key: String,
        /// The row's base offset.
        offset: i64,
        /// What is wrong.
        reason: String,
    },
}

/// Reads the bytes of `rows`: one ranged GET per row, `concurrency` at once, in row order.
pub async fn read_rows(
    store: &Arc<dyn ObjectStore>,
    rows: &[IndexRow],
    concurrency: usize,
) -> Result<Vec<Bytes>, CompactionError> {
    let gets: Vec<_> = rows
        .iter()
        .map(|row| read_row(store.clone(), row.clone()))
        .collect();
    futures::stream::iter(gets)
        .buffered(concurrency.max(1))
        .try_collect()
        .await
}

async fn read_row(store: Arc<dyn ObjectStore>, row: IndexRow) -> Result<Bytes, CompactionError> {
    let location = Path::from(row.object_key.as_str());
    let bytes = store
        .get_range(&location, row.position..row.position + row.length)
        .await?;
    if bytes.len() as u64 != row.length {
        return Err(CompactionError::Corrupt {
            key: row.object_key.clone(),
            offset: row.base_offset,
            reason: format!("{} bytes read, {} expected", bytes.len(), row.length),
        });
    }
    Ok(bytes)
}

/// One batch to put into a per-partition object: its first offset and its bytes as stored.
#[derive(Debug, Clone)]
pub struct PlacedBatch {
    /// The batch's first offset.
    pub base_offset: i64,
    /// The batch as stored (its base offset field need not be set).
    pub bytes: Bytes,
}

/// A per-partition object and its index rows (their object key still empty).
#[derive(Debug, Clone)]
pub struct BuiltObject {
    /// The object's bytes.
    pub object: Bytes,
    /// Its rows, in offset order.
    pub rows: Vec<IndexRow>,
}

/// The batches of `raw` rows (as [`read_rows`] returns them), with their offsets, checking that
/// each row spans exactly its offsets.
pub fn split_rows(rows: &[IndexRow], raw: &[Bytes]) -> Result<Vec<PlacedBatch>, CompactionError> {
    let mut batches = Vec::new();
    for (row, bytes) in rows.iter().zip(raw) {
        let corrupt = |reason: String| CompactionError::Corrupt {
            key: row.object_key.clone(),
            offset: row.base_offset,
            reason,
        };
        let mut offset = row.base_offset;
        let mut pos = 0usize;
        while pos < bytes.len() {
            let header = peek_header(&bytes[pos..]).map_err(|e| corrupt(e.to_string()))?;
            if header.size == 0 || pos + header.size > bytes.len() {
                return Err(corrupt("batch framing".into()));
            }
            batches.push(PlacedBatch {
                base_offset: offset,
                bytes: bytes.slice(pos..pos + header.size),
            });
            offset += header.offset_count();
            pos += header.size;
        }
        if offset != row.last_offset + 1 {
            return Err(corrupt(format!(
                "batches end at offset {}, the row at {}",
                offset - 1,
                row.last_offset
            )));
        }
    }
    Ok(batches)
}

/// Builds one object holding `batches` of partition `tp` (in offset order) as one chunk, cut
/// into index rows of at most `max_row_bytes` (a larger batch is a row of its own), of about
/// even sizes (so that 64 MiB makes eight rows of 8 MiB, not eight and a sliver), and at every
/// gap between offsets (a row's offsets are dense). The rows' object keys are left empty.
pub fn build_partition_object(
    tp: TopicPartition,
    batches: &[PlacedBatch],
    max_row_bytes: u64,
    broker_id: i32,
    now_ms: i64,
) -> Result<BuiltObject, crate::batch::BatchError> {
    let total: usize = batches.iter().map(|b| b.bytes.len()).sum();
    // Rows of even size: as few rows as `max_row_bytes` allows, none of them a small leftover.
    let max_row_bytes = max_row_bytes.max(1);
    let rows_needed = (total as u64).div_ceil(max_row_bytes).max(1);
    let even = (total as u64).div_ceil(rows_needed);
    let mut builder = ObjectBuilder::with_capacity(total);
    let mut rows: Vec<IndexRow> = Vec::new();
    for batch in batches {
        let header = peek_header(&batch.bytes)?;
        let count = header.offset_count();
        let (position, _) = builder.push(
            tp.topic_id,
            tp.partition,
            &batch.bytes,
            count,
            header.max_timestamp,
        );
        let length = batch.bytes.len() as u64;
        let extend = rows.last().is_some_and(|row| {
            row.last_offset + 1 == batch.base_offset
                && row.length < even
                && row.length + length <= max_row_bytes
        });
        match rows.last_mut() {
            Some(row) if extend => {
                row.last_offset += count;
                row.length += length;
                row.max_timestamp = row.max_timestamp.max(header.max_timestamp);
            }
            _ => rows.push(IndexRow {
                base_offset: batch.base_offset,
                last_offset: batch.base_offset + count - 1,
                object_key: String::new(),
                position,
                length,
                max_timestamp: header.max_timestamp,
            }),
        }
    }
    Ok(BuiltObject {
        object: builder.finish(broker_id, now_ms),
        rows,
    })
}

/// The reference a swap compares against for `row`.
pub fn row_ref(row: &IndexRow) -> RowRef {
    RowRef::from(row)
}

/// What one partition's compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionReport {
    /// Rows scanned.
    pub rows_scanned: u64,
    /// Rows left alone because retention deletes them soon.
    pub rows_expiring: u64,
    /// Merges whose swap succeeded.
    pub swaps: u64,
    /// Merges that lost to retention, DeleteRecords, another swap or topic deletion.
    pub lost: u64,
    /// Index rows replaced by successful swaps.
    pub rows_replaced: u64,
    /// Index rows written by successful swaps.
    pub rows_written: u64,
    /// Bytes uploaded (merged objects, whatever their swap's outcome).
    pub bytes_written: u64,
    /// Where the next scan of the partition may start.
    pub resume_from: Option<i64>,
}

/// A hook run between the upload of a merged object and its swap (tests use it to stop a
/// broker mid-merge).
pub type BeforeSwap = Arc<dyn Fn(&str) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// Merges the rows of partitions into per-partition objects.
#[derive(Clone)]
pub struct Compactor {
    store: Arc<dyn ObjectStore>,
    coordinator: Arc<dyn Coordinator>,
    clock: Arc<dyn fjord_coordinator::clock::Clock>,
    settings: CompactionSettings,
    before_swap: Option<BeforeSwap>,
}

impl Compactor {
    /// A compactor over `store` and `coordinator`, with times from `clock`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        coordinator: Arc<dyn Coordinator>,
        clock: Arc<dyn fjord_coordinator::clock::Clock>,
        settings: CompactionSettings,
    ) -> Self {
        Compactor {
            store,
            coordinator,
            clock,
            settings,
            before_swap: None,
        }
    }

    /// Runs `hook` with the new object's key after each upload, before its swap.
    pub fn with_before_swap(mut self, hook: Option<BeforeSwap>) -> Self {
        self.before_swap = hook;
        self
    }

    /// The settings.
    pub fn settings(&self) -> &CompactionSettings {
        &self.settings
    }

    /// Scans `tp` from `from_offset` (or its log start, if later) and merges what [`plan`]
    /// chooses, stopping before `max_bytes` of merged rows (at least one merge is done when any
    /// is planned). A merge that loses its swap is counted, not an error.
    ///
    /// Rows at the start of the log whose newest record is older than `expiring_before_ms`
    /// (when given) are left alone: retention deletes them soon, so merging them is wasted work
    /// that would, moreover, race retention and often lose its swap.
    pub async fn compact_partition(
        &self,
        tp: TopicPartition,
        from_offset: i64,
        max_bytes: u64,
        expiring_before_ms: Option<i64>,
    ) -> Result<PartitionReport, CompactionError> {
        let mut report = PartitionReport::default();
        let offsets = self.coordinator.partition_offsets(tp).await?;
        let from = from_offset.max(offsets.log_start);
        if from >= offsets.high_watermark {
            report.resume_from = Some(from);
            return Ok(report);
        }
        let rows = self
            .coordinator
            .index_rows(tp, from, self.settings.scan_bytes)
            .await?;
        report.rows_scanned = rows.len() as u64;
        let expiring = expiring_before_ms.map_or(0, |before| {
            rows.iter().take_while(|r| r.max_timestamp < before).count()
        });
        report.rows_expiring = expiring as u64;
        let plan = plan(&rows[expiring..], self.clock.now_ms(), &self.settings);
        report.resume_from = plan.resume_from;
        let mut budget = max_bytes;
        for merge in plan.merges {
            let bytes = merge.bytes();
            if report.swaps + report.lost > 0 && bytes > budget {
                // Out of budget: the next pass starts at this run.
                let first = merge.rows.first().map(|r| r.base_offset);
                report.resume_from = match (report.resume_from, first) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                break;
            }
            budget = budget.saturating_sub(bytes);
            let (outcome, written, rows_written) = self.merge(tp, &merge).await?;
            report.bytes_written += written;
            match outcome {
                SwapOutcome::Swapped => {
                    report.swaps += 1;
                    report.rows_replaced += merge.rows.len() as u64;
                    report.rows_written += rows_written;
                }
                SwapOutcome::Lost => {
                    report.lost += 1;
                    // The partition changed under the plan; look at it afresh next time.
                    report.resume_from = Some(from);
                    break;
                }
            }
        }
        Ok(report)
    }

    /// Reads, builds, uploads and swaps one merge; the swap's outcome, the bytes uploaded and
    /// the rows written.
    pub async fn merge(
        &self,
        tp: TopicPartition,
        merge: &Merge,
    ) -> Result<(SwapOutcome, u64, u64), CompactionError> {
        let raw = read_rows(&self.store, &merge.rows, self.settings.read_concurrency).await?;
        let batches = split_rows(&merge.rows, &raw)?;
        drop(raw);
        let now = self.clock.now_ms();
        let built = build_partition_object(
            tp,
            &batches,
            self.settings.max_row_bytes,
            self.settings.broker_id,
            now,
        )
        .map_err(|e| CompactionError::Corrupt {
            key: String::new(),
            offset: merge.rows.first().map_or(-1, |r| r.base_offset),
            reason: e.to_string(),
        })?;
        drop(batches);
        // The key is made just before the upload: the commit watermark refuses old keys.
        let key = crate::gc::object_key(self.clock.now_ms());
        let size = built.object.len() as u64;
        self.store
            .put(&Path::from(key.as_str()), built.object.into())
            .await?;
        if let Some(hook) = &self.before_swap {
            hook(&key).await;
        }
        let rows: Vec<IndexRow> = built
            .rows
            .into_iter()
            .map(|row| IndexRow {
                object_key: key.clone(),
                ..row
            })
            .collect();
        let rows_written = rows.len() as u64;
        let outcome = match self
            .coordinator
            .swap_rows(RowSwap {
                tp,
                replaced: merge.rows.iter().map(row_ref).collect(),
                object_key: key.clone(),
                object_size: size,
                rows,
                cleaned_to: None,
            })
            .await
        {
            Ok(outcome) => outcome,
            // The topic went away meanwhile: the swap lost to its deletion. The new object is
            // unknown to the ledger, an orphan the garbage collector's sweep deletes.
            Err(CoordinatorError::UnknownTopic(_)) => SwapOutcome::Lost,
            Err(e) => return Err(e.into()),
        };
        tracing::debug!(
            topic_id = %tp.topic_id,
            partition = tp.partition,
            object = %key,
            rows = merge.rows.len(),
            bytes = size,
            ?outcome,
            "compaction merge"
        );
        Ok((outcome, size, rows_written))
    }
}

/// Sleeps `pause` (a test hook for [`Compactor::with_before_swap`]).
pub fn pause_before_swap(pause: Duration) -> BeforeSwap {
    Arc::new(move |key: &str| {
        tracing::warn!(object = %key, pause_ms = pause.as_millis() as u64, "compaction: pausing before the swap (test setting)");
        Box::pin(tokio::time::sleep(pause))
    })
}

#[cfg(test)]
mod tests;
