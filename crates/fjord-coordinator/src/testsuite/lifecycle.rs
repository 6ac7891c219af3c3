//! Conformance tests of [`LogLifecycle`]: DeleteRecords and retention move log start offsets.

use std::sync::Arc;

use super::{batch, flush, spec, tp};
use crate::*;

pub(super) async fn run_all<F, Fut>(fresh: &F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Coordinator>>,
{
    delete_records_moves_the_log_start(fresh().await).await;
    retention_by_time_passes_whole_expired_rows(fresh().await).await;
    retention_by_size_keeps_at_least_the_limit(fresh().await).await;
    retention_work_is_bounded(fresh().await).await;
    advances_race_commits_safely(fresh().await).await;
    advances_race_topic_deletion_safely(fresh().await).await;
}

fn offsets(log_start: i64, high_watermark: i64) -> PartitionOffsets {
    PartitionOffsets {
        log_start,
        high_watermark,
    }
}

fn is_out_of_range<T: std::fmt::Debug>(r: Result<T>) -> bool {
    matches!(r, Err(CoordinatorError::OffsetOutOfRange(_)))
}

/// Commits `n` objects of one 10-offset batch each to `p`, with max timestamps `ts(i)`.
async fn fill(c: &Arc<dyn Coordinator>, p: TopicPartition, n: i64, ts: impl Fn(i64) -> i64) {
    for i in 0..n {
        let ts = ts(i);
        let key = format!("{}-{}-{i}-{ts}", p.topic_id, p.partition);
        c.commit(flush(&key, vec![batch(p, 0, 10, ts)]))
            .await
            .unwrap();
    }
}

async fn delete_records_moves_the_log_start(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("dr", 2)).await.unwrap();
    let p = tp(&t, 0);
    // Nothing to delete in an empty partition; -1 is the (empty) end.
    assert_eq!(c.delete_records(p, -1).await.unwrap(), offsets(0, 0));
    assert!(is_out_of_range(c.delete_records(p, 1).await));
    fill(&c, p, 3, |i| 100 * (i + 1)).await;
    // Into the middle of a row, as Kafka allows.
    assert_eq!(c.delete_records(p, 15).await.unwrap(), offsets(15, 30));
    assert_eq!(c.partition_offsets(p).await.unwrap(), offsets(15, 30));
    // Never backwards: a lower offset answers the current start.
    assert_eq!(c.delete_records(p, 3).await.unwrap(), offsets(15, 30));
    assert_eq!(c.delete_records(p, 15).await.unwrap(), offsets(15, 30));
    // Beyond the end, or negative other than -1: out of range, nothing moves.
    assert!(is_out_of_range(c.delete_records(p, 31).await));
    assert!(is_out_of_range(c.delete_records(p, -2).await));
    assert_eq!(c.partition_offsets(p).await.unwrap(), offsets(15, 30));
    // Timestamp lookups see only rows holding offsets at or after the start.
    assert_eq!(
        c.row_for_timestamp(p, 0)
            .await
            .unwrap()
            .unwrap()
            .base_offset,
        10
    );
    c.delete_records(p, 20).await.unwrap();
    assert_eq!(
        c.row_for_timestamp(p, 0)
            .await
            .unwrap()
            .unwrap()
            .base_offset,
        20
    );
    assert_eq!(
        c.row_with_max_timestamp(p)
            .await
            .unwrap()
            .unwrap()
            .base_offset,
        20
    );
    // -1: everything.
    assert_eq!(c.delete_records(p, -1).await.unwrap(), offsets(30, 30));
    assert!(c.row_for_timestamp(p, 0).await.unwrap().is_none());
    assert!(c.row_with_max_timestamp(p).await.unwrap().is_none());
    // Commits carry on at the end; the other partition never moved.
    fill(&c, p, 1, |_| 500).await;
    assert_eq!(c.partition_offsets(p).await.unwrap(), offsets(30, 40));
    assert_eq!(c.partition_offsets(tp(&t, 1)).await.unwrap(), offsets(0, 0));
    let missing = TopicPartition {
        topic_id: t.id,
        partition: 2,
    };
    assert!(matches!(
        c.delete_records(missing, 0).await,
        Err(CoordinatorError::UnknownTopic(_))
    ));
}

async fn retention_by_time_passes_whole_expired_rows(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("rt", 1)).await.unwrap();
    let p = tp(&t, 0);
    // Rows with max timestamps 100, 200, 300, 400; the third is older than the second.
    fill(&c, p, 4, |i| [100, 200, 150, 400][i as usize]).await;
    let by_time = |before| RetentionLimits {
        expire_before_ms: Some(before),
        max_bytes: None,
    };
    // No limits: nothing moves.
    let step = c
        .apply_retention(p, RetentionLimits::default(), 100)
        .await
        .unwrap();
    assert_eq!((step.offsets, step.rows_expired), (offsets(0, 40), 0));
    // Before 100: nothing is older.
    let step = c.apply_retention(p, by_time(100), 100).await.unwrap();
    assert_eq!((step.offsets, step.rows_expired), (offsets(0, 40), 0));
    // Before 180: the first row only; the third waits behind the second, as in Kafka.
    let step = c.apply_retention(p, by_time(180), 100).await.unwrap();
    assert_eq!(step.offsets, offsets(10, 40));
    assert_eq!((step.rows_expired, step.more), (1, false));
    // A DeleteRecords into the middle of a row, then retention passes that whole row.
    c.delete_records(p, 12).await.unwrap();
    let step = c.apply_retention(p, by_time(300), 100).await.unwrap();
    assert_eq!((step.offsets, step.rows_expired), (offsets(30, 40), 2));
    // Repeating it changes nothing; everything expired: the start reaches the end, no further.
    let step = c.apply_retention(p, by_time(300), 100).await.unwrap();
    assert_eq!((step.offsets, step.rows_expired), (offsets(30, 40), 0));
    let step = c.apply_retention(p, by_time(i64::MAX), 100).await.unwrap();
    assert_eq!(step.offsets, offsets(40, 40));
    let step = c.apply_retention(p, by_time(i64::MAX), 100).await.unwrap();
    assert_eq!((step.offsets, step.rows_expired), (offsets(40, 40), 0));
}

