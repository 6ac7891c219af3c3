//! Commit latency of the embedded coordinator while it snapshots a large state.
//!
//! Not a pass/fail test: it prints figures. Run with
//! `cargo test --release -p fjord-coordinator --test snapshot_latency -- --ignored --nocapture`
//! (`FJORD_BENCH_FLUSHES`, default 14000, sets how many 64-partition flushes fill the state; the
//! journal passes the 64 MiB snapshot threshold about every 6,000 of them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjord_coordinator::embedded::EmbeddedCoordinator;
use fjord_coordinator::*;

const PARTITIONS: i32 = 64;

fn flush(topic: uuid::Uuid, key: String, partitions: i32) -> FlushCommit {
    FlushCommit {
        object_key: key,
        object_size: 1000 * partitions as u64,
        timestamp_ms: 1,
        batches: (0..partitions)
            .map(|p| CommitBatch {
                tp: TopicPartition {
                    topic_id: topic,
                    partition: p,
                },
                position: 1000 * p as u64,
                length: 1000,
                offset_count: 10,
                max_timestamp: 1_700_000_000_000,
                producer: None,
                append: p as u32,
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: prints commit latency during snapshots"]
async fn commit_latency_during_snapshots() {
    let flushes: usize = std::env::var("FJORD_BENCH_FLUSHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(14_000);
    let dir = tempfile::tempdir().unwrap();
    let c = Arc::new(EmbeddedCoordinator::open(dir.path()).unwrap());
    let fill = c
        .create_topic(TopicSpec {
            name: "fill".into(),
            partitions: PARTITIONS,
            configs: Default::default(),
        })
        .await
        .unwrap();
    let probe = c
        .create_topic(TopicSpec {
            name: "probe".into(),
            partitions: 1,
            configs: Default::default(),
        })
        .await
        .unwrap();

    // The probe: one small commit at a time, as a producer waiting on its acks.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (c, stop) = (c.clone(), stop.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                c.commit(flush(probe.id, format!("probe-{n}"), 1))
                    .await
                    .unwrap();
                latencies.push(started.elapsed());
                n += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            latencies
        })
    };

    let started = Instant::now();
    let mut slowest_fill = Duration::ZERO;
    for chunk in 0..flushes / 50 {
        let batch: Vec<FlushCommit> = (0..50)
            .map(|i| flush(fill.id, format!("fill-{chunk}-{i}"), PARTITIONS))
            .collect();
        let t = Instant::now();
        c.commit_many(batch).await.unwrap();
        slowest_fill = slowest_fill.max(t.elapsed());
    }
    let fill_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut latencies = prober.await.unwrap();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let snapshot_bytes = std::fs::metadata(dir.path().join("snapshot.json"))
        .map(|m| m.len())
        .unwrap_or(0);
    let rows = (flushes / 50 * 50) as u64 * PARTITIONS as u64;
    println!(
        "rows {rows}, snapshot.json {:.1} MiB, fill {:.1} s (slowest commit_many of 50 flushes {:.0} ms); \
         probe commits {}: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.0} ms",
        snapshot_bytes as f64 / (1 << 20) as f64,
        fill_time.as_secs_f64(),
        slowest_fill.as_secs_f64() * 1e3,
        latencies.len(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        pct(0.999).as_secs_f64() * 1e3,
        pct(1.0).as_secs_f64() * 1e3,
    );
}
