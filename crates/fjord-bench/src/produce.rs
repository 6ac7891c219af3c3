//! Produce scenarios, driven with librdkafka (`rdkafka`): throughput (as fast as the producer
//! can go) and latency at a fixed offered rate (acknowledgement latency, and end-to-end latency
//! measured by a consumer reading the send time the producer wrote into each record).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::samples::Samples;
use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

/// librdkafka producer properties that override the scenarios' (`--producer-set`).
pub static PRODUCER_OVERRIDES: std::sync::OnceLock<Vec<(String, String)>> =
    std::sync::OnceLock::new();

/// Settings of one produce run.
#[derive(Debug, Clone)]
pub struct ProduceSpec {
    /// Bytes per record value.
    pub record_size: usize,
    /// Partitions of the topic.
    pub partitions: i32,
    /// librdkafka `compression.type`.
    pub compression: String,
    /// Records to send (throughput) or the rate in records/s (latency).
    pub records: u64,
    /// Offered rate in records per second; `None` = as fast as possible.
    pub rate: Option<u64>,
    /// Also measure end-to-end latency with a consumer.
    pub end_to_end: bool,
    /// librdkafka properties over the scenario's (`--producer-set` still wins).
    pub producer: Vec<(String, String)>,
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct ProduceResult {
    /// Records acknowledged.
    pub acked: u64,
    /// Failed deliveries.
    pub failed: u64,
    /// Seconds from the first send to the last acknowledgement.
    pub seconds: f64,
    /// Acknowledgement latencies (µs).
    pub ack_latency: Samples,
    /// End-to-end latencies (µs).
    pub e2e_latency: Samples,
}

impl ProduceResult {
    /// Value bytes per second.
    pub fn mb_per_s(&self, record_size: usize) -> f64 {
        self.acked as f64 * record_size as f64 / self.seconds.max(1e-9) / 1e6
    }
}

/// Creates `topic`.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    create_topic_with(bootstrap, topic, partitions, &[]).await
}

