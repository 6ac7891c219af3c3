//! Deciding several flushes at once (group commit) against the state as it will be after the
//! earlier ones, without changing the state before the journal has them.
//!
//! Invariant: [`decide_in_order`] returns exactly the entries and outcomes that committing the
//! flushes one after another would, so replaying the journal entries one by one rebuilds the
//! same state. A flush whose object was already committed (an idempotent re-commit, also within
//! the same group) gets its recorded outcomes and no entry.

use std::collections::HashMap;

use crate::model::{BatchOutcome, FlushCommit, TopicPartition};
use crate::state::{
    check_commit_watermark, commit_effects, decide_commit, CommitView, Entry,
    ProducerPartitionState, State,
};
use crate::Result;

/// The state plus what the flushes decided so far change: high watermarks and producer memory.
struct Overlay<'a> {
    base: &'a State,
    high_watermarks: HashMap<TopicPartition, i64>,
    producers: HashMap<(TopicPartition, i64), ProducerPartitionState>,
}

impl CommitView for Overlay<'_> {
    fn high_watermark(&self, tp: TopicPartition) -> Option<i64> {
        match self.high_watermarks.get(&tp) {
            Some(hw) => Some(*hw),
            None => self.base.high_watermark(tp),
        }
    }

    fn producer(&self, tp: TopicPartition, producer_id: i64) -> Option<&ProducerPartitionState> {
        match self.producers.get(&(tp, producer_id)) {
            Some(state) => Some(state),
            None => self.base.producer(tp, producer_id),
        }
    }
}

/// Decides `flushes` in order: the journal entries to write, and every flush's outcomes. Fails
/// as a whole (nothing to write) when a flush not committed before is below the commit
/// watermark ([`crate::state::check_commit_watermark`]).
pub(super) fn decide_in_order(
    state: &State,
    flushes: Vec<FlushCommit>,
) -> Result<(Vec<Entry>, Vec<Vec<BatchOutcome>>)> {
    let mut overlay = Overlay {
        base: state,
        high_watermarks: HashMap::new(),
        producers: HashMap::new(),
    };
    let mut entries = Vec::with_capacity(flushes.len());
    let mut all = Vec::with_capacity(flushes.len());
    for flush in flushes {
        let earlier = entries.iter().find_map(|e| match e {
            Entry::Commit { flush: f, outcomes } if f.object_key == flush.object_key => {
                Some(outcomes)
            }
            _ => None,
        });
        if let Some(outcomes) = earlier.or_else(|| state.recent_commit(&flush.object_key)) {
            all.push(outcomes.clone());
            continue;
        }
        check_commit_watermark(&flush.object_key, state.commit_watermark_ms)?;
        let outcomes = decide_commit(&overlay, &flush);
        let effects = commit_effects(&overlay, &flush, &outcomes);
        overlay.high_watermarks.extend(effects.high_watermarks);
        overlay.producers.extend(effects.producers);
        all.push(outcomes.clone());
        entries.push(Entry::Commit { flush, outcomes });
    }
    Ok((entries, all))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CommitBatch, ProducerBatchInfo, TopicMeta};
    use uuid::Uuid;

    fn state_with_partition(tp: TopicPartition) -> State {
        let mut state = State::default();
        state.apply(&Entry::CreateTopic(TopicMeta {
            name: "t".into(),
            id: tp.topic_id,
            partitions: 1,
            configs: Default::default(),
        }));
        state
    }

    fn flush(key: &str, tp: TopicPartition, records: i64, sequence: i32) -> FlushCommit {
        FlushCommit {
            object_key: key.into(),
            object_size: 100,
            timestamp_ms: 1,
            batches: vec![CommitBatch {
                tp,
                position: 0,
                length: 100,
                offset_count: records,
                max_timestamp: 1,
                producer: Some(ProducerBatchInfo {
                    producer_id: 7,
                    producer_epoch: 0,
                    base_sequence: sequence,
                }),
                append: 0,
            }],
        }
    }

    /// Deciding three flushes at once, one of them a retry of the first, gives what committing
    /// them one by one gives; applying the entries one by one gives the same state.
    #[test]
    fn a_group_decides_like_one_by_one() {
        let tp = TopicPartition {
            topic_id: Uuid::new_v4(),
            partition: 0,
        };
        let flushes = vec![
            flush("a", tp, 3, 0),
            flush("b", tp, 2, 3),
            flush("a", tp, 3, 0),
            // Same producer sequence as "a": a duplicate batch, answered with a's offset.
            flush("c", tp, 3, 0),
        ];

        let mut one_by_one = state_with_partition(tp);
        let mut expected = Vec::new();
        for f in flushes.clone() {
            if let Some(o) = one_by_one.recent_commit(&f.object_key) {
                expected.push(o.clone());
                continue;
            }
            let outcomes = one_by_one.decide_commit(&f);
            expected.push(outcomes.clone());
            one_by_one.apply(&Entry::Commit { flush: f, outcomes });
        }

        let mut grouped = state_with_partition(tp);
        let (entries, outcomes) = decide_in_order(&grouped, flushes).unwrap();
        assert_eq!(outcomes, expected);
        assert_eq!(entries.len(), 3, "the re-commit of 'a' writes nothing");
        for e in &entries {
            grouped.apply(e);
        }
        assert_eq!(grouped.high_watermark(tp), Some(5));
        assert_eq!(grouped.high_watermark(tp), one_by_one.high_watermark(tp));
        assert_eq!(outcomes[1], vec![BatchOutcome::Appended { base_offset: 3 }]);
        assert_eq!(grouped, one_by_one);
    }
}
