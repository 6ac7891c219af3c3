//! `soak`: produces at a fixed rate for a while into topics with a short retention (and,
//! optionally, one compacted topic over a fixed key space) and samples, at a fixed interval, what
//! the broker holds: its RSS, the coordinator's metadata (embedded: the journal and snapshot
//! files; PostgreSQL: the size of its tables and indexes), the objects and bytes in the local
//! object store, and the object-store requests issued. Bounded metadata shows as figures that
//! level off while the bytes produced keep growing (issue 15, item 7).
//!
//! One row per sample, so the table reads as figures over time.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::broker::{BrokerProcess, StoreCounts};
use crate::produce::create_topic_with;
use crate::report::{Row, Table};

/// What one soak run does.
#[derive(Debug, Clone)]
pub struct SoakSpec {
    /// How long to produce.
    pub duration: Duration,
    /// Offered rate over all topics, in MB/s of values.
    pub rate_mb: f64,
    /// Value bytes per record.
    pub record_size: usize,
    /// Topics with a short retention.
    pub topics: usize,
    /// Partitions per topic.
    pub partitions: i32,
    /// `retention.ms` of those topics.
    pub retention_ms: u64,
    /// Keys of the compacted topic (0: no compacted topic). It gets a tenth of the rate.
    pub compacted_keys: u64,
    /// Time between samples.
    pub interval: Duration,
    /// `Some(url)`: the broker's coordinator is this PostgreSQL database, measured there.
    pub postgres: Option<String>,
    /// How long to idle after producing before the last sample (`None`: a retention period,
    /// the broker's 60 s delete delay, its 60 s GC interval and one sample interval, so that
    /// what expired is gone).
    pub idle: Option<Duration>,
}

/// Counts the producer's delivery reports.
#[derive(Default)]
struct Acks {
    acked: AtomicU64,
    failed: AtomicU64,
}

