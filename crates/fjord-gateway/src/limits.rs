//! Admission control: per-caller rate limits (token buckets) and the bound on bytes held by
//! requests in progress.
//!
//! Invariants: a caller's bucket never holds more than its burst; the in-flight bound is a
//! semaphore of bytes, so the memory held by requests being produced never exceeds
//! `max_inflight_bytes` (a request waits at most `admission_wait` for room, then is refused
//! with RESOURCE_EXHAUSTED instead of queueing without bound). The bucket table is bounded too:
//! idle buckets (full again) are dropped when it grows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Buckets kept before idle ones are swept.
const SWEEP_AT: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by caller, refilled at `rate` messages per second up to `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// `rate` 0 disables the limit.
    pub fn new(rate: f64, burst: Option<f64>) -> Self {
        Self {
            rate,
            burst: burst.unwrap_or(rate).max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.rate > 0.0
    }

    /// Takes `n` tokens from `caller`'s bucket, or returns how long until they would be there.
    pub fn try_take(&self, caller: &str, n: usize, now: Instant) -> Result<(), Duration> {
        if !self.enabled() {
            return Ok(());
        }
        let n = n as f64;
        let mut buckets = self.buckets.lock();
        if buckets.len() >= SWEEP_AT && !buckets.contains_key(caller) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + rate * now.duration_since(b.at).as_secs_f64() < burst);
        }
        let bucket = buckets.entry(caller.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= n {
            bucket.tokens -= n;
            Ok(())
        } else {
            // A batch larger than the burst can never pass; say so with the time a full bucket
            // takes, the caller must split it.
            let missing = (n.min(self.burst) - bucket.tokens).max(0.0);
            Err(Duration::from_secs_f64(missing / self.rate))
        }
    }
}

/// The bound on bytes held by requests in progress.
#[derive(Debug)]
pub struct InflightBytes {
    semaphore: Arc<Semaphore>,
    capacity: usize,
}

/// Room for one request's bytes; given back when dropped.
#[derive(Debug)]
pub struct InflightPermit {
    _permit: OwnedSemaphorePermit,
    pub bytes: usize,
}

impl InflightBytes {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.min(Semaphore::MAX_PERMITS);
        Self {
            semaphore: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// Waits at most `wait` for room for `bytes`; `None` if there was none.
    pub async fn acquire(&self, bytes: usize, wait: Duration) -> Option<InflightPermit> {
        // Zero-byte requests still take one unit so they are counted while in progress.
        let units = bytes.clamp(1, self.capacity);
        let units = u32::try_from(units).unwrap_or(u32::MAX);
        let acquire = self.semaphore.clone().acquire_many_owned(units);
        match tokio::time::timeout(wait, acquire).await {
            Ok(Ok(permit)) => Some(InflightPermit {
                _permit: permit,
                bytes,
            }),
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

    #[test]
    fn disabled_limiter_admits_everything() {
        let l = RateLimiter::new(0.0, None);
        assert!(l.try_take("a", 1_000_000, Instant::now()).is_ok());
    }

    #[test]
    fn bucket_refills_at_the_rate() {
        let l = RateLimiter::new(100.0, Some(200.0));
        let t0 = Instant::now();
        assert!(l.try_take("a", 150, t0).is_ok());
        assert!(l.try_take("a", 60, t0).is_err());
        // Another caller has its own bucket.
        assert!(l.try_take("b", 200, t0).is_ok());
        // 0.1 s later: 50 + 10 tokens.
        let t1 = t0 + Duration::from_millis(100);
        assert!(l.try_take("a", 60, t1).is_ok());
        let wait = l.try_take("a", 50, t1).unwrap_err();
        assert!((0.49..0.51).contains(&wait.as_secs_f64()), "{wait:?}");
        // Never above the burst.
        let t2 = t1 + Duration::from_secs(60);
        assert!(l.try_take("a", 201, t2).is_err());
        assert!(l.try_take("a", 200, t2).is_ok());
    }

    #[tokio::test]
    async fn inflight_bytes_are_bounded() {
        let bound = InflightBytes::new(1_000);
        let a = bound.acquire(700, Duration::from_millis(10)).await.unwrap();
        assert_eq!(bound.in_use(), 700);
        assert!(bound
            .acquire(400, Duration::from_millis(10))
            .await
            .is_none());
        drop(a);
        let b = bound.acquire(400, Duration::from_millis(10)).await.unwrap();
        assert_eq!(b.bytes, 400);
        assert_eq!(bound.in_use(), 400);
    }
}
