//! The `security` scenario: what TLS and SASL cost. One broker with three listeners —
//! `PLAINTEXT`, `SSL` and `SASL_SSL` (SCRAM-SHA-512) — and the same two runs over each: produce
//! throughput (as fast as one librdkafka producer goes) and acknowledgement latency at a fixed
//! offered rate, with the CPU the broker and this process (the librdkafka client) spent on the
//! throughput run.
//!
//! The certificates come from a throwaway CA made here (rcgen), valid for `127.0.0.1`; the SCRAM
//! user is the broker's bootstrap user (`--sasl-bootstrap-user`, its password in the broker's
//! environment). No authorizer: the figures are of the transport and the authentication, not
//! of ACLs. Listeners run one after the other on the one broker (PLAINTEXT first, as the
//! baseline), each on its own topics, so they share the broker's warm state alike.
//!
//! How to read the figures: MB/s is of record values (10^6 B); CPU is user + system seconds
//! (from /proc/PID/stat, 10 ms ticks) per GB of values; "vs PLAINTEXT" is the listener's
//! throughput as a share of the PLAINTEXT run's. On a small machine the client and the broker
//! share the cores, so encryption on both ends shows up in both the CPU and the throughput.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::broker::{cpu_seconds, free_ports, BrokerProcess};
use crate::produce::{self, ProduceSpec};
use crate::report::{Row, Table};

/// The SCRAM user the clients authenticate as.
const USER: &str = "bench";

