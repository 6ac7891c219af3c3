//! Figures for object compaction: index rows and index metadata bytes per GiB retained before
//! and after compaction, and object-store GETs per GiB for a cold catch-up read of one
//! partition (a consumer from the beginning with librdkafka's default fetch sizes, through the
//! broker's read path: `index_rows` of about `max.partition.fetch.bytes`, one read per row,
//! the default 256 MiB read cache).
//!
//! ```text
//! cargo run --release -p fjord-storage --example compaction_figures -- [MIB] [FLUSH_KIB] [PARTITIONS]
//! ```
//! writes MIB (default 256) of 1 KiB records as flush objects of FLUSH_KIB (default 4096, the
//! broker's `--flush-bytes`) spread over PARTITIONS (default 12) partitions, into an in-memory
//! store and an in-memory embedded coordinator, then runs the compactor with its defaults
//! (64 MiB objects, 8 MiB rows) until it has nothing left to do. "Metadata bytes" are the live
//! index rows and object entries as JSON (the embedded coordinator's snapshot format).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fjord_coordinator::clock::{Clock, ManualClock};
use fjord_coordinator::embedded::EmbeddedCoordinator;
use fjord_coordinator::{
    CommitBatch, Coordinator, FlushCommit, IndexRow, TopicPartition, TopicSpec,
};
use fjord_storage::batch::materialize;
use fjord_storage::compactor::{CompactionSettings, Compactor};
use fjord_storage::instrumented::{InstrumentedStore, StoreStats};
use fjord_storage::object::ObjectBuilder;
use fjord_storage::reader::{ReadCache, Reader};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

const GIB: f64 = (1u64 << 30) as f64;
const FETCH_PARTITION_BYTES: u64 = 1 << 20;

fn batch(records: usize, size: usize, ts: i64) -> Bytes {
    let value = Bytes::from(vec![b'x'; size]);
    let records: Vec<Record> = (0..records)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: ts,
            key: None,
            value: Some(value.clone()),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.freeze()
}

async fn all_rows(c: &Arc<dyn Coordinator>, tps: &[TopicPartition]) -> Vec<IndexRow> {
    let mut rows = Vec::new();
    for tp in tps {
        rows.extend(c.index_rows(*tp, 0, u64::MAX).await.unwrap());
    }
    rows
}

