//! Conformance tests of [`ObjectLedger`]: live rows per object, dead objects found oldest first
//! and bounded, index rows deleted with the log start, and forgetting.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::{batch, flush, spec, tp};
use crate::clock::Clock;
use crate::*;

pub(super) async fn run_all<F, Fut>(fresh: &F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Coordinator>>,
{
    deleted_topics_release_objects(fresh().await).await;
    rows_below_the_log_start_go_and_release_their_objects(fresh().await).await;
    a_row_holding_the_log_start_stays(fresh().await).await;
    retention_deletes_rows_and_kills_objects_in_bounded_steps(fresh().await).await;
    dead_objects_come_oldest_first_and_bounded(fresh().await).await;
    releases_race_each_other_and_commits(fresh().await).await;
    the_ledger_size_follows_rows_and_objects(fresh().await).await;
}

/// Every dead object's key (the ledger has fewer than a million here).
pub(super) async fn dead(c: &Arc<dyn Coordinator>) -> BTreeSet<String> {
    c.dead_objects(i64::MAX, 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.key)
        .collect()
}

async fn known(c: &Arc<dyn Coordinator>, keys: &[&str]) -> BTreeSet<String> {
    c.known_objects(keys.iter().map(|k| k.to_string()).collect())
        .await
        .unwrap()
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| k.to_string()).collect()
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
    assert_eq!(
        known(&c, &["shared", "only-t", "never"]).await,
        set(&["shared", "only-t"])
    );
    assert!(dead(&c).await.is_empty());

    c.delete_topic("t").await.unwrap();
    assert_eq!(
        dead(&c).await,
        set(&["only-t"]),
        "shared is still used by u"
    );

    // Forgetting a live object changes nothing; a dead one is gone from the ledger.
    c.forget_objects(vec!["only-t".into(), "shared".into()])
        .await
        .unwrap();
    assert_eq!(known(&c, &["shared", "only-t"]).await, set(&["shared"]));
    assert!(dead(&c).await.is_empty());

    // An object none of whose batches was appended is garbage at once.
    c.commit(flush("rejected", vec![batch(tp(&t, 0), 0, 1, 1)]))
        .await
        .unwrap();
    assert_eq!(dead(&c).await, set(&["rejected"]));
    assert_eq!(known(&c, &["rejected"]).await, set(&["rejected"]));
}

async fn rows_below_the_log_start_go_and_release_their_objects(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("below", 2)).await.unwrap();
    let (p0, p1) = (tp(&t, 0), tp(&t, 1));
    // "a" holds offsets 0-9 of both partitions, "b" 10-19 of p0 only, "c" 20-29 of p0.
    c.commit(flush("a", vec![batch(p0, 0, 10, 1), batch(p1, 100, 10, 1)]))
        .await
        .unwrap();
    c.commit(flush("b", vec![batch(p0, 0, 10, 2)]))
        .await
        .unwrap();
    c.commit(flush("c", vec![batch(p0, 0, 10, 3)]))
        .await
        .unwrap();
    c.delete_records(p0, 20).await.unwrap();
    let rows = c.index_rows(p0, 0, u64::MAX).await.unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r.object_key.as_str())
            .collect::<Vec<_>>(),
        vec!["c"],
        "rows wholly below the log start are deleted"
    );
    assert_eq!(dead(&c).await, set(&["b"]), "a is still referenced by p1");
    assert_eq!(known(&c, &["a", "b", "c"]).await, set(&["a", "b", "c"]));
    c.delete_records(p1, -1).await.unwrap();
    assert_eq!(dead(&c).await, set(&["a", "b"]));
    assert!(c.index_rows(p1, 0, u64::MAX).await.unwrap().is_empty());
    // Reads at the log start still work.
    assert_eq!(
        c.partition_offsets(p0).await.unwrap(),
        PartitionOffsets {
            log_start: 20,
            high_watermark: 30
        }
    );
}

async fn a_row_holding_the_log_start_stays(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("mid", 1)).await.unwrap();
    let p = tp(&t, 0);
    c.commit(flush("m1", vec![batch(p, 0, 10, 1)]))
        .await
        .unwrap();
    c.commit(flush("m2", vec![batch(p, 0, 10, 1)]))
        .await
        .unwrap();
    // Into the middle of m2's row: m1 goes, m2 stays (readers skip the records before 15).
    c.delete_records(p, 15).await.unwrap();
    let rows = c.index_rows(p, 15, u64::MAX).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].object_key.as_str(), rows[0].base_offset),
        ("m2", 10)
    );
    assert_eq!(dead(&c).await, set(&["m1"]));
    // Up to the end of the row: now it goes too.
    c.delete_records(p, 20).await.unwrap();
    assert_eq!(dead(&c).await, set(&["m1", "m2"]));
}

