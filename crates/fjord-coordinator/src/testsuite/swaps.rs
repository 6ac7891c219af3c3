//! Conformance tests of compaction swaps ([`LogLifecycle::swap_rows`]): compare-and-swap on a
//! partition's rows, losing cleanly to retention, DeleteRecords, other swaps and topic
//! deletion; references move from the replaced objects to the new one.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::objects::dead;
use super::{batch, flush, key_at, spec, tp};
use crate::*;

pub(super) async fn run_all<F, Fut>(fresh: &F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Coordinator>>,
{
    a_swap_replaces_rows_and_moves_references(fresh().await).await;
    log_compaction_swaps_leave_gaps_and_a_checkpoint(fresh().await).await;
    a_swap_loses_to_a_moved_log_start(fresh().await).await;
    a_swap_loses_to_another_swap_and_to_changed_rows(fresh().await).await;
    malformed_or_late_swaps_are_refused(fresh().await).await;
    swaps_race_commits_and_topic_deletion_safely(fresh().await).await;
}

/// A fresh object key (a UUIDv7 of now, like the writer's).
fn new_key() -> String {
    let now = u64::try_from(crate::clock::system().now_ms()).unwrap_or(0);
    key_at(now)
}

/// Commits `n` one-batch objects of 10 offsets to `p` (timestamps 100, 200, ...); their keys.
async fn fill(c: &Arc<dyn Coordinator>, p: TopicPartition, n: i64) -> Vec<String> {
    let mut keys = Vec::new();
    for i in 0..n {
        let key = format!("l0-{}-{}-{i}", p.topic_id, p.partition);
        c.commit(flush(&key, vec![batch(p, 0, 10, 100 * (i + 1))]))
            .await
            .unwrap();
        keys.push(key);
    }
    keys
}

fn row(base: i64, last: i64, key: &str, position: u64, length: u64, ts: i64) -> IndexRow {
    IndexRow {
        base_offset: base,
        last_offset: last,
        object_key: key.into(),
        position,
        length,
        max_timestamp: ts,
    }
}

async fn rows(c: &Arc<dyn Coordinator>, p: TopicPartition) -> Vec<IndexRow> {
    c.index_rows(p, 0, u64::MAX).await.unwrap()
}

fn merge(p: TopicPartition, replaced: &[IndexRow], key: &str) -> RowSwap {
    let first = replaced[0].base_offset;
    let last = replaced[replaced.len() - 1].last_offset;
    let length: u64 = replaced.iter().map(|r| r.length).sum();
    let ts = replaced.iter().map(|r| r.max_timestamp).max().unwrap_or(-1);
    RowSwap {
        tp: p,
        replaced: replaced.iter().map(RowRef::from).collect(),
        object_key: key.into(),
        object_size: length,
        rows: vec![row(first, last, key, 4, length, ts)],
        cleaned_to: None,
    }
}

async fn a_swap_replaces_rows_and_moves_references(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("merge", 2)).await.unwrap();
    let (p0, p1) = (tp(&t, 0), tp(&t, 1));
    let l0 = fill(&c, p0, 3).await;
    // A flush object shared with p1: it stays referenced after p0's rows move.
    c.commit(flush(
        "shared",
        vec![batch(p0, 0, 10, 400), batch(p1, 100, 10, 400)],
    ))
    .await
    .unwrap();
    // Offsets 40-49 stay in L0.
    c.commit(flush("tail", vec![batch(p0, 0, 10, 350)]))
        .await
        .unwrap();
    let before = rows(&c, p0).await;
    assert_eq!(before.len(), 5);
    let l1 = new_key();
    let outcome = c.swap_rows(merge(p0, &before[..4], &l1)).await.unwrap();
    assert_eq!(outcome, SwapOutcome::Swapped);
    let after = rows(&c, p0).await;
    assert_eq!(after.len(), 2);
    assert_eq!(after[0], row(0, 39, &l1, 4, 400, 400));
    assert_eq!(after[1], before[4]);
    // Lookups at any offset: a row covering it.
    let at = c.index_rows(p0, 25, 1).await.unwrap();
    assert_eq!(at[0].object_key, l1);
    assert_eq!(
        c.row_for_timestamp(p0, 150)
            .await
            .unwrap()
            .unwrap()
            .object_key,
        l1
    );
    assert_eq!(
        c.row_with_max_timestamp(p0)
            .await
            .unwrap()
            .unwrap()
            .object_key,
        l1,
        "the earliest row with the largest timestamp (400) is the merged one"
    );
    // References: the L0 objects only p0 used are dead; the shared one and the new one live.
    let expected: BTreeSet<String> = l0.into_iter().collect();
    assert_eq!(dead(&c).await, expected);
    let known = c
        .known_objects(vec!["shared".into(), l1.clone()])
        .await
        .unwrap();
    assert_eq!(known.len(), 2);
    assert_eq!(c.partition_offsets(p0).await.unwrap().high_watermark, 50);
    // The partition goes on.
    c.commit(flush("later", vec![batch(p0, 0, 5, 500)]))
        .await
        .unwrap();
    assert_eq!(rows(&c, p0).await.len(), 3);
    assert_eq!(c.cleaned_to(p0).await.unwrap(), 0);
}

