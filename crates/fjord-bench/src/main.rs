//! `fjord-bench`: Fjord's benchmark suite. Every scenario starts its own broker (`fjord serve`,
//! found next to this binary or at `$FJORD_BIN`) with a fresh data dir, drives it with librdkafka
//! (the `rdkafka` crate), prints a table, and with `--results FILE` appends it, with the git
//! revision and a description of the machine, to a Markdown file (bench/RESULTS.md by
//! `bench/run`).
//!
//! Scenarios: `produce` (throughput), `latency` (acknowledgement and end-to-end latency at a
//! fixed offered rate), `fanout` (several consumer groups reading one topic from cold caches),
//! `connections` (many idle clients), `forward` (`fjord forward` pushing a topic to a gRPC handler
//! in this process), `gateway` (through `fjord gateway` vs. direct), `security` (PLAINTEXT vs.
//! SSL vs. SASL_SSL listeners of one broker), `all` (the standard matrix),
//! `smoke` (seconds, for CI).
//! `--store sim-s3` runs the broker on the local store behind a simulated S3 latency
//! (`--simulated-store-latency s3`). `--json` also prints every row as a JSON line with its
//! figures by name, for tests.

mod broker;
mod connections;
mod fanout;
mod forward;
mod gateway;
mod produce;
mod report;
mod s3server;
mod samples;
mod security;
mod soak;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::broker::{BrokerProcess, StoreCounts};
use crate::produce::{ProduceResult, ProduceSpec};
use crate::report::{Row, Table};

#[derive(Debug, Parser)]
#[command(name = "fjord-bench", about = "Fjord's benchmark suite")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// The fjord binary [default: next to this one, or $FJORD_BIN].
    #[arg(long, global = true)]
    fjord: Option<PathBuf>,
    /// Append the table to this Markdown file.
    #[arg(long, global = true)]
    results: Option<PathBuf>,
    /// Extra `fjord serve` argument for every broker started (repeatable), e.g.
    /// `--broker-arg=--max-inflight-flushes=8`.
    #[arg(long = "broker-arg", global = true, allow_hyphen_values = true)]
    broker_args: Vec<String>,
    /// librdkafka producer property KEY=VALUE overriding the scenario's (repeatable).
    #[arg(long = "producer-set", global = true)]
    producer_set: Vec<String>,
    /// After the table, print each row as one JSON line (figures by name under "values").
    #[arg(long, global = true)]
    json: bool,
    /// The S3-compatible server for `--store s3` (e.g. http://127.0.0.1:9000, bucket
    /// `fjord-bench`, path-style); without it the bench starts `s3s-fs` from PATH.
    #[arg(long, global = true)]
    s3_endpoint: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Store {
    /// The local filesystem store.
    Local,
    /// The local store behind simulated S3 Standard latency.
    SimS3,
    /// An S3-compatible server on loopback, through the real S3 client: `--s3-endpoint`, or an
    /// `s3s-fs` the bench starts.
    S3,
}

impl Store {
    fn args(self) -> Vec<String> {
        let mut args: Vec<String> = match self {
            Store::Local => Vec::new(),
            // The simulated latency stands for S3's whole PUT, durability included: the local
            // directory under it does not fsync as well.
            Store::SimS3 => vec![
                "--simulated-store-latency".into(),
                "s3".into(),
                "--object-store-option=fsync=false".into(),
            ],
            Store::S3 => s3server::broker_args(S3_ENDPOINT.get().map_or("", String::as_str)),
        };
        args.extend(EXTRA_BROKER_ARGS.get().cloned().unwrap_or_default());
        args
    }
}

