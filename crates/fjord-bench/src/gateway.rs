//! The `gateway` scenario: the same broker produced to directly with librdkafka and through
//! `fjord gateway` (gRPC, `proto/fjord/gateway/v1/gateway.proto`), in one run.
//!
//! Owns the gateway process of a run ([`GatewayProcess`]: a generated TOML file with one cluster,
//! the broker, as the default route) and the two gRPC drivers; the direct figures come from
//! [`crate::produce::run`], the same code and producer settings as the `produce` and `latency`
//! scenarios (acks=all, idempotence, linger 5 ms; the gateway's producer has the same defaults).
//!
//! Phases, all against the one broker, the latency phases first (on a quiet broker):
//! 1. direct latency: `--rate` records/s, each record's time from `send` to its delivery report;
//! 2. gateway latency: the same offered rate over one `ProduceStream` (the call the proto meant
//!    for high-rate callers). A pacing thread hands each message over at its due time; the stream
//!    sender takes whatever is waiting (at most [`STREAM_BATCH_MAX`] messages, no extra wait) as
//!    one batch, keeping at most `--stream-window` batches unanswered (also written into the
//!    gateway's `limits.stream_inflight_batches`; default 32, the gateway's default), so batches
//!    are of 1 message at low rates and grow only when answers lag. A message's latency runs
//!    from its hand-over (stamped as the pacing thread hands it over, as the direct path stamps
//!    a record just before `send`) to the arrival of its batch's answer. Phases 1 and 2 run in two
//!    interleaved halves (direct, gateway, direct, gateway), so drift in the broker (and other
//!    load on the machine) hits both alike;
//! 3. direct throughput: `--messages` records as fast as one librdkafka producer goes;
//! 4. gateway throughput: the same count through `--callers` concurrent `ProduceBatch` callers
//!    (each on its own HTTP/2 connection) of `--batch` messages per call. The direct producer
//!    queues up to a million records; the callers together keep `callers x batch` in flight,
//!    which must cover the broker's acknowledgement time at full load for a fair comparison.
//!
//! How to read the figures: msgs/s and MB/s (value bytes, 10^6) are the throughput phases; the
//! p50/p99/p999 the latency phases. "vs direct" gives gateway/direct throughput (target >= 80%)
//! and the gateway's p99 minus the direct p99 (target < 5 ms). The gateway row also gives, from
//! the gateway's own metrics over the latency phases, how long a stream batch took inside the
//! gateway (read to answered: answers go out in order, so a batch also waits for the ones before
//! it) and how long its producer took per message (hand-over to acknowledgement: comparable to
//! the direct latency). CPU µs per message (from /proc/PID/stat, 10 ms ticks) is of the
//! throughput phases: the gateway process, the broker, and this process (the client: librdkafka
//! directly, or protobuf and HTTP/2 through the gateway). Everything shares one machine, so on a
//! small one throughput is bounded by the sum of the three, and the gateway path runs a client,
//! a gateway (which holds a librdkafka producer of its own) and a broker where the direct path
//! runs a client and a broker. Keys are `i % 1024` (as in the other produce scenarios); every
//! message through the gateway also carries its `fjord-hlc` and `fjord-gateway` headers.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fjord_gateway_client::pb;
use fjord_gateway_client::GatewayClient;
use tokio::sync::mpsc;

use crate::broker::{free_ports, process_usage, terminate, BrokerProcess};
use crate::produce::{self, ProduceSpec};
use crate::report::{Row, Table};
use crate::samples::Samples;

/// Most messages the latency phase's stream sender puts into one batch.
pub const STREAM_BATCH_MAX: usize = 1000;
/// The throughput target: gateway msgs/s at least this share of direct.
const TARGET_RATIO: f64 = 0.8;
/// The latency target: gateway p99 at most this much above direct (ms).
const TARGET_ADDED_P99_MS: f64 = 5.0;

