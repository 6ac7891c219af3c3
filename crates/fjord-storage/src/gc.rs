//! Object garbage collection.
//!
//! An object may be deleted only when no index row references it and a grace period has
//! passed. Two kinds of garbage exist:
//! - *dead* objects: once committed, now unreferenced (their topics were deleted); the
//!   coordinator records when they became unreferenced;
//! - *orphans*: uploaded but never committed (the broker crashed, or the commit failed). The
//!   coordinator has never heard of them; the bucket listing shows them.
//!
//! The grace period must exceed the longest time between an object's upload and its commit
//! (the writer gives up after its retry deadline), and the longest read of an object that just
//! became unreferenced. Listing happens *before* reading the references, so an object committed
//! meanwhile is either in the live set or younger than the grace period.

use std::sync::Arc;

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
    let listed: Vec<_> = store
        .list(Some(&Path::from(OBJECTS_PREFIX)))
        .try_collect()
        .await?;
    let refs = coordinator.object_references().await?;
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
        let since = match refs.dead.get(&key) {
            Some(dead_since) => *dead_since,
            None => meta.last_modified.timestamp_millis(),
        };
        if now_ms - since < grace_ms {
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

    #[tokio::test]
    async fn deletes_orphans_and_dead_objects_after_grace() {
        let dir = tempfile::tempdir().unwrap();
        let coordinator: Arc<dyn Coordinator> =
            Arc::new(EmbeddedCoordinator::open(dir.path()).unwrap());
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let put = |key: &'static str| {
            let store = store.clone();
            async move {
                store
                    .put(&Path::from(key), Bytes::from_static(b"x").into())
                    .await
                    .unwrap();
            }
        };
        put("objects/live").await;
        put("objects/orphan").await;
        put("objects/dead").await;
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
        for (key, topic) in [("objects/live", &topics[0]), ("objects/dead", &topics[1])] {
            coordinator
                .commit(FlushCommit {
                    object_key: key.into(),
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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;

        // Within the grace period nothing goes.
        let report = collect(&store, &coordinator, now, 60_000).await.unwrap();
        assert_eq!(report.listed, 3);
        assert_eq!(report.deleted_dead + report.deleted_orphans, 0);

        // Later, the orphan and the dead object go; the live one stays.
        let report = collect(&store, &coordinator, now + 120_000, 60_000)
            .await
            .unwrap();
        assert_eq!((report.deleted_dead, report.deleted_orphans), (1, 1));
        let left: Vec<_> = store.list(None).try_collect().await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].location.to_string(), "objects/live");
        assert!(coordinator
            .object_references()
            .await
            .unwrap()
            .dead
            .is_empty());
    }
}
