//! Object compaction: the background duty that merges small flush objects' data into large
//! per-partition objects ([`fjord_storage::compactor`]), so that a partition's index holds a
//! few rows per 64 MiB instead of one per flush, and a cold catch-up read fetches about 8 MiB
//! per GET.
//!
//! Every [`CompactionDutySettings::interval`], the broker that runs the cluster's background
//! duties ([`crate::cluster::ClusterView::runs_background_duties`], as for retention and object
//! GC) runs one [`pass`]: it visits partitions round robin from where the last pass stopped and
//! lets the compactor merge what its plan chooses, rows older than the minimum age only (the
//! hot tail, which readers mostly find in the cache and which is still arriving, is left
//! alone). Nor does it merge data that `retention.ms` deletes within the minimum age
//! ([`expiring_before_ms`]): with a short retention (minutes) merging it is pure cost, rewriting
//! everything just before retention deletes it and mostly losing the swap to retention (a
//! 30-minute soak at 20 MB/s with `retention.ms` of 5 minutes rewrote 9.9 GB and lost 509 of
//! 882 swaps before this rule). Topics whose `cleanup.policy` includes `compact` are left to
//! log compaction, which rewrites them through the same swap.
//!
//! Bounded work: a pass merges at most [`CompactionDutySettings::bytes_per_pass`] bytes and
//! visits at most [`CompactionDutySettings::partitions_per_pass`] partitions; a pass that runs
//! out stops and the next starts where it stopped, at once rather than an interval later, so
//! that a backlog (or produce faster than a pass per interval can merge) is worked off in
//! bounded steps. The compactor remembers per partition where
//! its next scan may start (rows before are settled), so a long settled log is not rescanned.
//!
//! Safety: every merge ends in a compare-and-swap on the rows it replaces, so two brokers that
//! both believe they run background duties, retention, DeleteRecords or topic deletion at the
//! same time make a merge lose cleanly, never lose or duplicate data. A failed merge is logged
//! and counted and the pass goes on with the next partition. Times come from the injected
//! clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fjord_coordinator::{CoordinatorError, TopicMeta, TopicPartition};
use fjord_storage::compactor::Compactor;
use tokio_util::sync::CancellationToken;

use crate::duty::{self, Duty};
use crate::Broker;

/// How often and how much the duty compacts.
#[derive(Debug, Clone)]
pub struct CompactionDutySettings {
    /// Time between passes.
    pub interval: Duration,
    /// Most bytes of rows one pass merges.
    pub bytes_per_pass: u64,
    /// Most partitions one pass visits.
    pub partitions_per_pass: usize,
}

impl Default for CompactionDutySettings {
    fn default() -> Self {
        CompactionDutySettings {
            interval: Duration::from_secs(30),
            bytes_per_pass: 1 << 30,
            partitions_per_pass: 10_000,
        }
    }
}

/// Counters of the compaction duty since the broker started.
#[derive(Debug, Default)]
pub struct CompactionStats {
    /// Passes run.
    pub passes: AtomicU64,
    /// Merges swapped in.
    pub swaps: AtomicU64,
    /// Merges that lost their swap (to retention, DeleteRecords, topic deletion or another
    /// swap).
    pub lost: AtomicU64,
    /// Merges or lookups that failed (logged; retried next pass).
    pub errors: AtomicU64,
    /// Bytes of merged objects uploaded.
    pub bytes_written: AtomicU64,
    /// Index rows replaced by swaps.
    pub rows_replaced: AtomicU64,
    /// Index rows written by swaps.
    pub rows_written: AtomicU64,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Partitions visited.
    pub partitions: u64,
    /// Merges swapped in.
    pub swaps: u64,
    /// Merges lost.
    pub lost: u64,
    /// Index rows replaced.
    pub rows_replaced: u64,
    /// Index rows written.
    pub rows_written: u64,
    /// Bytes uploaded.
    pub bytes_written: u64,
    /// Failures.
    pub errors: u64,
    /// Whether the pass stopped at its budget (the next one resumes there).
    pub incomplete: bool,
}

/// Where passes are: the next partition to visit and, per partition, where its next scan may
/// start.
#[derive(Debug, Default)]
pub struct Progress {
    /// The next pass starts at this topic name and partition.
    pub cursor: Option<(String, i32)>,
    /// Scan start per partition (rows before it are settled).
    pub resume: HashMap<TopicPartition, i64>,
}

/// Whether object compaction handles `topic` (log compaction handles compacted topics).
pub fn compacts(topic: &TopicMeta) -> bool {
    !crate::topic_config::has_cleanup_policy(&topic.configs, "compact")
}

/// Data of `topic` whose newest record is older than this is deleted by `retention.ms` within
/// `min_age_ms` (the time a merge waits for data to settle); merging it is not worth a rewrite.
/// `None` when the topic keeps data forever by time.
pub fn expiring_before_ms(topic: &TopicMeta, broker: &Broker, min_age_ms: i64) -> Option<i64> {
    if !crate::topic_config::has_cleanup_policy(&topic.configs, "delete") {
        return None;
    }
    let retention_ms = crate::topic_config::long_config(
        &topic.configs,
        "retention.ms",
        broker.settings.retention_ms,
    );
    (retention_ms >= 0).then(|| {
        broker
            .clock
            .now_ms()
            .saturating_sub(retention_ms)
            .saturating_add(min_age_ms.max(0))
    })
}