/// Options of the `gateway` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewaySpec {
    /// Bytes per message value.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Partitions of each topic.
    #[arg(long, default_value_t = 12)]
    pub partitions: i32,
    /// Messages per path in the throughput phases.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Offered rate (messages/s) of the latency phases.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// Length of each latency phase.
    #[arg(long, default_value_t = 8)]
    pub seconds: u64,
    /// Messages per ProduceBatch call in the gateway throughput phase.
    #[arg(long, default_value_t = 2000)]
    pub batch: usize,
    /// Concurrent ProduceBatch callers in the gateway throughput phase (one connection each).
    #[arg(long, default_value_t = 16)]
    pub callers: usize,
    /// Batches the latency phase's ProduceStream caller keeps unanswered at most (the gateway
    /// reads at most `limits.stream_inflight_batches`, default 32, ahead); messages due while the
    /// window is full join the next batch.
    #[arg(long, default_value_t = 32)]
    pub stream_window: usize,
    /// How long (ms) the latency phase's ProduceStream caller lets a batch's first message wait
    /// for more (like the Python client's `AsyncPublisher(linger_ms=...)`); 0: send what is
    /// waiting at once.
    #[arg(long, default_value_t = 1.0)]
    pub stream_linger_ms: f64,
    /// librdkafka property KEY=VALUE for the gateway's producer (the cluster's `overrides`,
    /// repeatable).
    #[arg(long = "gateway-set")]
    pub gateway_set: Vec<String>,
    /// The fjord binary that runs the gateway [default: the one that runs the broker], e.g. an
    /// older build to compare gateway changes on the same broker.
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
}

impl GatewaySpec {
    /// The options' defaults (what `gateway` without options runs).
    pub fn defaults() -> anyhow::Result<GatewaySpec> {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            spec: GatewaySpec,
        }
        Ok(<Wrapper as clap::Parser>::try_parse_from(["gateway"])?.spec)
    }
}

/// A `fjord gateway` process with one cluster; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct GatewayProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    metrics_url: String,
    dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Starts `binary gateway` routing every topic to the cluster at `bootstrap`, with `overrides`
    /// as the cluster's librdkafka properties, and waits until it listens.
    pub fn start(
        binary: &Path,
        bootstrap: &str,
        overrides: &[(String, String)],
        stream_window: usize,
    ) -> anyhow::Result<GatewayProcess> {
        let dir = tempfile::tempdir().context("creating the gateway's dir")?;
        let [port, metrics_port] = free_ports()?;
        let listen = format!("127.0.0.1:{port}");
        let metrics_listen = format!("127.0.0.1:{metrics_port}");
        let overrides = overrides
            .iter()
            .map(|(k, v)| format!("{k:?} = {v:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            "gateway_id = \"bench\"\nlisten = \"{listen}\"\nmetrics_listen = \"{metrics_listen}\"\nreload_poll_ms = 0\n\n\
             [limits]\nstream_inflight_batches = {stream_window}\n\n\
             [clusters.bench]\nbootstrap_servers = \"{bootstrap}\"\noverrides = {{ {overrides} }}\n\n\
             [groups.main]\nclusters = {{ bench = 1.0 }}\n\n\
             [routes]\ndefault = \"main\"\n"
        );
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, config).context("writing the gateway's config")?;
        let log = std::fs::File::create(dir.path().join("gateway.log"))?;
        let child = Command::new(binary)
            .arg("gateway")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} gateway", binary.display()))?;
        let mut gateway = GatewayProcess {
            child,
            address: format!("http://{listen}"),
            metrics_url: format!("http://{metrics_listen}/metrics"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&listen).is_err() {
            if let Some(status) = gateway.child.try_wait()? {
                bail!(
                    "the gateway exited with {status} during startup:\n{}",
                    gateway.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the gateway did not listen within 30 s:\n{}",
                    gateway.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(gateway)
    }

    /// CPU seconds (user + system) the gateway used so far.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        Ok(process_usage(self.child.id())?.1)
    }

    /// The gateway's Prometheus text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let text = reqwest::get(&self.metrics_url)
            .await
            .with_context(|| format!("scraping {}", self.metrics_url))?
            .text()
            .await?;
        Ok(text)
    }

    /// The last lines of the gateway's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// What one path measured.
#[derive(Debug, Default)]
struct PathFigures {
    msgs_per_s: f64,
    mb_per_s: f64,
    latency: Samples,
    /// CPU µs per message in the throughput phase: (gateway, broker, this process).
    cpu_us: (Option<f64>, f64, f64),
}

impl PathFigures {
    fn render(&self) -> String {
        let cpu = match self.cpu_us.0 {
            Some(g) => format!(
                "gateway {g:.1}, broker {:.1}, client {:.1}",
                self.cpu_us.1, self.cpu_us.2
            ),
            None => format!("broker {:.1}, client {:.1}", self.cpu_us.1, self.cpu_us.2),
        };
        format!(
            "{:.0} msgs/s, {:.1} MB/s; p50 {:.2} / p99 {:.2} / p999 {:.2} ms; CPU µs/msg: {cpu}",
            self.msgs_per_s,
            self.mb_per_s,
            self.latency.quantile_ms(0.5),
            self.latency.quantile_ms(0.99),
            self.latency.quantile_ms(0.999),
        )
    }
}

/// What one ProduceStream latency run measured.
struct StreamRun {
    /// Per message: hand-over to its answer.
    latency: Samples,
    /// Batches sent.
    batches: u64,
    /// Sum over batches of the time from sending a batch to its answer.
    batch_seconds: f64,
}

/// Sums and counts of the gateway's own latency histograms.
#[derive(Debug, Clone, Copy, Default)]
struct GatewayTimes {
    /// ProduceStream batches: read to answered.
    stream_sum: f64,
    stream_count: f64,
    /// Messages: handed to the producer to acknowledged.
    produce_sum: f64,
    produce_count: f64,
}

impl GatewayTimes {
    async fn scrape(gateway: &GatewayProcess) -> anyhow::Result<GatewayTimes> {
        let text = gateway.metrics().await?;
        let get = |prefix: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
                .sum()
        };
        Ok(GatewayTimes {
            stream_sum: get("fjord_gateway_request_duration_seconds_sum{method=\"ProduceStream\"}"),
            stream_count: get(
                "fjord_gateway_request_duration_seconds_count{method=\"ProduceStream\"}",
            ),
            produce_sum: get("fjord_gateway_produce_duration_seconds_sum{"),
            produce_count: get("fjord_gateway_produce_duration_seconds_count{"),
        })
    }

    fn batch_ms(&self) -> f64 {
        self.stream_sum * 1e3 / self.stream_count.max(1.0)
    }

    fn produce_ms(&self) -> f64 {
        self.produce_sum * 1e3 / self.produce_count.max(1.0)
    }
}

