//! Metadata expiry: the background duties that keep the coordinator's producer memory and
//! consumer-group offsets bounded in time, as Kafka's `producer.id.expiration.ms` and
//! `offsets.retention.minutes` do.
//!
//! Shape and safety as [`crate::retention`]: each duty runs a pass every check interval on the
//! broker that runs the cluster's background duties
//! ([`crate::cluster::ClusterView::runs_background_duties`]); work per pass is bounded; a failed
//! call is logged and counted ([`ExpiryStats`]) and retried next pass; times come from the
//! injected clock; shutdown cancels a pass between calls.
//!
//! **Producers** ([`producer_pass`]): the coordinator decides and deletes
//! ([`fjord_coordinator::MetadataExpiry::expire_producers`]); this duty only paces it.
//!
//! **Group offsets** ([`group_pass`]): the decision is [`group_expiry`], a pure function of the
//! stored group (its blob, decoded here because the blob is the broker's format, and the time the
//! coordinator saved it) and its committed offsets, following KIP-211:
//! - a group whose stored state has members keeps all its offsets;
//! - a group without members (Empty) loses an offset once `now - max(empty since, committed at)`
//!   reaches the retention, where *empty since* is when its blob was last saved (a group's blob
//!   is saved when its last member leaves, and not again while it stays empty) — so offsets of a
//!   group empty for the retention go together, as in Kafka, and an offset committed into an
//!   empty group later lives a full retention after its commit;
//! - a "standalone" group (offsets, no blob: assign() and commit, never joined) loses each offset
//!   one retention after its commit;
//! - an empty group with no offsets left whose blob is at least the retention old is deleted.
//!
//! Every deletion is fenced with the blob version read ([`fjord_coordinator::GroupStore`]): if
//! the group's coordinator saved it meanwhile (a member joined: a rebalance completed), the
//! deletion is refused, counted as fenced, and the group is looked at again next pass. A broker
//! holding the group in memory finds its next save fenced if the group was deleted, and reloads
//! it afresh. What fencing cannot see is a member that is joining but not yet saved (the initial
//! rebalance delay) or an offset committed between this pass's read and its deletion; both
//! happen to groups idle for the whole retention, and both end as if the expiry had run a moment
//! earlier: the consumer starts from `auto.offset.reset`, as it would in Kafka one check later.
//! A blob this broker cannot decode keeps all of the group's offsets.
//!
//! A stored blob that still lists members (its coordinator died and no broker loaded it since)
//! keeps its offsets: only the group's coordinator can tell members that are gone from members
//! that are idle, and it rewrites the blob when it expires their sessions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fjord_coordinator::clock::Clock;
use fjord_coordinator::{CommittedOffset, Coordinator, CoordinatorError, StoredGroup};
use tokio_util::sync::CancellationToken;

use crate::duty::{self, Duty};
use crate::groups::{GroupCoordinator, Stored};
use crate::Broker;

/// Kafka's `producer.id.expiration.ms` default: 1 day.
pub const DEFAULT_PRODUCER_ID_EXPIRATION_MS: i64 = 24 * 60 * 60 * 1000;

/// Kafka's `offsets.retention.minutes` default: 7 days.
pub const DEFAULT_OFFSETS_RETENTION_MINUTES: u64 = 7 * 24 * 60;

/// Expiry settings (broker-wide).
#[derive(Debug, Clone)]
pub struct ExpirySettings {
    /// Producer memory unused for this long expires (Kafka's `producer.id.expiration.ms`).
    pub producer_id_expiration_ms: i64,
    /// How often the producer pass runs (Kafka's `producer.id.expiration.check.interval.ms`).
    pub producer_check_interval: Duration,
    /// Most changes one coordinator call makes.
    pub producers_per_step: usize,
    /// Most changes one producer pass makes.
    pub producers_per_pass: usize,
    /// Offsets of empty groups expire after this long (Kafka's `offsets.retention.minutes`).
    pub offsets_retention_ms: i64,
    /// How often the group pass runs (Kafka's `offsets.retention.check.interval.ms`).
    pub offsets_check_interval: Duration,
    /// Most groups one group pass looks at.
    pub groups_per_pass: usize,
}

