//! Hedged requests ("The Tail at Scale"): when a request is still running after a delay, an
//! identical second one starts, and the first success wins. Object-store latency has a long
//! tail; a hedge turns one slow request into the delay plus a typical one, for a few percent
//! more requests.
//!
//! Only for idempotent requests: both attempts may be carried out (a PUT of identical bytes
//! under one key, a GET). The losing attempt is dropped, which cancels it.
//!
//! When a store is overloaded every request is slow, and hedging them all would double its load.
//! A [`HedgeBudget`] bounds hedges to a fraction of requests (a token bucket, as gRPC's retry
//! throttling does), so that hedging cuts the tail of a healthy store without piling onto a
//! struggling one.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

/// Hedges allowed per request, in thousandths of a hedge, up to a burst. Each request earns
/// `per_request` tokens (thousandths), each hedge spends 1,000.
#[derive(Debug)]
pub struct HedgeBudget {
    tokens: AtomicU64,
    per_request: u64,
    burst: u64,
}

impl HedgeBudget {
    /// At most `fraction` (0 to 1) of requests hedged over time, with a burst of `burst`
    /// hedges available at the start.
    pub fn new(fraction: f64, burst: u32) -> Self {
        let burst = u64::from(burst) * 1000;
        HedgeBudget {
            tokens: AtomicU64::new(burst),
            per_request: (fraction.clamp(0.0, 1.0) * 1000.0) as u64,
            burst,
        }
    }

    /// A request was sent.
    pub fn earn(&self) {
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some((t + self.per_request).min(self.burst))
            });
    }

    /// Takes one hedge from the budget, if there is one.
    pub fn spend(&self) -> bool {
        self.tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                t.checked_sub(1000)
            })
            .is_ok()
    }
}

/// The hedging policy of one kind of request (the reader's GETs, the writer's PUTs): the delay
/// after which a request is hedged, the budget every request of the kind shares, and a counter
/// of hedges sent. Cheap to clone; clones share the budget and the counter.
#[derive(Debug, Clone)]
pub struct Hedger {
    after: Option<Duration>,
    budget: Arc<HedgeBudget>,
    hedges: Counter,
}

impl Hedger {
    /// Hedges after `after` (`None`: never), at most `fraction` of requests over time with a
    /// burst of `burst`, counting hedges in `hedges`.
    pub fn new(after: Option<Duration>, fraction: f64, burst: u32, hedges: Counter) -> Self {
        Hedger {
            after,
            budget: Arc::new(HedgeBudget::new(fraction, burst)),
            hedges,
        }
    }

    /// The same budget and counter with another delay.
    pub fn with_after(mut self, after: Option<Duration>) -> Self {
        self.after = after;
        self
    }

    /// Hedges sent so far (shared with every clone).
    pub fn hedges(&self) -> Counter {
        self.hedges.clone()
    }

    /// Runs one request for `object` with [`hedged`]: it earns its share of the budget, and a
    /// hedge is sent only if the budget has one.
    pub async fn run<T, E, F, Fut>(
        &self,
        object: &object_store::path::Path,
        attempt: F,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.budget.earn();
        hedged(self.after, attempt, || {
            if !self.budget.spend() {
                return false;
            }
            self.hedges.inc();
            tracing::debug!(%object, "request slow; hedging with a second, identical one");
            true
        })
        .await
    }
}

