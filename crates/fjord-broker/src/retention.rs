//! Retention: the background duty that expires old data by time (`retention.ms`) and size
//! (`retention.bytes`), Kafka's topic configs with broker-wide defaults.
//!
//! Every [`RetentionSettings::check_interval`], the broker that runs the cluster's background
//! duties ([`crate::cluster::ClusterView::runs_background_duties`], the live broker with the
//! lowest node id, as for object GC) runs one [`pass`]: for every partition of every topic whose
//! `cleanup.policy` includes `delete`, it asks the coordinator to advance the log start over the
//! leading whole index rows that are expired ([`LogLifecycle::apply_retention`]). Data is
//! therefore unreadable at most one interval after it expires (30 s by default).
//!
//! Bounded work: each coordinator call looks at most at [`RetentionSettings::rows_per_step`]
//! rows, and a pass at most at [`RetentionSettings::rows_per_pass`]; a pass that runs out stops
//! and the next one starts at the partition where it stopped, so a backlog is worked off over
//! several passes without any pass growing without bound.
//!
//! Safety in a cluster: the coordinator's advance is idempotent and monotonic (it raises the log
//! start to the maximum of the current one and its own decision, under the partition's lock), so
//! two brokers that both believe they run background duties during a view change only repeat
//! each other's work. Times come from the injected clock.
//!
//! A failed call is logged and counted ([`RetentionStats`]) and the pass goes on with the next
//! partition; an unknown topic (deleted meanwhile) is skipped silently.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fjord_coordinator::clock::Clock;
use fjord_coordinator::{
    Coordinator, CoordinatorError, RetentionLimits, TopicMeta, TopicPartition,
};
use tokio_util::sync::CancellationToken;

use crate::duty::{self, Duty};
use crate::offsets_cache::OffsetsCache;
use crate::topic_config::{has_cleanup_policy, long_config};
use crate::Broker;

/// Kafka's `log.retention.ms` default: 7 days.
pub const DEFAULT_RETENTION_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// Retention settings (broker-wide).
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// `retention.ms` of topics that do not set it (Kafka's `log.retention.ms`); -1: forever.
    pub default_retention_ms: i64,
    /// `retention.bytes` of topics that do not set it (Kafka's `log.retention.bytes`); -1: no
    /// limit.
    pub default_retention_bytes: i64,
    /// How often a pass runs (Kafka's `log.retention.check.interval.ms`, shorter by default).
    pub check_interval: Duration,
    /// Most index rows one coordinator call looks at.
    pub rows_per_step: usize,
    /// Most index rows one pass looks at.
    pub rows_per_pass: usize,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            default_retention_ms: DEFAULT_RETENTION_MS,
            default_retention_bytes: -1,
            check_interval: Duration::from_secs(30),
            rows_per_step: 1_000,
            rows_per_pass: 100_000,
        }
    }
}

/// Counters of the retention duty since the broker started.
#[derive(Debug, Default)]
pub struct RetentionStats {
    /// Passes run.
    pub passes: AtomicU64,
    /// Coordinator calls that failed (logged).
    pub errors: AtomicU64,
    /// Index rows whose offsets fell below the log start.
    pub rows_expired: AtomicU64,
    /// Partitions looked at, over all passes.
    pub partitions: AtomicU64,
    /// Time spent in passes, in microseconds (divided by `passes`: a pass's cost).
    pub pass_micros: AtomicU64,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Partitions looked at.
    pub partitions: u64,
    /// Partitions whose log start moved.
    pub advanced: u64,
    /// Index rows expired.
    pub rows_expired: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Whether the pass stopped at its row budget (the next one resumes there).
    pub incomplete: bool,
}

/// Where the next pass starts: a topic name and partition.
pub type Cursor = Option<(String, i32)>;

/// The retention limits of `topic` at `now_ms`: `None` when its `cleanup.policy` does not include
/// `delete` or nothing limits it.
pub fn limits(
    topic: &TopicMeta,
    settings: &RetentionSettings,
    now_ms: i64,
) -> Option<RetentionLimits> {
    let configs = &topic.configs;
    if !has_cleanup_policy(configs, "delete") {
        return None;
    }
    let long = |key: &str, default: i64| long_config(configs, key, default);
    let ms = long("retention.ms", settings.default_retention_ms);
    let bytes = long("retention.bytes", settings.default_retention_bytes);
    let limits = RetentionLimits {
        expire_before_ms: (ms >= 0).then(|| now_ms.saturating_sub(ms)),
        max_bytes: u64::try_from(bytes).ok(),
    };
    (!limits.is_unlimited()).then_some(limits)
}