async fn log_compaction_swaps_leave_gaps_and_a_checkpoint(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("compacted", 1)).await.unwrap();
    let p = tp(&t, 0);
    fill(&c, p, 3).await;
    let before = rows(&c, p).await;
    let key = new_key();
    // Offsets 0-29 compacted to two runs, 3-4 and 20-21 (gaps between): offsets are kept.
    let swap = RowSwap {
        tp: p,
        replaced: before.iter().map(RowRef::from).collect(),
        object_key: key.clone(),
        object_size: 200,
        rows: vec![row(3, 4, &key, 4, 80, 100), row(20, 21, &key, 84, 80, 300)],
        cleaned_to: Some(30),
    };
    assert_eq!(c.swap_rows(swap).await.unwrap(), SwapOutcome::Swapped);
    assert_eq!(c.cleaned_to(p).await.unwrap(), 30);
    // A read from inside a gap starts at the next row.
    let from_gap = c.index_rows(p, 10, u64::MAX).await.unwrap();
    assert_eq!(from_gap[0].base_offset, 20);
    assert_eq!(
        c.index_rows(p, 0, u64::MAX).await.unwrap()[0].base_offset,
        3
    );
    assert_eq!(
        c.row_for_timestamp(p, 150)
            .await
            .unwrap()
            .unwrap()
            .base_offset,
        20
    );
    assert_eq!(c.partition_offsets(p).await.unwrap().high_watermark, 30);
    // Everything compacted away: no rows, and the swap's object is dead at once.
    let now = rows(&c, p).await;
    let empty = new_key();
    let swap = RowSwap {
        tp: p,
        replaced: now.iter().map(RowRef::from).collect(),
        object_key: empty.clone(),
        object_size: 0,
        rows: vec![],
        cleaned_to: Some(25),
    };
    assert_eq!(c.swap_rows(swap).await.unwrap(), SwapOutcome::Swapped);
    assert!(rows(&c, p).await.is_empty());
    assert_eq!(
        c.cleaned_to(p).await.unwrap(),
        30,
        "the checkpoint never goes down"
    );
    let dead = dead(&c).await;
    assert!(dead.contains(&empty) && dead.contains(&key));
}

async fn a_swap_loses_to_a_moved_log_start(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("raced", 1)).await.unwrap();
    let p = tp(&t, 0);
    fill(&c, p, 4).await;
    let planned = rows(&c, p).await;
    // Retention (or DeleteRecords) deletes the first row after the compactor read the rows.
    c.delete_records(p, 10).await.unwrap();
    let key = new_key();
    let outcome = c.swap_rows(merge(p, &planned, &key)).await.unwrap();
    assert_eq!(outcome, SwapOutcome::Lost);
    assert_eq!(rows(&c, p).await, planned[1..].to_vec(), "nothing changed");
    assert!(
        dead(&c).await.contains(&key),
        "the lost swap's object is garbage"
    );
    // A log start inside the first replaced row leaves the row, and the swap goes through.
    c.delete_records(p, 15).await.unwrap();
    let key = new_key();
    let outcome = c.swap_rows(merge(p, &planned[1..], &key)).await.unwrap();
    assert_eq!(outcome, SwapOutcome::Swapped);
    assert_eq!(rows(&c, p).await.len(), 1);
    assert_eq!(c.partition_offsets(p).await.unwrap().log_start, 15);
}