/// Runs `attempt()`, and once more if the first is still running after `after` (never when
/// `after` is `None`) and `may_hedge()` allows it (it is asked then, and may count or log the
/// hedge). The first success wins. An error is returned only once every started attempt has
/// failed: a first attempt that fails before the hedge starts returns its error (the caller's
/// retry policy applies), and one that fails after waits for the second.
pub async fn hedged<T, E, F, Fut>(
    after: Option<Duration>,
    mut attempt: F,
    may_hedge: impl FnOnce() -> bool,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let first = attempt();
    let Some(after) = after else {
        return first.await;
    };
    tokio::pin!(first);
    tokio::select! {
        result = &mut first => return result,
        () = tokio::time::sleep(after) => {}
    }
    if !may_hedge() {
        return first.await;
    }
    let second = attempt();
    tokio::pin!(second);
    tokio::select! {
        result = &mut first => match result {
            Ok(v) => Ok(v),
            Err(_) => second.await,
        },
        result = &mut second => match result {
            Ok(v) => Ok(v),
            Err(_) => first.await,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::time::{sleep, Instant};

    use super::*;

    const HEDGE: Option<Duration> = Some(Duration::from_millis(100));

    /// Attempt `i` (from 0) waits `delays[i]` and then answers `results[i]`.
    async fn run(
        delays: [u64; 2],
        results: [Result<u32, u32>; 2],
    ) -> (Result<u32, u32>, usize, Duration) {
        let calls = AtomicUsize::new(0);
        let started = Instant::now();
        let result = hedged(
            HEDGE,
            || {
                let i = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    sleep(Duration::from_millis(delays[i])).await;
                    results[i]
                }
            },
            || true,
        )
        .await;
        (result, calls.load(Ordering::SeqCst), started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_request_is_not_hedged() {
        let (result, calls, took) = run([50, 0], [Ok(1), Ok(2)]).await;
        assert_eq!((result, calls), (Ok(1), 1));
        assert_eq!(took, Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_request_loses_to_its_hedge() {
        let (result, calls, took) = run([5_000, 30], [Ok(1), Ok(2)]).await;
        assert_eq!((result, calls), (Ok(2), 2));
        assert_eq!(took, Duration::from_millis(130));
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_attempt_still_wins_when_it_ends_first() {
        let (result, calls, took) = run([120, 100], [Ok(1), Ok(2)]).await;
        assert_eq!(
            (result, calls, took),
            (Ok(1), 2, Duration::from_millis(120))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_counts_only_once_both_attempts_failed() {
        // The first fails after the hedge started: the second's success wins.
        let (result, _, took) = run([150, 200], [Err(1), Ok(2)]).await;
        assert_eq!((result, took), (Ok(2), Duration::from_millis(300)));
        // The hedge fails first: the first attempt's success still wins.
        let (result, _, took) = run([400, 10], [Ok(1), Err(2)]).await;
        assert_eq!((result, took), (Ok(1), Duration::from_millis(400)));
        // Both fail: the later error.
        let (result, _, _) = run([150, 200], [Err(1), Err(2)]).await;
        assert_eq!(result, Err(2));
    }

    #[tokio::test(start_paused = true)]
    async fn an_early_error_is_returned_without_a_hedge() {
        let (result, calls, took) = run([20, 0], [Err(1), Ok(2)]).await;
        assert_eq!(
            (result, calls, took),
            (Err(1), 1, Duration::from_millis(20))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_delay_means_no_hedge() {
        let calls = AtomicUsize::new(0);
        let result: Result<u32, u32> = hedged(
            None,
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    sleep(Duration::from_secs(10)).await;
                    Ok(1)
                }
            },
            || true,
        )
        .await;
        assert_eq!((result, calls.load(Ordering::SeqCst)), (Ok(1), 1));
        // Refused by the policy: the first attempt runs to its end alone.
        let result: Result<u32, u32> = hedged(
            HEDGE,
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    sleep(Duration::from_secs(10)).await;
                    Ok(2)
                }
            },
            || false,
        )
        .await;
        assert_eq!((result, calls.load(Ordering::SeqCst)), (Ok(2), 2));
    }

    #[test]
    fn the_budget_bounds_hedges_to_a_fraction_of_requests() {
        let budget = HedgeBudget::new(0.2, 3);
        // The burst first.
        assert!((0..3).all(|_| budget.spend()));
        assert!(!budget.spend());
        // Then one hedge per five requests.
        let mut hedges = 0;
        for _ in 0..1000 {
            budget.earn();
            if budget.spend() {
                hedges += 1;
            }
        }
        assert_eq!(hedges, 200);
        // Quiet time refills no more than the burst.
        for _ in 0..1000 {
            budget.earn();
        }
        assert_eq!((0..10).filter(|_| budget.spend()).count(), 3);
    }
}
