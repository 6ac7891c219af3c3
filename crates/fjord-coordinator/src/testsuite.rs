//! The conformance suite every [`Coordinator`] implementation must pass.
//!
//! Each implementation's tests call [`run_all`] with a factory that returns a fresh, empty
//! coordinator, and [`durability`] with a factory that reopens the same store each time.
//! Assertions panic, as tests do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use crate::state::{MAX_GROUP_ID_BYTES, MAX_GROUP_STATE_BYTES, MAX_OFFSET_TOPIC_BYTES};
use std::future::Future;
use std::sync::Arc;

use crate::*;

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
    producer_ids(fresh().await).await;
    producer_epoch_bump_retry_is_answered_again(fresh().await).await;
    deleted_topics_release_objects(fresh().await).await;
    group_offsets(fresh().await).await;
    group_ids_and_topics_are_validated(fresh().await).await;
    group_offsets_deleted(fresh().await).await;
    group_blobs(fresh().await).await;
    groups_deleted(fresh().await).await;
    group_offsets_survive_topic_deletion(fresh().await).await;
    brokers_register_and_renew(fresh().await).await;
    broker_leases_lapse(fresh().await).await;
    brokers_deregister(fresh().await).await;
    broker_registrations_race(fresh().await).await;
}

fn spec(name: &str, partitions: i32) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        partitions,
        configs: BTreeMap::new(),
    }
}

fn tp(topic: &TopicMeta, partition: i32) -> TopicPartition {
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

async fn deleted_topics_release_objects(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("t", 1)).await.unwrap();
    let u = c.create_topic(spec("u", 1)).await.unwrap();
    c.commit(flush(
        "shared",
        vec![batch(tp(&t, 0), 0, 1, 1), batch(tp(&u, 0), 100, 1, 1)],
    ))
    .await
    .unwrap();
    c.commit(flush("only-t", vec![batch(tp(&t, 0), 0, 1, 1)]))
        .await
        .unwrap();
    let refs = c.object_references().await.unwrap();
    assert!(refs.live.contains("shared") && refs.live.contains("only-t"));
    assert!(refs.dead.is_empty());

    c.delete_topic("t").await.unwrap();
    let refs = c.object_references().await.unwrap();
    assert!(refs.live.contains("shared"));
    assert!(refs.dead.contains_key("only-t"));

    c.forget_objects(vec!["only-t".into()]).await.unwrap();
    let refs = c.object_references().await.unwrap();
    assert!(!refs.dead.contains_key("only-t"));

    // An object none of whose batches was appended is garbage at once.
    c.commit(flush("rejected", vec![batch(tp(&t, 0), 0, 1, 1)]))
        .await
        .unwrap();
    assert!(c
        .object_references()
        .await
        .unwrap()
        .dead
        .contains_key("rejected"));
}

fn offset(topic: &str, partition: i32, offset: i64) -> CommittedOffset {
    CommittedOffset {
        topic: topic.into(),
        partition,
        offset,
        leader_epoch: -1,
        metadata: None,
        commit_timestamp_ms: 1_000 + offset,
    }
}

fn with_meta(mut o: CommittedOffset, epoch: i32, metadata: Option<&str>) -> CommittedOffset {
    o.leader_epoch = epoch;
    o.metadata = metadata.map(str::to_string);
    o
}

/// Deterministic pseudo-random bytes (xorshift), incompressible enough to defeat any inline
/// compression a store might apply.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A string of exactly `len` bytes of printable ASCII noise.
fn noise_string(len: usize, seed: u64) -> String {
    noise(len, seed)
        .into_iter()
        .map(|b| char::from(b'!' + b % 94))
        .collect()
}

/// A blob holding every byte value, 0x00 and 0xff included, then noise.
fn blob(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..=255u8).cycle().take(len.min(512)).collect();
    bytes.extend(noise(len.saturating_sub(bytes.len()), seed));
    bytes
}

