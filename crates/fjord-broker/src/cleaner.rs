//! The log cleaner: the background duty that compacts topics whose `cleanup.policy` includes
//! `compact`, keeping the latest record of every key (Kafka's log cleaner; the record-level
//! rewrite is [`fjord_storage::cleaner`]).
//!
//! Every [`CleanerSettings::check_interval`] (Kafka's `log.cleaner.backoff.ms`), the broker that
//! runs the cluster's background duties runs one [`pass`] over the compacted partitions. For each
//! partition, with Kafka's topic configs:
//! - The log splits at the cleaner checkpoint ([`LogLifecycle::cleaned_to`]): the *clean* part
//!   below it was compacted before, the *dirty* part above it was not.
//! - Dirty index rows are *cleanable* from the checkpoint up to the first row that is still
//!   open or too young: open means written (the time in its object's key) less than `segment.ms`
//!   ago, Fjord's counterpart of Kafka's active segment; too young means its max timestamp is
//!   within `min.compaction.lag.ms`. `max.compaction.lag.ms` caps `segment.ms` (as Kafka rolls
//!   the active segment for it).
//! - The partition is cleaned when the cleanable dirty bytes are at least
//!   `min.cleanable.dirty.ratio` of the clean plus cleanable dirty bytes, or when its oldest
//!   cleanable dirty row is older than `max.compaction.lag.ms`, or when a tombstone kept by an
//!   earlier cleaning has passed `delete.retention.ms` (what KIP-534 does for Kafka; remembered in
//!   memory only, so after a restart such tombstones go at the next cleaning).
//! - Cleaning: an [`OffsetMap`] of the latest offset of every key in the cleanable dirty rows,
//!   built row by row until the map would pass [`CleanerSettings::dedupe_buffer_bytes`]
//!   (Kafka's `log.cleaner.dedupe.buffer.size`) or the pass's byte budget: the end of the last
//!   row mapped is the new checkpoint. Then every row from the log start to that end is
//!   rewritten in groups of about [`CleanerSettings::max_object_bytes`]: each group becomes one
//!   per-partition object (PUT under a fresh time-prefixed key), swapped for the rows it replaces
//!   in one compare-and-swap ([`LogLifecycle::swap_rows`]); the last group's swap also moves the
//!   checkpoint. A group in which nothing would change is left alone (except the last one, which
//!   carries the checkpoint).
//!
//! Defaults and Kafka: Kafka's `segment.ms` default is 7 days, so a quiet compacted topic may
//! wait a week for its first cleaning. Fjord's rows are immutable from the moment they are
//! written: there is no active segment to roll, only the question of how soon to rewrite. Topics
//! that do not set `segment.ms` get the broker's `--log-roll-ms` (Kafka's `log.roll.ms`), 30 s by
//! default, and the cleaner looks every 15 s (Kafka's `log.cleaner.backoff.ms` default), so data
//! is compacted within a minute of becoming cleanable on an otherwise idle broker. A topic that
//! sets `segment.ms` gets exactly that.
//!
//! Races: every swap is a compare-and-swap on the rows it replaces, so it loses cleanly to
//! retention (`compact,delete`; retention runs as for any `delete` topic), DeleteRecords,
//! object compaction's swaps, another broker's cleaner and topic deletion; a lost swap is
//! counted and the partition is tried again next pass. The coordinator records the object of a
//! lost swap as dead at once (garbage collection deletes it); that of a swap that failed before
//! the coordinator saw it is an orphan for the orphan sweep. When nothing survives a group, no
//! object is written: the swap names a fresh key with no rows (dead at once, nothing to delete).
//!
//! Safety of the rewrite: a record is dropped only when the map holds a later offset for its key
//! (the later record exists in the dirty range and is never dropped by this cleaning), when it has
//! no key, or when it is a tombstone older than `delete.retention.ms`. Records above the mapped
//! range are never read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fjord_coordinator::state::object_key_time_ms;
use fjord_coordinator::{
    Coordinator, CoordinatorError, IndexRow, RowRef, RowSwap, SwapOutcome, TopicMeta,
    TopicPartition,
};
use fjord_storage::batch::materialize;
use fjord_storage::cleaner::{
    clean_batches, keys_of, plan_object, CleanParams, CleanStats, OffsetMap,
};
use fjord_storage::reader::Reader;
use fjord_storage::records::MAX_SCANNED_BYTES;
use object_store::{ObjectStore, ObjectStoreExt};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::duty::{self, Duty};
use crate::topic_config::{has_cleanup_policy, long_config};
use crate::Broker;

