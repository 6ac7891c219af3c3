//! A cache of partitions' log start offsets and high watermarks for the fetch path.
//!
//! Every long-polling fetch re-reads its partitions' offsets each time a commit wakes it; with a
//! shared PostgreSQL coordinator that would be one query per partition per waiting consumer per
//! commit. This cache makes it at most one query per partition per commit per broker, however
//! many consumers wait: entries are tagged with the commit counter (the `commits` watch, bumped
//! by this broker's writer after each commit and by the coordinator's commit notifications for
//! other brokers' commits), and concurrent misses for one partition share one query.
//!
//! Invariants: an entry is used only while the commit counter still has the value it was loaded
//! under, so offsets are never older than the last commit this broker has heard of; a log start
//! moved by this broker (DeleteRecords, retention) drops the entry, one moved by another broker
//! arrives as a commit notification (PostgreSQL); errors are
//! not cached; the cache holds at most [`MAX_ENTRIES`] partitions (it is cleared when full).

use std::collections::HashMap;
use std::sync::Arc;

use fjord_coordinator::{Coordinator, PartitionOffsets, TopicPartition};
use futures::future::{BoxFuture, FutureExt, Shared};
use kafka_protocol::ResponseError;
use parking_lot::Mutex;

use crate::error::coordinator_code;

/// Most partitions remembered.
pub const MAX_ENTRIES: usize = 100_000;

type Load = Shared<BoxFuture<'static, Result<PartitionOffsets, ResponseError>>>;

/// Partition offsets by commit generation.
#[derive(Default)]
pub struct OffsetsCache {
    entries: Mutex<HashMap<TopicPartition, (u64, Load)>>,
}

impl OffsetsCache {
    /// The offsets of `tp` as of commit generation `generation` (or later).
    pub async fn get(
        &self,
        coordinator: &Arc<dyn Coordinator>,
        tp: TopicPartition,
        generation: u64,
    ) -> Result<PartitionOffsets, ResponseError> {
        let load = {
            let mut entries = self.entries.lock();
            match entries.get(&tp) {
                Some((g, load)) if *g == generation => load.clone(),
                _ => {
                    if entries.len() >= MAX_ENTRIES {
                        entries.clear();
                    }
                    let coordinator = coordinator.clone();
                    let load = async move {
                        coordinator
                            .partition_offsets(tp)
                            .await
                            .map_err(|e| coordinator_code(&e))
                    }
                    .boxed()
                    .shared();
                    entries.insert(tp, (generation, load.clone()));
                    load
                }
            }
        };
        let result = load.await;
        if result.is_err() {
            // Forget the failure so that the next caller asks again.
            let mut entries = self.entries.lock();
            if entries.get(&tp).is_some_and(|(g, _)| *g == generation) {
                entries.remove(&tp);
            }
        }
        result
    }

    /// Forgets `tp`, so that the next fetch reads its offsets from the store (after this broker
    /// moved its log start: that is no commit, so the generation does not change).
    pub fn invalidate(&self, tp: TopicPartition) {
        self.entries.lock().remove(&tp);
    }

    /// Partitions currently cached.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_coordinator::embedded::EmbeddedCoordinator;
    use fjord_coordinator::TopicSpec;

    #[tokio::test]
    async fn one_load_per_generation_and_errors_are_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let coordinator: Arc<dyn Coordinator> =
            Arc::new(EmbeddedCoordinator::open(dir.path()).unwrap());
        let topic = coordinator
            .create_topic(TopicSpec {
                name: "t".into(),
                partitions: 1,
                configs: Default::default(),
            })
            .await
            .unwrap();
        let tp = TopicPartition {
            topic_id: topic.id,
            partition: 0,
        };
        let cache = OffsetsCache::default();
        let results =
            futures::future::join_all((0..10).map(|_| cache.get(&coordinator, tp, 1))).await;
        for r in results {
            assert_eq!(r.unwrap().high_watermark, 0);
        }
        assert_eq!(cache.len(), 1);
        // Same generation: the cached value, even though the store would answer differently
        // now (the topic is gone).
        coordinator.delete_topic("t").await.unwrap();
        assert_eq!(
            cache.get(&coordinator, tp, 1).await.unwrap().high_watermark,
            0
        );
        // A new generation asks again; the error is returned and not kept.
        assert!(cache.get(&coordinator, tp, 2).await.is_err());
        assert!(cache.is_empty());
    }
}
