//! A rate limiter shared by all workers of a subscription: at most `rate` deliveries per second.
//!
//! Owns the schedule of delivery slots. Invariants: over any window of `t` seconds at most
//! `rate × t + burst` slots are handed out, with `burst` a tenth of a second's worth (at least 1);
//! waiting never holds the lock.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// See the module docs. A rate of 0 means unlimited.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Option<Duration>,
    burst: Duration,
    next: Mutex<Option<Instant>>,
}

impl RateLimiter {
    pub fn new(rate: f64) -> Self {
        let interval = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
        let burst = interval.map_or(Duration::ZERO, |i| i.max(Duration::from_millis(100)));
        RateLimiter {
            interval,
            burst,
            next: Mutex::new(None),
        }
    }

    /// Reserves a slot and returns when it is there.
    pub async fn acquire(&self) {
        let Some(interval) = self.interval else {
            return;
        };
        let now = Instant::now();
        let slot = {
            let mut next = self.next.lock();
            // Idle time builds up credit, but only up to the burst.
            let floor = now.checked_sub(self.burst).unwrap_or(now);
            let slot = next.map_or(floor, |n| n.max(floor));
            *next = Some(slot + interval);
            slot
        };
        if slot > now {
            tokio::time::sleep_until(slot).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn limits_the_rate_after_a_burst() {
        let limiter = RateLimiter::new(100.0);
        let start = Instant::now();
        for _ in 0..210 {
            limiter.acquire().await;
        }
        // 10 slots of burst, then 200 slots at 10 ms each.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(1_990), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(2_010), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        let limiter = RateLimiter::new(0.0);
        let start = Instant::now();
        for _ in 0..10_000 {
            limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
