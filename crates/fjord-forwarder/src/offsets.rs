//! The per-partition offset tracker: which fetched records are unfinished, and so which offset
//! may be committed.
//!
//! Owns, for one partition of one assignment: the set of offsets added and not yet finished, and
//! the highest offset added. Invariants:
//! - offsets are added in strictly increasing order (the order a consumer fetches them); an
//!   offset at or below the highest one added is refused, so a refetched record is not tracked
//!   twice;
//! - [`OffsetTracker::commit_point`] is never above an unfinished offset: it is the lowest
//!   unfinished offset, or one past the highest offset added when all are finished. Kafka's
//!   committed offset is "the next record to read", so committing it never skips a record that
//!   has not finished, whatever order records finish in;
//! - the commit point never goes down.

use std::collections::BTreeSet;

/// See the module docs.
#[derive(Debug, Default, Clone)]
pub struct OffsetTracker {
    unfinished: BTreeSet<i64>,
    highest_added: Option<i64>,
}

/// What [`OffsetTracker::add`] refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotIncreasing {
    pub offset: i64,
    pub highest: i64,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts tracking a fetched record.
    pub fn add(&mut self, offset: i64) -> Result<(), NotIncreasing> {
        if let Some(highest) = self.highest_added {
            if offset <= highest {
                return Err(NotIncreasing { offset, highest });
            }
        }
        self.highest_added = Some(offset);
        self.unfinished.insert(offset);
        Ok(())
    }

    /// Marks a record finished (acknowledged, dead-lettered or moved to the retry topic).
    /// Returns false if it was not unfinished (never added, or finished already).
    pub fn finish(&mut self, offset: i64) -> bool {
        self.unfinished.remove(&offset)
    }

    /// The offset to commit (the next record to read after a restart), or `None` before the first
    /// record was added.
    pub fn commit_point(&self) -> Option<i64> {
        match self.unfinished.first() {
            Some(&lowest) => Some(lowest),
            None => self.highest_added.map(|h| h + 1),
        }
    }

    /// Records added and not finished.
    pub fn unfinished(&self) -> usize {
        self.unfinished.len()
    }

    /// The highest offset added.
    pub fn highest_added(&self) -> Option<i64> {
        self.highest_added
    }

    /// Records between the commit point and the highest offset added (finished or not): what a
    /// restart would redeliver at most.
    pub fn commit_lag(&self) -> i64 {
        match (self.commit_point(), self.highest_added) {
            (Some(c), Some(h)) => (h + 1 - c).max(0),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    #[test]
    fn empty_tracker_has_no_commit_point() {
        let t = OffsetTracker::new();
        assert_eq!(t.commit_point(), None);
        assert_eq!(t.commit_lag(), 0);
    }

    #[test]
    fn commit_point_is_the_lowest_unfinished_offset() {
        let mut t = OffsetTracker::new();
        for o in 10..15 {
            t.add(o).unwrap();
        }
        assert_eq!(t.commit_point(), Some(10));
        assert!(t.finish(12));
        assert!(t.finish(11));
        assert_eq!(t.commit_point(), Some(10), "10 is unfinished");
        assert!(t.finish(10));
        assert_eq!(t.commit_point(), Some(13));
        assert!(t.finish(14));
        assert!(t.finish(13));
        assert_eq!(t.commit_point(), Some(15));
        assert_eq!(t.commit_lag(), 0);
    }

    #[test]
    fn gaps_in_offsets_are_fine() {
        // Compacted topics and transaction markers leave holes.
        let mut t = OffsetTracker::new();
        t.add(3).unwrap();
        t.add(7).unwrap();
        t.finish(3);
        assert_eq!(t.commit_point(), Some(7));
        t.finish(7);
        assert_eq!(t.commit_point(), Some(8));
    }

    #[test]
    fn refetched_offsets_are_refused_and_finish_is_idempotent() {
        let mut t = OffsetTracker::new();
        t.add(5).unwrap();
        t.add(6).unwrap();
        assert_eq!(
            t.add(6),
            Err(NotIncreasing {
                offset: 6,
                highest: 6
            })
        );
        assert_eq!(
            t.add(2),
            Err(NotIncreasing {
                offset: 2,
                highest: 6
            })
        );
        assert!(t.finish(5));
        assert!(!t.finish(5), "finished twice");
        assert!(!t.finish(4), "never added");
        assert_eq!(t.unfinished(), 1);
        assert_eq!(t.commit_point(), Some(6));
    }

    /// Property: with records added in offset order (with random holes) and finished in a random
    /// order interleaved with the adds, the commit point never passes an unfinished record, never
    /// goes down, and ends one past the last record.
    #[test]
    fn random_completion_orders_never_skip_an_unfinished_record() {
        for seed in 0..500u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut t = OffsetTracker::new();
            let mut next = rng.gen_range(0..1000i64);
            let mut open: Vec<i64> = Vec::new();
            let mut last_point = None;
            let total = rng.gen_range(1..200);
            let mut added = 0;
            while added < total || !open.is_empty() {
                if added < total && (open.is_empty() || rng.gen_bool(0.5)) {
                    t.add(next).unwrap();
                    open.push(next);
                    next += rng.gen_range(1..4);
                    added += 1;
                } else {
                    open.shuffle(&mut rng);
                    let done = open.pop().unwrap();
                    assert!(t.finish(done));
                }
                let point = t.commit_point();
                if let (Some(p), Some(&lowest_open)) = (point, open.iter().min()) {
                    assert!(
                        p <= lowest_open,
                        "seed {seed}: commit {p} passes {lowest_open}"
                    );
                    assert_eq!(p, lowest_open, "seed {seed}: commit lags needlessly");
                }
                assert!(point >= last_point, "seed {seed}: commit point went down");
                last_point = point;
                assert_eq!(t.unfinished(), open.len());
            }
            assert_eq!(t.commit_point(), t.highest_added().map(|h| h + 1));
        }
    }
}
