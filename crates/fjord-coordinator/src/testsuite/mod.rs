//! The conformance suite every [`Coordinator`] implementation must pass.
//!
//! Each implementation's tests call [`run_all`] with a factory that returns a fresh, empty
//! coordinator, and [`durability`] with a factory that reopens the same store each time.
//! Assertions panic, as tests do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

mod brokers;
mod expiry;
mod groups;
mod lifecycle;
mod objects;
mod quotas;
mod security;
mod swaps;

use std::future::Future;
use std::sync::Arc;

use crate::*;
use groups::{blob, load, offset, save, with_meta};

/// Runs every conformance test, each against a fresh coordinator from `fresh`.
pub async fn run_all<F, Fut>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Coordinator>>,
{
    topics(fresh().await).await;
    commit_assigns_dense_offsets(fresh().await).await;
    idempotent_producers(fresh().await).await;
    commit_is_idempotent_per_object(fresh().await).await;
    group_commit_is_commits_in_order(fresh().await).await;
    index_lookups(fresh().await).await;
    timestamp_lookups_with_unordered_timestamps_and_a_log_start(fresh().await).await;
    producer_ids(fresh().await).await;
    producer_epoch_bump_retry_is_answered_again(fresh().await).await;
    objects_below_the_commit_watermark_are_refused(fresh().await).await;
    groups::run_all(&fresh).await;
    lifecycle::run_all(&fresh).await;
    objects::run_all(&fresh).await;
    swaps::run_all(&fresh).await;
    expiry::run_all(&fresh).await;
    brokers::run_all(&fresh).await;
    security::run_all(&fresh).await;
    quotas::run_all(&fresh).await;
}

/// Whether a call was refused as invalid.
pub(super) fn is_invalid<T: std::fmt::Debug>(r: Result<T>) -> bool {
    matches!(r, Err(CoordinatorError::Invalid(_)))
}

pub(super) fn spec(name: &str, partitions: i32) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        partitions,
        configs: BTreeMap::new(),
    }
}

pub(super) fn tp(topic: &TopicMeta, partition: i32) -> TopicPartition {
    TopicPartition {
        topic_id: topic.id,
        partition,
    }
}

fn batch(tp: TopicPartition, position: u64, count: i64, ts: i64) -> CommitBatch {
    CommitBatch {
        tp,
        position,
        length: 100,
        offset_count: count,
        max_timestamp: ts,
        producer: None,
        // Each batch its own append unless a test says otherwise.
        append: position as u32,
    }
}

fn idem(mut b: CommitBatch, producer_id: i64, epoch: i16, seq: i32) -> CommitBatch {
    b.producer = Some(ProducerBatchInfo {
        producer_id,
        producer_epoch: epoch,
        base_sequence: seq,
    });
    b
}

fn flush(key: &str, batches: Vec<CommitBatch>) -> FlushCommit {
    FlushCommit {
        object_key: key.into(),
        object_size: batches.iter().map(|b| b.length).sum(),
        timestamp_ms: 1_000,
        batches,
    }
}

async fn topics(c: Arc<dyn Coordinator>) {
    let mut configs = BTreeMap::new();
    configs.insert("retention.ms".to_string(), "1000".to_string());
    let b = c
        .create_topic(TopicSpec {
            name: "b".into(),
            partitions: 3,
            configs,
        })
        .await
        .unwrap();
    let a = c.create_topic(spec("a", 1)).await.unwrap();
    assert_ne!(a.id, b.id);
    assert_eq!(b.partitions, 3);
    assert!(matches!(
        c.create_topic(spec("a", 2)).await,
        Err(CoordinatorError::TopicExists(_))
    ));
    assert!(matches!(
        c.create_topic(spec("zero", 0)).await,
        Err(CoordinatorError::Invalid(_))
    ));
    let names: Vec<_> = c
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, vec!["a", "b"]);
    assert_eq!(c.topic("b").await.unwrap().unwrap(), b);
    assert_eq!(c.topic_by_id(b.id).await.unwrap().unwrap(), b);
    assert!(c.topic("nope").await.unwrap().is_none());

    let b2 = c.create_partitions("b", 5).await.unwrap();
    assert_eq!(b2.partitions, 5);
    assert_eq!(
        c.partition_offsets(tp(&b2, 4)).await.unwrap(),
        PartitionOffsets {
            log_start: 0,
            high_watermark: 0
        }
    );
    assert!(matches!(
        c.create_partitions("b", 2).await,
        Err(CoordinatorError::Invalid(_))
    ));
    assert!(matches!(
        c.create_partitions("nope", 2).await,
        Err(CoordinatorError::UnknownTopic(_))
    ));

    let b3 = c
        .alter_topic_configs(
            "b",
            vec![
                ("retention.ms".into(), None),
                ("cleanup.policy".into(), Some("compact".into())),
            ],
        )
        .await
        .unwrap();
    assert_eq!(b3.configs.len(), 1);
    assert_eq!(b3.configs["cleanup.policy"], "compact");

    let deleted = c.delete_topic("a").await.unwrap();
    assert_eq!(deleted.id, a.id);
    assert!(c.topic("a").await.unwrap().is_none());
    assert!(matches!(
        c.delete_topic("a").await,
        Err(CoordinatorError::UnknownTopic(_))
    ));
    assert!(c.partition_offsets(tp(&a, 0)).await.is_err());
    // A deleted name can be used again, with a new id.
    let a2 = c.create_topic(spec("a", 1)).await.unwrap();
    assert_ne!(a2.id, a.id);
}