impl std::ops::Sub for GatewayTimes {
    type Output = GatewayTimes;
    fn sub(self, o: GatewayTimes) -> GatewayTimes {
        GatewayTimes {
            stream_sum: self.stream_sum - o.stream_sum,
            stream_count: self.stream_count - o.stream_count,
            produce_sum: self.produce_sum - o.produce_sum,
            produce_count: self.produce_count - o.produce_count,
        }
    }
}

/// CPU seconds of the broker and of this process now.
fn cpu_now(broker: &BrokerProcess) -> anyhow::Result<(f64, f64)> {
    Ok((broker.usage()?.1, process_usage(std::process::id())?.1))
}

/// Runs the scenario (see the module documentation) and adds its rows to `table`.
pub async fn rows(binary: &Path, table: &mut Table, spec: &GatewaySpec) -> anyhow::Result<()> {
    if spec.batch == 0 || spec.callers == 0 || spec.messages == 0 || spec.rate == 0 {
        bail!("--batch, --callers, --messages and --rate must be above zero");
    }
    let mut overrides = Vec::new();
    for kv in &spec.gateway_set {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--gateway-set '{kv}' is not KEY=VALUE"))?;
        overrides.push((k.to_string(), v.to_string()));
    }
    let broker = BrokerProcess::start(binary, &crate::Store::Local.args())?;
    let gateway = GatewayProcess::start(
        spec.gateway_bin.as_deref().unwrap_or(binary),
        &broker.bootstrap,
        &overrides,
        spec.stream_window,
    )?;
    let name = |phase: &str| format!("gw-{phase}-{}", std::process::id());
    let mut direct = PathFigures::default();
    let mut via = PathFigures::default();
    let per_msg = |seconds: f64, n: u64| seconds * 1e6 / n.max(1) as f64;

    let spec_direct = ProduceSpec {
        record_size: spec.value_bytes,
        partitions: spec.partitions,
        compression: "none".into(),
        records: spec.rate * spec.seconds,
        rate: Some(spec.rate),
        end_to_end: false,
        producer: Vec::new(),
    };
    let warm_up = spec.batch.min(spec.messages as usize) as u64;

    // 1 + 2. Latency, direct and through the gateway, in two interleaved halves each (D G D G)
    // so that drift in the broker's state (and other load on the machine) hits both paths alike.
    let topic = name("via-lat");
    produce::create_topic(&broker.bootstrap, &topic, spec.partitions).await?;
    let warm = batch_throughput(&gateway.address, &topic, spec, warm_up).await;
    warm.with_context(|| format!("warming up the gateway:\n{}", gateway.log_tail()))?;
    let half = (spec.rate * spec.seconds).div_ceil(2).max(1);
    let before = GatewayTimes::scrape(&gateway).await?;
    let mut batches = 0;
    let mut batch_seconds = 0.0;
    for _ in 0..2 {
        let spec_half = ProduceSpec {
            records: half,
            ..spec_direct.clone()
        };
        let r = produce::run(&broker.bootstrap, &name("direct-lat"), &spec_half).await?;
        crate::check_delivery(&r)?;
        direct.latency.append(&r.ack_latency);
        let run = stream_latency(&gateway.address, &topic, spec, half)
            .await
            .with_context(|| format!("gateway log:\n{}", gateway.log_tail()))?;
        via.latency.append(&run.latency);
        batches += run.batches;
        batch_seconds += run.batch_seconds;
    }
    let inside = GatewayTimes::scrape(&gateway).await? - before;
    let mean_batch = (2 * half) as f64 / batches.max(1) as f64;
    let client_batch_ms = batch_seconds * 1e3 / batches.max(1) as f64;

    // 3. Direct throughput.
    let spec_direct = ProduceSpec {
        records: spec.messages,
        rate: None,
        ..spec_direct
    };
    let (b0, c0) = cpu_now(&broker)?;
    let r = produce::run(&broker.bootstrap, &name("direct"), &spec_direct).await?;
    crate::check_delivery(&r)?;
    let (b1, c1) = cpu_now(&broker)?;
    direct.msgs_per_s = r.acked as f64 / r.seconds.max(1e-9);
    direct.mb_per_s = r.mb_per_s(spec.value_bytes);
    direct.cpu_us = (None, per_msg(b1 - b0, r.acked), per_msg(c1 - c0, r.acked));

    // 4. Gateway throughput.
    let topic = name("via");
    produce::create_topic(&broker.bootstrap, &topic, spec.partitions).await?;
    batch_throughput(&gateway.address, &topic, spec, warm_up).await?;
    let (b0, c0) = cpu_now(&broker)?;
    let g0 = gateway.cpu_seconds()?;
    let (acked, seconds) = batch_throughput(&gateway.address, &topic, spec, spec.messages)
        .await
        .with_context(|| format!("gateway log:\n{}", gateway.log_tail()))?;
    let (b1, c1) = cpu_now(&broker)?;
    let g1 = gateway.cpu_seconds()?;
    via.msgs_per_s = acked as f64 / seconds.max(1e-9);
    via.mb_per_s = via.msgs_per_s * spec.value_bytes as f64 / 1e6;
    via.cpu_us = (
        Some(per_msg(g1 - g0, acked)),
        per_msg(b1 - b0, acked),
        per_msg(c1 - c0, acked),
    );

    let setup_common = format!(
        "{} B values, {} partitions, 1 broker (Local store), acks=all, linger 5 ms; throughput: {} msgs; latency: {} msgs/s for {} s",
        spec.value_bytes, spec.partitions, spec.messages, spec.rate, spec.seconds
    );
    table.push(Row {
        scenario: "gateway: direct".into(),
        setup: format!("librdkafka producer in the client; {setup_common}"),
        figures: direct.render(),
        values: vec![
            ("msgs_per_s", direct.msgs_per_s),
            ("p99_ms", direct.latency.quantile_ms(0.99)),
        ],
    });
    table.push(Row {
        scenario: "gateway: via gateway".into(),
        setup: format!(
            "throughput: {} ProduceBatch callers x {} msgs per call; latency: one ProduceStream, batches of what is waiting (1..{STREAM_BATCH_MAX}), at most {} unanswered; {setup_common}",
            spec.callers, spec.batch, spec.stream_window
        ),
        figures: format!(
            "{}; latency phases (means): {mean_batch:.1} msgs per stream batch, answered {client_batch_ms:.1} ms after the client sent it; inside the gateway a batch took {:.1} ms (read to answered, in order), its producer {:.1} ms per message (hand-over to ack)",
            via.render(),
            inside.batch_ms(),
            inside.produce_ms(),
        ),
        values: vec![
            ("msgs_per_s", via.msgs_per_s),
            ("p99_ms", via.latency.quantile_ms(0.99)),
        ],
    });
    let ratio = via.msgs_per_s / direct.msgs_per_s.max(1e-9);
    let added = via.latency.quantile_ms(0.99) - direct.latency.quantile_ms(0.99);
    let mark = |ok: bool| if ok { "met" } else { "MISSED" };
    table.push(Row {
        scenario: "gateway: vs direct".into(),
        setup: format!(
            "targets: throughput >= {:.0}% of direct, added p99 < {TARGET_ADDED_P99_MS} ms",
            TARGET_RATIO * 100.0
        ),
        figures: format!(
            "throughput {:.0}% of direct ({}); added p99 {added:+.2} ms ({})",
            ratio * 100.0,
            mark(ratio >= TARGET_RATIO),
            mark(added < TARGET_ADDED_P99_MS),
        ),
        values: vec![("throughput_ratio", ratio), ("added_p99_ms", added)],
    });
    drop(gateway);
    drop(broker);
    Ok(())
}

