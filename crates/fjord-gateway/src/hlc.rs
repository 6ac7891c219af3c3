//! The hybrid logical clock stamped on every message (`fjord-hlc` header).
//!
//! A stamp is `(unix_millis << 16) | logical`, as a `u64`. Invariant: the stamps one [`Hlc`] hands
//! out strictly increase, in the order they were handed out, even if the wall clock steps back;
//! they stay close to the wall clock (the logical part only grows while the clock stands still
//! or runs behind the last stamp). A consumer that sorts the messages of a key by
//! `(fjord-hlc, fjord-gateway)` gets the order in which one gateway accepted them, whichever
//! cluster each landed on.
//!
//! The wall clock is injected ([`Clock`]) so tests are deterministic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bits of the logical counter.
pub const LOGICAL_BITS: u32 = 16;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    // The gateway's own injected clock (the HLC takes a `Clock`).
    #[allow(clippy::disallowed_methods)]
    fn now_millis(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A hybrid logical clock, shared by all requests of a gateway.
#[derive(Debug)]
pub struct Hlc {
    clock: Arc<dyn Clock>,
    last: AtomicU64,
}

impl Hlc {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            last: AtomicU64::new(0),
        }
    }

    /// The next stamp: greater than every stamp handed out before.
    pub fn next(&self) -> u64 {
        self.reserve(1)
    }

    /// Reserves `n` (>= 1) consecutive stamps and returns the first one; the batch's messages
    /// take `first, first + 1, ...` in order.
    pub fn reserve(&self, n: u64) -> u64 {
        let n = n.max(1);
        let physical = self.clock.now_millis() << LOGICAL_BITS;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let first = physical.max(last.saturating_add(1));
            let end = first.saturating_add(n - 1);
            match self
                .last
                .compare_exchange_weak(last, end, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return first,
                Err(actual) => last = actual,
            }
        }
    }
}

/// The wall-clock milliseconds of a stamp.
pub fn physical_millis(stamp: u64) -> u64 {
    stamp >> LOGICAL_BITS
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock(pub AtomicU64);

impl ManualClock {
    /// A clock showing `millis`.
    pub fn at(millis: u64) -> Self {
        Self(AtomicU64::new(millis))
    }

    /// Moves the clock by `millis`.
    pub fn advance(&self, millis: u64) {
        self.0.fetch_add(millis, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_wall_clock() {
        let clock = Arc::new(ManualClock(AtomicU64::new(1_000)));
        let hlc = Hlc::new(clock.clone());
        let a = hlc.next();
        assert_eq!(a, 1_000 << LOGICAL_BITS);
        clock.0.store(2_000, Ordering::Relaxed);
        let b = hlc.next();
        assert_eq!(physical_millis(b), 2_000);
        assert_eq!(b & 0xffff, 0);
    }

    #[test]
    fn strictly_increases_when_the_clock_stalls_or_steps_back() {
        let clock = Arc::new(ManualClock(AtomicU64::new(5_000)));
        let hlc = Hlc::new(clock.clone());
        let mut prev = hlc.next();
        for i in 0..1_000 {
            if i == 500 {
                clock.0.store(4_000, Ordering::Relaxed); // NTP step backwards
            }
            let s = hlc.next();
            assert!(s > prev, "{s} after {prev}");
            prev = s;
        }
        assert_eq!(physical_millis(prev), 5_000);
    }

    #[test]
    fn reserved_ranges_do_not_overlap() {
        let clock = Arc::new(ManualClock(AtomicU64::new(7)));
        let hlc = Hlc::new(clock);
        let a = hlc.reserve(10);
        let b = hlc.reserve(3);
        assert_eq!(b, a + 10);
        assert_eq!(hlc.next(), b + 3);
    }

    #[test]
    fn concurrent_stamps_are_unique() {
        let hlc = Arc::new(Hlc::new(Arc::new(SystemClock)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let hlc = hlc.clone();
                std::thread::spawn(move || (0..10_000).map(|_| hlc.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = Vec::new();
        for t in threads {
            let stamps = t.join().unwrap();
            assert!(stamps.windows(2).all(|w| w[0] < w[1]));
            all.extend(stamps);
        }
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
