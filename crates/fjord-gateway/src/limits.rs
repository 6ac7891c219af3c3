//! Admission control: per-caller rate limits (token buckets, one for messages and one for
//! bytes) and the bound on bytes held by requests in progress.
//!
//! Invariants: a caller's buckets never hold more than their bursts; a batch is taken from both
//! of its caller's buckets or from neither (a batch refused by the byte limit costs no message
//! tokens, and the other way round); the in-flight bound is a semaphore of bytes, so the memory
//! held by requests being produced never exceeds `max_inflight_bytes` (a request waits at most
//! `admission_wait` for room, then is refused with RESOURCE_EXHAUSTED instead of queueing without
//! bound; a permit is held until the clusters' producers have answered the request's records, so
//! the bound covers what they hold too).
//!
//! The bucket table is bounded and cheap whatever callers do: [`SHARDS`] shards, each a
//! least-recently-used map under its own lock, holding at most [`DEFAULT_MAX_CALLERS`] callers
//! in all. A request locks one shard and does O(1) work (look up, and at most one eviction of
//! the shard's least recently seen caller); nothing ever walks the table. A caller evicted and
//! seen again starts with full buckets, so an evicted caller can gain at most one burst; that
//! takes more than [`DEFAULT_MAX_CALLERS`] other callers seen since its last request.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Shards of the bucket table (requests of different callers rarely share a lock).
pub const SHARDS: usize = 16;
/// Callers whose buckets are kept (in all shards).
pub const DEFAULT_MAX_CALLERS: usize = 65_536;

/// A token rate: `per_sec` tokens a second, at most `burst` saved up. `per_sec` 0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    per_sec: f64,
    burst: f64,
}

impl Rate {
    /// No limit.
    pub const UNLIMITED: Self = Self {
        per_sec: 0.0,
        burst: 0.0,
    };

    /// `per_sec` 0 disables the limit; `burst` defaults to one second's worth (and is at least 1).
    pub fn new(per_sec: f64, burst: Option<f64>) -> Self {
        if per_sec.is_nan() || per_sec <= 0.0 {
            return Self::UNLIMITED;
        }
        Self {
            per_sec,
            burst: burst.unwrap_or(per_sec).max(1.0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.per_sec > 0.0
    }

    pub fn per_sec(&self) -> f64 {
        self.per_sec
    }

    pub fn burst(&self) -> f64 {
        self.burst
    }

    /// `tokens` after `elapsed` seconds of refill.
    fn refill(&self, tokens: f64, elapsed: f64) -> f64 {
        (tokens + elapsed * self.per_sec).min(self.burst)
    }

    /// How long until a bucket holding `tokens` has `n`; a request larger than the burst can
    /// never pass, and gets the time a full bucket takes (the caller must split it).
    fn wait(&self, tokens: f64, n: f64) -> Duration {
        let missing = (n.min(self.burst) - tokens).max(0.0);
        Duration::from_secs_f64(missing / self.per_sec)
    }
}

/// Which of a caller's limits refused a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    Messages,
    Bytes,
}

impl Budget {
    /// What its tokens count.
    pub fn unit(self) -> &'static str {
        match self {
            Self::Messages => "messages",
            Self::Bytes => "bytes",
        }
    }
}

/// A batch over its caller's budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exceeded {
    pub budget: Budget,
    /// The limit that refused it (per second) and its burst.
    pub rate: f64,
    pub burst: f64,
    /// When the same batch could pass (if it is not larger than the burst).
    pub retry_after: Duration,
    /// The batch is larger than the burst: it can never pass whole.
    pub over_burst: bool,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    messages: f64,
    bytes: f64,
    at: Instant,
}

/// Token buckets by caller: messages per second and bytes per second, each with its burst.
pub struct RateLimiter {
    messages: Rate,
    bytes: Rate,
    shards: Vec<Mutex<LruCache<String, Bucket>>>,
    hasher: RandomState,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("messages", &self.messages)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    pub fn new(messages: Rate, bytes: Rate) -> Self {
        Self::with_capacity(messages, bytes, DEFAULT_MAX_CALLERS)
    }