/// The S3 endpoint of `--store s3`, set once at startup.
static S3_ENDPOINT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// `--broker-arg`s, set once at startup.
static EXTRA_BROKER_ARGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Produce throughput: acks=all, linger 5 ms, as fast as one producer goes.
    Produce {
        #[arg(long, default_value_t = 1024)]
        record_size: usize,
        #[arg(long, default_value_t = 12)]
        partitions: i32,
        #[arg(long, default_value = "none")]
        compression: String,
        /// Bytes of values to send.
        #[arg(long, default_value_t = 1 << 30)]
        bytes: u64,
        #[arg(long, value_enum, default_value_t = Store::Local)]
        store: Store,
    },
    /// Acknowledgement and end-to-end latency at a fixed offered rate.
    Latency {
        /// Offered rate in MB/s.
        #[arg(long, default_value_t = 20.0)]
        rate_mb: f64,
        #[arg(long, default_value_t = 1024)]
        record_size: usize,
        #[arg(long, default_value_t = 12)]
        partitions: i32,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, value_enum, default_value_t = Store::Local)]
        store: Store,
        /// Tune for latency on a slow store: a producer without idempotence (librdkafka's
        /// default) and a broker with `--max-inflight-flushes=8 --upload-hedge-ms=100`.
        #[arg(long)]
        slow_store_tuning: bool,
        /// Local store without fsync of objects (`--object-store-option fsync=false`).
        #[arg(long, conflicts_with = "slow_store_tuning")]
        no_fsync: bool,
    },
    /// Several consumer groups read one topic from cold caches.
    Fanout {
        #[arg(long, default_value_t = 8)]
        groups: usize,
        /// MB written, then read by every group.
        #[arg(long, default_value_t = 256)]
        mb: u64,
        #[arg(long, value_enum, default_value_t = Store::Local)]
        store: Store,
    },
    /// Idle client connections, then a producer's latency on top.
    Connections {
        /// Connections to open (capped by this process's open-file limit).
        #[arg(long, default_value_t = 50_000)]
        count: usize,
    },
    /// `fjord forward` pushing a topic to a gRPC handler (in this process) that takes a fixed
    /// time per record: delivery rate, duplicates, the forwarder's CPU per record.
    Forward {
        #[arg(long, default_value_t = forward::DEFAULT_PARTITIONS)]
        partitions: i32,
        /// Records to produce (100-byte values) and deliver.
        #[arg(long, default_value_t = forward::DEFAULT_RECORDS)]
        records: u64,
        /// Milliseconds the handler takes per record (tokio::time::sleep).
        #[arg(long, default_value_t = forward::DEFAULT_HANDLER_DELAY_MS)]
        handler_delay_ms: u64,
        /// The subscription's concurrency (deliveries in flight).
        #[arg(long, default_value_t = forward::DEFAULT_CONCURRENCY)]
        concurrency: usize,
        #[arg(long, value_enum, default_value_t = forward::Ordering::None)]
        ordering: forward::Ordering,
        /// The subscription's max_pending_records_per_partition.
        #[arg(long, default_value_t = forward::DEFAULT_MAX_PENDING_RECORDS)]
        max_pending_records: usize,
    },
    /// Produce through `fjord gateway` (gRPC) vs. directly with librdkafka, one broker.
    Gateway(gateway::GatewaySpec),
    /// Produce over a PLAINTEXT, an SSL and a SASL_SSL (SCRAM-SHA-512) listener of one broker:
    /// what TLS and SASL cost in throughput, latency and CPU.
    Security(security::SecuritySpec),
    /// Produce at a fixed rate for a while into topics with a short retention (and a compacted
    /// topic) and print, over time, RSS, coordinator metadata, objects and object-store requests.
    Soak {
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Offered rate over all topics, MB/s of values.
        #[arg(long, default_value_t = 10.0)]
        rate_mb: f64,
        #[arg(long, default_value_t = 1024)]
        record_size: usize,
        #[arg(long, default_value_t = 4)]
        topics: usize,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        #[arg(long, default_value_t = 60_000)]
        retention_ms: u64,
        /// Keys of the compacted topic (0: none).
        #[arg(long, default_value_t = 1000)]
        compacted_keys: u64,
        /// Seconds between samples.
        #[arg(long, default_value_t = 60)]
        interval_s: u64,
        /// Run the broker on this PostgreSQL coordinator (postgres://...) and measure its tables;
        /// default: the embedded coordinator.
        #[arg(long)]
        postgres: Option<String>,
        /// Seconds to idle after producing before the last sample [default: retention.ms plus
        /// the broker's delete delay and GC interval (120 s) plus one sample interval].
        #[arg(long)]
        idle_s: Option<u64>,
        #[arg(long, value_enum, default_value_t = Store::Local)]
        store: Store,
    },
    /// The standard matrix (minutes).
    All,
    /// A few seconds of each kind, for CI.
    Smoke,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The connections scenario holds one descriptor per client connection, and the brokers it
    // starts inherit the limit: raise the soft limit to the hard one, as `fjord` itself does.
    let _ = fjord_server::fdlimit::raise();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let binary = cli.fjord.clone().unwrap_or_else(broker::default_binary);
    let _ = EXTRA_BROKER_ARGS.set(cli.broker_args.clone());
    let mut overrides = Vec::new();
    for kv in &cli.producer_set {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--producer-set '{kv}' is not KEY=VALUE"))?;
        overrides.push((k.to_string(), v.to_string()));
    }
    let _ = produce::PRODUCER_OVERRIDES.set(overrides);
    // `all` measures against s3s-fs when it is installed; the single scenarios when asked to.
    let wants_s3 = match &cli.scenario {
        Scenario::Produce { store, .. }
        | Scenario::Latency { store, .. }
        | Scenario::Fanout { store, .. } => *store == Store::S3,
        Scenario::All => true,
        _ => false,
    };
    let mut _s3_server = None;
    if wants_s3 {
        match &cli.s3_endpoint {
            Some(endpoint) => {
                let _ = S3_ENDPOINT.set(endpoint.clone());
            }
            None => match s3server::S3Server::start() {
                Ok(server) => {
                    let _ = S3_ENDPOINT.set(server.endpoint.clone());
                    _s3_server = Some(server);
                }
                Err(e) if matches!(cli.scenario, Scenario::All) => {
                    eprintln!("note: skipping the S3-compatible server rows: {e:#}");
                }
                Err(e) => return Err(e),
            },
        }
    }
    let mut table = Table::default();
    let b = &binary;
    match cli.scenario {
        Scenario::Produce {
            record_size,
            partitions,
            compression,
            bytes,
            store,
        } => {
            let records = bytes / record_size.max(1) as u64;
            produce_row(
                b,
                &mut table,
                record_size,
                partitions,
                &compression,
                records,
                store,
            )
            .await?
        }
        Scenario::Latency {
            rate_mb,
            record_size,
            partitions,
            seconds,
            store,
            slow_store_tuning,
            no_fsync,
        } => {
            let tuning = if slow_store_tuning {
                Tuning::SlowStoreLatency
            } else if no_fsync {
                Tuning::NoFsync
            } else {
                Tuning::Defaults
            };
            latency_row(
                b,
                &mut table,
                rate_mb,
                record_size,
                partitions,
                seconds,
                store,
                tuning,
            )
            .await?
        }
        Scenario::Fanout { groups, mb, store } => {
            fanout_row(b, &mut table, groups, mb, store).await?
        }
        Scenario::Connections { count } => connections_row(b, &mut table, count).await?,
        Scenario::Soak {
            minutes,
            rate_mb,
            record_size,
            topics,
            partitions,
            retention_ms,
            compacted_keys,
            interval_s,
            postgres,
            idle_s,
            store,
        } => {
            if store == Store::S3 {
                anyhow::bail!("soak measures the local store's files: use --store local or sim-s3");
            }
            let spec = soak::SoakSpec {
                duration: Duration::from_secs_f64(minutes.max(0.0) * 60.0),
                rate_mb,
                record_size,
                topics: topics.max(1),
                partitions,
                retention_ms,
                compacted_keys,
                interval: Duration::from_secs(interval_s.max(1)),
                postgres,
                idle: idle_s.map(Duration::from_secs),
            };
            soak::run(b, &mut table, &spec, &store.args()).await?
        }
        Scenario::Forward {
            partitions,
            records,
            handler_delay_ms,
            concurrency,
            ordering,
            max_pending_records,
        } => {
            let spec = forward::ForwardSpec {
                partitions,
                records,
                handler_delay: Duration::from_millis(handler_delay_ms),
                concurrency,
                ordering,
                max_pending_records,
                ..forward::ForwardSpec::default()
            };
            forward_row(b, &mut table, &spec).await?
        }
        Scenario::Gateway(spec) => gateway::rows(b, &mut table, &spec).await?,
        Scenario::Security(spec) => security::rows(b, &mut table, &spec).await?,
        Scenario::All => {
            for (size, partitions, compression) in [
                (100, 1, "none"),
                (100, 12, "none"),
                (100, 12, "lz4"),
                (1024, 1, "none"),
                (1024, 12, "none"),
                (1024, 12, "lz4"),
            ] {
                let records = (1u64 << 30) / size as u64;
                let records = if size == 100 { records / 4 } else { records };
                produce_row(
                    b,
                    &mut table,
                    size,
                    partitions,
                    compression,
                    records,
                    Store::Local,
                )
                .await?;
            }
            produce_row(b, &mut table, 1024, 12, "none", 1 << 19, Store::SimS3).await?;
            if S3_ENDPOINT.get().is_some() {
                produce_row(b, &mut table, 1024, 12, "none", 1 << 20, Store::S3).await?;
            }
            let mut latency_runs = vec![
                (Store::Local, Tuning::Defaults),
                (Store::Local, Tuning::NoFsync),
                (Store::SimS3, Tuning::Defaults),
                (Store::SimS3, Tuning::SlowStoreLatency),
            ];
            if S3_ENDPOINT.get().is_some() {
                latency_runs.push((Store::S3, Tuning::Defaults));
            }
            for (store, tuning) in latency_runs {
                latency_row(b, &mut table, 20.0, 1024, 12, 20, store, tuning).await?;
            }
            fanout_row(b, &mut table, 8, 256, Store::Local).await?;
            connections_row(b, &mut table, 50_000).await?;
            forward_row(b, &mut table, &forward::ForwardSpec::default()).await?;
            gateway::rows(b, &mut table, &gateway::GatewaySpec::defaults()?).await?;
            let spec = security::SecuritySpec {
                record_size: 1024,
                partitions: 12,
                mb: 512,
                rate_mb: 20.0,
                seconds: 10,
            };
            security::rows(b, &mut table, &spec).await?;
        }
        Scenario::Smoke => {
            produce_row(b, &mut table, 1024, 3, "lz4", 20_000, Store::Local).await?;
            latency_row(
                b,
                &mut table,
                2.0,
                1024,
                3,
                3,
                Store::SimS3,
                Tuning::Defaults,
            )
            .await?;
            fanout_row(b, &mut table, 2, 8, Store::Local).await?;
            connections_row(b, &mut table, 200).await?;
        }
    }
    print!("{}", table.render());
    if cli.json {
        print!("{}", table.json_lines());
    }
    if let Some(path) = &cli.results {
        report::append(path, &table).with_context(|| format!("appending to {}", path.display()))?;
        println!("appended to {}", path.display());
    }
    Ok(())
}