/// The messages of one ProduceBatch call, keyed `i % 1024` like [`produce::run`]'s records.
fn messages(value: &[u8], first: u64, count: usize) -> Vec<pb::Message> {
    (0..count as u64)
        .map(|i| pb::Message {
            key: Some(((first + i) % 1024).to_string().into_bytes()),
            value: value.to_vec(),
            ..pb::Message::default()
        })
        .collect()
}

/// The value of every message: random-ish bytes, as [`produce::run`] sends.
fn value(bytes: usize) -> Vec<u8> {
    (0..bytes.max(8))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

/// Counts a response's results; an error if any message was not stored.
fn check_results(results: &[pb::MessageResult]) -> anyhow::Result<()> {
    for r in results {
        if let Some(pb::message_result::Outcome::Failure(f)) = &r.outcome {
            bail!("the gateway did not store a message: {f:?}");
        }
        if r.outcome.is_none() {
            bail!("the gateway sent an empty result");
        }
    }
    Ok(())
}

/// Sends `total` messages to `topic` through `spec.callers` concurrent ProduceBatch callers of
/// `spec.batch` messages per call; returns (messages stored, seconds from start to last answer).
async fn batch_throughput(
    address: &str,
    topic: &str,
    spec: &GatewaySpec,
    total: u64,
) -> anyhow::Result<(u64, f64)> {
    let value = value(spec.value_bytes);
    // One template per caller; a call sends a prefix of it (cloning is the client's work).
    let template = messages(&value, 0, spec.batch);
    let next = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::with_capacity(spec.callers);
    for _ in 0..spec.callers {
        clients.push(
            GatewayClient::connect(address.to_owned())
                .await
                .context("connecting to the gateway")?,
        );
    }
    let started = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for mut client in clients {
        let next = next.clone();
        let template = template.clone();
        let topic = topic.to_owned();
        let batch = spec.batch as u64;
        callers.spawn(async move {
            let mut stored = 0u64;
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= total {
                    return anyhow::Ok(stored);
                }
                let count = batch.min(total - first) as usize;
                let request = pb::ProduceBatchRequest {
                    topic: topic.clone(),
                    messages: template[..count].to_vec(),
                };
                let response = client.raw().produce_batch(request).await?.into_inner();
                if response.results.len() != count {
                    bail!("{} results for {count} messages", response.results.len());
                }
                check_results(&response.results)?;
                stored += count as u64;
            }
        });
    }
    let mut stored = 0;
    while let Some(joined) = callers.join_next().await {
        stored += joined.context("a caller task failed")??;
    }
    Ok((stored, started.elapsed().as_secs_f64()))
}

