//! The push forwarder end to end: `fjord forward` (a child process) reads a topic of a broker
//! started for the run and delivers every record to a gRPC handler in this process
//! (`fjord.forwarder.v1.RecordHandler`) that takes a fixed time per record, then acknowledges.
//! Measures the delivery rate in steady state, duplicates and redeliveries, and the CPU the
//! forwarder (and the handler) spent per record.
//!
//! Owns the bench handler (counts deliveries per record, notes when each call started and
//! ended), the forwarder's generated TOML file and its process (stopped with SIGTERM, then
//! SIGKILL, when dropped). A run never hangs: it fails when not every record was delivered within
//! a minute plus ten times the ideal duration, or when the forwarder exits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::ValueEnum;
use fjord_forwarder::proto::record_handler_server::{RecordHandler, RecordHandlerServer};
use fjord_forwarder::proto::{Action, Delivery, Outcome};
use tonic::transport::server::TcpIncoming;

use crate::broker::{self, BrokerProcess};
use crate::produce::{self, ProduceSpec};

/// The subscription's `ordering`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Ordering {
    None,
    Key,
    Partition,
}

impl Ordering {
    fn as_str(self) -> &'static str {
        match self {
            Ordering::None => "none",
            Ordering::Key => "key",
            Ordering::Partition => "partition",
        }
    }
}

impl std::fmt::Display for Ordering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Defaults of `bench/run forward` (and of the run in `all`): one partition, a 20 ms handler,
/// 200 deliveries in flight, no ordering: 10,000 records/s at best.
pub const DEFAULT_PARTITIONS: i32 = 1;
pub const DEFAULT_RECORDS: u64 = 50_000;
pub const DEFAULT_HANDLER_DELAY_MS: u64 = 20;
pub const DEFAULT_CONCURRENCY: usize = 200;
/// A second of deliveries at 20,000 records/s: pausing a partition makes librdkafka drop what it
/// had prefetched, and on resume (at half the limit) the partition is fetched again only once
/// the fetch in flight returns (up to `fetch.wait.max.ms`, 500 ms): a limit of 2,000 starves a
/// partition delivering 10,000 records/s for most of each pause cycle (2,300-3,200 records/s
/// measured instead of 9,000).
pub const DEFAULT_MAX_PENDING_RECORDS: usize = 20_000;

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct ForwardSpec {
    /// Partitions of the topic.
    pub partitions: i32,
    /// Records produced (besides one warm-up record per partition).
    pub records: u64,
    /// Bytes per record value.
    pub record_size: usize,
    /// How long the handler takes per record.
    pub handler_delay: Duration,
    /// The subscription's `concurrency`.
    pub concurrency: usize,
    pub ordering: Ordering,
    /// The subscription's `max_pending_records_per_partition`.
    pub max_pending_records: usize,
}