/// Fjord's default for `segment.ms` of topics that do not set it (`--log-roll-ms`): 30 s.
pub const DEFAULT_SEGMENT_MS: i64 = 30_000;

/// Cleaner settings (broker-wide).
#[derive(Debug, Clone)]
pub struct CleanerSettings {
    /// Whether the cleaner runs (Kafka's `log.cleaner.enable`).
    pub enabled: bool,
    /// How often a pass runs (Kafka's `log.cleaner.backoff.ms`).
    pub check_interval: Duration,
    /// `segment.ms` of topics that do not set it (Kafka's `log.roll.ms`, shorter by default).
    pub default_segment_ms: i64,
    /// Most memory the key map of one cleaning holds (Kafka's `log.cleaner.dedupe.buffer.size`).
    pub dedupe_buffer_bytes: usize,
    /// Most bytes of dirty data one pass maps (bounds a pass's reads with the rewrite).
    pub max_dirty_bytes_per_pass: u64,
    /// Input bytes rewritten into one object (and one swap).
    pub max_object_bytes: u64,
}

impl Default for CleanerSettings {
    fn default() -> Self {
        CleanerSettings {
            enabled: true,
            check_interval: Duration::from_secs(15),
            default_segment_ms: DEFAULT_SEGMENT_MS,
            dedupe_buffer_bytes: 128 << 20,
            max_dirty_bytes_per_pass: 1 << 30,
            max_object_bytes: 64 << 20,
        }
    }
}

/// Counters of the cleaner since the broker started.
#[derive(Debug, Default)]
pub struct CleanerStats {
    /// Passes run.
    pub passes: AtomicU64,
    /// Failed calls or reads (logged; the partition is retried next pass).
    pub errors: AtomicU64,
    /// Cleanings finished (the checkpoint moved).
    pub cleanings: AtomicU64,
    /// Swaps lost to a concurrent change (retried next pass).
    pub swaps_lost: AtomicU64,
    /// Records read by rewrites.
    pub records_read: AtomicU64,
    /// Records removed (superseded, keyless or expired tombstones).
    pub records_removed: AtomicU64,
    /// Bytes read by rewrites.
    pub bytes_read: AtomicU64,
    /// Bytes written by rewrites.
    pub bytes_written: AtomicU64,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Compacted partitions looked at.
    pub partitions: u64,
    /// Partitions cleaned (checkpoint moved).
    pub cleaned: u64,
    /// Swaps lost.
    pub lost: u64,
    /// Errors.
    pub errors: u64,
    /// Records removed.
    pub records_removed: u64,
    /// Whether the pass stopped at its byte budget.
    pub incomplete: bool,
}

/// What the cleaner remembers between passes: for partitions whose last cleaning kept
/// tombstones, when the oldest of them may go (ms).
#[derive(Debug, Default)]
pub struct CleanerState {
    tombstones_due: Mutex<HashMap<TopicPartition, i64>>,
    cursor: Mutex<Option<(String, i32)>>,
}

/// A compacted topic's configs, resolved with defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactionConfig {
    /// `min.cleanable.dirty.ratio`.
    pub min_dirty_ratio: f64,
    /// `min.compaction.lag.ms`.
    pub min_lag_ms: i64,
    /// `max.compaction.lag.ms`.
    pub max_lag_ms: i64,
    /// `segment.ms` (or the broker default).
    pub segment_ms: i64,
    /// `delete.retention.ms`.
    pub delete_retention_ms: i64,
}

/// The compaction configs of `topic`, or `None` when its `cleanup.policy` lacks `compact`.
pub fn compaction_config(
    topic: &TopicMeta,
    settings: &CleanerSettings,
) -> Option<CompactionConfig> {
    let configs = &topic.configs;
    if !has_cleanup_policy(configs, "compact") {
        return None;
    }
    let long = |key: &str, default: i64| long_config(configs, key, default);
    Some(CompactionConfig {
        min_dirty_ratio: configs
            .get("min.cleanable.dirty.ratio")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite())
            .unwrap_or(0.5),
        min_lag_ms: long("min.compaction.lag.ms", 0).max(0),
        max_lag_ms: long("max.compaction.lag.ms", i64::MAX).max(0),
        segment_ms: long("segment.ms", settings.default_segment_ms).max(0),
        delete_retention_ms: long("delete.retention.ms", 86_400_000).max(0),
    })
}