    /// At most `max_callers` callers' buckets are kept (rounded up to a multiple of
    /// [`SHARDS`]).
    pub fn with_capacity(messages: Rate, bytes: Rate, max_callers: usize) -> Self {
        let per_shard =
            NonZeroUsize::new(max_callers.div_ceil(SHARDS)).unwrap_or(NonZeroUsize::MIN);
        Self {
            messages,
            bytes,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.messages.enabled() || self.bytes.enabled()
    }

    /// Callers whose buckets are kept now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes `messages` message tokens and `bytes` byte tokens from `caller`'s buckets, or
    /// neither and says which limit refused the batch and when it could pass.
    pub fn try_take(
        &self,
        caller: &str,
        messages: usize,
        bytes: usize,
        now: Instant,
    ) -> Result<(), Exceeded> {
        if !self.enabled() {
            return Ok(());
        }
        let (m, b) = (messages as f64, bytes as f64);
        let (mr, br) = (self.messages, self.bytes);
        let shard = (self.hasher.hash_one(caller) % SHARDS as u64) as usize;
        let Some(shard) = self.shards.get(shard) else {
            return Ok(()); // `shard` < SHARDS = the number of shards
        };
        let mut buckets = shard.lock();
        if !buckets.contains(caller) {
            // At capacity, this evicts the shard's least recently seen caller: O(1).
            buckets.push(
                caller.to_owned(),
                Bucket {
                    messages: mr.burst,
                    bytes: br.burst,
                    at: now,
                },
            );
        }
        let Some(bucket) = buckets.get_mut(caller) else {
            return Ok(()); // pushed just above
        };
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.messages = mr.refill(bucket.messages, elapsed);
        bucket.bytes = br.refill(bucket.bytes, elapsed);
        bucket.at = now;
        let refusal = |budget, rate: Rate, tokens: f64, n: f64| {
            (rate.enabled() && tokens < n).then(|| Exceeded {
                budget,
                rate: rate.per_sec,
                burst: rate.burst,
                retry_after: rate.wait(tokens, n),
                over_burst: n > rate.burst,
            })
        };
        let refusals = [
            refusal(Budget::Messages, mr, bucket.messages, m),
            refusal(Budget::Bytes, br, bucket.bytes, b),
        ];
        // Both short: report the limit that keeps the batch out longer.
        match refusals.into_iter().flatten().max_by_key(|e| e.retry_after) {
            Some(exceeded) => Err(exceeded),
            None => {
                if mr.enabled() {
                    bucket.messages -= m;
                }
                if br.enabled() {
                    bucket.bytes -= b;
                }
                Ok(())
            }
        }
    }
}

/// The bound on bytes held by requests in progress, and by the clusters' producers for them.
#[derive(Debug)]
pub struct InflightBytes {
    semaphore: Arc<Semaphore>,
    capacity: usize,
    /// `fjord_gateway_inflight_bytes`: kept by the permits, so it is right however they end.
    gauge: InflightGauge,
}

/// The gauge of bytes in flight.
pub type InflightGauge =
    prometheus_client::metrics::gauge::Gauge<i64, std::sync::atomic::AtomicI64>;

/// Room for one request's bytes; given back (room and gauge) when dropped, whoever drops it.
#[derive(Debug)]
pub struct InflightPermit {
    _permit: OwnedSemaphorePermit,
    pub bytes: usize,
    gauge: InflightGauge,
}

impl Drop for InflightPermit {
    fn drop(&mut self) {
        self.gauge.dec_by(self.bytes as i64);
    }
}

impl InflightBytes {
    pub fn new(capacity: usize, gauge: InflightGauge) -> Self {
        let capacity = capacity.min(Semaphore::MAX_PERMITS);
        Self {
            semaphore: Arc::new(Semaphore::new(capacity)),
            capacity,
            gauge,
        }
    }

    /// Waits at most `wait` for room for `bytes`; `None` if there was none.
    pub async fn acquire(&self, bytes: usize, wait: Duration) -> Option<InflightPermit> {
        // Zero-byte requests still take one unit so they are counted while in progress.
        let units = bytes.clamp(1, self.capacity);
        let units = u32::try_from(units).unwrap_or(u32::MAX);
        let acquire = self.semaphore.clone().acquire_many_owned(units);
        match tokio::time::timeout(wait, acquire).await {
            Ok(Ok(permit)) => {
                self.gauge.inc_by(bytes as i64);
                Some(InflightPermit {
                    _permit: permit,
                    bytes,
                    gauge: self.gauge.clone(),
                })
            }
            _ => None,
        }
    }