struct Reports(Arc<Acks>);

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = if result.is_ok() {
            &self.0.acked
        } else {
            &self.0.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One sample of what the broker holds.
struct Sample {
    seconds: f64,
    acked: u64,
    failed: u64,
    rss: u64,
    metadata_bytes: u64,
    objects: u64,
    object_bytes: u64,
    store: StoreCounts,
    /// Index rows and ledger objects, as the broker's last GC pass counted them.
    index_rows: f64,
    ledger_objects: f64,
    /// Retention so far: passes, seconds spent in them, rows expired, partitions looked at.
    retention: [f64; 4],
}

/// Runs a soak against a broker it starts with `broker_args`, one row per sample into `table`.
pub async fn run(
    binary: &Path,
    table: &mut Table,
    spec: &SoakSpec,
    broker_args: &[String],
) -> anyhow::Result<()> {
    let mut args = broker_args.to_vec();
    if let Some(url) = &spec.postgres {
        args.extend(["--coordinator".to_string(), url.clone()]);
    }
    let broker = BrokerProcess::start(binary, &args)?;
    let pg = match &spec.postgres {
        Some(url) => Some(connect(url).await?),
        None => None,
    };

    let mut topics: Vec<(String, Option<u64>)> = Vec::new();
    let retention = spec.retention_ms.to_string();
    for i in 0..spec.topics {
        let name = format!("soak-retention-{i}");
        create_topic_with(
            &broker.bootstrap,
            &name,
            spec.partitions,
            &[("retention.ms", &retention)],
        )
        .await?;
        topics.push((name, None));
    }
    if spec.compacted_keys > 0 {
        let name = "soak-compacted".to_string();
        create_topic_with(
            &broker.bootstrap,
            &name,
            spec.partitions,
            &[("cleanup.policy", "compact")],
        )
        .await
        .context("a compacted topic (turn it off with --compacted-keys 0)")?;
        topics.push((name, Some(spec.compacted_keys)));
    }

    let acks = Arc::new(Acks::default());
    let producer: ThreadedProducer<Reports> = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.kbytes", "1048576")
        .create_with_context(Reports(acks.clone()))
        .context("creating the producer")?;

    let value = vec![b's'; spec.record_size];
    let per_second = (spec.rate_mb * 1e6 / spec.record_size.max(1) as f64).max(1.0);
    let setup = format!(
        "{} topics × {} partitions, retention.ms {}, {}{} MB/s of {} B records, {} coordinator",
        spec.topics,
        spec.partitions,
        spec.retention_ms,
        if spec.compacted_keys > 0 {
            format!("a compacted topic over {} keys, ", spec.compacted_keys)
        } else {
            String::new()
        },
        spec.rate_mb,
        spec.record_size,
        if spec.postgres.is_some() {
            "PostgreSQL"
        } else {
            "embedded"
        }
    );

    let start = Instant::now();
    let mut next_sample = start;
    let mut sent: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let first = broker.store_counts().await?;
    let mut prev: Option<Sample> = None;
    loop {
        tick.tick().await;
        let elapsed = start.elapsed();
        if Instant::now() >= next_sample {
            let s = sample(&broker, pg.as_ref(), start, &acks, first).await?;
            table.push(row(&setup, &s, prev.as_ref()));
            prev = Some(s);
            next_sample += spec.interval;
        }
        if elapsed >= spec.duration {
            break;
        }
        let due = (elapsed.as_secs_f64() * per_second) as u64;
        while sent < due {
            // Every tenth record goes to the compacted topic, when there is one.
            let which = if sent % 10 == 9 && topics.len() > spec.topics {
                topics.len() - 1
            } else {
                (sent as usize) % spec.topics.max(1)
            };
            let (topic, keys) = &topics[which];
            let key = match keys {
                Some(n) => format!("key-{}", sent % n),
                None => format!("k{sent}"),
            };
            let record = BaseRecord::to(topic).key(&key).payload(&value);
            match producer.send(record) {
                Ok(()) => sent += 1,
                // The local queue is full: the broker does not keep up with the offered rate.
                Err((e, _)) => {
                    if sent == 0 {
                        bail!("producing: {e}");
                    }
                    break;
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .context("flushing the producer")?;
    // A last sample after a retention period of idling, the objects' delete delay and a GC
    // interval (the broker's defaults, 60 s each): what expired should be gone.
    let idle = spec.idle.unwrap_or(
        Duration::from_millis(spec.retention_ms) + Duration::from_secs(120) + spec.interval,
    );
    tokio::time::sleep(idle).await;
    let s = sample(&broker, pg.as_ref(), start, &acks, first).await?;
    table.push(row(
        &format!("{setup}; idle after producing"),
        &s,
        prev.as_ref(),
    ));
    if s.failed > 0 {
        bail!("{} records failed", s.failed);
    }
    Ok(())
}

async fn sample(
    broker: &BrokerProcess,
    pg: Option<&tokio_postgres::Client>,
    start: Instant,
    acks: &Acks,
    first: StoreCounts,
) -> anyhow::Result<Sample> {
    let (rss, _) = broker.usage()?;
    let metadata_bytes = match pg {
        Some(client) => postgres_bytes(client).await?,
        None => dir_size(&broker.data_dir().join("coordinator"))?.1,
    };
    let (objects, object_bytes) = dir_size(&broker.data_dir().join("objects"))?;
    let m = broker.metrics().await?;
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    Ok(Sample {
        index_rows: get("fjord_index_rows"),
        ledger_objects: get("fjord_index_objects"),
        retention: [
            get("fjord_retention_passes_total"),
            get("fjord_retention_pass_seconds_total"),
            get("fjord_retention_expired_rows_total"),
            get("fjord_retention_partitions_total"),
        ],
        seconds: start.elapsed().as_secs_f64(),
        acked: acks.acked.load(Ordering::Relaxed),
        failed: acks.failed.load(Ordering::Relaxed),
        rss,
        metadata_bytes,
        objects,
        object_bytes,
        store: broker.store_counts().await? - first,
    })
}

/// One table row for `s`; the retention pass figures are over the time since `prev`.
fn row(setup: &str, s: &Sample, prev: Option<&Sample>) -> Row {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let delta = |i: usize| s.retention[i] - prev.map_or(0.0, |p| p.retention[i]);
    let passes = delta(0);
    let (pass_ms, rows_per_pass, partitions_per_pass) = if passes > 0.0 {
        (
            delta(1) / passes * 1e3,
            delta(2) / passes,
            delta(3) / passes,
        )
    } else {
        (0.0, 0.0, 0.0)
    };
    Row {
        scenario: "soak".into(),
        setup: format!("{setup}; t={:.0} s", s.seconds),
        figures: format!(
            "{} records acked; RSS {:.0} MiB; metadata {:.1} MiB; {:.0} index rows, {:.0} in ledger; \
             {} objects, {:.0} MiB; retention {:.0} passes, {:.1} ms and {:.0} rows per pass; \
             {:.0} PUT / {:.0} GET / {:.0} DELETE / {:.0} LIST",
            s.acked,
            mib(s.rss),
            mib(s.metadata_bytes),
            s.index_rows,
            s.ledger_objects,
            s.objects,
            mib(s.object_bytes),
            passes,
            pass_ms,
            rows_per_pass,
            s.store.puts,
            s.store.gets,
            s.store.deletes,
            s.store.lists,
        ),
        values: vec![
            ("seconds", s.seconds),
            ("acked", s.acked as f64),
            ("rss_bytes", s.rss as f64),
            ("metadata_bytes", s.metadata_bytes as f64),
            ("objects", s.objects as f64),
            ("object_bytes", s.object_bytes as f64),
            ("index_rows", s.index_rows),
            ("ledger_objects", s.ledger_objects),
            ("retention_passes", passes),
            ("retention_pass_ms", pass_ms),
            ("retention_rows_per_pass", rows_per_pass),
            ("retention_partitions_per_pass", partitions_per_pass),
            ("puts", s.store.puts),
            ("gets", s.store.gets),
            ("deletes", s.store.deletes),
            ("lists", s.store.lists),
        ],
    }
}

/// Files and bytes under `dir` (0, 0 when it does not exist).
fn dir_size(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let mut files = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", d.display())),
        };
        for entry in entries {
            let entry = entry?;
            // A file may be deleted (GC, a journal rotation) between listing and stat.
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                files += 1;
                bytes += meta.len();
            }
        }
    }
    Ok((files, bytes))
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("soak: the PostgreSQL connection ended: {e}");
        }
    });
    Ok(client)
}

/// Bytes of every table in the coordinator's schema, indexes and TOAST included.
async fn postgres_bytes(client: &tokio_postgres::Client) -> anyhow::Result<u64> {
    let row = client
        .query_one(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::BIGINT \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname = current_schema()",
            &[],
        )
        .await
        .context("measuring the coordinator's tables")?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}