/// Where a partition's log stands for the cleaner.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Rows below the checkpoint (already cleaned).
    pub clean: Vec<IndexRow>,
    /// Cleanable dirty rows, in order.
    pub dirty: Vec<IndexRow>,
    /// `dirty bytes / (clean + dirty bytes)`.
    pub dirty_ratio: f64,
    /// Whether `max.compaction.lag.ms` forces a cleaning.
    pub overdue: bool,
}

/// Splits a partition's rows (from the log start, in order) at the checkpoint and the first
/// uncleanable row. Pure: the decision the module docs describe.
pub fn plan(rows: Vec<IndexRow>, cleaned_to: i64, config: &CompactionConfig, now_ms: i64) -> Plan {
    let open_after = now_ms.saturating_sub(config.segment_ms.min(config.max_lag_ms));
    let young_after = now_ms.saturating_sub(config.min_lag_ms);
    let (clean, rest): (Vec<IndexRow>, Vec<IndexRow>) =
        rows.into_iter().partition(|r| r.last_offset < cleaned_to);
    let mut dirty = Vec::new();
    for row in rest {
        let written = object_key_time_ms(&row.object_key).unwrap_or(row.max_timestamp);
        if written > open_after || row.max_timestamp > young_after {
            break;
        }
        dirty.push(row);
    }
    let clean_bytes: u64 = clean.iter().map(|r| r.length).sum();
    let dirty_bytes: u64 = dirty.iter().map(|r| r.length).sum();
    let total = clean_bytes + dirty_bytes;
    let dirty_ratio = if total == 0 {
        0.0
    } else {
        dirty_bytes as f64 / total as f64
    };
    let overdue = config.max_lag_ms < i64::MAX
        && dirty
            .first()
            .is_some_and(|r| r.max_timestamp < now_ms.saturating_sub(config.max_lag_ms));
    Plan {
        clean,
        dirty,
        dirty_ratio,
        overdue,
    }
}