async fn a_swap_loses_to_another_swap_and_to_changed_rows(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("twice", 1)).await.unwrap();
    let p = tp(&t, 0);
    fill(&c, p, 4).await;
    let planned = rows(&c, p).await;
    let first = new_key();
    assert_eq!(
        c.swap_rows(merge(p, &planned[..2], &first)).await.unwrap(),
        SwapOutcome::Swapped
    );
    // A second compactor planned from the same rows.
    let second = new_key();
    assert_eq!(
        c.swap_rows(merge(p, &planned, &second)).await.unwrap(),
        SwapOutcome::Lost
    );
    // Leaving a row out of the middle is not a contiguous replacement.
    let now = rows(&c, p).await;
    let skipping = RowSwap {
        replaced: vec![RowRef::from(&now[0]), RowRef::from(&now[2])],
        ..merge(p, &now, &new_key())
    };
    assert_eq!(c.swap_rows(skipping).await.unwrap(), SwapOutcome::Lost);
    assert_eq!(rows(&c, p).await, now);
}

async fn malformed_or_late_swaps_are_refused(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("bad", 1)).await.unwrap();
    let p = tp(&t, 0);
    fill(&c, p, 2).await;
    let now = rows(&c, p).await;
    let good = merge(p, &now, &new_key());
    let invalid = |r: Result<SwapOutcome>| matches!(r, Err(CoordinatorError::Invalid(_)));
    let outside = RowSwap {
        rows: vec![row(0, 25, &good.object_key, 4, 10, 1)],
        ..good.clone()
    };
    assert!(invalid(c.swap_rows(outside).await));
    let overlapping = RowSwap {
        rows: vec![
            row(0, 10, &good.object_key, 4, 10, 1),
            row(10, 19, &good.object_key, 14, 10, 1),
        ],
        ..good.clone()
    };
    assert!(invalid(c.swap_rows(overlapping).await));
    let elsewhere = RowSwap {
        rows: vec![row(0, 19, "other-object", 4, 10, 1)],
        ..good.clone()
    };
    assert!(invalid(c.swap_rows(elsewhere).await));
    let nothing = RowSwap {
        replaced: vec![],
        ..good.clone()
    };
    assert!(invalid(c.swap_rows(nothing).await));
    // An object the ledger knows already (a flush object).
    let reused = merge(p, &now, &now[0].object_key);
    assert!(invalid(c.swap_rows(reused).await));
    // Made before the commit watermark: refused like a late commit.
    c.raise_commit_watermark(crate::clock::system().now_ms() + 60_000)
        .await
        .unwrap();
    assert!(matches!(
        c.swap_rows(good).await,
        Err(CoordinatorError::Fenced(_))
    ));
    assert_eq!(rows(&c, p).await, now, "nothing changed");
    let other = tp(&t, 0);
    let gone = TopicPartition {
        partition: 7,
        ..other
    };
    assert!(matches!(
        c.swap_rows(RowSwap {
            tp: gone,
            ..merge(p, &now, "objects/no-time")
        })
        .await,
        Err(CoordinatorError::UnknownTopic(_))
    ));
}

async fn swaps_race_commits_and_topic_deletion_safely(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("busy", 1)).await.unwrap();
    let p = tp(&t, 0);
    fill(&c, p, 6).await;
    let planned = rows(&c, p).await;
    let writer = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 0..20 {
                c.commit(flush(&format!("busy-{i}"), vec![batch(p, 0, 10, 1_000)]))
                    .await
                    .unwrap();
            }
        })
    };
    let key = new_key();
    let outcome = c.swap_rows(merge(p, &planned, &key)).await.unwrap();
    writer.await.unwrap();
    assert_eq!(outcome, SwapOutcome::Swapped);
    let after = rows(&c, p).await;
    assert_eq!(after.len(), 21);
    assert!(after
        .windows(2)
        .all(|w| w[0].last_offset + 1 == w[1].base_offset));
    assert_eq!(after.last().map(|r| r.last_offset), Some(259));
    // Against topic deletion: either the swap lands first, or it finds the partition gone.
    let late = new_key();
    let swap = {
        let c = c.clone();
        let s = merge(p, &after[..5], &late);
        tokio::spawn(async move { c.swap_rows(s).await })
    };
    c.delete_topic("busy").await.unwrap();
    match swap.await.unwrap() {
        Ok(SwapOutcome::Swapped) => assert!(dead(&c).await.contains(&late)),
        Err(CoordinatorError::UnknownTopic(_)) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert!(dead(&c).await.contains(&key));
}