async fn retention_deletes_rows_and_kills_objects_in_bounded_steps(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("ret", 1)).await.unwrap();
    let p = tp(&t, 0);
    for i in 0..25 {
        c.commit(flush(&format!("r{i:02}"), vec![batch(p, 0, 10, 100 + i)]))
            .await
            .unwrap();
    }
    let limits = RetentionLimits {
        expire_before_ms: Some(120),
        max_bytes: None,
    };
    let mut calls = 0;
    loop {
        calls += 1;
        let step = c.apply_retention(p, limits, 8).await.unwrap();
        assert!(step.rows_expired <= 8);
        if !step.more {
            break;
        }
        assert!(calls < 10, "retention keeps asking for more");
    }
    assert!(calls >= 3, "20 rows, at most 8 per call");
    let offsets = c.partition_offsets(p).await.unwrap();
    assert_eq!(offsets.log_start, 200);
    let expected: BTreeSet<String> = (0..20).map(|i| format!("r{i:02}")).collect();
    assert_eq!(dead(&c).await, expected);
    let rows = c.index_rows(p, 0, u64::MAX).await.unwrap();
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[0].base_offset, 200);
}

async fn dead_objects_come_oldest_first_and_bounded(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("order", 3)).await.unwrap();
    for (partition, key) in [(0, "z-first"), (1, "a-second"), (2, "m-third")] {
        c.commit(flush(key, vec![batch(tp(&t, partition), 0, 1, 1)]))
            .await
            .unwrap();
    }
    let mut deaths = Vec::new();
    for partition in 0..3 {
        c.delete_records(tp(&t, partition), -1).await.unwrap();
        deaths.push(c.dead_objects(i64::MAX, 10).await.unwrap());
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let all = c.dead_objects(i64::MAX, 10).await.unwrap();
    let keys: Vec<&str> = all.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(keys, vec!["z-first", "a-second", "m-third"]);
    assert!(all
        .windows(2)
        .all(|w| w[0].dead_since_ms < w[1].dead_since_ms));
    // Bounded, and only those dead at or before the given time.
    let first = c.dead_objects(i64::MAX, 1).await.unwrap();
    assert_eq!(first, vec![all[0].clone()]);
    let early = c.dead_objects(all[1].dead_since_ms, 10).await.unwrap();
    assert_eq!(early, all[..2].to_vec());
    assert!(c
        .dead_objects(all[0].dead_since_ms - 1, 10)
        .await
        .unwrap()
        .is_empty());
    // Dead since the coordinator's clock at the release: recent, not a batch timestamp.
    let now_ms = crate::clock::SystemClock.now_ms();
    assert!(all
        .iter()
        .all(|d| (now_ms - d.dead_since_ms).abs() < 60_000));
}

/// Releases on partitions that share objects, concurrent with each other and with commits,
/// neither deadlock nor miscount: once every partition is emptied, every object is dead.
async fn releases_race_each_other_and_commits(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("race", 2)).await.unwrap();
    let (p0, p1) = (tp(&t, 0), tp(&t, 1));
    let mut keys = BTreeSet::new();
    for i in 0..40u64 {
        let key = format!("s{i:02}");
        c.commit(flush(&key, vec![batch(p0, 0, 5, 1), batch(p1, 100, 5, 1)]))
            .await
            .unwrap();
        keys.insert(key);
    }
    let writer = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 0..20u64 {
                let key = format!("w{i:02}");
                c.commit(flush(&key, vec![batch(p1, 0, 5, 1), batch(p0, 100, 5, 1)]))
                    .await
                    .unwrap();
            }
        })
    };
    let mut releases = Vec::new();
    for before in [50, 100, 150, 200] {
        for p in [p0, p1] {
            let c = c.clone();
            releases.push(tokio::spawn(
                async move { c.delete_records(p, before).await },
            ));
        }
    }
    for r in releases {
        r.await.unwrap().unwrap();
    }
    writer.await.unwrap();
    for p in [p0, p1] {
        c.delete_records(p, -1).await.unwrap();
        assert!(c.index_rows(p, 0, u64::MAX).await.unwrap().is_empty());
    }
    let all: BTreeSet<String> = keys
        .into_iter()
        .chain((0..20).map(|i| format!("w{i:02}")))
        .collect();
    assert_eq!(dead(&c).await, all);
}

async fn the_ledger_size_follows_rows_and_objects(c: Arc<dyn Coordinator>) {
    let size = |index_rows, objects| LedgerSize {
        index_rows,
        objects,
    };
    assert_eq!(c.ledger_size().await.unwrap(), size(0, 0));
    let t = c.create_topic(spec("sized", 2)).await.unwrap();
    let (p0, p1) = (tp(&t, 0), tp(&t, 1));
    c.commit(flush(
        "s1",
        vec![batch(p0, 0, 10, 1), batch(p1, 100, 10, 1)],
    ))
    .await
    .unwrap();
    c.commit(flush("s2", vec![batch(p0, 0, 10, 2)]))
        .await
        .unwrap();
    assert_eq!(c.ledger_size().await.unwrap(), size(3, 2));
    // The log start passes s1's row in p0: one row goes, s1 stays for p1.
    c.delete_records(p0, 10).await.unwrap();
    assert_eq!(c.ledger_size().await.unwrap(), size(2, 2));
    // And p1's: s1 is dead but still in the ledger until it is forgotten.
    c.delete_records(p1, -1).await.unwrap();
    assert_eq!(c.ledger_size().await.unwrap(), size(1, 2));
    c.forget_objects(vec!["s1".into()]).await.unwrap();
    assert_eq!(c.ledger_size().await.unwrap(), size(1, 1));
    c.delete_topic("sized").await.unwrap();
    assert_eq!(
        c.ledger_size().await.unwrap(),
        size(0, 1),
        "s2 is dead, not forgotten"
    );
}