fn is_invalid<T: std::fmt::Debug>(r: Result<T>) -> bool {
    matches!(r, Err(CoordinatorError::Invalid(_)))
}

async fn group_offsets(c: Arc<dyn Coordinator>) {
    assert!(c.fetch_offsets("g1").await.unwrap().is_empty());
    assert!(c.list_groups().await.unwrap().is_empty());
    // An empty commit is a no-op: no group comes into being.
    c.commit_offsets("g1", vec![]).await.unwrap();
    assert!(c.list_groups().await.unwrap().is_empty());

    let meta = "m\0\u{ff}é\u{1F600}\n\"'\\";
    c.commit_offsets(
        "g1",
        vec![
            offset("b", 1, 10),
            with_meta(offset("a", 2, 20), 7, Some("")),
            with_meta(offset("a", 0, 30), 3, Some(meta)),
            offset("B", 0, 40),
            offset("a", 10, 50),
        ],
    )
    .await
    .unwrap();
    // Sorted by (topic, partition), topics bytewise ("B" < "a"), partitions numerically.
    let g1 = vec![
        offset("B", 0, 40),
        with_meta(offset("a", 0, 30), 3, Some(meta)),
        with_meta(offset("a", 2, 20), 7, Some("")),
        offset("a", 10, 50),
        offset("b", 1, 10),
    ];
    assert_eq!(c.fetch_offsets("g1").await.unwrap(), g1);

    // Overwrite one, add one; the others stay. A partition given twice: the last one wins.
    c.commit_offsets(
        "g1",
        vec![
            offset("a", 0, 31),
            offset("c", 0, 60),
            offset("c", 0, 61),
            offset("a", 0, 32),
        ],
    )
    .await
    .unwrap();
    let g1 = vec![
        offset("B", 0, 40),
        offset("a", 0, 32),
        with_meta(offset("a", 2, 20), 7, Some("")),
        offset("a", 10, 50),
        offset("b", 1, 10),
        offset("c", 0, 61),
    ];
    assert_eq!(c.fetch_offsets("g1").await.unwrap(), g1);

    // Groups are isolated, also ones whose ids differ only in case, a NUL or a prefix.
    let others = ["g2", "G1", "g1\0", "g", "gröup \u{1F600}"];
    for (i, group) in others.iter().enumerate() {
        c.commit_offsets(group, vec![offset("a", 0, i as i64)])
            .await
            .unwrap();
    }
    assert_eq!(c.fetch_offsets("g1").await.unwrap(), g1);
    for (i, group) in others.iter().enumerate() {
        assert_eq!(
            c.fetch_offsets(group).await.unwrap(),
            vec![offset("a", 0, i as i64)],
            "{group:?}"
        );
    }
    let mut expected: Vec<String> = others.iter().map(|g| g.to_string()).collect();
    expected.push("g1".into());
    expected.sort();
    assert_eq!(c.list_groups().await.unwrap(), expected);
}