impl Default for ForwardSpec {
    fn default() -> Self {
        ForwardSpec {
            partitions: DEFAULT_PARTITIONS,
            records: DEFAULT_RECORDS,
            record_size: 100,
            handler_delay: Duration::from_millis(DEFAULT_HANDLER_DELAY_MS),
            concurrency: DEFAULT_CONCURRENCY,
            ordering: Ordering::None,
            max_pending_records: DEFAULT_MAX_PENDING_RECORDS,
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Copy)]
pub struct ForwardResult {
    /// Records in the topic (the warm-up records included).
    pub records: u64,
    /// Handler calls.
    pub calls: u64,
    /// Calls for a record that had been delivered before.
    pub duplicates: u64,
    /// Calls with an attempt number above 1.
    pub redeliveries: u64,
    /// Records per second from the start of the call at the 10% mark to the end of the last.
    pub steady_rate: f64,
    /// Seconds from the start of the first call to the end of the last.
    pub seconds: f64,
    /// The forwarder's CPU seconds (user + system) from its start until every record was
    /// delivered.
    pub forwarder_cpu: f64,
    /// The forwarder's CPU microseconds per record from the 10% mark on.
    pub forwarder_us_per_record: f64,
    /// This process's (the handler's) CPU microseconds per record from the 10% mark on.
    pub handler_us_per_record: f64,
}

/// What the handler saw.
#[derive(Default)]
struct Seen {
    /// Calls per (partition, offset).
    records: HashMap<(i32, i64), u32>,
    /// (start, end) of every call.
    spans: Vec<(Instant, Instant)>,
    redeliveries: u64,
}

/// The bench's RecordHandler: sleeps, notes the call, acknowledges.
struct BenchHandler {
    delay: Duration,
    seen: Arc<Mutex<Seen>>,
    /// Distinct records delivered (read by the waiting loop without the lock).
    distinct: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl RecordHandler for BenchHandler {
    async fn deliver(
        &self,
        request: tonic::Request<Delivery>,
    ) -> Result<tonic::Response<Outcome>, tonic::Status> {
        let started = Instant::now();
        let delivery = request.into_inner();
        tokio::time::sleep(self.delay).await;
        let ended = Instant::now();
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            let calls = seen
                .records
                .entry((delivery.partition, delivery.offset))
                .or_insert(0);
            *calls += 1;
            if *calls == 1 {
                self.distinct.fetch_add(1, AtomicOrdering::Relaxed);
            }
            if delivery.attempt > 1 {
                seen.redeliveries += 1;
            }
            seen.spans.push((started, ended));
        }
        Ok(tonic::Response::new(Outcome {
            action: Action::Ack.into(),
            ..Outcome::default()
        }))
    }
}

/// A `fjord forward` process with its config file and log.
struct ForwarderProcess {
    child: Child,
    log: PathBuf,
}

impl ForwarderProcess {
    fn start(binary: &Path, dir: &Path, config: &str) -> anyhow::Result<ForwarderProcess> {
        let config_path = dir.join("forwarder.toml");
        std::fs::write(&config_path, config).context("writing the forwarder's config")?;
        let log = dir.join("forwarder.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(binary)
            .arg("forward")
            .arg("--config")
            .arg(&config_path)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {} forward", binary.display()))?;
        Ok(ForwarderProcess { child, log })
    }

    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        broker::cpu_seconds(self.child.id())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGTERM (the forwarder drains and commits), SIGKILL after 20 s.
    fn stop(&mut self) {
        broker::terminate(&mut self.child);
    }
}

impl Drop for ForwarderProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The forwarder's TOML file: one subscription of `topic` to `endpoint`.
fn render_config(bootstrap: &str, topic: &str, endpoint: &str, spec: &ForwardSpec) -> String {
    let max_pending = spec.max_pending_records;
    format!(
        r#"shutdown_timeout_secs = 5

[clusters.bench]
bootstrap = "{bootstrap}"

[[subscription]]
name = "bench"
clusters = ["bench"]
topics = ["{topic}"]
group_id = "bench-{topic}"
endpoint = "{endpoint}"
ordering = "{ordering}"
concurrency = {concurrency}
dead_letter_topic = "{topic}.dlq"
max_pending_records_per_partition = {max_pending}
commit_interval_ms = 1000
start_from = "earliest"

[subscription.consumer_properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
"#,
        ordering = spec.ordering,
        concurrency = spec.concurrency,
    )
}

/// Produces the records to a fresh `topic`, serves the handler, runs `fjord forward` until every
/// record was delivered, and measures.
pub async fn run(
    broker: &BrokerProcess,
    fjord: &Path,
    topic: &str,
    spec: &ForwardSpec,
) -> anyhow::Result<ForwardResult> {
    let produced = produce::run(
        &broker.bootstrap,
        topic,
        &ProduceSpec {
            record_size: spec.record_size,
            partitions: spec.partitions,
            compression: "none".into(),
            records: spec.records,
            rate: None,
            end_to_end: false,
            producer: Vec::new(),
        },
    )
    .await?;
    if produced.failed > 0 {
        bail!("{} deliveries failed", produced.failed);
    }
    // produce::run writes one warm-up record per partition before the measured ones.
    let expected = produced.acked + spec.partitions as u64;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let distinct = Arc::new(AtomicU64::new(0));
    let handler = BenchHandler {
        delay: spec.handler_delay,
        seen: seen.clone(),
        distinct: distinct.clone(),
    };
    let incoming = TcpIncoming::bind(([127, 0, 0, 1], 0).into())
        .context("binding the handler's port")?
        .with_nodelay(Some(true));
    let endpoint = format!("http://{}", incoming.local_addr()?);
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let streams = u32::try_from(spec.concurrency.saturating_add(100)).unwrap_or(u32::MAX);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .max_concurrent_streams(Some(streams))
            .add_service(RecordHandlerServer::new(handler))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );

    let dir = tempfile::tempdir().context("creating a dir for the forwarder")?;
    let config = render_config(&broker.bootstrap, topic, &endpoint, spec);
    let mut forwarder = ForwarderProcess::start(fjord, dir.path(), &config)?;

    // Generous: ten times the ideal duration, plus a minute for the group join.
    let ideal = spec.handler_delay.as_secs_f64() * expected as f64 / spec.concurrency.max(1) as f64;
    let timeout =
        Duration::try_from_secs_f64(60.0 + 10.0 * ideal).unwrap_or(Duration::from_secs(3600));
    let deadline = Instant::now() + timeout;
    let me = std::process::id();
    let mut mark: Option<(u64, f64, f64)> = None;
    loop {
        let n = distinct.load(AtomicOrdering::Relaxed);
        if mark.is_none() && n >= expected / 10 {
            mark = Some((n, forwarder.cpu_seconds()?, broker::cpu_seconds(me)?));
        }
        if n >= expected {
            break;
        }
        if let Some(status) = forwarder.child.try_wait()? {
            bail!(
                "fjord forward exited with {status} after {n} of {expected} deliveries:\n{}",
                forwarder.log_tail()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "only {n} of {expected} records delivered within {timeout:?}:\n{}",
                forwarder.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let forwarder_cpu = forwarder.cpu_seconds()?;
    let handler_cpu = broker::cpu_seconds(me)?;
    let (mark_n, mark_fw, mark_me) = mark.unwrap_or((0, 0.0, 0.0));
    let steady_records = expected.saturating_sub(mark_n).max(1) as f64;
    // A moment for stray duplicates (there should be none).
    tokio::time::sleep(Duration::from_millis(300)).await;
    forwarder.stop();
    let _ = stop_server.send(());
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("the handler's server failed: {e}"),
        Err(e) => bail!("the handler's server task failed: {e}"),
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(PoisonError::into_inner));
    let calls = seen.spans.len() as u64;
    let delivered = seen.records.len() as u64;
    let mut starts: Vec<Instant> = seen.spans.iter().map(|s| s.0).collect();
    starts.sort_unstable();
    let (Some(first), Some(last_end)) = (starts.first(), seen.spans.iter().map(|s| s.1).max())
    else {
        bail!("no deliveries");
    };
    let n = starts.len();
    let from = starts.get(n / 10).copied().unwrap_or(*first);
    let steady_rate = (n - n / 10) as f64 / last_end.duration_since(from).as_secs_f64().max(1e-9);
    Ok(ForwardResult {
        records: expected,
        calls,
        duplicates: calls - delivered,
        redeliveries: seen.redeliveries,
        steady_rate,
        seconds: last_end.duration_since(*first).as_secs_f64(),
        forwarder_cpu,
        forwarder_us_per_record: (forwarder_cpu - mark_fw) * 1e6 / steady_records,
        handler_us_per_record: (handler_cpu - mark_me) * 1e6 / steady_records,
    })
}