impl Default for ExpirySettings {
    fn default() -> Self {
        ExpirySettings {
            producer_id_expiration_ms: DEFAULT_PRODUCER_ID_EXPIRATION_MS,
            producer_check_interval: Duration::from_secs(600),
            producers_per_step: 10_000,
            producers_per_pass: 100_000,
            offsets_retention_ms: (DEFAULT_OFFSETS_RETENTION_MINUTES * 60_000) as i64,
            offsets_check_interval: Duration::from_secs(600),
            groups_per_pass: 10_000,
        }
    }
}

/// Counters of the expiry duties since the broker started.
#[derive(Debug, Default)]
pub struct ExpiryStats {
    /// Producer passes run.
    pub producer_passes: AtomicU64,
    /// Group passes run.
    pub group_passes: AtomicU64,
    /// Coordinator calls that failed (logged).
    pub errors: AtomicU64,
    /// Per-partition producer states expired.
    pub producer_states_expired: AtomicU64,
    /// Producer ids expired.
    pub producers_expired: AtomicU64,
    /// Committed offsets expired (including those of deleted groups).
    pub group_offsets_expired: AtomicU64,
    /// Empty groups deleted.
    pub groups_deleted: AtomicU64,
    /// Deletions refused because the group was written meanwhile (retried next pass).
    pub fenced: AtomicU64,
}

/// What [`group_expiry`] decides for one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupExpiry {
    /// Offsets to delete, as (topic, partition).
    pub offsets: Vec<(String, i32)>,
    /// Whether to delete the whole group (blob and every offset).
    pub delete_group: bool,
}

/// Whether a stored group blob lists members; `None` when it cannot be decoded.
pub fn has_members(blob: &[u8]) -> Option<bool> {
    match serde_json::from_slice::<Stored>(blob).ok()? {
        Stored::Classic(snapshot) => Some(!snapshot.members.is_empty()),
        Stored::Consumer { consumer } => Some(!consumer.members.is_empty()),
    }
}

