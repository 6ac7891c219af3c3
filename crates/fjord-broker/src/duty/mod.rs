//! The shape of periodic background work: a named loop that runs a pass every interval until
//! cancelled, logging what the pass did when it matters and its errors (never dropping them).
//!
//! Two forms share it:
//! - [`Duty`] and [`run`] for work that keeps state between passes (a cursor, progress) and
//!   runs only on the broker that runs the cluster's background duties: retention, the log
//!   cleaner, object compaction, metadata expiry, garbage collection. Each is a struct owning
//!   its state, so a pass is `&mut self` and nothing is shared with the loop;
//! - [`every`] for a stateless refresh every broker runs (the ACL and quota refreshes), whose
//!   errors are counted in a given counter.
//!
//! Invariants of both: the loop ends as soon as its cancellation token fires, also in the
//! middle of a pass (a pass is a future dropped at an `.await`; each pass is written to be
//! safe to stop there); a missed tick is delayed, never bunched up; a failing pass is logged
//! with the duty's name and tried again at the next tick.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::Broker;

/// Periodic background work with state of its own, run by [`run`].
pub trait Duty: Send {
    /// What a pass did (logged when [`Duty::noteworthy`]).
    type Report: std::fmt::Debug + Send;
    /// Why a pass failed as a whole (failures of single items belong in the report).
    type Error: std::fmt::Display + Send;

    /// The duty's name in logs.
    fn name(&self) -> &'static str;

    /// Runs one pass.
    fn pass(&mut self) -> impl Future<Output = Result<Self::Report, Self::Error>> + Send;

    /// Whether `report` is worth a log line (something changed, failed or was left over).
    fn noteworthy(&self, report: &Self::Report) -> bool;

    /// Whether the next pass should start at once instead of after the interval: the pass
    /// stopped at its budget with work left, so a backlog is worked off in bounded passes
    /// back to back.
    fn again_at_once(&self, _report: &Self::Report) -> bool {
        false
    }

    /// Called at a tick while another broker runs the duties (a pass is skipped): drop state
    /// that would be stale when this broker takes over.
    fn stand_by(&mut self) {}
}

/// Runs `duty` every `interval` (the first pass after one interval) while `runs_here()` says
/// this broker runs the background duties, until `cancel`.
pub async fn run<D: Duty>(
    mut duty: D,
    interval: Duration,
    runs_here: impl Fn() -> bool + Send,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut at_once = false;
    loop {
        if at_once {
            tokio::task::yield_now().await;
            if cancel.is_cancelled() {
                return;
            }
        } else {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
        }
        at_once = false;
        if !runs_here() {
            duty.stand_by();
            continue;
        }
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            () = cancel.cancelled() => return,
            result = duty.pass() => result,
        };
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match result {
            Ok(report) => {
                at_once = duty.again_at_once(&report);
                if duty.noteworthy(&report) {
                    tracing::info!(
                        duty = duty.name(),
                        ?report,
                        elapsed_ms,
                        "background duty pass"
                    );
                }
            }
            Err(e) => tracing::warn!(
                duty = duty.name(),
                error = %e,
                elapsed_ms,
                "background duty pass failed; retried next interval"
            ),
        }
    }
}

/// [`run`] for a duty of `broker`: passes run while it is the broker that runs the cluster's
/// background duties.
pub async fn run_on<D: Duty>(
    broker: Arc<Broker>,
    duty: D,
    interval: Duration,
    cancel: CancellationToken,
) {
    run(
        duty,
        interval,
        move || broker.view().runs_background_duties(),
        cancel,
    )
    .await;
}

/// Runs `step` every `interval` (the first run at once) until `cancel`. A failed step is logged
/// with the duty's `name` and counted in `errors`; the next tick tries again.
pub async fn every<F, Fut, E>(
    name: &'static str,
    interval: Duration,
    cancel: CancellationToken,
    errors: &AtomicU64,
    mut step: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = step().await {
            errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(duty = name, error = %e, "background duty failed; retried next interval");
        }
    }
}

#[cfg(test)]
mod tests;