async fn commit_assigns_dense_offsets(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("t", 2)).await.unwrap();
    let (p0, p1) = (tp(&t, 0), tp(&t, 1));
    let out = c
        .commit(flush(
            "o1",
            vec![
                batch(p0, 0, 3, 10),
                batch(p0, 100, 2, 20),
                batch(p1, 200, 5, 15),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            BatchOutcome::Appended { base_offset: 0 },
            BatchOutcome::Appended { base_offset: 3 },
            BatchOutcome::Appended { base_offset: 0 },
        ]
    );
    let out = c
        .commit(flush("o2", vec![batch(p0, 0, 1, 30)]))
        .await
        .unwrap();
    assert_eq!(out, vec![BatchOutcome::Appended { base_offset: 5 }]);
    assert_eq!(c.partition_offsets(p0).await.unwrap().high_watermark, 6);
    assert_eq!(c.partition_offsets(p1).await.unwrap().high_watermark, 5);

    // Adjacent batches of one partition in one object share one index row.
    let rows = c.index_rows(p0, 0, u64::MAX).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].base_offset, rows[0].last_offset), (0, 4));
    assert_eq!((rows[0].position, rows[0].length), (0, 200));
    assert_eq!(rows[0].object_key, "o1");
    assert_eq!(rows[0].max_timestamp, 20);
    assert_eq!((rows[1].base_offset, rows[1].last_offset), (5, 5));
    assert_eq!(rows[1].object_key, "o2");

    // Batches of a partition that no longer exists are rejected, the others still appended.
    let gone = TopicPartition {
        topic_id: t.id,
        partition: 7,
    };
    let out = c
        .commit(flush(
            "o3",
            vec![batch(gone, 0, 1, 1), batch(p1, 100, 1, 1)],
        ))
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            BatchOutcome::Rejected(BatchRejection::UnknownTopicOrPartition),
            BatchOutcome::Appended { base_offset: 5 },
        ]
    );
}