async fn group_ids_and_topics_are_validated(c: Arc<dyn Coordinator>) {
    // An empty group id is refused by every call that takes one.
    assert!(is_invalid(
        c.commit_offsets("", vec![offset("a", 0, 1)]).await
    ));
    assert!(is_invalid(c.commit_offsets("", vec![]).await));
    assert!(is_invalid(c.fetch_offsets("").await));
    assert!(is_invalid(
        c.delete_offsets("", vec![("a".into(), 0)]).await
    ));
    assert!(is_invalid(c.save_group("", vec![1]).await));
    assert!(is_invalid(c.load_group("").await));
    assert!(is_invalid(c.delete_group("").await));

    // The longest id works (and is not confused with its prefixes); one byte more does not.
    let longest = noise_string(MAX_GROUP_ID_BYTES, 7);
    let prefix = &longest[..MAX_GROUP_ID_BYTES - 1];
    c.commit_offsets(&longest, vec![offset("a", 0, 1)])
        .await
        .unwrap();
    c.save_group(&longest, vec![1, 2]).await.unwrap();
    assert_eq!(
        c.fetch_offsets(&longest).await.unwrap(),
        vec![offset("a", 0, 1)]
    );
    assert_eq!(c.load_group(&longest).await.unwrap(), Some(vec![1, 2]));
    assert!(c.fetch_offsets(prefix).await.unwrap().is_empty());
    assert_eq!(c.list_groups().await.unwrap(), vec![longest.clone()]);
    let too_long = format!("{longest}x");
    assert!(is_invalid(
        c.commit_offsets(&too_long, vec![offset("a", 0, 1)]).await
    ));
    assert!(is_invalid(c.fetch_offsets(&too_long).await));
    assert!(is_invalid(c.save_group(&too_long, vec![]).await));
    assert!(is_invalid(c.load_group(&too_long).await));
    assert!(is_invalid(c.delete_group(&too_long).await));
    assert!(c.delete_group(&longest).await.unwrap());

    // Topic names of 1 to 249 bytes; one bad name fails the whole commit.
    let topic = "t".repeat(MAX_OFFSET_TOPIC_BYTES);
    c.commit_offsets("g", vec![offset(&topic, 0, 5)])
        .await
        .unwrap();
    for bad in [String::new(), format!("{topic}t")] {
        assert!(is_invalid(
            c.commit_offsets("g", vec![offset("ok", 0, 1), offset(&bad, 0, 1)])
                .await
        ));
        assert!(is_invalid(
            c.commit_offsets("fresh", vec![offset(&bad, 0, 1)]).await
        ));
    }
    assert_eq!(
        c.fetch_offsets("g").await.unwrap(),
        vec![offset(&topic, 0, 5)]
    );
    assert_eq!(c.list_groups().await.unwrap(), vec!["g".to_string()]);

    // Blobs up to 16 MiB.
    assert!(is_invalid(
        c.save_group("g", vec![0; MAX_GROUP_STATE_BYTES + 1]).await
    ));
    assert_eq!(c.load_group("g").await.unwrap(), None);
}

