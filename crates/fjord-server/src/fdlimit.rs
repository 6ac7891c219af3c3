//! The process's open-file limit, and its split between client connections and the rest.
//!
//! Every `fjord` command raises its soft `RLIMIT_NOFILE` to the hard limit at start-up (what
//! Go's runtime and most servers do): distributions default the soft limit to 1,024 while
//! allowing far more, and a broker stuck at 1,024 descriptors refuses clients long before its
//! memory or CPU is the limit.
//!
//! `fjord serve` then caps the client connections it accepts below that limit ([`connection_cap`]), keeping a
//! reserve for what the broker itself opens: object files on the local store and the directory
//! fsyncs after them, the journal, PostgreSQL and S3 connections, the metrics endpoint.
//! Invariant: a broker at its connection cap still uploads and commits; clients beyond the cap
//! wait in the listen queue until a connection closes (Kafka's `max.connections` behaves the
//! same way), instead of the accept loop taking the last descriptor the write path needed.

/// Raises the soft open-file limit to the hard limit; returns the limit now in force, or `None`
/// when it cannot be read (the caller then keeps its configured connection cap).
pub fn raise() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "could not read or raise the open-file limit");
            None
        }
    }
}

/// Descriptors kept back from client connections under an open-file limit of `limit`: a tenth,
/// at least 256, but never more than half (so a tiny limit still serves some clients).
pub fn reserve(limit: u64) -> u64 {
    (limit / 10).max(256).min(limit / 2)
}

/// The connections `fjord serve` accepts at once: the configured cap, lowered so that the
/// connections and the [`reserve`] together fit in the open-file limit.
pub fn connection_cap(configured: usize, limit: Option<u64>) -> usize {
    let Some(limit) = limit else {
        return configured;
    };
    let room = limit.saturating_sub(reserve(limit));
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    configured.min(room).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_a_tenth_at_least_256_at_most_half() {
        assert_eq!(reserve(1_048_576), 104_857);
        assert_eq!(reserve(20_000), 2_000);
        assert_eq!(reserve(1_024), 256);
        assert_eq!(reserve(300), 150);
        assert_eq!(reserve(0), 0);
    }

    #[test]
    fn connections_fit_beside_the_reserve() {
        assert_eq!(connection_cap(100_000, Some(1_048_576)), 100_000);
        assert_eq!(connection_cap(100_000, Some(20_000)), 18_000);
        assert_eq!(connection_cap(100_000, Some(1_024)), 768);
        assert_eq!(connection_cap(500, Some(1_024)), 500);
        assert_eq!(connection_cap(100_000, Some(1)), 1);
        assert_eq!(connection_cap(100_000, Some(u64::MAX)), 100_000);
        assert_eq!(connection_cap(100_000, None), 100_000);
    }

    #[test]
    fn raising_never_lowers_the_limit() {
        let before = rlimit::Resource::NOFILE.get().ok().map(|(soft, _)| soft);
        let after = raise();
        if let (Some(before), Some(after)) = (before, after) {
            assert!(after >= before, "{after} < {before}");
        }
    }
}