async fn idempotent_producers(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("t", 1)).await.unwrap();
    let p = tp(&t, 0);
    let id = c
        .init_producer_id(InitProducer { existing: None })
        .await
        .unwrap();
    let pid = id.producer_id;
    // A new producer must start at sequence 0.
    let out = c
        .commit(flush("x0", vec![idem(batch(p, 0, 2, 1), pid, 0, 5)]))
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![BatchOutcome::Rejected(BatchRejection::UnknownProducerId)]
    );

    let out = c
        .commit(flush(
            "x1",
            vec![
                idem(batch(p, 0, 2, 1), pid, 0, 0),
                idem(batch(p, 100, 3, 1), pid, 0, 2),
                // A retry of the first batch inside the same flush.
                idem(batch(p, 200, 2, 1), pid, 0, 0),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            BatchOutcome::Appended { base_offset: 0 },
            BatchOutcome::Appended { base_offset: 2 },
            BatchOutcome::Duplicate { base_offset: 0 },
        ]
    );
    // A retry in a later flush is answered with the original offset, not stored.
    let out = c
        .commit(flush("x2", vec![idem(batch(p, 0, 3, 1), pid, 0, 2)]))
        .await
        .unwrap();
    assert_eq!(out, vec![BatchOutcome::Duplicate { base_offset: 2 }]);
    assert_eq!(c.partition_offsets(p).await.unwrap().high_watermark, 5);
    // A gap.
    let out = c
        .commit(flush("x3", vec![idem(batch(p, 0, 1, 1), pid, 0, 9)]))
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![BatchOutcome::Rejected(BatchRejection::OutOfOrderSequence)]
    );
    // The next in sequence.
    let out = c
        .commit(flush("x4", vec![idem(batch(p, 0, 1, 1), pid, 0, 5)]))
        .await
        .unwrap();
    assert_eq!(out, vec![BatchOutcome::Appended { base_offset: 5 }]);
    // A bumped epoch restarts at 0 and fences the old epoch.
    let bumped = c
        .init_producer_id(InitProducer {
            existing: Some((pid, 0)),
        })
        .await
        .unwrap();
    assert_eq!(bumped.producer_id, pid);
    assert_eq!(bumped.producer_epoch, 1);
    let out = c
        .commit(flush(
            "x5",
            vec![
                idem(batch(p, 0, 1, 1), pid, 1, 3),
                idem(batch(p, 100, 1, 1), pid, 1, 0),
                idem(batch(p, 200, 1, 1), pid, 0, 6),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            BatchOutcome::Rejected(BatchRejection::OutOfOrderSequence),
            BatchOutcome::Appended { base_offset: 6 },
            BatchOutcome::Rejected(BatchRejection::ProducerFenced),
        ]
    );
    // Sequence numbers wrap from i32::MAX to 0.
    let other = c
        .init_producer_id(InitProducer { existing: None })
        .await
        .unwrap()
        .producer_id;
    let out = c
        .commit(flush(
            "x6",
            vec![
                idem(batch(p, 0, 1, 1), other, 0, 0),
                idem(batch(p, 100, i64::from(i32::MAX), 1), other, 0, 1),
                idem(batch(p, 200, 2, 1), other, 0, 0),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(
        out[2],
        BatchOutcome::Appended {
            base_offset: 8 + i64::from(i32::MAX)
        },
        "{out:?}"
    );
}

async fn commit_is_idempotent_per_object(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("t", 1)).await.unwrap();
    let p = tp(&t, 0);
    let f = flush("same", vec![batch(p, 0, 4, 1)]);
    let first = c.commit(f.clone()).await.unwrap();
    let again = c.commit(f).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(c.partition_offsets(p).await.unwrap().high_watermark, 4);
}

/// `commit_many` gives what committing its flushes one after another gives: each flush sees the
/// earlier ones (offsets, producer sequences), a key committed before or earlier in the group
/// gets its recorded outcomes, and the index has one row per appended run.
async fn group_commit_is_commits_in_order(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("t", 2)).await.unwrap();
    let (p0, p1) = (tp(&t, 0), tp(&t, 1));
    let pid = c
        .init_producer_id(InitProducer { existing: None })
        .await
        .unwrap()
        .producer_id;
    let before = c
        .commit(flush("g0", vec![batch(p0, 0, 2, 1)]))
        .await
        .unwrap();
    assert_eq!(before, vec![BatchOutcome::Appended { base_offset: 0 }]);

    let out = c
        .commit_many(vec![
            flush(
                "g1",
                vec![batch(p0, 0, 3, 2), idem(batch(p1, 100, 2, 2), pid, 0, 0)],
            ),
            // Already committed before the group: recorded outcomes, nothing appended.
            flush("g0", vec![batch(p0, 0, 2, 1)]),
            flush(
                "g2",
                vec![idem(batch(p1, 0, 1, 3), pid, 0, 2), batch(p0, 100, 1, 3)],
            ),
            // A retry of g1's idempotent batch under a new key: a duplicate.
            flush("g3", vec![idem(batch(p1, 0, 2, 4), pid, 0, 0)]),
            // The same key twice in one group: the second gets the first's outcomes.
            flush(
                "g2",
                vec![idem(batch(p1, 0, 1, 3), pid, 0, 2), batch(p0, 100, 1, 3)],
            ),
            // A gap in the producer's sequence, seeing g2's batch.
            flush("g4", vec![idem(batch(p1, 0, 1, 5), pid, 0, 9)]),
        ])
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            vec![
                BatchOutcome::Appended { base_offset: 2 },
                BatchOutcome::Appended { base_offset: 0 },
            ],
            before,
            vec![
                BatchOutcome::Appended { base_offset: 2 },
                BatchOutcome::Appended { base_offset: 5 },
            ],
            vec![BatchOutcome::Duplicate { base_offset: 0 }],
            vec![
                BatchOutcome::Appended { base_offset: 2 },
                BatchOutcome::Appended { base_offset: 5 },
            ],
            vec![BatchOutcome::Rejected(BatchRejection::OutOfOrderSequence)],
        ]
    );
    assert_eq!(c.partition_offsets(p0).await.unwrap().high_watermark, 6);
    assert_eq!(c.partition_offsets(p1).await.unwrap().high_watermark, 3);
    let rows = c.index_rows(p0, 0, u64::MAX).await.unwrap();
    let keys: Vec<_> = rows
        .iter()
        .map(|r| (r.object_key.as_str(), r.base_offset, r.last_offset))
        .collect();
    assert_eq!(keys, vec![("g0", 0, 1), ("g1", 2, 4), ("g2", 5, 5)]);

    // The whole group again (a retry after an unknown result): the same answers, no change.
    let again = c
        .commit_many(vec![
            flush(
                "g1",
                vec![batch(p0, 0, 3, 2), idem(batch(p1, 100, 2, 2), pid, 0, 0)],
            ),
            flush(
                "g2",
                vec![idem(batch(p1, 0, 1, 3), pid, 0, 2), batch(p0, 100, 1, 3)],
            ),
        ])
        .await
        .unwrap();
    assert_eq!(again, vec![out[0].clone(), out[2].clone()]);
    assert_eq!(c.partition_offsets(p0).await.unwrap().high_watermark, 6);
    assert!(c.commit_many(vec![]).await.unwrap().is_empty());
}