/// Settings of a `security` run.
#[derive(Debug, Clone, clap::Args)]
pub struct SecuritySpec {
    /// Bytes per record value.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Partitions of each topic.
    #[arg(long, default_value_t = 12)]
    pub partitions: i32,
    /// MB of values per listener in the throughput run.
    #[arg(long, default_value_t = 512)]
    pub mb: u64,
    /// Offered rate of the latency run, MB/s of values.
    #[arg(long, default_value_t = 20.0)]
    pub rate_mb: f64,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

/// A CA and a broker certificate for `127.0.0.1` and `localhost`, as PEM files in a temporary
/// directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> anyhow::Result<Pki> {
        let dir = tempfile::tempdir().context("creating a directory for certificates")?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fjord-bench CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;
        let key = rcgen::KeyPair::generate()?;
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fjord-bench broker");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &*ca)?;
        let pki = Pki { dir };
        pki.write("ca.pem", &ca.pem())?;
        pki.write("broker.pem", &cert.pem())?;
        pki.write("broker.key", &key.serialize_pem())?;
        Ok(pki)
    }

    fn write(&self, name: &str, contents: &str) -> anyhow::Result<()> {
        std::fs::write(self.path(name), contents).with_context(|| format!("writing {name}"))
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// One listener of the run: its name and how a librdkafka client reaches it.
struct Listener {
    name: &'static str,
    bootstrap: String,
    client: Vec<(String, String)>,
}

/// What one listener's runs measured.
struct Measured {
    mb_per_s: f64,
    records_per_s: f64,
    broker_cpu_per_gb: f64,
    client_cpu_per_gb: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Runs the scenario and adds one row per listener and a comparison row to `table`.
pub async fn rows(binary: &Path, table: &mut Table, spec: &SecuritySpec) -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let password = format!("bench-{}", std::process::id());
    let [ssl_port, sasl_port] = free_ports()?;
    let ssl = format!("127.0.0.1:{ssl_port}");
    let sasl = format!("127.0.0.1:{sasl_port}");
    let mut args = crate::Store::Local.args();
    args.extend([
        "--listener".into(),
        format!("SSL://{ssl}"),
        "--listener".into(),
        format!("SASL_SSL://{sasl}"),
        "--ssl-cert-file".into(),
        pki.path("broker.pem"),
        "--ssl-key-file".into(),
        pki.path("broker.key"),
        "--sasl-enabled-mechanisms".into(),
        "SCRAM-SHA-512".into(),
        "--sasl-bootstrap-user".into(),
        USER.into(),
    ]);
    let env = [(
        "FJORD_SASL_BOOTSTRAP_PASSWORD".to_string(),
        password.clone(),
    )];
    let broker = BrokerProcess::start_with_env(binary, &args, &env)?;
    let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
    let ca = pki.path("ca.pem");
    let listeners = [
        Listener {
            name: "PLAINTEXT",
            bootstrap: broker.bootstrap.clone(),
            client: Vec::new(),
        },
        Listener {
            name: "SSL",
            bootstrap: ssl,
            client: vec![kv("security.protocol", "SSL"), kv("ssl.ca.location", &ca)],
        },
        Listener {
            name: "SASL_SSL",
            bootstrap: sasl,
            client: vec![
                kv("security.protocol", "SASL_SSL"),
                kv("ssl.ca.location", &ca),
                kv("sasl.mechanism", "SCRAM-SHA-512"),
                kv("sasl.username", USER),
                kv("sasl.password", &password),
            ],
        },
    ];
    let mut baseline: Option<f64> = None;
    for listener in &listeners {
        let m = measure(&broker, listener, spec)
            .await
            .with_context(|| format!("over the {} listener", listener.name))?;
        let share = baseline.map_or(100.0, |b| m.mb_per_s / b.max(1e-9) * 100.0);
        baseline.get_or_insert(m.mb_per_s);
        table.push(Row {
            scenario: format!("security: {}", listener.name),
            setup: format!(
                "{} B records, {} partitions, {} MB as fast as one producer goes, then {} MB/s for {} s; acks=all, linger 5 ms{}",
                spec.record_size,
                spec.partitions,
                spec.mb,
                spec.rate_mb,
                spec.seconds,
                match listener.name {
                    "SSL" => ", TLS",
                    "SASL_SSL" => ", TLS + SCRAM-SHA-512",
                    _ => "",
                }
            ),
            figures: format!(
                "{:.0} MB/s ({:.0}% of PLAINTEXT), {:.0} records/s; CPU s/GB: broker {:.2}, client {:.2}; ack p50 {:.1} / p99 {:.1} ms",
                m.mb_per_s,
                share,
                m.records_per_s,
                m.broker_cpu_per_gb,
                m.client_cpu_per_gb,
                m.p50_ms,
                m.p99_ms,
            ),
            values: vec![
                ("mb_per_s", m.mb_per_s),
                ("share_of_plaintext_pct", share),
                ("broker_cpu_s_per_gb", m.broker_cpu_per_gb),
                ("client_cpu_s_per_gb", m.client_cpu_per_gb),
                ("ack_p50_ms", m.p50_ms),
                ("ack_p99_ms", m.p99_ms),
            ],
        });
    }
    // The runs went where they were sent: the SASL_SSL ones authenticated with SCRAM.
    let metrics = broker.metrics().await?;
    let successes = metrics
        .get("fjord_sasl_authentications_total{result=\"success\"}")
        .copied()
        .unwrap_or(0.0);
    if successes < 1.0 {
        anyhow::bail!("the broker counted no successful SASL authentication");
    }
    table.push(Row {
        scenario: "security: authentications".into(),
        setup: "SCRAM-SHA-512 over the SASL_SSL listener (admin client, producers)".into(),
        figures: format!("{successes:.0} succeeded"),
        values: vec![("sasl_successes", successes)],
    });
    Ok(())
}

/// The throughput run, then the latency run, over `listener`.
async fn measure(
    broker: &BrokerProcess,
    listener: &Listener,
    spec: &SecuritySpec,
) -> anyhow::Result<Measured> {
    let topic = |what: &str| {
        format!(
            "security-{}-{what}-{}",
            listener.name.to_lowercase(),
            std::process::id()
        )
    };
    let record_size = spec.record_size.max(8);
    let throughput = ProduceSpec {
        record_size,
        partitions: spec.partitions,
        compression: "none".into(),
        records: (spec.mb * 1_000_000 / record_size as u64).max(1),
        rate: None,
        end_to_end: false,
        producer: Vec::new(),
    };
    let me = std::process::id();
    let (_, broker_before) = broker.usage()?;
    let client_before = cpu_seconds(me)?;
    let result = produce::run_as(
        &listener.bootstrap,
        &listener.client,
        &topic("throughput"),
        &throughput,
    )
    .await?;
    crate::check_delivery(&result)?;
    let (_, broker_after) = broker.usage()?;
    let client_after = cpu_seconds(me)?;
    let gb = result.acked as f64 * record_size as f64 / 1e9;
    let rate = ((spec.rate_mb * 1e6) / record_size as f64).max(1.0) as u64;
    let latency = ProduceSpec {
        records: rate * spec.seconds.max(1),
        rate: Some(rate),
        ..throughput.clone()
    };
    // A quiet moment between the runs, so the latency run does not start in the throughput
    // run's wake (uploads and commits still draining).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let lat = produce::run_as(
        &listener.bootstrap,
        &listener.client,
        &topic("latency"),
        &latency,
    )
    .await?;
    crate::check_delivery(&lat)?;
    Ok(Measured {
        mb_per_s: result.mb_per_s(record_size),
        records_per_s: result.acked as f64 / result.seconds.max(1e-9),
        broker_cpu_per_gb: (broker_after - broker_before) / gb.max(1e-9),
        client_cpu_per_gb: (client_after - client_before) / gb.max(1e-9),
        p50_ms: lat.ack_latency.quantile_ms(0.5),
        p99_ms: lat.ack_latency.quantile_ms(0.99),
    })
}