/// Runs one pass from `progress` on.
pub async fn pass(
    broker: &Broker,
    compactor: &Compactor,
    settings: &CompactionDutySettings,
    stats: &CompactionStats,
    progress: &mut Progress,
) -> PassReport {
    let mut report = PassReport::default();
    stats.passes.fetch_add(1, Ordering::Relaxed);
    let topics = match broker.coordinator.list_topics().await {
        Ok(topics) => topics,
        Err(e) => {
            tracing::warn!(error = %e, "compaction: listing topics failed; will retry");
            stats.errors.fetch_add(1, Ordering::Relaxed);
            report.errors += 1;
            return report;
        }
    };
    // Forget partitions of topics that are gone.
    progress.resume.retain(|tp, _| {
        topics
            .iter()
            .any(|t| t.id == tp.topic_id && tp.partition < t.partitions)
    });
    let cursor = progress.cursor.take();
    let split = cursor
        .as_ref()
        .map_or(0, |(name, _)| topics.partition_point(|t| t.name < *name));
    let (before, after) = topics.split_at(split);
    let mut budget = settings.bytes_per_pass;
    for topic in after.iter().chain(before) {
        if !compacts(topic) {
            continue;
        }
        let first = match &cursor {
            Some((name, partition)) if *name == topic.name => {
                (*partition).clamp(0, topic.partitions)
            }
            _ => 0,
        };
        for partition in (first..topic.partitions).chain(0..first) {
            if budget == 0 || report.partitions as usize >= settings.partitions_per_pass {
                report.incomplete = true;
                progress.cursor = Some((topic.name.clone(), partition));
                return report;
            }
            let tp = TopicPartition {
                topic_id: topic.id,
                partition,
            };
            report.partitions += 1;
            let from = progress.resume.get(&tp).copied().unwrap_or(0);
            let expiring = expiring_before_ms(topic, broker, compactor.settings().min_age_ms);
            match compactor
                .compact_partition(tp, from, budget, expiring)
                .await
            {
                Ok(done) => {
                    budget = budget.saturating_sub(done.bytes_written);
                    report.swaps += done.swaps;
                    report.lost += done.lost;
                    report.rows_replaced += done.rows_replaced;
                    report.rows_written += done.rows_written;
                    report.bytes_written += done.bytes_written;
                    stats.swaps.fetch_add(done.swaps, Ordering::Relaxed);
                    stats.lost.fetch_add(done.lost, Ordering::Relaxed);
                    stats
                        .rows_replaced
                        .fetch_add(done.rows_replaced, Ordering::Relaxed);
                    stats
                        .rows_written
                        .fetch_add(done.rows_written, Ordering::Relaxed);
                    stats
                        .bytes_written
                        .fetch_add(done.bytes_written, Ordering::Relaxed);
                    match done.resume_from {
                        Some(at) => progress.resume.insert(tp, at),
                        None => progress.resume.remove(&tp),
                    };
                }
                Err(fjord_storage::compactor::CompactionError::Coordinator(
                    CoordinatorError::UnknownTopic(_),
                )) => {}
                Err(e) => {
                    tracing::warn!(
                        topic = %topic.name,
                        partition,
                        error = %e,
                        "compaction: merge failed; will retry"
                    );
                    progress.resume.remove(&tp);
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    report.errors += 1;
                }
            }
        }
    }
    report
}

/// Runs a pass every `settings.interval` while `broker` runs the cluster's background duties,
/// until `shutdown` (which also stops a pass in the middle: a merge cut short leaves at most an
/// uploaded object nothing references, which the orphan sweep deletes).
pub async fn run(
    broker: Arc<Broker>,
    compactor: Compactor,
    settings: CompactionDutySettings,
    stats: Arc<CompactionStats>,
    shutdown: CancellationToken,
) {
    let interval = settings.interval;
    let duty = CompactionDuty {
        broker: broker.clone(),
        compactor,
        settings,
        stats,
        progress: Progress::default(),
    };
    duty::run_on(broker, duty, interval, shutdown).await;
}

/// Object compaction as a [`Duty`]: a pass that stops at its budget is followed at once by the
/// next (a backlog is worked off in bounded passes back to back, so the compactor keeps up with
/// produce).
struct CompactionDuty {
    broker: Arc<Broker>,
    compactor: Compactor,
    settings: CompactionDutySettings,
    stats: Arc<CompactionStats>,
    progress: Progress,
}

impl Duty for CompactionDuty {
    type Report = PassReport;
    type Error = std::convert::Infallible;

    fn name(&self) -> &'static str {
        "object-compaction"
    }

    async fn pass(&mut self) -> Result<PassReport, Self::Error> {
        Ok(pass(
            &self.broker,
            &self.compactor,
            &self.settings,
            &self.stats,
            &mut self.progress,
        )
        .await)
    }

    fn noteworthy(&self, report: &PassReport) -> bool {
        report.swaps + report.lost + report.errors > 0 || report.incomplete
    }

    fn again_at_once(&self, report: &PassReport) -> bool {
        report.incomplete && report.errors == 0
    }

    fn stand_by(&mut self) {
        // Another broker may compact meanwhile: start afresh when this one takes over.
        self.progress = Progress::default();
    }
}