async fn group_offsets_deleted(c: Arc<dyn Coordinator>) {
    c.commit_offsets(
        "g",
        vec![
            offset("a", 0, 1),
            offset("a", 1, 2),
            offset("b", 0, 3),
            offset("b", 1, 4),
        ],
    )
    .await
    .unwrap();
    c.commit_offsets("h", vec![offset("a", 1, 9)])
        .await
        .unwrap();
    // Absent partitions, unknown topics and repeats are ignored.
    c.delete_offsets(
        "g",
        vec![
            ("a".into(), 1),
            ("a".into(), 7),
            ("zz".into(), 0),
            ("b".into(), 0),
            ("b".into(), 0),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        c.fetch_offsets("g").await.unwrap(),
        vec![offset("a", 0, 1), offset("b", 1, 4)]
    );
    // Other groups keep theirs.
    assert_eq!(c.fetch_offsets("h").await.unwrap(), vec![offset("a", 1, 9)]);
    c.delete_offsets("g", vec![]).await.unwrap();
    c.delete_offsets("unknown", vec![("a".into(), 0)])
        .await
        .unwrap();
    assert!(c.fetch_offsets("unknown").await.unwrap().is_empty());
    assert_eq!(c.list_groups().await.unwrap(), vec!["g", "h"]);

    // A group with neither a blob nor offsets left is gone; one with a blob stays.
    c.save_group("h", b"blob".to_vec()).await.unwrap();
    c.delete_offsets("g", vec![("a".into(), 0), ("b".into(), 1)])
        .await
        .unwrap();
    c.delete_offsets("h", vec![("a".into(), 1)]).await.unwrap();
    assert!(c.fetch_offsets("g").await.unwrap().is_empty());
    assert!(c.fetch_offsets("h").await.unwrap().is_empty());
    assert_eq!(c.list_groups().await.unwrap(), vec!["h"]);
    assert!(!c.delete_group("g").await.unwrap());
    // Offsets committed again after a deletion are there.
    c.commit_offsets("g", vec![offset("a", 0, 100)])
        .await
        .unwrap();
    assert_eq!(
        c.fetch_offsets("g").await.unwrap(),
        vec![offset("a", 0, 100)]
    );
}

async fn group_blobs(c: Arc<dyn Coordinator>) {
    assert_eq!(c.load_group("g").await.unwrap(), None);
    // An empty blob is a saved blob.
    c.save_group("g", vec![]).await.unwrap();
    assert_eq!(c.load_group("g").await.unwrap(), Some(vec![]));
    assert_eq!(c.list_groups().await.unwrap(), vec!["g"]);
    assert!(c.fetch_offsets("g").await.unwrap().is_empty());

    // Replaced, by a 1 MiB blob of arbitrary bytes, then by a small one.
    let big = blob(1 << 20, 11);
    c.save_group("g", big.clone()).await.unwrap();
    assert_eq!(c.load_group("g").await.unwrap(), Some(big.clone()));
    let small = vec![0x00, 0xff, 0x00, 0x80, 0x7f, 0xff];
    c.save_group("g", small.clone()).await.unwrap();
    assert_eq!(c.load_group("g").await.unwrap(), Some(small.clone()));

    // Blobs and offsets of other groups are independent.
    c.save_group("h", big.clone()).await.unwrap();
    c.commit_offsets("h", vec![offset("a", 0, 1)])
        .await
        .unwrap();
    c.commit_offsets("i", vec![offset("a", 0, 2)])
        .await
        .unwrap();
    assert_eq!(c.load_group("g").await.unwrap(), Some(small));
    assert_eq!(c.load_group("h").await.unwrap(), Some(big));
    assert_eq!(c.load_group("i").await.unwrap(), None);
    assert_eq!(c.fetch_offsets("h").await.unwrap(), vec![offset("a", 0, 1)]);
    assert_eq!(c.list_groups().await.unwrap(), vec!["g", "h", "i"]);
}

async fn groups_deleted(c: Arc<dyn Coordinator>) {
    c.save_group("blob-only", vec![1]).await.unwrap();
    c.commit_offsets("offsets-only", vec![offset("a", 0, 1)])
        .await
        .unwrap();
    c.save_group("both", vec![2]).await.unwrap();
    c.commit_offsets("both", vec![offset("a", 0, 2), offset("b", 3, 4)])
        .await
        .unwrap();
    c.save_group("kept", vec![3]).await.unwrap();
    c.commit_offsets("kept", vec![offset("a", 0, 5)])
        .await
        .unwrap();
    assert_eq!(
        c.list_groups().await.unwrap(),
        vec!["blob-only", "both", "kept", "offsets-only"]
    );

    for group in ["blob-only", "offsets-only", "both"] {
        assert!(c.delete_group(group).await.unwrap(), "{group}");
        assert!(!c.delete_group(group).await.unwrap(), "{group}");
        assert_eq!(c.load_group(group).await.unwrap(), None);
        assert!(c.fetch_offsets(group).await.unwrap().is_empty());
    }
    assert!(!c.delete_group("never").await.unwrap());
    assert_eq!(c.list_groups().await.unwrap(), vec!["kept"]);
    assert_eq!(c.load_group("kept").await.unwrap(), Some(vec![3]));
    assert_eq!(
        c.fetch_offsets("kept").await.unwrap(),
        vec![offset("a", 0, 5)]
    );

    // A deleted group can come back.
    c.commit_offsets("both", vec![offset("z", 0, 9)])
        .await
        .unwrap();
    assert_eq!(c.load_group("both").await.unwrap(), None);
    assert_eq!(
        c.fetch_offsets("both").await.unwrap(),
        vec![offset("z", 0, 9)]
    );
    assert_eq!(c.list_groups().await.unwrap(), vec!["both", "kept"]);
}

async fn group_offsets_survive_topic_deletion(c: Arc<dyn Coordinator>) {
    c.create_topic(spec("t", 2)).await.unwrap();
    c.create_topic(spec("u", 1)).await.unwrap();
    let committed = vec![offset("t", 0, 5), offset("t", 1, 6), offset("u", 0, 7)];
    c.commit_offsets("g", committed.clone()).await.unwrap();
    c.save_group("g", vec![9]).await.unwrap();
    c.delete_topic("t").await.unwrap();
    assert_eq!(c.fetch_offsets("g").await.unwrap(), committed);
    // Also when the name is used again.
    c.create_topic(spec("t", 1)).await.unwrap();
    assert_eq!(c.fetch_offsets("g").await.unwrap(), committed);
    assert_eq!(c.load_group("g").await.unwrap(), Some(vec![9]));
    assert_eq!(c.list_groups().await.unwrap(), vec!["g"]);
}

fn broker(node_id: i32, host: &str) -> BrokerRegistration {
    BrokerRegistration {
        node_id,
        host: host.into(),
        port: 9092,
        rack: None,
        incarnation: uuid::Uuid::new_v4(),
    }
}

fn local_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn live_ids(c: &Arc<dyn Coordinator>) -> Vec<i32> {
    c.live_brokers()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.registration.node_id)
        .collect()
}