async fn index_lookups(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("t", 1)).await.unwrap();
    let p = tp(&t, 0);
    // Three objects of 10 offsets each; timestamps rise then fall.
    for (i, ts) in [(0, 100), (1, 300), (2, 200)] {
        c.commit(flush(&format!("o{i}"), vec![batch(p, 0, 10, ts)]))
            .await
            .unwrap();
    }
    let rows = c.index_rows(p, 15, u64::MAX).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.base_offset).collect::<Vec<_>>(),
        vec![10, 20]
    );
    // max_bytes limits the rows, but at least one is returned.
    let rows = c.index_rows(p, 0, 1).await.unwrap();
    assert_eq!(rows.len(), 1);
    let rows = c.index_rows(p, 0, 200).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert!(c.index_rows(p, 30, u64::MAX).await.unwrap().is_empty());

    let row = c.row_for_timestamp(p, 150).await.unwrap().unwrap();
    assert_eq!(row.base_offset, 10);
    let row = c.row_for_timestamp(p, 50).await.unwrap().unwrap();
    assert_eq!(row.base_offset, 0);
    assert!(c.row_for_timestamp(p, 301).await.unwrap().is_none());
    let row = c.row_with_max_timestamp(p).await.unwrap().unwrap();
    assert_eq!(row.base_offset, 10);
}

