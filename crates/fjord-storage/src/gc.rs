//! Object garbage collection.
//!
//! An object may be deleted only when no index row references it and a grace period has
//! passed. Two kinds of garbage exist:
//! - *dead* objects: once committed, now unreferenced (their topics were deleted); the
//!   coordinator records when they became unreferenced;
//! - *orphans*: uploaded but never committed (the broker crashed, or the commit failed). The
//!   coordinator has never heard of them; the bucket listing shows them.
//!
//! The invariant for orphans: *an object this pass deletes can never become referenced*. A
//! pass first raises the coordinator's commit watermark to `now - grace`
//! ([`Coordinator::raise_commit_watermark`]); from then on the coordinator refuses to commit any
//! object made before the watermark (the time is in the object's key, a UUIDv7), in the same
//! serialization order as commits. Only then does the pass read which objects are referenced,
//! and it deletes an unreferenced object only when its key time is below the watermark. A
//! commit of such an object either completed before the raise, and the pass sees the reference,
//! or comes after it, and is refused, however long the commit was delayed (a stalled database,
//! a long network partition). Keys without a time are never collected as orphans.
//!
//! The grace period must exceed the longest time between making an object and committing it
//! (uploads and commits are retried for seconds), so that the watermark refuses no healthy
//! commit, and the clock skew between brokers, and the longest read of an object that just
//! became unreferenced.

use std::sync::Arc;

use fjord_coordinator::state::object_key_time_ms;
use fjord_coordinator::Coordinator;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

/// Where objects live in the store.
pub const OBJECTS_PREFIX: &str = "objects";

/// What one collection pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Objects listed.
    pub listed: usize,
    /// Unreferenced objects deleted.
    pub deleted_dead: usize,
    /// Never-committed objects deleted.
    pub deleted_orphans: usize,
}

/// Errors of a collection pass (the next pass retries).
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Listing or deleting failed.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// The coordinator failed.
    #[error("coordinator: {0}")]
    Coordinator(#[from] fjord_coordinator::CoordinatorError),
}

