//! Failed authentications per source address: a token bucket per IP.
//!
//! Each address may fail `per_minute` times in a burst and earns the failures back at
//! `per_minute` a minute. While its bucket is empty, its attempts are refused without checking
//! any credential, so a password cannot be guessed faster than the limit allows. The map is
//! bounded: when it holds [`MAX_ADDRESSES`] addresses, full buckets (addresses that have not
//! failed lately) are dropped, and if none is full the oldest entry goes.

use std::collections::HashMap;
use std::net::IpAddr;

use parking_lot::Mutex;

/// The most addresses remembered.
pub const MAX_ADDRESSES: usize = 10_000;

/// Failed authentications per source address.
pub struct FailureLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

impl FailureLimiter {
    /// A limiter allowing `per_minute` failures a minute per address (0: no limit).
    pub fn new(per_minute: u32) -> FailureLimiter {
        FailureLimiter {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, bucket: &mut Bucket, now_ms: i64) {
        let capacity = f64::from(self.per_minute);
        let elapsed = (now_ms - bucket.at_ms).max(0) as f64;
        bucket.tokens = (bucket.tokens + elapsed * capacity / 60_000.0).min(capacity);
        bucket.at_ms = now_ms;
    }

    /// Whether `ip` may attempt to authenticate now.
    pub fn allows(&self, ip: IpAddr, now_ms: i64) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        let mut buckets = self.buckets.lock();
        match buckets.get_mut(&ip) {
            None => true,
            Some(bucket) => {
                self.refill(bucket, now_ms);
                bucket.tokens >= 1.0
            }
        }
    }

    /// Records a failed authentication from `ip`.
    pub fn failed(&self, ip: IpAddr, now_ms: i64) {
        if self.per_minute == 0 {
            return;
        }
        let capacity = f64::from(self.per_minute);
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_ADDRESSES && !buckets.contains_key(&ip) {
            for bucket in buckets.values_mut() {
                self.refill(bucket, now_ms);
            }
            buckets.retain(|_, b| b.tokens < capacity);
            if buckets.len() >= MAX_ADDRESSES {
                if let Some(oldest) = buckets.iter().min_by_key(|(_, b)| b.at_ms).map(|(k, _)| *k) {
                    buckets.remove(&oldest);
                }
            }
        }
        let bucket = buckets.entry(ip).or_insert(Bucket {
            tokens: capacity,
            at_ms: now_ms,
        });
        self.refill(bucket, now_ms);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_held_back_after_its_burst_and_earns_attempts_back() {
        let limiter = FailureLimiter::new(3);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..3 {
            assert!(limiter.allows(a, 0));
            limiter.failed(a, 0);
        }
        assert!(!limiter.allows(a, 0));
        assert!(limiter.allows(b, 0), "other addresses are not affected");
        assert!(!limiter.allows(a, 19_000));
        assert!(
            limiter.allows(a, 20_000),
            "one attempt back after a third of a minute"
        );
        assert!(FailureLimiter::new(0).allows(a, 0));
    }

    #[test]
    fn the_map_stays_bounded() {
        let limiter = FailureLimiter::new(5);
        for i in 0..(MAX_ADDRESSES as u32 + 50) {
            limiter.failed(IpAddr::from(i.to_be_bytes()), i64::from(i));
        }
        assert!(limiter.buckets.lock().len() <= MAX_ADDRESSES);
    }
}