/// ListOffsets by timestamp and by max timestamp (-3): the first row at or after the log start
/// whose max timestamp is at or above the target, and the earliest row with the largest
/// timestamp, with timestamps that go up and down, and rows with larger timestamps than any
/// retained one dropped below the log start.
async fn timestamp_lookups_with_unordered_timestamps_and_a_log_start(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("ts", 1)).await.unwrap();
    let p = tp(&t, 0);
    let commit = |i: usize, ts: i64| {
        let c = c.clone();
        async move {
            c.commit(flush(&format!("ts{i}"), vec![batch(p, 0, 10, ts)]))
                .await
                .unwrap();
        }
    };
    // Rows of 10 offsets: base 0, 10, ... 50.
    for (i, ts) in [500, 100, 300, 200, 400, 300].into_iter().enumerate() {
        commit(i, ts).await;
    }
    let at = |ts: i64| {
        let c = c.clone();
        async move {
            c.row_for_timestamp(p, ts)
                .await
                .unwrap()
                .map(|r| r.base_offset)
        }
    };
    let max = || {
        let c = c.clone();
        async move {
            c.row_with_max_timestamp(p)
                .await
                .unwrap()
                .map(|r| (r.base_offset, r.max_timestamp))
        }
    };
    assert_eq!(at(50).await, Some(0));
    assert_eq!(at(450).await, Some(0));
    assert_eq!(at(500).await, Some(0));
    assert_eq!(at(501).await, None);
    assert_eq!(max().await, Some((0, 500)));

    // The log start inside the second row: the first row (500) is gone, the second is retained.
    c.delete_records(p, 15).await.unwrap();
    assert_eq!(at(50).await, Some(10));
    assert_eq!(at(150).await, Some(20));
    assert_eq!(at(300).await, Some(20));
    assert_eq!(at(301).await, Some(40));
    assert_eq!(at(401).await, None);
    assert_eq!(max().await, Some((40, 400)));

    c.delete_records(p, 20).await.unwrap();
    assert_eq!(at(50).await, Some(20));
    assert_eq!(at(250).await, Some(20));
    assert_eq!(at(350).await, Some(40));

    c.delete_records(p, 45).await.unwrap();
    assert_eq!(at(100).await, Some(40));
    assert_eq!(at(400).await, Some(40));
    assert_eq!(at(401).await, None);
    assert_eq!(max().await, Some((40, 400)));

    // New rows: equal largest timestamps answer with the earliest.
    commit(6, 450).await;
    commit(7, 450).await;
    commit(8, 420).await;
    assert_eq!(at(420).await, Some(60));
    assert_eq!(at(450).await, Some(60));
    assert_eq!(max().await, Some((60, 450)));
    c.delete_records(p, 65).await.unwrap();
    assert_eq!(at(0).await, Some(60));
    c.delete_records(p, 70).await.unwrap();
    assert_eq!(at(0).await, Some(70));
    assert_eq!(at(421).await, Some(70));
    assert_eq!(max().await, Some((70, 450)));
    c.delete_records(p, 80).await.unwrap();
    assert_eq!(at(0).await, Some(80));
    assert_eq!(max().await, Some((80, 420)));
    // Everything deleted: no row.
    c.delete_records(p, -1).await.unwrap();
    assert_eq!(at(0).await, None);
    assert_eq!(max().await, None);
    commit(9, 10).await;
    assert_eq!(at(0).await, Some(90));
    assert_eq!(max().await, Some((90, 10)));
}

async fn producer_ids(c: Arc<dyn Coordinator>) {
    let a = c
        .init_producer_id(InitProducer { existing: None })
        .await
        .unwrap();
    let b = c
        .init_producer_id(InitProducer { existing: None })
        .await
        .unwrap();
    assert_ne!(a.producer_id, b.producer_id);
    assert_eq!(a.producer_epoch, 0);
    let a1 = c
        .init_producer_id(InitProducer {
            existing: Some((a.producer_id, 0)),
        })
        .await
        .unwrap();
    assert_eq!((a1.producer_id, a1.producer_epoch), (a.producer_id, 1));
}

/// KIP-360: a bump whose response was lost is retried with the same (id, epoch); it is answered
/// with the epoch it already got, as Kafka does, not fenced. Epochs older than that are fenced.
async fn producer_epoch_bump_retry_is_answered_again(c: Arc<dyn Coordinator>) {
    let bump = |id: i64, epoch: i16| {
        c.init_producer_id(InitProducer {
            existing: Some((id, epoch)),
        })
    };
    let a = c
        .init_producer_id(InitProducer { existing: None })
        .await
        .unwrap();
    let id = a.producer_id;
    let first = bump(id, 0).await.unwrap();
    assert_eq!((first.producer_id, first.producer_epoch), (id, 1));
    // The response was lost; the client asks again with what it had.
    let retried = bump(id, 0).await.unwrap();
    assert_eq!(retried, first, "a retried bump gets the same answer");
    // Still at epoch 1: the retry did not bump again.
    let second = bump(id, 1).await.unwrap();
    assert_eq!(second.producer_epoch, 2);
    // Epoch 0 is now two bumps old: fenced.
    assert!(matches!(
        bump(id, 0).await,
        Err(CoordinatorError::ProducerFenced(_))
    ));
    // An epoch from the future (never handed out) is fenced too.
    assert!(matches!(
        bump(id, 7).await,
        Err(CoordinatorError::ProducerFenced(_))
    ));
}