/// Creates `topic` with topic `configs` (an existing topic is fine).
pub async fn create_topic_with(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> anyhow::Result<()> {
    create_topic_as(bootstrap, &[], topic, partitions, configs).await
}

/// [`create_topic_with`] by an admin client with the librdkafka properties `client` (how it
/// reaches the broker: `security.protocol`, `sasl.*`, `ssl.*`).
async fn create_topic_as(
    bootstrap: &str,
    client: &[(String, String)],
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (k, v) in client {
        config.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> =
        config.create().context("creating an admin client")?;
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        new = new.set(k, v);
    }
    let results = admin
        .create_topics(
            &[new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for r in results {
        if let Err((name, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                bail!("creating topic {name}: {code}");
            }
        }
    }
    Ok(())
}

struct Deliveries {
    acked: AtomicU64,
    failed: AtomicU64,
    latencies: Samples,
    last_ack: std::sync::Mutex<Option<Instant>>,
}

/// The producer's context: delivery reports go to the shared [`Deliveries`].
struct Reports(Arc<Deliveries>);

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Self::DeliveryOpaque) {
        let this = &self.0;
        match result {
            Ok(_) => {
                let now = Instant::now();
                this.latencies.push(now.duration_since(*sent));
                this.acked.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = this.last_ack.lock() {
                    *last = Some(now);
                }
            }
            Err(_) => {
                this.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

// A benchmark stamps records with the real time of the machine it measures.
#[allow(clippy::disallowed_methods)]
fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Runs one produce scenario against `bootstrap` on a fresh topic.
pub async fn run(
    bootstrap: &str,
    topic: &str,
    spec: &ProduceSpec,
) -> anyhow::Result<ProduceResult> {
    run_as(bootstrap, &[], topic, spec).await
}

/// [`run`] with the librdkafka properties `client` on every client of the run (the admin
/// client, the producer and the consumer): how they reach the broker, e.g.
/// `security.protocol=SASL_SSL` and its `sasl.*`/`ssl.*` properties.
pub async fn run_as(
    bootstrap: &str,
    client: &[(String, String)],
    topic: &str,
    spec: &ProduceSpec,
) -> anyhow::Result<ProduceResult> {
    create_topic_as(bootstrap, client, topic, spec.partitions, &[]).await?;
    let deliveries = Arc::new(Deliveries {
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        latencies: Samples::default(),
        last_ack: std::sync::Mutex::new(None),
    });
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("compression.type", &spec.compression)
        .set("queue.buffering.max.kbytes", "1048576")
        .set("queue.buffering.max.messages", "1000000");
    for (k, v) in client.iter().chain(&spec.producer) {
        config.set(k, v);
    }
    for (k, v) in PRODUCER_OVERRIDES
        .get()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        config.set(k, v);
    }
    let producer: ThreadedProducer<Reports> = config
        .create_with_context(Reports(deliveries.clone()))
        .context("creating the producer")?;

    let stop_consumer = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consumer = if spec.end_to_end {
        let c = spawn_consumer(
            bootstrap,
            client,
            topic,
            spec.partitions,
            stop_consumer.clone(),
        )?;
        // Let it find the end of the (empty) partitions before producing.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Some(c)
    } else {
        None
    };

    // Random-ish bytes: compressible only where the codec is worth it.
    let mut value = vec![0u8; spec.record_size.max(8)];
    for (i, b) in value.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2654435761) >> 13) as u8;
    }
    // Warm up (metadata, connections, producer id) so the figures are of the steady state.
    for p in 0..spec.partitions {
        let record = BaseRecord::with_opaque_to(topic, Box::new(Instant::now()))
            .partition(p)
            .key("warm-up")
            .payload(&value[..]);
        producer
            .send(record)
            .map_err(|(e, _)| e)
            .context("warming up")?;
    }
    producer
        .flush(Duration::from_secs(60))
        .context("flushing the warm-up records")?;
    deliveries.acked.store(0, Ordering::Relaxed);
    drop(deliveries.latencies.take());
    if let Some((_, consumed)) = &consumer {
        let deadline = Instant::now() + Duration::from_secs(30);
        while consumed.len() < spec.partitions as usize && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(consumed.take());
    }
    let started = Instant::now();
    let mut keybuf = String::new();
    for i in 0..spec.records {
        if let Some(rate) = spec.rate {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        value[..8].copy_from_slice(&unix_micros().to_be_bytes());
        keybuf.clear();
        use std::fmt::Write;
        let _ = write!(keybuf, "{}", i % 1024);
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(Instant::now()))
            .key(keybuf.as_str())
            .payload(&value[..]);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => bail!("producing: {e}"),
            }
        }
    }
    producer
        .flush(Duration::from_secs(300))
        .context("flushing the producer")?;
    let acked = deliveries.acked.load(Ordering::Relaxed);
    let failed = deliveries.failed.load(Ordering::Relaxed);
    let last = deliveries
        .last_ack
        .lock()
        .ok()
        .and_then(|l| *l)
        .unwrap_or_else(Instant::now);
    let mut result = ProduceResult {
        acked,
        failed,
        seconds: last.duration_since(started).as_secs_f64(),
        ack_latency: deliveries.latencies.take(),
        e2e_latency: Samples::default(),
    };
    if let Some(handle) = consumer {
        let deadline = Instant::now() + Duration::from_secs(60);
        while handle.1.len() < acked as usize && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop_consumer.store(true, Ordering::Relaxed);
        let _ = tokio::task::spawn_blocking(move || handle.0.join()).await;
        result.e2e_latency = handle.1;
    }
    Ok(result)
}

type ConsumerHandle = (std::thread::JoinHandle<()>, Samples);

fn spawn_consumer(
    bootstrap: &str,
    client: &[(String, String)],
    topic: &str,
    partitions: i32,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<ConsumerHandle> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-{topic}"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "500");
    for (k, v) in client {
        config.set(k, v);
    }
    let consumer: BaseConsumer = config.create().context("creating the consumer")?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, p, Offset::End)?;
    }
    consumer.assign(&assignment)?;
    let samples = Samples::default();
    let out = samples.clone();
    let handle = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                if let Some(p) = m.payload() {
                    if let Some(sent) = p.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                        let sent = u64::from_be_bytes(sent);
                        let now = unix_micros();
                        out.push(Duration::from_micros(now.saturating_sub(sent)));
                    }
                }
            }
        }
    });
    Ok((handle, samples))
}