const LONG_LEASE_MS: i64 = 60_000;

async fn brokers_register_and_renew(c: Arc<dyn Coordinator>) {
    assert!(c.live_brokers().await.unwrap().is_empty());
    let mut two = broker(2, "host-two");
    two.rack = Some("rack-a".into());
    let one = broker(1, "host-one");
    let before = local_now_ms();
    let live_two = c.register_broker(two.clone(), LONG_LEASE_MS).await.unwrap();
    let live_one = c.register_broker(one.clone(), LONG_LEASE_MS).await.unwrap();
    assert_eq!(live_two.registration, two);
    assert_eq!(live_one.registration, one);
    // Milliseconds since the epoch (the coordinator's clock may differ a little from ours).
    let slack = 30_000;
    assert!(
        (live_one.lease_expires_ms - (before + LONG_LEASE_MS)).abs() < slack,
        "lease ends at {} ms, expected about {}",
        live_one.lease_expires_ms,
        before + LONG_LEASE_MS
    );
    // Sorted by node id, whatever the registration order.
    assert_eq!(
        c.live_brokers().await.unwrap(),
        vec![live_one.clone(), live_two.clone()]
    );

    // Renewal extends the lease (and only the lease).
    let renewed = c
        .renew_broker(1, one.incarnation, 2 * LONG_LEASE_MS)
        .await
        .unwrap();
    assert_eq!(renewed.registration, one);
    assert!(renewed.lease_expires_ms >= live_one.lease_expires_ms + LONG_LEASE_MS - 1_000);
    assert_eq!(
        c.live_brokers().await.unwrap(),
        vec![renewed.clone(), live_two.clone()]
    );

    // The same incarnation may register again: new address, new lease.
    let mut moved = one.clone();
    moved.host = "host-one-b".into();
    moved.port = 19092;
    moved.rack = Some("rack-b".into());
    let again = c
        .register_broker(moved.clone(), LONG_LEASE_MS)
        .await
        .unwrap();
    assert_eq!(again.registration, moved);
    assert_eq!(c.live_brokers().await.unwrap()[0], again);

    // Renewals of unknown nodes or other incarnations fail.
    assert!(is_invalid(
        c.renew_broker(7, one.incarnation, LONG_LEASE_MS).await
    ));
    assert!(is_invalid(
        c.renew_broker(1, two.incarnation, LONG_LEASE_MS).await
    ));
    // Bad arguments.
    assert!(is_invalid(c.renew_broker(1, one.incarnation, 0).await));
    assert!(is_invalid(c.register_broker(broker(3, "h"), 0).await));
    assert!(is_invalid(c.register_broker(broker(3, "h"), -5).await));
    assert!(is_invalid(
        c.register_broker(broker(3, "h"), state::MAX_BROKER_LEASE_MS + 1)
            .await
    ));
    assert!(is_invalid(
        c.register_broker(broker(-1, "h"), LONG_LEASE_MS).await
    ));
    assert!(is_invalid(
        c.register_broker(broker(3, ""), LONG_LEASE_MS).await
    ));
    assert!(is_invalid(
        c.register_broker(broker(3, "a\0b"), LONG_LEASE_MS).await
    ));
    let mut bad_port = broker(3, "h");
    bad_port.port = 70_000;
    assert!(is_invalid(c.register_broker(bad_port, LONG_LEASE_MS).await));
    assert_eq!(live_ids(&c).await, vec![1, 2]);
}

