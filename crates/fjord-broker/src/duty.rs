//! The shape of a periodic background duty: a named loop that runs a step every interval until
//! cancelled, logging and counting the step's errors (never dropping them).
//!
//! The ACL and quota refreshes use it; the older duties (retention, cleaner, compaction,
//! expiry, GC, TLS reload) still have loops of their own of the same shape, to be moved here.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Runs `step` every `interval` (the first run after one interval) until `cancel`. A failed
/// step is logged with the duty's `name` and counted in `errors`; the next tick tries again.
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