/// Why a cleaning stopped.
#[derive(Debug, thiserror::Error)]
pub enum CleanFailure {
    /// A coordinator call failed.
    #[error("coordinator: {0}")]
    Coordinator(#[from] CoordinatorError),
    /// Reading a row failed.
    #[error("reading a row: {0}")]
    Read(String),
    /// The data did not parse.
    #[error("records: {0}")]
    Records(#[from] fjord_storage::cleaner::CleanError),
    /// Storing the new object failed.
    #[error("storing the cleaned object: {0}")]
    Put(#[from] object_store::Error),
}

/// What the cleaner needs.
pub struct CleanerContext<'a> {
    /// The coordinator.
    pub coordinator: &'a Arc<dyn Coordinator>,
    /// The read path.
    pub reader: &'a Reader,
    /// Where new objects go.
    pub store: &'a Arc<dyn ObjectStore>,
    /// This broker's node id (written into object footers).
    pub node_id: i32,
    /// The time.
    pub clock: &'a dyn fjord_coordinator::clock::Clock,
    /// Settings.
    pub settings: &'a CleanerSettings,
    /// Counters.
    pub stats: &'a CleanerStats,
    /// Memory between passes.
    pub state: &'a CleanerState,
}

/// What cleaning one partition did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionOutcome {
    /// Whether the checkpoint moved.
    pub cleaned: bool,
    /// Whether a swap was lost.
    pub lost: bool,
    /// Dirty bytes mapped.
    pub dirty_bytes: u64,
    /// Records removed.
    pub records_removed: u64,
}

/// All rows of `tp` from its log start, in order.
async fn all_rows(
    coordinator: &Arc<dyn Coordinator>,
    tp: TopicPartition,
) -> Result<(Vec<IndexRow>, i64), CoordinatorError> {
    let offsets = coordinator.partition_offsets(tp).await?;
    let mut rows: Vec<IndexRow> = Vec::new();
    let mut from = offsets.log_start;
    while from < offsets.high_watermark {
        let batch = coordinator.index_rows(tp, from, 64 << 20).await?;
        let Some(last) = batch.last() else { break };
        let next = last.last_offset + 1;
        rows.extend(batch.into_iter().filter(|r| r.last_offset >= from));
        if next <= from {
            break;
        }
        from = next;
    }
    Ok((rows, offsets.log_start))
}

async fn read_run(reader: &Reader, row: &IndexRow) -> Result<bytes::Bytes, CleanFailure> {
    let raw = reader
        .read_row(row)
        .await
        .map_err(|e| CleanFailure::Read(e.to_string()))?;
    let (bytes, _) = materialize(&raw, row.base_offset, row.base_offset, usize::MAX)
        .map_err(fjord_storage::cleaner::CleanError::from)?;
    Ok(bytes)
}

/// Cleans one partition if it is due; `budget` is the dirty bytes this pass may still map.
pub async fn clean_partition(
    cx: &CleanerContext<'_>,
    tp: TopicPartition,
    config: &CompactionConfig,
    budget: u64,
) -> Result<PartitionOutcome, CleanFailure> {
    let mut outcome = PartitionOutcome::default();
    let now = cx.clock.now_ms();
    let cleaned_to = cx.coordinator.cleaned_to(tp).await?;
    let (rows, log_start) = all_rows(cx.coordinator, tp).await?;
    let plan = plan(rows, cleaned_to.max(log_start), config, now);
    let tombstones_due = cx
        .state
        .tombstones_due
        .lock()
        .get(&tp)
        .is_some_and(|due| *due <= now);
    let ratio_due = !plan.dirty.is_empty() && plan.dirty_ratio >= config.min_dirty_ratio;
    if !(ratio_due || plan.overdue || tombstones_due) {
        return Ok(outcome);
    }
    // The key map over the cleanable dirty rows, within the memory and byte bounds.
    let mut map = OffsetMap::new();
    let mut mapped_end = cleaned_to.max(log_start);
    let mut mapped = 0usize;
    for row in &plan.dirty {
        if mapped > 0 && outcome.dirty_bytes + row.length > budget {
            break;
        }
        let run = read_run(cx.reader, row).await?;
        let keys = keys_of(&run, MAX_SCANNED_BYTES)?;
        if mapped > 0
            && map.memory_with(keys.iter().map(|(k, _)| k.as_slice()))
                > cx.settings.dedupe_buffer_bytes
        {
            break;
        }
        for (key, offset) in &keys {
            map.put(key, *offset);
        }
        mapped += 1;
        mapped_end = row.last_offset + 1;
        outcome.dirty_bytes += row.length;
    }
    // Rewrite everything from the log start to the end of the mapped range, group by group.
    let rewrite: Vec<&IndexRow> = plan
        .clean
        .iter()
        .chain(plan.dirty.iter().take(mapped))
        .collect();
    if rewrite.is_empty() {
        return Ok(outcome);
    }
    let mut groups: Vec<Vec<&IndexRow>> = vec![Vec::new()];
    let mut group_bytes = 0u64;
    for row in rewrite {
        if let Some(group) = groups.last_mut() {
            if !group.is_empty() && group_bytes + row.length > cx.settings.max_object_bytes {
                groups.push(Vec::new());
                group_bytes = 0;
            }
        }
        group_bytes += row.length;
        if let Some(group) = groups.last_mut() {
            group.push(row);
        }
    }
    let tombstones_before = now.saturating_sub(config.delete_retention_ms);
    let mut oldest_tombstone: Option<i64> = None;
    let last = groups.len() - 1;
    for (i, group) in groups.iter().enumerate() {
        let mut input = Vec::new();
        for row in group {
            input.extend_from_slice(&read_run(cx.reader, row).await?);
        }
        let mut stats = CleanStats::default();
        let params = CleanParams {
            delete_tombstones_before_ms: tombstones_before,
            cap: MAX_SCANNED_BYTES,
            keep_last_batch: i == last,
        };
        let batches = clean_batches(&input, &map, params, &mut stats)?;
        if let Some(t) = stats.oldest_kept_tombstone_ms {
            oldest_tombstone = Some(oldest_tombstone.map_or(t, |o| o.min(t)));
        }
        let unchanged =
            stats.records_out == stats.records_in && stats.batches_out == stats.batches_in;
        if unchanged && i != last {
            continue;
        }
        let key = fjord_storage::gc::object_key(cx.clock.now_ms());
        let plan = plan_object(tp, &batches, &key, cx.node_id, cx.clock.now_ms());
        let (object_size, new_rows) = match plan {
            Some(plan) => {
                let size = plan.object.len() as u64;
                cx.store
                    .put(
                        &object_store::path::Path::from(key.as_str()),
                        plan.object.into(),
                    )
                    .await?;
                (size, plan.rows)
            }
            None => (0, Vec::new()),
        };
        let swap = RowSwap {
            tp,
            replaced: group.iter().map(|r| RowRef::from(*r)).collect(),
            object_key: key.clone(),
            object_size,
            rows: new_rows,
            cleaned_to: (i == last).then_some(mapped_end),
        };
        match cx.coordinator.swap_rows(swap).await {
            Ok(SwapOutcome::Swapped) => {
                let removed = stats.records_in - stats.records_out;
                outcome.records_removed += removed;
                cx.stats
                    .records_read
                    .fetch_add(stats.records_in, Ordering::Relaxed);
                cx.stats
                    .records_removed
                    .fetch_add(removed, Ordering::Relaxed);
                cx.stats
                    .bytes_read
                    .fetch_add(stats.bytes_in, Ordering::Relaxed);
                cx.stats
                    .bytes_written
                    .fetch_add(stats.bytes_out, Ordering::Relaxed);
            }
            Ok(SwapOutcome::Lost) => {
                outcome.lost = true;
                cx.stats.swaps_lost.fetch_add(1, Ordering::Relaxed);
                return Ok(outcome);
            }
            Err(e) => return Err(e.into()),
        }
    }
    outcome.cleaned = true;
    let mut due = cx.state.tombstones_due.lock();
    match oldest_tombstone {
        Some(t) => {
            due.insert(
                tp,
                t.saturating_add(config.delete_retention_ms)
                    .saturating_add(1),
            );
        }
        None => {
            due.remove(&tp);
        }
    }
    Ok(outcome)
}

/// Runs one pass over the compacted partitions, from where the last one stopped.
pub async fn pass(cx: &CleanerContext<'_>) -> PassReport {
    let mut report = PassReport::default();
    cx.stats.passes.fetch_add(1, Ordering::Relaxed);
    let topics = match cx.coordinator.list_topics().await {
        Ok(topics) => topics,
        Err(e) => {
            tracing::warn!(error = %e, "log cleaner: listing topics failed; will retry");
            cx.stats.errors.fetch_add(1, Ordering::Relaxed);
            report.errors += 1;
            return report;
        }
    };
    let cursor = cx.state.cursor.lock().take();
    let split = cursor
        .as_ref()
        .map_or(0, |(name, _)| topics.partition_point(|t| t.name < *name));
    let (before, after) = topics.split_at(split);
    let mut budget = cx.settings.max_dirty_bytes_per_pass;
    for topic in after.iter().chain(before) {
        let Some(config) = compaction_config(topic, cx.settings) else {
            continue;
        };
        let first = match &cursor {
            Some((name, partition)) if *name == topic.name => {
                (*partition).clamp(0, topic.partitions)
            }
            _ => 0,
        };
        for partition in (first..topic.partitions).chain(0..first) {
            if budget == 0 {
                report.incomplete = true;
                *cx.state.cursor.lock() = Some((topic.name.clone(), partition));
                return report;
            }
            let tp = TopicPartition {
                topic_id: topic.id,
                partition,
            };
            report.partitions += 1;
            match clean_partition(cx, tp, &config, budget).await {
                Ok(outcome) => {
                    budget = budget.saturating_sub(outcome.dirty_bytes);
                    report.records_removed += outcome.records_removed;
                    if outcome.cleaned {
                        report.cleaned += 1;
                        cx.stats.cleanings.fetch_add(1, Ordering::Relaxed);
                    }
                    if outcome.lost {
                        report.lost += 1;
                    }
                }
                Err(CleanFailure::Coordinator(CoordinatorError::UnknownTopic(_))) => {}
                Err(e) => {
                    tracing::warn!(
                        topic = %topic.name,
                        partition,
                        error = %e,
                        "log cleaner: cleaning failed; will retry"
                    );
                    cx.stats.errors.fetch_add(1, Ordering::Relaxed);
                    report.errors += 1;
                }
            }
        }
    }
    report
}

/// Runs a pass every `settings.check_interval` while `broker` runs the cluster's background
/// duties, until `shutdown` (not at all when the cleaner is disabled).
pub async fn run(
    broker: Arc<Broker>,
    store: Arc<dyn ObjectStore>,
    settings: CleanerSettings,
    stats: Arc<CleanerStats>,
    shutdown: CancellationToken,
) {
    if !settings.enabled {
        return;
    }
    let interval = settings.check_interval;
    let duty = CleanerDuty {
        broker: broker.clone(),
        store,
        settings,
        stats,
        state: CleanerState::default(),
    };
    duty::run_on(broker, duty, interval, shutdown).await;
}

/// The log cleaner as a [`Duty`].
struct CleanerDuty {
    broker: Arc<Broker>,
    store: Arc<dyn ObjectStore>,
    settings: CleanerSettings,
    stats: Arc<CleanerStats>,
    state: CleanerState,
}

impl Duty for CleanerDuty {
    type Report = PassReport;
    type Error = std::convert::Infallible;