fn topic_name(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

fn per_gib(count: f64, bytes: f64) -> f64 {
    if bytes <= 0.0 {
        return 0.0;
    }
    count / (bytes / (1u64 << 30) as f64)
}

fn check_delivery(result: &ProduceResult) -> anyhow::Result<()> {
    if result.failed > 0 {
        anyhow::bail!("{} deliveries failed", result.failed);
    }
    Ok(())
}

async fn produce_row(
    binary: &std::path::Path,
    table: &mut Table,
    record_size: usize,
    partitions: i32,
    compression: &str,
    records: u64,
    store: Store,
) -> anyhow::Result<()> {
    let broker = BrokerProcess::start(binary, &store.args())?;
    let spec = ProduceSpec {
        record_size,
        partitions,
        compression: compression.to_string(),
        records,
        rate: None,
        end_to_end: false,
        producer: Vec::new(),
    };
    let before = broker.store_counts().await?;
    let result = produce::run(&broker.bootstrap, &topic_name("produce"), &spec).await?;
    check_delivery(&result)?;
    let traffic = broker.store_counts().await? - before;
    table.push(Row {
        scenario: "produce throughput".into(),
        setup: format!(
            "{record_size} B records, {partitions} partitions, {compression}, {store:?} store, acks=all, linger 5 ms"
        ),
        figures: format!(
            "{:.0} MB/s, {:.0} records/s ({} records); {:.0} PUTs/GiB",
            result.mb_per_s(record_size),
            result.acked as f64 / result.seconds.max(1e-9),
            result.acked,
            per_gib(traffic.puts, traffic.put_bytes),
        ),
        values: Vec::new(),
    });
    Ok(())
}

/// Settings of a latency row beyond the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tuning {
    /// The scenario's producer (idempotent) and the broker's defaults.
    Defaults,
    /// Latency on a slow store: librdkafka's default producer (no idempotence, so no limit of
    /// five requests in flight, each of one partition), and a broker with eight flushes in
    /// flight that hedges uploads after 100 ms (more PUTs for a shorter tail).
    SlowStoreLatency,
    /// A local store that does not fsync objects (`--object-store-option fsync=false`): the
    /// latency of the local write path without the disk's sync time.
    NoFsync,
}