fn metadata_bytes(rows: &[IndexRow]) -> usize {
    let objects: BTreeSet<&str> = rows.iter().map(|r| r.object_key.as_str()).collect();
    // A ledger entry: the key, its size and live-row count.
    serde_json::to_vec(rows).unwrap().len()
        + objects
            .iter()
            .map(|k| k.len() + r#"{"key":"","size":0000000,"live":00}"#.len())
            .sum::<usize>()
}

/// Reads `tp` from offset 0 as a consumer would; returns (GETs, bytes read).
async fn cold_read(
    c: &Arc<dyn Coordinator>,
    store: &Arc<dyn ObjectStore>,
    stats: &StoreStats,
    tp: TopicPartition,
) -> (u64, u64) {
    let reader = Reader::new(store.clone(), Arc::new(ReadCache::new(256 << 20)));
    let gets = stats.snapshot().gets;
    let hw = c.partition_offsets(tp).await.unwrap().high_watermark;
    let mut offset = 0;
    let mut bytes = 0u64;
    while offset < hw {
        let rows = c
            .index_rows(tp, offset, FETCH_PARTITION_BYTES)
            .await
            .unwrap();
        let mut out = 0usize;
        for row in &rows {
            if out as u64 >= FETCH_PARTITION_BYTES {
                break;
            }
            let raw = reader.read_row(row).await.unwrap();
            let budget = FETCH_PARTITION_BYTES as usize - out;
            let (got, next) = materialize(&raw, row.base_offset, offset, budget).unwrap();
            if out > 0 && out + got.len() > FETCH_PARTITION_BYTES as usize {
                break;
            }
            out += got.len();
            offset = next;
        }
        bytes += out as u64;
    }
    (stats.snapshot().gets - gets, bytes)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let mib = args.first().copied().unwrap_or(256);
    let flush_bytes = args.get(1).copied().unwrap_or(4096) << 10;
    let partitions = args.get(2).copied().unwrap_or(12) as i32;

    let clock = ManualClock::new(1_796_644_800_000);
    let coordinator: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::in_memory(clock.clone()));
    let instrumented =
        InstrumentedStore::new(Arc::new(object_store::memory::InMemory::new()), None);
    let stats = instrumented.stats();
    let store: Arc<dyn ObjectStore> = Arc::new(instrumented);
    let topic = coordinator
        .create_topic(TopicSpec {
            name: "t".into(),
            partitions,
            configs: Default::default(),
        })
        .await
        .unwrap()
        .id;
    let tps: Vec<TopicPartition> = (0..partitions)
        .map(|partition| TopicPartition {
            topic_id: topic,
            partition,
        })
        .collect();

    // 16 records of 1 KiB per batch; each flush spreads its batches over all partitions.
    let one = batch(16, 1024, clock.now_ms());
    let per_flush = (flush_bytes as usize / one.len()).max(1);
    let mut written = 0u64;
    let mut flushes = 0u64;
    while written < mib << 20 {
        let mut builder = ObjectBuilder::with_capacity(flush_bytes as usize);
        let mut batches = Vec::new();
        for k in 0..per_flush {
            let tp = tps[k * tps.len() / per_flush];
            let (position, _) = builder.push(tp.topic_id, tp.partition, &one, 16, clock.now_ms());
            batches.push(CommitBatch {
                tp,
                position,
                length: one.len() as u64,
                offset_count: 16,
                max_timestamp: clock.now_ms(),
                producer: None,
                append: k as u32,
            });
            written += one.len() as u64;
        }
        let object = builder.finish(0, clock.now_ms());
        let key = fjord_storage::gc::object_key(clock.now_ms());
        store
            .put(&Path::from(key.as_str()), object.clone().into())
            .await
            .unwrap();
        coordinator
            .commit(FlushCommit {
                object_key: key,
                object_size: object.len() as u64,
                timestamp_ms: clock.now_ms(),
                batches,
            })
            .await
            .unwrap();
        flushes += 1;
        clock.advance(100);
    }
    let gib = written as f64 / GIB;
    println!(
        "wrote {:.0} MiB of 1 KiB records in {flushes} flush objects of {} KiB over {partitions} partitions",
        written as f64 / (1 << 20) as f64,
        flush_bytes >> 10
    );
    let before = all_rows(&coordinator, &tps).await;
    let (gets, bytes) = cold_read(&coordinator, &store, &stats, tps[0]).await;
    println!(
        "before compaction: {:.0} index rows/GiB, {:.0} KiB index metadata/GiB, cold read {:.0} GETs/GiB ({gets} GETs for {:.1} MiB)",
        before.len() as f64 / gib,
        metadata_bytes(&before) as f64 / gib / 1024.0,
        gets as f64 / (bytes as f64 / GIB),
        bytes as f64 / (1 << 20) as f64
    );

    clock.advance(3_600_000);
    let compactor = Compactor::new(
        store.clone(),
        coordinator.clone(),
        clock.clone(),
        CompactionSettings::default(),
    );
    let puts = stats.snapshot().puts;
    let started = std::time::Instant::now();
    let mut swaps = 0;
    for tp in &tps {
        let mut from = 0;
        loop {
            let r = compactor
                .compact_partition(*tp, from, 1 << 30, None)
                .await
                .unwrap();
            swaps += r.swaps;
            match r.resume_from {
                Some(next) if r.swaps > 0 => from = next,
                _ => break,
            }
        }
    }
    let after = all_rows(&coordinator, &tps).await;
    let merged: Vec<&IndexRow> = after
        .iter()
        .filter(|r| !before.iter().any(|b| b.object_key == r.object_key))
        .collect();
    let merged_bytes: u64 = merged.iter().map(|r| r.length).sum();
    println!(
        "merged rows: {} holding {:.1} MiB, {:.1} MiB per row (one GET each on a cold read): {:.0} rows/GiB; {} young rows left for later",
        merged.len(),
        merged_bytes as f64 / (1 << 20) as f64,
        merged_bytes as f64 / merged.len().max(1) as f64 / (1 << 20) as f64,
        merged.len() as f64 / (merged_bytes as f64 / GIB),
        after.len() - merged.len()
    );
    if std::env::var_os("SHOW_ROWS").is_some() {
        for r in coordinator.index_rows(tps[0], 0, u64::MAX).await.unwrap() {
            println!(
                "{} {}..={} {} bytes",
                r.object_key, r.base_offset, r.last_offset, r.length
            );
        }
    }
    let (gets, bytes) = cold_read(&coordinator, &store, &stats, tps[0]).await;
    println!(
        "after compaction ({swaps} swaps, {} PUTs, {:.1} s): {:.0} index rows/GiB, {:.1} KiB index metadata/GiB, cold read {:.0} GETs/GiB ({gets} GETs for {:.1} MiB)",
        stats.snapshot().puts - puts,
        started.elapsed().as_secs_f64(),
        after.len() as f64 / gib,
        metadata_bytes(&after) as f64 / gib / 1024.0,
        gets as f64 / (bytes as f64 / GIB),
        bytes as f64 / (1 << 20) as f64
    );
}
