//! Object compaction through the broker: the duty's pass merges old flush objects into
//! per-partition objects while Fetch keeps answering every offset with the same records.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use fjord_broker::compaction::{self, CompactionDutySettings, CompactionStats, Progress};
use fjord_broker::{Broker, BrokerSettings};
use fjord_coordinator::clock::{Clock, ManualClock};
use fjord_coordinator::embedded::EmbeddedCoordinator;
use fjord_coordinator::{Coordinator, TopicPartition};
use fjord_storage::compactor::{CompactionSettings, Compactor};
use kafka_protocol::records::RecordBatchDecoder;
use object_store::ObjectStore;

const MIN: i64 = 60_000;

/// Every record of `partition` from `from` as (offset, key, value), fetched in requests of
/// `max_bytes`.
async fn read_all(
    broker: &Arc<Broker>,
    topic: &str,
    partition: i32,
    from: i64,
) -> Vec<(i64, Bytes, Bytes)> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let r = call(
            broker,
            fetch_request(topic, &[(partition, offset)], 1 << 20),
            12,
        )
        .await;
        let p = &r.responses[0].partitions[0];
        assert_eq!(p.error_code, 0);
        let mut records = p.records.clone().unwrap_or_default();
        if records.is_empty() {
            break;
        }
        let sets = RecordBatchDecoder::decode_all(&mut records).unwrap();
        for set in sets {
            for r in set.records {
                if r.offset >= offset {
                    out.push((r.offset, r.key.unwrap(), r.value.unwrap()));
                }
            }
        }
        offset = out.last().unwrap().0 + 1;
        if offset >= p.high_watermark {
            break;
        }
    }
    out
}

async fn rows(c: &Arc<dyn Coordinator>, tp: TopicPartition) -> usize {
    c.index_rows(tp, 0, u64::MAX).await.unwrap().len()
}

#[tokio::test]
async fn a_pass_merges_old_rows_and_fetch_answers_the_same_records() {
    let clock = ManualClock::new(1_796_644_800_000);
    let coordinator: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::in_memory(clock.clone()));
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let (broker, _task) = fjord_broker::testkit::broker_with_clock(
        coordinator.clone(),
        store.clone(),
        BrokerSettings::default(),
        clock.clone(),
    );
    let id = create(&broker, "t", 2).await;
    create(&broker, "c", 1).await;
    coordinator
        .alter_topic_configs("c", vec![("cleanup.policy".into(), Some("compact".into()))])
        .await
        .unwrap();
    // 100 produce requests per partition, a second apart: one flush, one row each.
    for n in 0..100 {
        for p in 0..2 {
            let r = call(
                &broker,
                produce_request("t", p, records(5, clock.now_ms())),
                9,
            )
            .await;
            assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
        }
        let r = call(
            &broker,
            produce_request("c", 0, records(5, clock.now_ms())),
            9,
        )
        .await;
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
        let _ = n;
        clock.advance(1000);
    }
    let tp = |partition| TopicPartition {
        topic_id: id,
        partition,
    };
    let before: BTreeMap<i32, Vec<_>> = BTreeMap::from([
        (0, read_all(&broker, "t", 0, 0).await),
        (1, read_all(&broker, "t", 1, 0).await),
    ]);
    assert_eq!(before[&0].len(), 500);
    assert_eq!(rows(&coordinator, tp(0)).await, 100);
    let c_id = coordinator.topic("c").await.unwrap().unwrap().id;
    let ctp = TopicPartition {
        topic_id: c_id,
        partition: 0,
    };
    let c_rows = rows(&coordinator, ctp).await;

    // The first 60 s of data is older than the minimum age.
    clock.advance(9 * MIN);
    let compactor = Compactor::new(
        store.clone(),
        coordinator.clone(),
        clock.clone(),
        CompactionSettings {
            target_object_bytes: 8 << 10,
            max_row_bytes: 2 << 10,
            settled_row_bytes: 1 << 10,
            min_age_ms: 10 * MIN,
            min_rows: 4,
            ..CompactionSettings::default()
        },
    );
    let stats = CompactionStats::default();
    let mut progress = Progress::default();
    // A pass visiting one partition stops there; the next goes on with the next partition.
    let tight = CompactionDutySettings {
        partitions_per_pass: 1,
        ..CompactionDutySettings::default()
    };
    let first = compaction::pass(&broker, &compactor, &tight, &stats, &mut progress).await;
    assert!(first.incomplete && first.swaps >= 1, "{first:?}");
    let r0 = rows(&coordinator, tp(0)).await;
    assert!(r0 < 100 - 30, "{r0} rows");
    assert_eq!(rows(&coordinator, tp(1)).await, 100);
    let second = compaction::pass(&broker, &compactor, &tight, &stats, &mut progress).await;
    assert!(second.swaps >= 1, "{second:?}");
    assert!(rows(&coordinator, tp(1)).await < 100 - 30);
    // Nothing more is old enough: further passes do nothing.
    let all = CompactionDutySettings::default();
    let idle = compaction::pass(&broker, &compactor, &all, &stats, &mut progress).await;
    assert_eq!((idle.swaps, idle.errors, idle.lost), (0, 0, 0), "{idle:?}");
    for p in 0..2 {
        assert_eq!(read_all(&broker, "t", p, 0).await, before[&p]);
        // From any offset.
        for from in [1, 17, 123, 250, 499] {
            let got = read_all(&broker, "t", p, from).await;
            assert_eq!(got[..], before[&p][from as usize..]);
        }
    }
    // The compacted topic is left to log compaction.
    assert_eq!(rows(&coordinator, ctp).await, c_rows);

    // Later, all of it is old: rows shrink to a few per partition.
    clock.advance(60 * MIN);
    compaction::pass(&broker, &compactor, &all, &stats, &mut progress).await;
    for p in 0..2 {
        assert!(rows(&coordinator, tp(p)).await <= 15);
        assert_eq!(read_all(&broker, "t", p, 0).await, before[&p]);
    }
    let swaps = stats.swaps.load(std::sync::atomic::Ordering::Relaxed);
    assert!(swaps >= 4, "{swaps}");
    assert_eq!(stats.errors.load(std::sync::atomic::Ordering::Relaxed), 0);
}