async fn broker_leases_lapse(c: Arc<dyn Coordinator>) {
    let one = broker(1, "h1");
    let two = broker(2, "h2");
    let three = broker(3, "h3");
    c.register_broker(one.clone(), 200).await.unwrap();
    c.register_broker(two.clone(), 200).await.unwrap();
    c.register_broker(three.clone(), LONG_LEASE_MS)
        .await
        .unwrap();
    // Renewing before the lapse keeps broker 2 live.
    c.renew_broker(2, two.incarnation, LONG_LEASE_MS)
        .await
        .unwrap();
    // A different incarnation cannot take a live node id.
    assert!(is_invalid(
        c.register_broker(broker(1, "h1"), LONG_LEASE_MS).await
    ));
    assert!(is_invalid(
        c.register_broker(broker(3, "h3"), LONG_LEASE_MS).await
    ));
    assert_eq!(live_ids(&c).await, vec![1, 2, 3]);

    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(live_ids(&c).await, vec![2, 3]);
    // The lapsed lease cannot be renewed: the broker must register again.
    assert!(is_invalid(
        c.renew_broker(1, one.incarnation, LONG_LEASE_MS).await
    ));
    assert_eq!(live_ids(&c).await, vec![2, 3]);

    // After the lapse a new incarnation may take the node id ...
    let one_again = broker(1, "h1-new");
    let live = c
        .register_broker(one_again.clone(), LONG_LEASE_MS)
        .await
        .unwrap();
    assert_eq!(live.registration, one_again);
    assert_eq!(c.live_brokers().await.unwrap()[0], live);
    // ... and then the old one can neither renew nor register.
    assert!(is_invalid(
        c.renew_broker(1, one.incarnation, LONG_LEASE_MS).await
    ));
    assert!(is_invalid(
        c.register_broker(one.clone(), LONG_LEASE_MS).await
    ));
    c.renew_broker(1, one_again.incarnation, LONG_LEASE_MS)
        .await
        .unwrap();

    // The old incarnation registering again after its own lapse also works (e.g. a broker
    // that was paused too long), as long as nobody else took the node id.
    let four = broker(4, "h4");
    c.register_broker(four.clone(), 100).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(is_invalid(
        c.renew_broker(4, four.incarnation, LONG_LEASE_MS).await
    ));
    c.register_broker(four.clone(), LONG_LEASE_MS)
        .await
        .unwrap();
    assert_eq!(live_ids(&c).await, vec![1, 2, 3, 4]);
}

