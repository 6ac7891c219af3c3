//! Fan-out reads: one topic written once, then read from the start by several consumer groups at
//! the same time on a broker with cold caches (restarted after the writes). Reports how many
//! bytes and GETs the object store served per byte written: the read cache should make that
//! about 1x however many groups read, not one copy per group.

use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::broker::{BrokerProcess, StoreCounts};
use crate::produce::{self, ProduceSpec};

/// What a fan-out run measured.
#[derive(Debug, Clone, Copy)]
pub struct FanoutResult {
    /// Value bytes written.
    pub written_bytes: f64,
    /// Records each group read.
    pub records: u64,
    /// Seconds until every group had read everything.
    pub seconds: f64,
    /// Object-store traffic of the reads.
    pub reads: StoreCounts,
}

/// Writes `records` of `record_size` bytes, restarts the broker and reads them with `groups`
/// consumer groups at once.
pub async fn run(
    broker: &mut BrokerProcess,
    topic: &str,
    records: u64,
    record_size: usize,
    partitions: i32,
    groups: usize,
) -> anyhow::Result<FanoutResult> {
    let spec = ProduceSpec {
        record_size,
        partitions,
        compression: "none".into(),
        records,
        rate: None,
        end_to_end: false,
        producer: Vec::new(),
    };
    let written = produce::run(&broker.bootstrap, topic, &spec).await?;
    broker
        .restart()
        .context("restarting the broker for cold caches")?;
    let before = broker.store_counts().await?;
    let started = Instant::now();
    let mut readers = Vec::new();
    for g in 0..groups {
        let bootstrap = broker.bootstrap.clone();
        let topic = topic.to_string();
        let want = written.acked;
        readers.push(std::thread::spawn(move || {
            read_all(&bootstrap, &topic, partitions, g, want)
        }));
    }
    let mut records_read = u64::MAX;
    for r in readers {
        let n = r
            .join()
            .map_err(|_| anyhow::anyhow!("a reader thread panicked"))??;
        records_read = records_read.min(n);
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = broker.store_counts().await?;
    Ok(FanoutResult {
        written_bytes: written.acked as f64 * record_size as f64,
        records: records_read,
        seconds,
        reads: after - before,
    })
}

fn read_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    group: usize,
    want: u64,
) -> anyhow::Result<u64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("fanout-{group}"))
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .create()
        .context("creating a consumer")?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut n = 0u64;
    while n < want {
        if Instant::now() > deadline {
            anyhow::bail!("group {group} read only {n} of {want} records in 600 s");
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(_)) => n += 1,
            Some(Err(e)) => anyhow::bail!("group {group}: {e}"),
            None => {}
        }
    }
    Ok(n)
}