impl Tuning {
    fn producer(self) -> Vec<(String, String)> {
        match self {
            Tuning::Defaults => Vec::new(),
            Tuning::SlowStoreLatency => vec![("enable.idempotence".into(), "false".into())],
            Tuning::NoFsync => Vec::new(),
        }
    }

    fn broker_args(self) -> Vec<String> {
        match self {
            Tuning::Defaults => Vec::new(),
            Tuning::SlowStoreLatency => vec![
                "--max-inflight-flushes=8".into(),
                "--upload-hedge-ms=100".into(),
            ],
            Tuning::NoFsync => vec!["--object-store-option=fsync=false".into()],
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Tuning::Defaults => "",
            Tuning::SlowStoreLatency => {
                ", producer without idempotence, broker --max-inflight-flushes=8 --upload-hedge-ms=100"
            }
            Tuning::NoFsync => ", objects not fsynced (fsync=false)",
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn latency_row(
    binary: &std::path::Path,
    table: &mut Table,
    rate_mb: f64,
    record_size: usize,
    partitions: i32,
    seconds: u64,
    store: Store,
    tuning: Tuning,
) -> anyhow::Result<()> {
    let mut args = store.args();
    args.extend(tuning.broker_args());
    let broker = BrokerProcess::start(binary, &args)?;
    let rate = ((rate_mb * 1e6) / record_size as f64).max(1.0) as u64;
    let spec = ProduceSpec {
        record_size,
        partitions,
        compression: "none".into(),
        records: rate * seconds,
        rate: Some(rate),
        end_to_end: true,
        producer: tuning.producer(),
    };
    let before = broker.store_counts().await?;
    let result = produce::run(&broker.bootstrap, &topic_name("latency"), &spec).await?;
    check_delivery(&result)?;
    let traffic: StoreCounts = broker.store_counts().await? - before;
    let stages = broker.write_stages().await?;
    println!("{stages}");
    let q = |s: &samples::Samples| {
        format!(
            "p50 {:.1} / p99 {:.1} / p999 {:.1} ms",
            s.quantile_ms(0.5),
            s.quantile_ms(0.99),
            s.quantile_ms(0.999)
        )
    };
    table.push(Row {
        scenario: "produce latency".into(),
        setup: format!(
            "{rate_mb} MB/s offered ({rate} records/s of {record_size} B), {partitions} partitions, {seconds} s, {store:?} store{}",
            tuning.describe()
        ),
        figures: format!(
            "ack {}; end-to-end {}; {:.0} PUTs/GiB, {:.0} GETs/GiB",
            q(&result.ack_latency),
            q(&result.e2e_latency),
            per_gib(traffic.puts, traffic.put_bytes),
            per_gib(traffic.gets, traffic.put_bytes),
        ),
        values: Vec::new(),
    });
    Ok(())
}

async fn fanout_row(
    binary: &std::path::Path,
    table: &mut Table,
    groups: usize,
    mb: u64,
    store: Store,
) -> anyhow::Result<()> {
    let mut broker = BrokerProcess::start(binary, &store.args())?;
    let record_size = 1024;
    let records = mb * 1_000_000 / record_size as u64;
    let r = fanout::run(
        &mut broker,
        &topic_name("fanout"),
        records,
        record_size,
        12,
        groups,
    )
    .await?;
    table.push(Row {
        scenario: "fan-out reads".into(),
        setup: format!(
            "{mb} MB written, then {groups} group{} read it from cold caches, {store:?} store",
            if groups == 1 { "" } else { "s" }
        ),
        figures: format!(
            "{:.1}x bytes written fetched from the store ({:.0} GETs/GiB written); all groups done in {:.1} s ({:.0} MB/s served)",
            r.reads.get_bytes / r.written_bytes.max(1.0),
            per_gib(r.reads.gets, r.written_bytes),
            r.seconds,
            r.written_bytes * groups as f64 / r.seconds.max(1e-9) / 1e6,
        ),
        values: Vec::new(),
    });
    let _ = r.records;
    Ok(())
}

async fn connections_row(
    binary: &std::path::Path,
    table: &mut Table,
    count: usize,
) -> anyhow::Result<()> {
    // Each connection needs a descriptor here and one in the broker, which inherits this
    // process's limit and caps its connections below it; leave room for the producer on top.
    let limit = connections::fd_limit();
    let wanted = count;
    let count = count.min(
        fjord_server::fdlimit::connection_cap(usize::MAX, Some(limit as u64)).saturating_sub(100),
    );
    let broker = BrokerProcess::start(binary, &Store::Local.args())?;
    let (rss_before, cpu_before) = broker.usage()?;
    let (streams, took) = connections::open_idle(&broker.bootstrap, count).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, cpu) = broker.usage()?;
    let spec = ProduceSpec {
        record_size: 1024,
        partitions: 3,
        compression: "none".into(),
        records: 5_000 * 5,
        rate: Some(5_000),
        end_to_end: false,
        producer: Vec::new(),
    };
    let result = produce::run(&broker.bootstrap, &topic_name("conn"), &spec).await?;
    check_delivery(&result)?;
    let open = streams.len();
    drop(streams);
    let capped = if count < wanted {
        format!(
            " (asked {wanted}; capped by the open-file limit {limit}, a tenth of it kept for the broker's own files)"
        )
    } else {
        String::new()
    };
    table.push(Row {
        scenario: "idle connections".into(),
        setup: format!("{open} connections after ApiVersions + Metadata{capped}"),
        figures: format!(
            "opened in {:.1} s; broker RSS {:.0} MiB (+{:.1} KiB per connection), CPU {:.1} s while opening; producer on top at 5 MB/s: ack p50 {:.1} / p99 {:.1} ms",
            took.as_secs_f64(),
            rss as f64 / (1 << 20) as f64,
            (rss.saturating_sub(rss_before)) as f64 / 1024.0 / open.max(1) as f64,
            cpu - cpu_before,
            result.ack_latency.quantile_ms(0.5),
            result.ack_latency.quantile_ms(0.99),
        ),
        values: Vec::new(),
    });
    Ok(())
}

async fn forward_row(
    binary: &std::path::Path,
    table: &mut Table,
    spec: &forward::ForwardSpec,
) -> anyhow::Result<()> {
    let mut args = Store::Local.args();
    // The forwarder's group forms at once instead of after the default 3 s.
    args.extend(["--group-initial-rebalance-delay-ms".into(), "0".into()]);
    let broker = BrokerProcess::start(binary, &args)?;
    let r = forward::run(&broker, binary, &topic_name("forward"), spec).await?;
    table.push(Row {
        scenario: "forward".into(),
        setup: format!(
            "{} records of {} B, {} partitions, handler {} ms per record, concurrency {}, ordering {}, max {} pending records per partition",
            r.records,
            spec.record_size,
            spec.partitions,
            spec.handler_delay.as_millis(),
            spec.concurrency,
            spec.ordering,
            spec.max_pending_records,
        ),
        figures: format!(
            "{:.0} records/s steady (all in {:.1} s); {} handler calls, {} duplicates, {} redeliveries; \
             forwarder CPU {:.1} s, {:.0} us/record; handler CPU {:.0} us/record",
            r.steady_rate,
            r.seconds,
            r.calls,
            r.duplicates,
            r.redeliveries,
            r.forwarder_cpu,
            r.forwarder_us_per_record,
            r.handler_us_per_record,
        ),
        values: vec![
            ("records", r.records as f64),
            ("records_per_second", r.steady_rate),
            ("seconds", r.seconds),
            ("calls", r.calls as f64),
            ("duplicates", r.duplicates as f64),
            ("redeliveries", r.redeliveries as f64),
            ("forwarder_cpu_seconds", r.forwarder_cpu),
            ("forwarder_cpu_us_per_record", r.forwarder_us_per_record),
            ("handler_cpu_us_per_record", r.handler_us_per_record),
        ],
    });
    Ok(())
}