/// Offers `total` messages at `spec.rate` messages/s over one ProduceStream (see the module
/// documentation).
async fn stream_latency(
    address: &str,
    topic: &str,
    spec: &GatewaySpec,
    total: u64,
) -> anyhow::Result<StreamRun> {
    let mut client = GatewayClient::connect(address.to_owned())
        .await
        .context("connecting to the gateway")?;
    // Pacing thread -> sender task: (message number, hand-over time).
    let (due_tx, mut due_rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    // Sender task -> the stream, and -> the reader: each batch's hand-over times, in order.
    let (out_tx, mut out_rx) = mpsc::channel::<pb::ProduceStreamRequest>(1024);
    let (times_tx, mut times_rx) = mpsc::unbounded_channel::<(u64, Vec<Instant>, Instant)>();
    let outbound = futures::stream::poll_fn(move |cx| out_rx.poll_recv(cx));
    let mut inbound = client.raw().produce_stream(outbound).await?.into_inner();

    let rate = spec.rate;
    let pacer = std::thread::spawn(move || {
        let started = Instant::now();
        for i in 0..total {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if due_tx.send((i, Instant::now())).is_err() {
                return;
            }
        }
    });

    let value = value(spec.value_bytes);
    let topic = topic.to_owned();
    let window = Arc::new(tokio::sync::Semaphore::new(spec.stream_window.max(1)));
    let sender_window = window.clone();
    let linger = Duration::from_secs_f64(spec.stream_linger_ms.max(0.0) / 1e3);
    let sender = tokio::spawn(async move {
        let window = sender_window;
        let mut request_id = 0u64;
        let mut batch = Vec::with_capacity(STREAM_BATCH_MAX);
        while due_rx.recv_many(&mut batch, STREAM_BATCH_MAX).await > 0 {
            // Linger: the batch's first message waits up to `linger` for company.
            if !linger.is_zero() {
                let until = tokio::time::Instant::from_std(batch[0].1 + linger);
                while batch.len() < STREAM_BATCH_MAX {
                    let room = STREAM_BATCH_MAX - batch.len();
                    match tokio::time::timeout_at(until, due_rx.recv_many(&mut batch, room)).await {
                        Ok(n) if n > 0 => {}
                        _ => break,
                    }
                }
            }
            // Wait for room in the window; what arrives meanwhile joins this batch.
            match window.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => break,
            }
            while batch.len() < STREAM_BATCH_MAX {
                match due_rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let mut times = Vec::with_capacity(batch.len());
            let mut msgs = Vec::with_capacity(batch.len());
            for (i, handed_over) in batch.drain(..) {
                times.push(handed_over);
                msgs.push(pb::Message {
                    key: Some((i % 1024).to_string().into_bytes()),
                    value: value.clone(),
                    ..pb::Message::default()
                });
            }
            if times_tx.send((request_id, times, Instant::now())).is_err() {
                break;
            }
            let request = pb::ProduceStreamRequest {
                request_id,
                batch: Some(pb::ProduceBatchRequest {
                    topic: topic.clone(),
                    messages: msgs,
                }),
            };
            if out_tx.send(request).await.is_err() {
                break;
            }
            request_id += 1;
        }
    });

    let samples = Samples::default();
    let mut answered = 0u64;
    let mut batches = 0u64;
    let mut batch_seconds = 0.0;
    while let Some(response) = inbound.message().await? {
        let now = Instant::now();
        let Some((id, times, sent)) = times_rx.recv().await else {
            bail!("an answer to a batch that was not sent");
        };
        if response.request_id != id || response.results.len() != times.len() {
            bail!(
                "answer {} with {} results where batch {id} of {} messages was expected",
                response.request_id,
                response.results.len(),
                times.len()
            );
        }
        check_results(&response.results)?;
        for handed_over in times {
            samples.push(now.saturating_duration_since(handed_over));
        }
        answered += response.results.len() as u64;
        batches += 1;
        batch_seconds += now.saturating_duration_since(sent).as_secs_f64();
        window.add_permits(1);
    }
    sender.await.context("the stream sender failed")?;
    let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
    if answered != total {
        bail!("{answered} of {total} messages answered");
    }
    Ok(StreamRun {
        latency: samples,
        batches,
        batch_seconds,
    })
}
