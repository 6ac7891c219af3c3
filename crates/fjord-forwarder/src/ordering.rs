//! The ordering scheduler of one partition: which fetched records may be delivered now.
//!
//! Owns the per-lane queues of one partition. A lane is the set of records that must be
//! delivered one at a time in offset order: all records with the same key (mode `key`), all
//! records of the partition (mode `partition`), or none at all (mode `none`, and null keys in
//! mode `key`: Kafka gives records without a key no order).
//! Invariants:
//! - at most one record per lane is released (in delivery) at a time;
//! - within a lane, records are released in the order they were admitted, which is offset order
//!   because the consumer admits them as fetched;
//! - a lane is released again only when its released record finishes (acknowledged,
//!   dead-lettered, or moved to the retry topic; in-memory retries keep the lane).

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::config::OrderingMode;

/// See the module docs.
#[derive(Debug)]
pub struct Scheduler {
    mode: OrderingMode,
    /// Per lane: the released record first, then the waiting ones in offset order.
    lanes: HashMap<Bytes, VecDeque<i64>>,
}

impl Scheduler {
    pub fn new(mode: OrderingMode) -> Self {
        Scheduler {
            mode,
            lanes: HashMap::new(),
        }
    }

    /// The lane of a record, `None` for records that may overlap with anything.
    fn lane(&self, key: Option<&Bytes>) -> Option<Bytes> {
        match self.mode {
            OrderingMode::None => None,
            OrderingMode::Key => key.cloned(),
            OrderingMode::Partition => Some(Bytes::new()),
        }
    }

    /// A fetched record arrives (in offset order). Returns true if it may be delivered now;
    /// otherwise [`Scheduler::finish`] of its predecessor will return it.
    pub fn admit(&mut self, key: Option<&Bytes>, offset: i64) -> bool {
        let Some(lane) = self.lane(key) else {
            return true;
        };
        let queue = self.lanes.entry(lane).or_default();
        queue.push_back(offset);
        queue.len() == 1
    }

    /// The record at `offset` finished. Returns the next record of its lane that may now be
    /// delivered, if any.
    pub fn finish(&mut self, key: Option<&Bytes>, offset: i64) -> Option<i64> {
        let lane = self.lane(key)?;
        let queue = self.lanes.get_mut(&lane)?;
        let released = queue.front() == Some(&offset);
        if released {
            queue.pop_front();
        } else {
            // Finishing a waiting record (not expected: only released records finish) must not
            // release anything out of turn.
            queue.retain(|&o| o != offset);
        }
        let next = if released {
            queue.front().copied()
        } else {
            None
        };
        if queue.is_empty() {
            self.lanes.remove(&lane);
        }
        next
    }

    /// Records waiting behind a released record of their lane.
    pub fn waiting(&self) -> usize {
        self.lanes.values().map(|q| q.len().saturating_sub(1)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::{HashMap, HashSet};

    fn key(k: &str) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(k.as_bytes()))
    }

    #[test]
    fn none_releases_everything() {
        let mut s = Scheduler::new(OrderingMode::None);
        assert!(s.admit(key("a").as_ref(), 0));
        assert!(s.admit(key("a").as_ref(), 1));
        assert_eq!(s.finish(key("a").as_ref(), 0), None);
        assert_eq!(s.waiting(), 0);
    }

    #[test]
    fn key_mode_serialises_a_key_and_not_others() {
        let mut s = Scheduler::new(OrderingMode::Key);
        assert!(s.admit(key("a").as_ref(), 0));
        assert!(s.admit(key("b").as_ref(), 1));
        assert!(!s.admit(key("a").as_ref(), 2));
        assert!(!s.admit(key("a").as_ref(), 3));
        assert!(s.admit(None, 4), "null keys are unordered");
        assert!(s.admit(None, 5));
        assert_eq!(s.waiting(), 2);
        assert_eq!(s.finish(key("b").as_ref(), 1), None);
        assert_eq!(s.finish(key("a").as_ref(), 0), Some(2));
        assert_eq!(s.finish(key("a").as_ref(), 2), Some(3));
        assert_eq!(s.finish(key("a").as_ref(), 3), None);
        assert_eq!(s.waiting(), 0);
        assert!(
            s.admit(key("a").as_ref(), 6),
            "an idle key is released at once"
        );
    }