async fn brokers_deregister(c: Arc<dyn Coordinator>) {
    let one = broker(1, "h1");
    let two = broker(2, "h2");
    c.register_broker(one.clone(), LONG_LEASE_MS).await.unwrap();
    c.register_broker(two.clone(), LONG_LEASE_MS).await.unwrap();
    // Another incarnation's deregistration, or an unknown node's, changes nothing.
    c.deregister_broker(1, two.incarnation).await.unwrap();
    c.deregister_broker(9, one.incarnation).await.unwrap();
    assert_eq!(live_ids(&c).await, vec![1, 2]);

    // Gone at once, and idempotent.
    c.deregister_broker(1, one.incarnation).await.unwrap();
    assert_eq!(live_ids(&c).await, vec![2]);
    c.deregister_broker(1, one.incarnation).await.unwrap();
    assert_eq!(live_ids(&c).await, vec![2]);
    assert!(is_invalid(
        c.renew_broker(1, one.incarnation, LONG_LEASE_MS).await
    ));

    // The node id is free for a new incarnation at once; the old one's late deregistration
    // leaves the new one in place.
    let one_again = broker(1, "h1-new");
    c.register_broker(one_again.clone(), LONG_LEASE_MS)
        .await
        .unwrap();
    c.deregister_broker(1, one.incarnation).await.unwrap();
    let live = c.live_brokers().await.unwrap();
    assert_eq!(live.len(), 2);
    assert_eq!(live[0].registration, one_again);

    c.deregister_broker(1, one_again.incarnation).await.unwrap();
    c.deregister_broker(2, two.incarnation).await.unwrap();
    assert!(c.live_brokers().await.unwrap().is_empty());
}

/// Of concurrent registrations of one node id by different incarnations, exactly one wins.
async fn broker_registrations_race(c: Arc<dyn Coordinator>) {
    let contenders: Vec<BrokerRegistration> = (0..8).map(|i| broker(5, &format!("h{i}"))).collect();
    let results = futures::future::join_all(
        contenders
            .iter()
            .map(|r| c.register_broker(r.clone(), LONG_LEASE_MS)),
    )
    .await;
    let winners: Vec<&LiveBroker> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(results
        .iter()
        .all(|r| r.is_ok() || matches!(r, Err(CoordinatorError::Invalid(_)))));
    assert_eq!(c.live_brokers().await.unwrap(), vec![winners[0].clone()]);
}

/// Everything committed survives reopening the store: `open` must return the same store each
/// time it is called.
pub async fn durability<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Coordinator>>,
{
    let (topic, pid) = {
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
        (t, pid)
    };
    let c = open().await;
    let t = c.topic("durable").await.unwrap().unwrap();
    assert_eq!(t.id, topic.id);
    assert_eq!(t.configs["retention.ms"], "5");
    assert_eq!(
        c.partition_offsets(tp(&t, 1)).await.unwrap().high_watermark,
        7
    );
    assert_eq!(c.index_rows(tp(&t, 1), 0, u64::MAX).await.unwrap().len(), 1);
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
        c.commit_offsets("g", g_offsets.clone()).await.unwrap();
        c.commit_offsets("g", vec![offset("durable", 9, 9)])
            .await
            .unwrap();
        c.delete_offsets("g", vec![("durable".into(), 9)])
            .await
            .unwrap();
        c.save_group("g", big.clone()).await.unwrap();
        c.save_group("blob-only", vec![1]).await.unwrap();
        c.save_group("blob-only", small.clone()).await.unwrap();
        c.commit_offsets("deleted", vec![offset("durable", 0, 1)])
            .await
            .unwrap();
        c.save_group("deleted", vec![1]).await.unwrap();
        assert!(c.delete_group("deleted").await.unwrap());
    }
    drop(c);
    let c = open().await;
    assert_eq!(c.fetch_offsets("g").await.unwrap(), g_offsets);
    assert_eq!(c.load_group("g").await.unwrap(), Some(big));
    assert_eq!(c.load_group("blob-only").await.unwrap(), Some(small));
    assert!(c.fetch_offsets("blob-only").await.unwrap().is_empty());
    assert_eq!(c.load_group("deleted").await.unwrap(), None);
    assert!(c.fetch_offsets("deleted").await.unwrap().is_empty());
    assert_eq!(c.list_groups().await.unwrap(), vec!["blob-only", "g"]);
}