async fn retention_by_size_keeps_at_least_the_limit(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("rs", 1)).await.unwrap();
    let p = tp(&t, 0);
    // Five rows of 100 bytes each.
    fill(&c, p, 5, |_| i64::MAX - 1).await;
    let by_size = |max| RetentionLimits {
        expire_before_ms: None,
        max_bytes: Some(max),
    };
    let step = c.apply_retention(p, by_size(500), 100).await.unwrap();
    assert_eq!(step.offsets, offsets(0, 50));
    // 250 bytes: drop rows while at least 250 remain, i.e. keep three rows (300 bytes).
    let step = c.apply_retention(p, by_size(250), 100).await.unwrap();
    assert_eq!((step.offsets, step.rows_expired), (offsets(20, 50), 2));
    let step = c.apply_retention(p, by_size(100), 100).await.unwrap();
    assert_eq!(step.offsets, offsets(40, 50));
    // The last row stays while the limit is above zero; a zero limit drops it.
    let step = c.apply_retention(p, by_size(1), 100).await.unwrap();
    assert_eq!(step.offsets, offsets(40, 50));
    let step = c.apply_retention(p, by_size(0), 100).await.unwrap();
    assert_eq!(step.offsets, offsets(50, 50));
}

async fn retention_work_is_bounded(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("rb", 1)).await.unwrap();
    let p = tp(&t, 0);
    fill(&c, p, 7, |i| i).await;
    let all = RetentionLimits {
        expire_before_ms: Some(1_000),
        max_bytes: None,
    };
    let mut steps = Vec::new();
    loop {
        let step = c.apply_retention(p, all, 3).await.unwrap();
        steps.push((step.offsets.log_start, step.rows_expired, step.more));
        if !step.more {
            break;
        }
    }
    assert_eq!(steps, vec![(30, 3, true), (60, 3, true), (70, 1, false)]);
}

/// Commits and log start advances interleave freely: offsets stay dense, the log start only
/// rises and never passes the high watermark.
async fn advances_race_commits_safely(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("race", 1)).await.unwrap();
    let p = tp(&t, 0);
    let producer = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                let out = c
                    .commit(flush(&format!("race-{i}"), vec![batch(p, 0, 5, i)]))
                    .await
                    .unwrap();
                assert_eq!(out, vec![BatchOutcome::Appended { base_offset: i * 5 }]);
            }
        })
    };
    let mut last = 0;
    for round in 0..60 {
        let step = if round % 2 == 0 {
            c.apply_retention(
                p,
                RetentionLimits {
                    expire_before_ms: Some(i64::MAX),
                    max_bytes: None,
                },
                4,
            )
            .await
            .unwrap()
            .offsets
        } else {
            c.delete_records(p, -1).await.unwrap()
        };
        assert!(step.log_start >= last && step.log_start <= step.high_watermark);
        last = step.log_start;
        tokio::task::yield_now().await;
    }
    producer.await.unwrap();
    let end = c.delete_records(p, -1).await.unwrap();
    assert_eq!(end, offsets(200, 200));
}

/// Advancing a partition whose topic is deleted meanwhile fails cleanly (unknown topic) or
/// lands before the deletion; either way the topic is gone and a new one of the same name starts
/// at zero.
async fn advances_race_topic_deletion_safely(c: Arc<dyn Coordinator>) {
    let t = c.create_topic(spec("gone", 2)).await.unwrap();
    for partition in 0..2 {
        fill(&c, tp(&t, partition), 3, |_| 0).await;
    }
    let deleter = {
        let c = c.clone();
        tokio::spawn(async move { c.delete_topic("gone").await.unwrap() })
    };
    for partition in 0..2 {
        for before in [5, -1] {
            match c.delete_records(tp(&t, partition), before).await {
                Ok(o) => assert!(o.log_start <= o.high_watermark),
                Err(CoordinatorError::UnknownTopic(_)) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        let limits = RetentionLimits {
            expire_before_ms: Some(1),
            max_bytes: Some(0),
        };
        match c.apply_retention(tp(&t, partition), limits, 10).await {
            Ok(step) => assert!(step.offsets.log_start <= step.offsets.high_watermark),
            Err(CoordinatorError::UnknownTopic(_)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    deleter.await.unwrap();
    assert!(matches!(
        c.apply_retention(tp(&t, 0), RetentionLimits::default(), 10)
            .await,
        Err(CoordinatorError::UnknownTopic(_))
    ));
    assert!(matches!(
        c.delete_records(tp(&t, 1), -1).await,
        Err(CoordinatorError::UnknownTopic(_))
    ));
    let again = c.create_topic(spec("gone", 2)).await.unwrap();
    assert_eq!(
        c.partition_offsets(tp(&again, 0)).await.unwrap(),
        offsets(0, 0)
    );
}