    pub fn in_use(&self) -> usize {
        self.capacity - self.semaphore.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(per_sec: f64, burst: Option<f64>) -> RateLimiter {
        RateLimiter::new(Rate::new(per_sec, burst), Rate::UNLIMITED)
    }

    fn bytes(per_sec: f64, burst: Option<f64>) -> RateLimiter {
        RateLimiter::new(Rate::UNLIMITED, Rate::new(per_sec, burst))
    }

    #[test]
    fn disabled_limiter_admits_everything() {
        let l = RateLimiter::new(Rate::new(0.0, None), Rate::new(0.0, Some(10.0)));
        assert!(!l.enabled());
        assert!(l
            .try_take("a", 1_000_000, usize::MAX, Instant::now())
            .is_ok());
    }

    #[test]
    fn bucket_refills_at_the_rate() {
        let l = messages(100.0, Some(200.0));
        let t0 = Instant::now();
        assert!(l.try_take("a", 150, 0, t0).is_ok());
        assert!(l.try_take("a", 60, 0, t0).is_err());
        // Another caller has its own bucket.
        assert!(l.try_take("b", 200, 0, t0).is_ok());
        // 0.1 s later: 50 + 10 tokens.
        let t1 = t0 + Duration::from_millis(100);
        assert!(l.try_take("a", 60, 0, t1).is_ok());
        let wait = l.try_take("a", 50, 0, t1).unwrap_err().retry_after;
        assert!((0.49..0.51).contains(&wait.as_secs_f64()), "{wait:?}");
        // Never above the burst.
        let t2 = t1 + Duration::from_secs(60);
        assert!(l.try_take("a", 201, 0, t2).is_err());
        assert!(l.try_take("a", 200, 0, t2).is_ok());
    }

    #[test]
    fn byte_bucket_refills_at_its_rate() {
        let l = bytes(1_000.0, Some(4_000.0));
        let t0 = Instant::now();
        // Message counts do not matter to a byte limit.
        assert!(l.try_take("a", 1_000, 3_000, t0).is_ok());
        let e = l.try_take("a", 1, 1_500, t0).unwrap_err();
        assert_eq!(e.budget, Budget::Bytes);
        assert_eq!(e.rate, 1_000.0);
        assert!(!e.over_burst);
        assert!((0.49..0.51).contains(&e.retry_after.as_secs_f64()), "{e:?}");
        // Another caller has its own bucket.
        assert!(l.try_take("b", 1, 4_000, t0).is_ok());
        // 0.5 s later: 1000 + 500 bytes.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.try_take("a", 1, 1_500, t1).is_ok());
        assert!(l.try_take("a", 1, 1, t1).is_err());
        // Never above the burst.
        let t2 = t1 + Duration::from_secs(60);
        assert!(l.try_take("a", 1, 4_001, t2).is_err());
        assert!(l.try_take("a", 1, 4_000, t2).is_ok());
    }

    #[test]
    fn a_batch_larger_than_the_byte_burst_is_refused() {
        let l = bytes(1_000.0, None); // burst: one second's worth
        let t0 = Instant::now();
        let e = l.try_take("a", 1, 1_001, t0).unwrap_err();
        assert_eq!(e.budget, Budget::Bytes);
        assert!(e.over_burst);
        // Even with a full bucket, hours later.
        let e = l
            .try_take("a", 1, 1_001, t0 + Duration::from_secs(3600))
            .unwrap_err();
        assert!(e.over_burst);
        // The refusals took nothing: the whole burst is still there.
        assert!(l
            .try_take("a", 1, 1_000, t0 + Duration::from_secs(3600))
            .is_ok());
    }

    #[test]
    fn a_batch_is_taken_from_both_buckets_or_neither() {
        let l = RateLimiter::new(Rate::new(10.0, Some(10.0)), Rate::new(100.0, Some(100.0)));
        let t0 = Instant::now();
        // Over the byte budget: refused, and no message tokens spent.
        assert_eq!(
            l.try_take("a", 10, 101, t0).unwrap_err().budget,
            Budget::Bytes
        );
        assert!(l.try_take("a", 10, 50, t0).is_ok());
        // Over the message budget: refused, and no byte tokens spent.
        assert_eq!(
            l.try_take("a", 1, 50, t0).unwrap_err().budget,
            Budget::Messages
        );
        // Both short: the longer wait is reported (10 s of bytes, 0.1 s of messages).
        let t1 = t0 + Duration::from_millis(100);
        let e = l.try_take("a", 2, 100, t1).unwrap_err();
        assert_eq!(e.budget, Budget::Bytes);
        assert!(l.try_take("a", 1, 60, t1).is_ok());
    }

    /// Issue 14, item 9: callers that rotate their names (all of them active, so none is idle)
    /// grew the table without bound, and every new one swept the whole table under one lock.
    #[test]
    fn the_caller_table_stays_bounded_when_callers_rotate() {
        let l = RateLimiter::with_capacity(Rate::new(1.0, Some(5.0)), Rate::UNLIMITED, 1024);
        let t0 = Instant::now();
        for i in 0..20_000 {
            assert!(l.try_take(&format!("rotating-{i}"), 1, 0, t0).is_ok());
        }
        assert!(l.len() <= 1024, "{} callers kept", l.len());
        // A caller seen recently keeps its bucket (and its debt) through the churn.
        for _ in 0..4 {
            l.try_take("steady", 1, 0, t0).unwrap();
        }
        for i in 0..50 {
            l.try_take(&format!("more-{i}"), 1, 0, t0).unwrap();
            l.try_take("steady", 0, 0, t0).unwrap();
        }
        assert!(l.try_take("steady", 2, 0, t0).is_err());
    }

    #[tokio::test]
    async fn inflight_bytes_are_bounded() {
        let gauge = InflightGauge::default();
        let bound = InflightBytes::new(1_000, gauge.clone());
        let a = bound.acquire(700, Duration::from_millis(10)).await.unwrap();
        assert_eq!(bound.in_use(), 700);
        assert_eq!(gauge.get(), 700);
        assert!(bound
            .acquire(400, Duration::from_millis(10))
            .await
            .is_none());
        drop(a);
        let b = bound.acquire(400, Duration::from_millis(10)).await.unwrap();
        assert_eq!(b.bytes, 400);
        assert_eq!(bound.in_use(), 400);
        assert_eq!(gauge.get(), 400);
        drop(b);
        assert_eq!(gauge.get(), 0);
    }
}