    fn name(&self) -> &'static str {
        "log-cleaner"
    }

    async fn pass(&mut self) -> Result<PassReport, Self::Error> {
        let cx = CleanerContext {
            coordinator: &self.broker.coordinator,
            reader: &self.broker.reader,
            store: &self.store,
            node_id: self.broker.settings.node_id,
            clock: &*self.broker.clock,
            settings: &self.settings,
            stats: &self.stats,
            state: &self.state,
        };
        Ok(pass(&cx).await)
    }

    fn noteworthy(&self, report: &PassReport) -> bool {
        report.cleaned > 0 || report.errors > 0 || report.lost > 0 || report.incomplete
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(base: i64, last: i64, written_ms: i64, max_ts: i64) -> IndexRow {
        IndexRow {
            base_offset: base,
            last_offset: last,
            object_key: fjord_storage::gc::object_key(written_ms),
            position: 0,
            length: (last - base + 1) as u64 * 100,
            max_timestamp: max_ts,
        }
    }

    fn config() -> CompactionConfig {
        CompactionConfig {
            min_dirty_ratio: 0.5,
            min_lag_ms: 0,
            max_lag_ms: i64::MAX,
            segment_ms: 30_000,
            delete_retention_ms: 86_400_000,
        }
    }

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn rows_split_at_the_checkpoint_and_the_first_open_row() {
        let rows = vec![
            row(0, 9, NOW - 100_000, NOW - 100_000),
            row(10, 19, NOW - 90_000, NOW - 90_000),
            row(20, 29, NOW - 40_000, NOW - 40_000),
            // Written 10 s ago: still open (segment.ms 30 s), and so is all after it.
            row(30, 39, NOW - 10_000, NOW - 10_000),
            row(40, 49, NOW - 50_000, NOW - 50_000),
        ];
        let p = plan(rows.clone(), 10, &config(), NOW);
        assert_eq!(p.clean, rows[..1]);
        assert_eq!(p.dirty, rows[1..3]);
        assert!((p.dirty_ratio - 2.0 / 3.0).abs() < 1e-9);
        assert!(!p.overdue);
        // segment.ms 5 s: everything is closed.
        let c = CompactionConfig {
            segment_ms: 5_000,
            ..config()
        };
        assert_eq!(plan(rows.clone(), 0, &c, NOW).dirty.len(), 5);
        // min.compaction.lag.ms holds back rows with recent records, by their timestamps.
        let c = CompactionConfig {
            segment_ms: 0,
            min_lag_ms: 60_000,
            ..config()
        };
        assert_eq!(plan(rows.clone(), 0, &c, NOW).dirty, rows[..2]);
        // max.compaction.lag.ms caps segment.ms and makes an old dirty row overdue.
        let c = CompactionConfig {
            segment_ms: i64::MAX,
            max_lag_ms: 60_000,
            ..config()
        };
        let p = plan(rows.clone(), 0, &c, NOW);
        assert_eq!(p.dirty, rows[..2]);
        assert!(p.overdue);
        // Nothing at all.
        let p = plan(Vec::new(), 0, &config(), NOW);
        assert!(p.clean.is_empty() && p.dirty.is_empty() && p.dirty_ratio == 0.0);
    }

    #[test]
    fn configs_come_from_the_topic_with_defaults() {
        let settings = CleanerSettings::default();
        let mut topic = TopicMeta {
            name: "t".into(),
            id: uuid::Uuid::new_v4(),
            partitions: 1,
            configs: Default::default(),
        };
        assert_eq!(compaction_config(&topic, &settings), None);
        topic
            .configs
            .insert("cleanup.policy".into(), "delete, compact".into());
        let c = compaction_config(&topic, &settings).unwrap();
        assert_eq!(c.segment_ms, DEFAULT_SEGMENT_MS);
        assert_eq!(c.min_dirty_ratio, 0.5);
        assert_eq!(c.delete_retention_ms, 86_400_000);
        topic.configs.insert("segment.ms".into(), "1000".into());
        topic
            .configs
            .insert("min.cleanable.dirty.ratio".into(), "0.1".into());
        topic
            .configs
            .insert("max.compaction.lag.ms".into(), "5000".into());
        let c = compaction_config(&topic, &settings).unwrap();
        assert_eq!((c.segment_ms, c.max_lag_ms), (1000, 5000));
        assert_eq!(c.min_dirty_ratio, 0.1);
    }
}