/// Runs one retention pass from `cursor` on; returns the report and where the next pass starts.
pub async fn pass(
    coordinator: &Arc<dyn Coordinator>,
    clock: &dyn Clock,
    settings: &RetentionSettings,
    offsets_cache: Option<&OffsetsCache>,
    stats: &RetentionStats,
    cursor: Cursor,
) -> (PassReport, Cursor) {
    let mut report = PassReport::default();
    stats.passes.fetch_add(1, Ordering::Relaxed);
    let topics = match coordinator.list_topics().await {
        Ok(topics) => topics,
        Err(e) => {
            tracing::warn!(error = %e, "retention: listing topics failed; will retry");
            stats.errors.fetch_add(1, Ordering::Relaxed);
            report.errors += 1;
            return (report, cursor);
        }
    };
    // Topics in name order, starting at the cursor's topic and wrapping around.
    let split = cursor
        .as_ref()
        .map_or(0, |(name, _)| topics.partition_point(|t| t.name < *name));
    let (before, after) = topics.split_at(split);
    let mut budget = settings.rows_per_pass;
    for topic in after.iter().chain(before) {
        let now = clock.now_ms();
        let Some(limits) = limits(topic, settings, now) else {
            continue;
        };
        let first = match &cursor {
            Some((name, partition)) if *name == topic.name => (*partition).max(0),
            _ => 0,
        };
        for partition in (first..topic.partitions).chain(0..first) {
            let tp = TopicPartition {
                topic_id: topic.id,
                partition,
            };
            report.partitions += 1;
            stats.partitions.fetch_add(1, Ordering::Relaxed);
            let mut advanced = false;
            loop {
                if budget == 0 {
                    report.incomplete = true;
                    return (report, Some((topic.name.clone(), partition)));
                }
                let rows = settings.rows_per_step.min(budget).max(1);
                match coordinator.apply_retention(tp, limits, rows).await {
                    Ok(step) => {
                        // Counted as looked at: every expired row, and the one that stopped it.
                        budget = budget.saturating_sub(step.rows_expired as usize + 1);
                        report.rows_expired += step.rows_expired;
                        stats
                            .rows_expired
                            .fetch_add(step.rows_expired, Ordering::Relaxed);
                        if step.rows_expired > 0 {
                            advanced = true;
                        }
                        if !step.more {
                            break;
                        }
                    }
                    Err(CoordinatorError::UnknownTopic(_)) => break,
                    Err(e) => {
                        tracing::warn!(
                            topic = %topic.name,
                            partition,
                            error = %e,
                            "retention: advancing the log start failed; will retry"
                        );
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        report.errors += 1;
                        break;
                    }
                }
            }
            if advanced {
                report.advanced += 1;
                if let Some(cache) = offsets_cache {
                    cache.invalidate(tp);
                }
            }
        }
    }
    (report, None)
}

/// Runs a pass every `settings.check_interval` while `broker` runs the cluster's background
/// duties, until `shutdown`.
pub async fn run(
    broker: Arc<Broker>,
    settings: RetentionSettings,
    stats: Arc<RetentionStats>,
    shutdown: CancellationToken,
) {
    let interval = settings.check_interval;
    let duty = RetentionDuty {
        broker: broker.clone(),
        settings,
        stats,
        cursor: None,
    };
    duty::run_on(broker, duty, interval, shutdown).await;
}

/// Retention as a [`Duty`]: passes resume where the last one stopped.
struct RetentionDuty {
    broker: Arc<Broker>,
    settings: RetentionSettings,
    stats: Arc<RetentionStats>,
    cursor: Cursor,
}

impl Duty for RetentionDuty {
    type Report = PassReport;
    type Error = std::convert::Infallible;

    fn name(&self) -> &'static str {
        "retention"
    }

    async fn pass(&mut self) -> Result<PassReport, Self::Error> {
        let started = tokio::time::Instant::now();
        let broker = &self.broker;
        let (report, next) = pass(
            &broker.coordinator,
            &*broker.clock,
            &self.settings,
            Some(&broker.offsets_cache),
            &self.stats,
            self.cursor.take(),
        )
        .await;
        self.cursor = next;
        let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.stats
            .pass_micros
            .fetch_add(elapsed_us, Ordering::Relaxed);
        Ok(report)
    }

    fn noteworthy(&self, report: &PassReport) -> bool {
        report.rows_expired > 0 || report.errors > 0 || report.incomplete
    }
}

#[cfg(test)]
mod tests;
