//! Conformance tests of [`MetadataExpiry`]: idempotent-producer memory expires by age, and group
//! blobs record when they were saved (offset expiry, a broker duty, reads it).

use std::sync::Arc;

use super::{batch, flush, idem, spec, tp};
use crate::clock::{Clock, SystemClock};
use crate::*;

pub(super) async fn run_all<F, Fut>(fresh: &F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Coordinator>>,
{
    producer_memory_expires_by_last_append(fresh().await).await;
    appending_keeps_producer_memory(fresh().await).await;
    producer_expiry_is_bounded(fresh().await).await;
    group_saves_record_their_time(fresh().await).await;
}

/// `producer.id.expiration.ms` of these tests: one day, as Kafka's default.
const EXP: i64 = 24 * 60 * 60 * 1000;

fn at(mut f: FlushCommit, timestamp_ms: i64) -> FlushCommit {
    f.timestamp_ms = timestamp_ms;
    f
}

async fn new_producer(c: &Arc<dyn Coordinator>) -> i64 {
    c.init_producer_id(InitProducer { existing: None })
        .await
        .unwrap()
        .producer_id
}

/// A partition forgets a producer one expiration after its last append there; the producer id is
/// forgotten too once no partition remembers it and it was not initialised within the
/// expiration. A forgotten producer coming back is answered as Kafka answers: UNKNOWN_PRODUCER_ID
/// for a non-zero sequence, acceptance at sequence 0, and a fresh id from InitProducerId.
async fn producer_memory_expires_by_last_append(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("pe", 2)).await.unwrap();
    let (p0, p1) = (tp(&t, 0), tp(&t, 1));
    // The coordinator stamps ids with its clock; appends are stamped with the flush's time.
    let n0 = SystemClock.now_ms();
    let a = new_producer(&c).await;
    let b = new_producer(&c).await;
    let first = at(flush("a0", vec![idem(batch(p0, 0, 5, 1), a, 0, 0)]), n0);
    assert_eq!(
        c.commit(first.clone()).await.unwrap(),
        vec![BatchOutcome::Appended { base_offset: 0 }]
    );
    let b_first = at(
        flush("b0", vec![idem(batch(p1, 0, 1, 1), b, 0, 0)]),
        n0 + 60_000,
    );
    c.commit(b_first).await.unwrap();

    // Not yet: nothing goes, and a retry is still recognized.
    let step = c.expire_producers(n0 + EXP - 1, EXP, 100).await.unwrap();
    assert_eq!((step.states_expired, step.ids_expired), (0, 0), "{step:?}");
    let retry = at(flush("a0-retry", first.batches.clone()), n0 + 1);
    assert_eq!(
        c.commit(retry).await.unwrap(),
        vec![BatchOutcome::Duplicate { base_offset: 0 }]
    );

    // One expiration after a's last append: a's memory on p0 and the id a go; b stays.
    let now = n0 + EXP + 30_000;
    let step = c.expire_producers(now, EXP, 100).await.unwrap();
    assert_eq!((step.states_expired, step.ids_expired), (1, 1), "{step:?}");
    assert!(!step.more);
    // Again: nothing left to do.
    let step = c.expire_producers(now, EXP, 100).await.unwrap();
    assert_eq!((step.states_expired, step.ids_expired), (0, 0), "{step:?}");

    // a comes back with its next sequence: unknown; at sequence 0 it is accepted.
    let next = at(flush("a1", vec![idem(batch(p0, 0, 1, 1), a, 0, 5)]), now);
    assert_eq!(
        c.commit(next).await.unwrap(),
        vec![BatchOutcome::Rejected(BatchRejection::UnknownProducerId)]
    );
    let over = at(flush("a2", vec![idem(batch(p0, 0, 1, 1), a, 0, 0)]), now);
    assert_eq!(
        c.commit(over).await.unwrap(),
        vec![BatchOutcome::Appended { base_offset: 5 }]
    );
    // Bumping the forgotten id's epoch hands out a fresh id instead.
    let bumped = c
        .init_producer_id(InitProducer {
            existing: Some((a, 0)),
        })
        .await
        .unwrap();
    assert_ne!(bumped.producer_id, a);
    assert!(bumped.producer_id > b);
    assert_eq!(bumped.producer_epoch, 0);

    // b is remembered, and its id can still be bumped.
    let b_retry = at(
        flush("b0-retry", vec![idem(batch(p1, 0, 1, 1), b, 0, 0)]),
        now,
    );
    assert_eq!(
        c.commit(b_retry).await.unwrap(),
        vec![BatchOutcome::Duplicate { base_offset: 0 }]
    );
    let b1 = c
        .init_producer_id(InitProducer {
            existing: Some((b, 0)),
        })
        .await
        .unwrap();
    assert_eq!(
        b1,
        ProducerIdentity {
            producer_id: b,
            producer_epoch: 1
        }
    );
}

