//! A byte budget for the record data fetch responses hold: reading a backlog allocates what it
//! reads, and a few clients asking for everything at once must not exhaust the broker's memory.
//!
//! A fetch reserves what it is about to read before reading it ([`MemoryBudget::reserve`]),
//! shrinks the reservation to what its response keeps, and releases it when the response has
//! been written to the socket (the encoded frame owns the [`Reservation`]).
//!
//! Invariants:
//! - A fetch reserves once per read, all it needs at once, and waits only while it holds
//!   nothing: fetches never hold part of the budget while waiting for more, so they cannot
//!   deadlock each other.
//! - A single reservation is clamped to the budget's capacity, so one fetch can always proceed
//!   (alone) however much it asks for; the broker-wide cap on one response
//!   ([`crate::BrokerSettings::fetch_max_bytes`]) keeps that within reason.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget: bytes of fetched record data all responses may hold at once.
#[derive(Debug)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    capacity: usize,
}

/// Part of the budget, released when dropped.
#[derive(Debug)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
}

impl MemoryBudget {
    /// A budget of `bytes` (at least 1, at most what a semaphore can count).
    pub fn new(bytes: usize) -> MemoryBudget {
        let capacity = bytes.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        MemoryBudget {
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// Bytes not reserved now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// The whole budget.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Reserves `bytes` (at most the capacity), waiting until they are free.
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        let n = u32::try_from(bytes.min(self.capacity)).unwrap_or(u32::MAX);
        if n == 0 {
            return Reservation { permit: None };
        }
        // The semaphore is never closed, so acquiring only fails if it were; then there is no
        // budget to keep.
        Reservation {
            permit: self.permits.clone().acquire_many_owned(n).await.ok(),
        }
    }
}

impl Reservation {
    /// Nothing reserved.
    pub fn none() -> Reservation {
        Reservation { permit: None }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.permit
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Releases what is held beyond `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        let held = self.bytes();
        if bytes >= held {
            return;
        }
        if bytes == 0 {
            self.permit = None;
        } else if let Some(permit) = &mut self.permit {
            drop(permit.split(held - bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_the_budget_and_shrink() {
        let budget = MemoryBudget::new(100);
        let mut a = budget.reserve(80).await;
        assert_eq!((a.bytes(), budget.available()), (80, 20));
        // 50 more must wait until `a` shrinks.
        let waiting = budget.reserve(50);
        tokio::pin!(waiting);
        assert!(futures::poll!(&mut waiting).is_pending());
        a.shrink_to(30);
        let b = waiting.await;
        assert_eq!((a.bytes(), b.bytes(), budget.available()), (30, 50, 20));
        drop(a);
        drop(b);
        assert_eq!(budget.available(), 100);
        // More than the capacity is clamped to it, so it can still be had.
        let all = budget.reserve(1 << 40).await;
        assert_eq!((all.bytes(), budget.available()), (100, 0));
        drop(all);
        assert_eq!(budget.reserve(0).await.bytes(), 0);
    }
}