/// Everything committed survives reopening the store: `open` must return the same store each
/// time it is called.
pub async fn durability<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Coordinator>>,
{
    let (topic, pid, acl_version) = {
        let c = open().await;
        let t = c.create_topic(spec("durable", 2)).await.unwrap();
        c.alter_topic_configs("durable", vec![("retention.ms".into(), Some("5".into()))])
            .await
            .unwrap();
        let pid = c
            .init_producer_id(InitProducer { existing: None })
            .await
            .unwrap()
            .producer_id;
        c.commit(flush(
            "d1",
            vec![idem(batch(tp(&t, 1), 0, 7, 9), pid, 0, 0)],
        ))
        .await
        .unwrap();
        // The log start survives too.
        c.delete_records(tp(&t, 1), 3).await.unwrap();
        // So do dead objects, and the rows deleted with a log start stay deleted.
        c.commit(flush("d0", vec![batch(tp(&t, 0), 0, 4, 9)]))
            .await
            .unwrap();
        c.delete_records(tp(&t, 0), -1).await.unwrap();
        // A compaction swap and its checkpoint.
        c.commit(flush("d-swapped", vec![batch(tp(&t, 0), 0, 2, 9)]))
            .await
            .unwrap();
        let replaced = c.index_rows(tp(&t, 0), 0, u64::MAX).await.unwrap();
        let merged = key_at(u64::try_from(clock::system().now_ms()).unwrap());
        let swap = RowSwap {
            tp: tp(&t, 0),
            replaced: replaced.iter().map(RowRef::from).collect(),
            object_key: merged.clone(),
            object_size: 100,
            rows: vec![IndexRow {
                object_key: merged,
                ..replaced[0].clone()
            }],
            cleaned_to: Some(6),
        };
        assert_eq!(c.swap_rows(swap).await.unwrap(), SwapOutcome::Swapped);
        (t, pid, security::write_durable(&c).await)
    };
    let c = open().await;
    // SCRAM credentials and ACLs survive, with their version.
    security::check_durable(&c, acl_version).await;
    let t = c.topic("durable").await.unwrap().unwrap();
    assert_eq!(t.id, topic.id);
    assert_eq!(t.configs["retention.ms"], "5");
    assert_eq!(
        c.partition_offsets(tp(&t, 1)).await.unwrap(),
        PartitionOffsets {
            log_start: 3,
            high_watermark: 7
        }
    );
    assert_eq!(c.index_rows(tp(&t, 1), 0, u64::MAX).await.unwrap().len(), 1);
    let p0_rows = c.index_rows(tp(&t, 0), 0, u64::MAX).await.unwrap();
    assert_eq!(p0_rows.len(), 1, "only the swapped row");
    assert_eq!((p0_rows[0].base_offset, p0_rows[0].last_offset), (4, 5));
    assert_eq!(c.cleaned_to(tp(&t, 0)).await.unwrap(), 6);
    assert_eq!(
        c.row_for_timestamp(tp(&t, 0), 0).await.unwrap(),
        Some(p0_rows[0].clone())
    );
    let dead = objects::dead(&c).await;
    assert!(dead.contains("d0") && dead.contains("d-swapped"));
    // Producer state survives: a retry is still a duplicate, and ids are not reused.
    let out = c
        .commit(flush(
            "d2",
            vec![idem(batch(tp(&t, 1), 0, 7, 9), pid, 0, 0)],
        ))
        .await
        .unwrap();
    assert_eq!(out, vec![BatchOutcome::Duplicate { base_offset: 0 }]);
    let next = c
        .init_producer_id(InitProducer { existing: None })
        .await
        .unwrap();
    assert!(next.producer_id > pid);

    // Consumer groups: offsets, blobs and deletions of both survive.
    let big = blob(1 << 20, 3);
    let small = vec![0x00, 0xff, 0x00, 0x01, 0xfe];
    let g_offsets = vec![
        with_meta(offset("durable", 0, 5), 2, Some("meta\0data")),
        offset("durable", 1, 7),
        offset("gone-topic", 3, 1),
    ];
    {
        c.commit_offsets("g", g_offsets.clone(), None)
            .await
            .unwrap();
        c.commit_offsets("g", vec![offset("durable", 9, 9)], None)
            .await
            .unwrap();
        c.delete_offsets("g", vec![("durable".into(), 9)], None)
            .await
            .unwrap();
        save(&c, "g", big.clone()).await.unwrap();
        save(&c, "blob-only", vec![1]).await.unwrap();
        save(&c, "blob-only", small.clone()).await.unwrap();
        c.commit_offsets("deleted", vec![offset("durable", 0, 1)], None)
            .await
            .unwrap();
        save(&c, "deleted", vec![1]).await.unwrap();
        assert!(c.delete_group("deleted", None).await.unwrap());
    }
    drop(c);
    let c = open().await;
    assert_eq!(c.fetch_offsets("g").await.unwrap(), g_offsets);
    assert_eq!(load(&c, "g").await.unwrap(), Some(big));
    assert_eq!(load(&c, "blob-only").await.unwrap(), Some(small));
    assert!(c.fetch_offsets("blob-only").await.unwrap().is_empty());
    assert_eq!(load(&c, "deleted").await.unwrap(), None);
    assert!(c.fetch_offsets("deleted").await.unwrap().is_empty());
    assert_eq!(c.list_groups().await.unwrap(), vec!["blob-only", "g"]);
    // The time a blob was saved survives.
    let saved_ms = c.load_group("g").await.unwrap().unwrap().saved_ms;
    assert!(saved_ms > 0);

    // Producer expiry survives: the producer's memory of partition 1 (appended at 1 000 ms)
    // stays forgotten, so its next sequence is unknown rather than appended.
    let day = 24 * 60 * 60 * 1000;
    let far = crate::clock::Clock::now_ms(&crate::clock::SystemClock) + 2 * day;
    let step = c.expire_producers(far, day, 1_000).await.unwrap();
    assert!(step.states_expired >= 1, "{step:?}");
    drop(c);
    let c = open().await;
    assert_eq!(c.load_group("g").await.unwrap().unwrap().saved_ms, saved_ms);
    let out = c
        .commit(flush(
            "d3",
            vec![idem(batch(tp(&t, 1), 0, 1, 9), pid, 0, 7)],
        ))
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![BatchOutcome::Rejected(BatchRejection::UnknownProducerId)]
    );
}