/// One pass: deletes garbage older than `grace_ms` as of `now_ms`.
pub async fn collect(
    store: &Arc<dyn ObjectStore>,
    coordinator: &Arc<dyn Coordinator>,
    now_ms: i64,
    grace_ms: i64,
) -> Result<GcReport, GcError> {
    // First the watermark, then the references: see the module's invariant.
    let watermark = coordinator
        .raise_commit_watermark(now_ms.saturating_sub(grace_ms))
        .await?;
    let refs = coordinator.object_references().await?;
    let listed: Vec<_> = store
        .list(Some(&Path::from(OBJECTS_PREFIX)))
        .try_collect()
        .await?;
    let mut report = GcReport {
        listed: listed.len(),
        ..GcReport::default()
    };
    let mut forgotten = Vec::new();
    for meta in listed {
        let key = meta.location.to_string();
        if refs.live.contains(&key) {
            continue;
        }
        let collectable = match refs.dead.get(&key) {
            Some(dead_since) => now_ms - dead_since >= grace_ms,
            // An orphan: only below the watermark can it never be committed.
            None => object_key_time_ms(&key).is_some_and(|made| made < watermark),
        };
        if !collectable {
            continue;
        }
        match store.delete(&meta.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if refs.dead.contains_key(&key) {
            report.deleted_dead += 1;
            forgotten.push(key);
        } else {
            tracing::info!(object = %key, "deleted an object that was never committed");
            report.deleted_orphans += 1;
        }
    }
    // Dead objects already gone from the store (an earlier pass deleted them, then failed).
    for key in refs.dead.keys() {
        if !forgotten.contains(key) && now_ms - refs.dead[key] >= grace_ms {
            if let Ok(false) | Err(_) = exists(store, key).await {
                forgotten.push(key.clone());
            }
        }
    }
    if !forgotten.is_empty() {
        coordinator.forget_objects(forgotten).await?;
    }
    Ok(report)
}

async fn exists(store: &Arc<dyn ObjectStore>, key: &str) -> Result<bool, object_store::Error> {
    match store.head(&Path::from(key)).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use fjord_coordinator::embedded::EmbeddedCoordinator;
    use fjord_coordinator::{CommitBatch, FlushCommit, TopicPartition, TopicSpec};

    fn now_ms() -> i64 {
        use fjord_coordinator::clock::Clock;
        fjord_coordinator::clock::SystemClock.now_ms()
    }

    /// An object key as the writer makes them, at time `ms`.
    fn key_at(ms: i64) -> String {
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            (ms / 1000) as u64,
            ((ms % 1000) * 1_000_000) as u32,
        );
        format!("{OBJECTS_PREFIX}/{}.fjd", uuid::Uuid::new_v7(ts))
    }

    #[tokio::test]
    async fn deletes_orphans_and_dead_objects_after_grace() {
        let dir = tempfile::tempdir().unwrap();
        let coordinator: Arc<dyn Coordinator> =
            Arc::new(EmbeddedCoordinator::open(dir.path()).unwrap());
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let put = |key: String| {
            let store = store.clone();
            async move {
                store
                    .put(&Path::from(key.as_str()), Bytes::from_static(b"x").into())
                    .await
                    .unwrap();
            }
        };
        let now = now_ms();
        let (live, orphan, dead) = (key_at(now), key_at(now), key_at(now));
        // Not an object the writer made: never collected as an orphan.
        let foreign = format!("{OBJECTS_PREFIX}/readme.txt");
        for key in [&live, &orphan, &dead, &foreign] {
            put(key.clone()).await;
        }
        let mut topics = Vec::new();
        for name in ["keep", "drop"] {
            topics.push(
                coordinator
                    .create_topic(TopicSpec {
                        name: name.into(),
                        partitions: 1,
                        configs: Default::default(),
                    })
                    .await
                    .unwrap(),
            );
        }
        for (key, topic) in [(&live, &topics[0]), (&dead, &topics[1])] {
            coordinator
                .commit(FlushCommit {
                    object_key: key.clone(),
                    object_size: 1,
                    timestamp_ms: 0,
                    batches: vec![CommitBatch {
                        tp: TopicPartition {
                            topic_id: topic.id,
                            partition: 0,
                        },
                        position: 0,
                        length: 1,
                        offset_count: 1,
                        max_timestamp: 0,
                        producer: None,
                        append: 0,
                    }],
                })
                .await
                .unwrap();
        }
        coordinator.delete_topic("drop").await.unwrap();
        let now = now_ms();

        // Within the grace period nothing goes.
        let report = collect(&store, &coordinator, now, 60_000).await.unwrap();
        assert_eq!(report.listed, 4);
        assert_eq!(report.deleted_dead + report.deleted_orphans, 0);

        // Later, the orphan and the dead object go; the live one and the foreign one stay.
        let report = collect(&store, &coordinator, now + 120_000, 60_000)
            .await
            .unwrap();
        assert_eq!((report.deleted_dead, report.deleted_orphans), (1, 1));
        let mut left: Vec<String> = store
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        left.sort();
        let mut expected = vec![live.clone(), foreign];
        expected.sort();
        assert_eq!(left, expected);
        assert!(coordinator
            .object_references()
            .await
            .unwrap()
            .dead
            .is_empty());
    }

    /// Item 1 of issue 13: a commit that stalls (a database stuck on a lock, a network
    /// partition) while garbage collection runs must not end with a producer acknowledged for
    /// records in an object that was deleted. Either the commit lands before the collection and
    /// the object is kept, or the collection comes first and the commit is refused.
    #[tokio::test]
    async fn an_object_whose_commit_stalls_is_never_both_deleted_and_acknowledged() {
        use crate::batch::tests::sample_batch;
        use crate::reader::ReadCache;
        use crate::writer::{AppendBatch, Writer, WriterSettings};
        use fjord_coordinator::faults::{FaultyCoordinator, Op};

        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::open(dir.path()).unwrap());
        let (faulty, faults) = FaultyCoordinator::new(inner);
        let coordinator: Arc<dyn Coordinator> = faulty;
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let topic = coordinator
            .create_topic(TopicSpec {
                name: "t".into(),
                partitions: 1,
                configs: Default::default(),
            })
            .await
            .unwrap();
        let (writer, task) = Writer::start(
            WriterSettings::default(),
            store.clone(),
            coordinator.clone(),
            Arc::new(ReadCache::new(1 << 20)),
            Arc::new(tokio::sync::watch::channel(0).0),
        );
        // The flush is uploaded, then its commit stalls.
        let hold = faults.hold(Op::Commit);
        let rx = writer
            .append(vec![AppendBatch {
                tp: TopicPartition {
                    topic_id: topic.id,
                    partition: 0,
                },
                bytes: sample_batch(1, -1, -1, 0),
                offset_count: 1,
                max_timestamp: 0,
                log_append_time: false,
                producer: None,
            }])
            .await
            .unwrap();
        hold.reached().await;
        // Much later by the collector's clock, the uncommitted object looks like an orphan.
        let report = collect(&store, &coordinator, now_ms() + 3_600_000, 600_000)
            .await
            .unwrap();
        assert_eq!(report.deleted_orphans, 1);
        hold.release();
        let answer = rx.await.unwrap();
        assert!(
            answer.is_err(),
            "the producer was acknowledged for an object that was deleted: {answer:?}"
        );
        let rows = coordinator
            .index_rows(
                TopicPartition {
                    topic_id: topic.id,
                    partition: 0,
                },
                0,
                u64::MAX,
            )
            .await
            .unwrap();
        assert!(rows.is_empty(), "an index row references a deleted object");
        task.close().await;
    }
}