/// Every append refreshes a producer's memory on its partition; an id bumped within the
/// expiration stays even when no partition remembers it.
async fn appending_keeps_producer_memory(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("pk", 1)).await.unwrap();
    let p = tp(&t, 0);
    let n0 = SystemClock.now_ms();
    let a = new_producer(&c).await;
    c.commit(at(flush("k0", vec![idem(batch(p, 0, 1, 1), a, 0, 0)]), n0))
        .await
        .unwrap();
    c.commit(at(
        flush("k1", vec![idem(batch(p, 0, 1, 1), a, 0, 1)]),
        n0 + EXP / 2,
    ))
    .await
    .unwrap();
    let step = c.expire_producers(n0 + EXP + 1, EXP, 100).await.unwrap();
    assert_eq!((step.states_expired, step.ids_expired), (0, 0), "{step:?}");
    let next = at(
        flush("k2", vec![idem(batch(p, 0, 1, 1), a, 0, 2)]),
        n0 + EXP,
    );
    assert_eq!(
        c.commit(next).await.unwrap(),
        vec![BatchOutcome::Appended { base_offset: 2 }]
    );
    // An id that never appended goes one expiration after it was handed out, not before.
    let idle = new_producer(&c).await;
    let n1 = SystemClock.now_ms();
    let step = c.expire_producers(n1 + EXP / 2, EXP, 100).await.unwrap();
    assert_eq!(step.ids_expired, 0, "{step:?}");
    let step = c
        .expire_producers(n1 + EXP + 60_000, EXP, 100)
        .await
        .unwrap();
    // a's memory (last append n0 + EXP) is not a day old yet at n1 + EXP + 60 s either way;
    // only the idle id goes.
    assert_eq!(step.ids_expired, 1, "{step:?}");
    let again = c
        .init_producer_id(InitProducer {
            existing: Some((idle, 0)),
        })
        .await
        .unwrap();
    assert_ne!(again.producer_id, idle);
}

/// Each call makes at most `max` changes and says when there may be more; repeated calls finish.
async fn producer_expiry_is_bounded(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("pb", 1)).await.unwrap();
    let p = tp(&t, 0);
    let n0 = SystemClock.now_ms();
    for i in 0..5 {
        let id = new_producer(&c).await;
        c.commit(at(
            flush(&format!("b{i}"), vec![idem(batch(p, 0, 1, 1), id, 0, 0)]),
            n0,
        ))
        .await
        .unwrap();
    }
    let (mut states, mut ids, mut calls) = (0, 0, 0);
    loop {
        let step = c.expire_producers(n0 + 10 * EXP, EXP, 2).await.unwrap();
        assert!(step.states_expired + step.ids_expired <= 2, "{step:?}");
        states += step.states_expired;
        ids += step.ids_expired;
        calls += 1;
        assert!(calls < 20, "expiry does not finish");
        if !step.more {
            break;
        }
    }
    assert_eq!((states, ids), (5, 5));
}

/// A saved group blob carries its save time (the coordinator's clock).
async fn group_saves_record_their_time(c: Arc<dyn Coordinator>) {
    let before = SystemClock.now_ms();
    let v = c.save_group("timed", 0, b"{}".to_vec()).await.unwrap();
    let after = SystemClock.now_ms();
    let stored = c.load_group("timed").await.unwrap().unwrap();
    assert_eq!(stored.version, v);
    assert!(
        (before..=after).contains(&stored.saved_ms),
        "saved at {} not within [{before}, {after}]",
        stored.saved_ms
    );
}