/// An object key as the writer makes it: a UUIDv7 of time `ms`.
pub(super) fn key_at(ms: u64) -> String {
    let ts =
        uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, ((ms % 1000) * 1_000_000) as u32);
    format!("objects/{}.fjd", uuid::Uuid::new_v7(ts))
}

/// Garbage collection raises the commit watermark before it reads which objects are referenced;
/// objects made before it can no longer be committed, whatever delayed their commit. Re-commits
/// of objects committed earlier still answer with their outcomes; keys that carry no time are
/// not affected; the watermark never goes down.
async fn objects_below_the_commit_watermark_are_refused(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("w", 1)).await.unwrap();
    let early = key_at(1_000_000);
    let late = key_at(3_000_000);
    let committed_early = key_at(1_500_000);
    let out = c
        .commit(flush(&committed_early, vec![batch(tp(&t, 0), 0, 1, 0)]))
        .await
        .unwrap();
    assert_eq!(out, vec![BatchOutcome::Appended { base_offset: 0 }]);
    assert_eq!(
        c.raise_commit_watermark(2_000_000).await.unwrap(),
        2_000_000
    );
    // Lower raises change nothing.
    assert_eq!(c.raise_commit_watermark(5).await.unwrap(), 2_000_000);
    assert!(matches!(
        c.commit(flush(&early, vec![batch(tp(&t, 0), 0, 1, 0)]))
            .await,
        Err(CoordinatorError::Fenced(_))
    ));
    // In a group of flushes, the whole group is refused (the writer then commits one by one).
    assert!(matches!(
        c.commit_many(vec![
            flush(&late, vec![batch(tp(&t, 0), 0, 1, 0)]),
            flush(&early, vec![batch(tp(&t, 0), 0, 1, 0)]),
        ])
        .await,
        Err(CoordinatorError::Fenced(_))
    ));
    assert_eq!(
        c.partition_offsets(tp(&t, 0)).await.unwrap().high_watermark,
        1,
        "nothing of the refused flushes was committed"
    );
    let out = c
        .commit(flush(&late, vec![batch(tp(&t, 0), 0, 1, 0)]))
        .await
        .unwrap();
    assert_eq!(out, vec![BatchOutcome::Appended { base_offset: 1 }]);
    // A re-commit of the early object committed before the raise answers as before.
    let again = c
        .commit(flush(&committed_early, vec![batch(tp(&t, 0), 0, 1, 0)]))
        .await
        .unwrap();
    assert_eq!(again, vec![BatchOutcome::Appended { base_offset: 0 }]);
    // Keys without a time are not affected.
    c.commit(flush("plain", vec![batch(tp(&t, 0), 0, 1, 0)]))
        .await
        .unwrap();
    assert_eq!(
        crate::state::object_key_time_ms(&late),
        Some(3_000_000),
        "the writer's keys carry their time"
    );
}