    #[test]
    fn partition_mode_is_one_lane() {
        let mut s = Scheduler::new(OrderingMode::Partition);
        assert!(s.admit(key("a").as_ref(), 0));
        assert!(!s.admit(key("b").as_ref(), 1));
        assert!(!s.admit(None, 2));
        assert_eq!(s.finish(key("a").as_ref(), 0), Some(1));
        assert_eq!(s.finish(key("b").as_ref(), 1), Some(2));
        assert_eq!(s.finish(None, 2), None);
    }

    #[test]
    fn finishing_a_waiting_record_releases_nothing_out_of_turn() {
        let mut s = Scheduler::new(OrderingMode::Key);
        assert!(s.admit(key("a").as_ref(), 0));
        assert!(!s.admit(key("a").as_ref(), 1));
        assert!(!s.admit(key("a").as_ref(), 2));
        assert_eq!(s.finish(key("a").as_ref(), 1), None);
        assert_eq!(s.finish(key("a").as_ref(), 0), Some(2));
    }

    /// Property: records of random keys are admitted in offset order, interleaved with random
    /// completions of released records. Per key, at most one record is released at a time and
    /// release order equals offset order; every record is eventually released; unrelated keys
    /// are never held back.
    #[test]
    fn random_interleavings_keep_per_key_order() {
        for seed in 0..300u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mode = if seed % 5 == 0 {
                OrderingMode::Partition
            } else {
                OrderingMode::Key
            };
            let mut s = Scheduler::new(mode);
            let keys: Vec<Option<Bytes>> = (0..rng.gen_range(1..12))
                .map(|i| if i == 0 { None } else { key(&format!("k{i}")) })
                .collect();
            let total = rng.gen_range(1..300i64);
            let mut key_of: HashMap<i64, Option<Bytes>> = HashMap::new();
            let mut released: Vec<i64> = Vec::new(); // in flight
            let mut release_order: HashMap<Option<Bytes>, Vec<i64>> = HashMap::new();
            let mut next = 0i64;
            let mut done = 0usize;
            let lane_of = |k: &Option<Bytes>| match mode {
                OrderingMode::Partition => Some(Bytes::new()),
                _ => k.clone(),
            };
            while done < total as usize {
                if next < total && (released.is_empty() || rng.gen_bool(0.6)) {
                    let k = keys[rng.gen_range(0..keys.len())].clone();
                    key_of.insert(next, k.clone());
                    let busy = released
                        .iter()
                        .any(|o| lane_of(&key_of[o]) == lane_of(&k) && lane_of(&k).is_some());
                    let ready = s.admit(k.as_ref(), next);
                    assert_eq!(ready, !busy, "seed {seed}: offset {next}");
                    if ready {
                        released.push(next);
                        release_order.entry(lane_of(&k)).or_default().push(next);
                    }
                    next += 1;
                } else {
                    let i = rng.gen_range(0..released.len());
                    let o = released.swap_remove(i);
                    done += 1;
                    if let Some(n) = s.finish(key_of[&o].as_ref(), o) {
                        released.push(n);
                        release_order
                            .entry(lane_of(&key_of[&n]))
                            .or_default()
                            .push(n);
                    }
                }
                // At most one released record per lane.
                let mut lanes = HashSet::new();
                for o in &released {
                    if let Some(l) = lane_of(&key_of[o]) {
                        assert!(
                            lanes.insert(l),
                            "seed {seed}: two records of a lane in flight"
                        );
                    }
                }
            }
            assert_eq!(s.waiting(), 0, "seed {seed}");
            for (lane, order) in release_order {
                if lane.is_some() {
                    assert!(
                        order.windows(2).all(|w| w[0] < w[1]),
                        "seed {seed}: {order:?}"
                    );
                }
            }
        }
    }
}