/// Decides which offsets of a group expire at `now_ms` with offsets retention `retention_ms`
/// (see the module docs): `stored` is the group's blob with its save time, if it has one.
pub fn group_expiry(
    stored: Option<&StoredGroup>,
    offsets: &[CommittedOffset],
    now_ms: i64,
    retention_ms: i64,
) -> GroupExpiry {
    if let Some(stored) = stored {
        if has_members(&stored.state) != Some(false) {
            return GroupExpiry::default();
        }
    }
    // 0 when unknown (no blob, or one saved before save times were recorded): then each offset
    // goes by its own commit time, Kafka's rule for groups without a protocol.
    let empty_since = stored.map_or(0, |s| s.saved_ms.max(0));
    let aged = |since: i64| now_ms.saturating_sub(since) >= retention_ms;
    let expired: Vec<(String, i32)> = offsets
        .iter()
        .filter(|o| aged(empty_since.max(o.commit_timestamp_ms)))
        .map(|o| (o.topic.clone(), o.partition))
        .collect();
    let delete_group = stored.is_some() && expired.len() == offsets.len() && aged(empty_since);
    GroupExpiry {
        offsets: expired,
        delete_group,
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Per-partition producer states expired.
    pub producer_states_expired: u64,
    /// Producer ids expired.
    pub producers_expired: u64,
    /// Groups looked at.
    pub groups: u64,
    /// Offsets expired.
    pub offsets_expired: u64,
    /// Groups deleted.
    pub groups_deleted: u64,
    /// Deletions fenced.
    pub fenced: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Whether the pass stopped at its budget (the next one resumes).
    pub incomplete: bool,
}

/// Runs one producer pass at the clock's time.
pub async fn producer_pass(
    coordinator: &Arc<dyn Coordinator>,
    clock: &dyn Clock,
    settings: &ExpirySettings,
    stats: &ExpiryStats,
) -> PassReport {
    let mut report = PassReport::default();
    stats.producer_passes.fetch_add(1, Ordering::Relaxed);
    let mut budget = settings.producers_per_pass;
    while budget > 0 {
        let max = settings.producers_per_step.min(budget).max(1);
        match coordinator
            .expire_producers(clock.now_ms(), settings.producer_id_expiration_ms, max)
            .await
        {
            Ok(step) => {
                report.producer_states_expired += step.states_expired;
                report.producers_expired += step.ids_expired;
                stats
                    .producer_states_expired
                    .fetch_add(step.states_expired, Ordering::Relaxed);
                stats
                    .producers_expired
                    .fetch_add(step.ids_expired, Ordering::Relaxed);
                budget = budget.saturating_sub(max);
                if !step.more {
                    return report;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "expiring producer ids failed; will retry");
                stats.errors.fetch_add(1, Ordering::Relaxed);
                report.errors += 1;
                return report;
            }
        }
    }
    report.incomplete = true;
    report
}

/// Where the next group pass starts: the first group id after the last one looked at.
pub type GroupCursor = Option<String>;

/// Runs one group pass from `cursor` on; returns the report and where the next pass starts.
/// Groups it deletes leave `local`'s memory (this broker's group coordinator) if idle there.
pub async fn group_pass(
    coordinator: &Arc<dyn Coordinator>,
    clock: &dyn Clock,
    settings: &ExpirySettings,
    stats: &ExpiryStats,
    local: Option<&GroupCoordinator>,
    cursor: GroupCursor,
) -> (PassReport, GroupCursor) {
    let mut report = PassReport::default();
    stats.group_passes.fetch_add(1, Ordering::Relaxed);
    let groups = match coordinator.list_groups().await {
        Ok(groups) => groups,
        Err(e) => {
            tracing::warn!(error = %e, "offset expiry: listing groups failed; will retry");
            stats.errors.fetch_add(1, Ordering::Relaxed);
            report.errors += 1;
            return (report, cursor);
        }
    };
    let start = cursor
        .as_ref()
        .map_or(0, |after| groups.partition_point(|g| g <= after));
    let mut last: Option<&String> = None;
    for group in groups.iter().skip(start) {
        if report.groups as usize >= settings.groups_per_pass.max(1) {
            report.incomplete = true;
            return (report, last.cloned());
        }
        last = Some(group);
        report.groups += 1;
        let deleted = report.groups_deleted;
        if let Err(e) = expire_group(coordinator, clock, settings, stats, group, &mut report).await
        {
            tracing::warn!(group = %group, error = %e, "offset expiry failed; will retry");
            stats.errors.fetch_add(1, Ordering::Relaxed);
            report.errors += 1;
        }
        if report.groups_deleted > deleted {
            if let Some(local) = local {
                local.forget_idle(group);
            }
        }
    }
    (report, None)
}

async fn expire_group(
    coordinator: &Arc<dyn Coordinator>,
    clock: &dyn Clock,
    settings: &ExpirySettings,
    stats: &ExpiryStats,
    group: &str,
    report: &mut PassReport,
) -> Result<(), CoordinatorError> {
    let stored = coordinator.load_group(group).await?;
    let offsets = coordinator.fetch_offsets(group).await?;
    let decision = group_expiry(
        stored.as_ref(),
        &offsets,
        clock.now_ms(),
        settings.offsets_retention_ms,
    );
    let fence = Some(stored.as_ref().map_or(0, |s| s.version));
    let result = if decision.delete_group {
        match coordinator.delete_group(group, fence).await {
            Ok(true) => {
                report.groups_deleted += 1;
                stats.groups_deleted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            // Gone meanwhile (deleted by an admin): nothing expired here.
            Ok(false) => return Ok(()),
            Err(e) => Err(e),
        }
    } else if !decision.offsets.is_empty() {
        coordinator
            .delete_offsets(group, decision.offsets.clone(), fence)
            .await
    } else {
        return Ok(());
    };
    match result {
        Ok(()) => {
            let n = decision.offsets.len() as u64;
            report.offsets_expired += n;
            stats.group_offsets_expired.fetch_add(n, Ordering::Relaxed);
            tracing::info!(
                group,
                offsets = n,
                group_deleted = decision.delete_group,
                "expired committed offsets of an empty group"
            );
            Ok(())
        }
        Err(CoordinatorError::Fenced(reason)) => {
            tracing::debug!(group, %reason, "offset expiry fenced: the group changed; next pass");
            report.fenced += 1;
            stats.fenced.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Runs both duties (producer ids every `producer_check_interval`, group offsets every
/// `offsets_check_interval`) while `broker` runs the cluster's background duties, until
/// `shutdown`.
pub async fn run(
    broker: Arc<Broker>,
    settings: ExpirySettings,
    stats: Arc<ExpiryStats>,
    shutdown: CancellationToken,
) {
    let settings = Arc::new(settings);
    let producers = ProducerExpiry {
        broker: broker.clone(),
        settings: settings.clone(),
        stats: stats.clone(),
    };
    let groups = GroupExpiryDuty {
        broker: broker.clone(),
        settings: settings.clone(),
        stats,
        cursor: None,
    };
    tokio::join!(
        duty::run_on(
            broker.clone(),
            producers,
            settings.producer_check_interval,
            shutdown.clone(),
        ),
        duty::run_on(broker, groups, settings.offsets_check_interval, shutdown),
    );
}

/// Whether a pass changed, refused or left anything (worth a log line).
fn noteworthy(report: &PassReport) -> bool {
    report.producer_states_expired
        + report.producers_expired
        + report.offsets_expired
        + report.groups_deleted
        + report.fenced
        + report.errors
        > 0
        || report.incomplete
}

/// Producer-id expiry as a [`Duty`].
struct ProducerExpiry {
    broker: Arc<Broker>,
    settings: Arc<ExpirySettings>,
    stats: Arc<ExpiryStats>,
}

impl Duty for ProducerExpiry {
    type Report = PassReport;
    type Error = std::convert::Infallible;

    fn name(&self) -> &'static str {
        "producer-expiry"
    }

    async fn pass(&mut self) -> Result<PassReport, Self::Error> {
        Ok(producer_pass(
            &self.broker.coordinator,
            &*self.broker.clock,
            &self.settings,
            &self.stats,
        )
        .await)
    }

    fn noteworthy(&self, report: &PassReport) -> bool {
        noteworthy(report)
    }
}

/// Offset expiry of empty groups as a [`Duty`]: passes resume where the last one stopped.
struct GroupExpiryDuty {
    broker: Arc<Broker>,
    settings: Arc<ExpirySettings>,
    stats: Arc<ExpiryStats>,
    cursor: GroupCursor,
}

impl Duty for GroupExpiryDuty {
    type Report = PassReport;
    type Error = std::convert::Infallible;

    fn name(&self) -> &'static str {
        "offset-expiry"
    }

    async fn pass(&mut self) -> Result<PassReport, Self::Error> {
        let (report, next) = group_pass(
            &self.broker.coordinator,
            &*self.broker.clock,
            &self.settings,
            &self.stats,
            Some(&self.broker.groups),
            self.cursor.take(),
        )
        .await;
        self.cursor = next;
        Ok(report)
    }

    fn noteworthy(&self, report: &PassReport) -> bool {
        noteworthy(report)
    }
}

#[cfg(test)]
mod tests;
