//! A `fjord serve` process for one benchmark run: temp data dir, free ports, the Prometheus
//! endpoint scraped for object-store request counts, and RSS/CPU read from /proc (also for other
//! processes: [`cpu_seconds`]).
//!
//! The process is stopped (SIGTERM, then SIGKILL after 20 s) when the value is dropped.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A running broker.
pub struct BrokerProcess {
    child: Child,
    /// `host:port` for clients.
    pub bootstrap: String,
    metrics_port: u16,
    binary: PathBuf,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

/// A port free right now on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    let [port] = free_ports::<1>()?;
    Ok(port)
}

/// `N` distinct free ports: all are held at once while they are picked, so that two calls in a
/// row cannot return the same port.
pub fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let l = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
        *port = l.local_addr()?.port();
        listeners.push(l);
    }
    Ok(ports)
}

impl BrokerProcess {
    /// Starts `binary serve` with `extra` arguments and waits until it accepts connections.
    pub fn start(binary: &Path, extra: &[String]) -> anyhow::Result<BrokerProcess> {
        Self::start_with_env(binary, extra, &[])
    }

    /// [`BrokerProcess::start`] with environment variables for the broker (secrets such as
    /// `FJORD_SASL_BOOTSTRAP_PASSWORD`). `extra` may hold `--listener`s: the broker then gets
    /// them beside a PLAINTEXT listener at [`BrokerProcess::bootstrap`] (instead of `--listen`).
    pub fn start_with_env(
        binary: &Path,
        extra: &[String],
        env: &[(String, String)],
    ) -> anyhow::Result<BrokerProcess> {
        let dir = tempfile::tempdir().context("creating a data dir")?;
        let [port, metrics_port] = free_ports()?;
        let bootstrap = format!("127.0.0.1:{port}");
        let mut broker = BrokerProcess {
            child: spawn(binary, extra, env, dir.path(), &bootstrap, metrics_port)?,
            bootstrap,
            metrics_port,
            binary: binary.to_path_buf(),
            extra: extra.to_vec(),
            env: env.to_vec(),
            _dir: dir,
        };
        broker.wait_ready()?;
        Ok(broker)
    }

    /// Stops the broker gracefully and starts it again on the same port and data (cold caches).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.child = spawn(
            &self.binary,
            &self.extra,
            &self.env,
            self._dir.path(),
            &self.bootstrap,
            self.metrics_port,
        )?;
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&self.bootstrap).is_err() {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "broker exited with {status} during startup:\n{}",
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!("broker did not listen within 30 s:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn stop(&mut self) {
        terminate(&mut self.child);
    }

    /// The broker's data dir (`--data-dir`): the embedded coordinator and the local store.
    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().join("data")
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of the broker's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self._dir.path().join("broker.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Samples of the Prometheus endpoint, by series name with labels.
    pub async fn metrics(&self) -> anyhow::Result<BTreeMap<String, f64>> {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        let text = reqwest::get(&url)
            .await
            .with_context(|| format!("scraping {url}"))?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect())
    }

    /// Object-store counts now.
    pub async fn store_counts(&self) -> anyhow::Result<StoreCounts> {
        let m = self.metrics().await?;
        let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
        Ok(StoreCounts {
            puts: get("fjord_object_store_requests_total{op=\"put\"}"),
            put_bytes: get("fjord_object_store_bytes_total{op=\"put\"}"),
            gets: get("fjord_object_store_requests_total{op=\"get\"}"),
            get_bytes: get("fjord_object_store_bytes_total{op=\"get\"}"),
            deletes: get("fjord_object_store_requests_total{op=\"delete\"}"),
            lists: get("fjord_object_store_requests_total{op=\"list\"}"),
        })
    }

    /// The write path's stages since the broker started (its `fjord_write_*` histograms): mean and
    /// p99 (bucket upper bound) per stage, in ms.
    pub async fn write_stages(&self) -> anyhow::Result<String> {
        let m = self.metrics().await?;
        let mut parts = Vec::new();
        for stage in ["buffered", "upload", "commit_queue", "commit", "flush"] {
            let name = format!("fjord_write_{stage}_seconds");
            let count = m.get(&format!("{name}_count")).copied().unwrap_or(0.0);
            let sum = m.get(&format!("{name}_sum")).copied().unwrap_or(0.0);
            if count == 0.0 {
                continue;
            }
            let p99 = bucket_quantile(&m, &name, count, 0.99);
            parts.push(format!("{stage} {:.1}/{:.1}", sum / count * 1e3, p99 * 1e3));
        }
        let name = "fjord_write_flushes_per_commit";
        let calls = m.get(&format!("{name}_count")).copied().unwrap_or(0.0);
        if calls > 0.0 {
            let flushes = m.get(&format!("{name}_sum")).copied().unwrap_or(0.0);
            parts.push(format!("{:.2} flushes per commit", flushes / calls));
        }
        Ok(format!("broker stages mean/p99 ms: {}", parts.join(", ")))
    }

    /// Resident set size in bytes and CPU time (user + system) in seconds.
    pub fn usage(&self) -> anyhow::Result<(u64, f64)> {
        process_usage(self.pid())
    }
}

/// CPU time (user + system) of process `pid` so far, in seconds (from /proc/PID/stat, in clock
/// ticks of 10 ms).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> f64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the command.
    Ok((ticks(11) + ticks(12)) / 100.0)
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGTERM to `child` (brokers, gateways and forwarders drain on it), SIGKILL if it has not
/// exited after 20 s.
pub fn terminate(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Resident set size in bytes and CPU time (user + system) in seconds of process `pid`.
pub fn process_usage(pid: u32) -> anyhow::Result<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok((rss_kib * 1024, cpu_seconds(pid)?))
}

fn spawn(
    binary: &Path,
    extra: &[String],
    env: &[(String, String)],
    dir: &Path,
    bootstrap: &str,
    metrics_port: u16,
) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("broker.log"))?;
    // `--listener`s replace `--listen`: the bootstrap address becomes one of them.
    let has_listeners = extra
        .iter()
        .any(|a| a == "--listener" || a.starts_with("--listener="));
    let listen = if has_listeners {
        ["--listener".to_string(), format!("PLAINTEXT://{bootstrap}")]
    } else {
        ["--listen".to_string(), bootstrap.to_string()]
    };
    Command::new(binary)
        .arg("serve")
        .args(listen)
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(extra)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// The upper bound of the histogram bucket holding quantile `q` (`+Inf` → the largest finite
/// bound).
fn bucket_quantile(m: &BTreeMap<String, f64>, name: &str, count: f64, q: f64) -> f64 {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = m
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            Some((le.parse().ok()?, *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let finite_max = buckets
        .iter()
        .map(|b| b.0)
        .filter(|b| b.is_finite())
        .fold(0.0, f64::max);
    buckets
        .iter()
        .find(|(_, cumulative)| *cumulative >= q * count)
        .map(|(le, _)| if le.is_finite() { *le } else { finite_max })
        .unwrap_or(finite_max)
}

/// Object-store traffic of a broker (from its metrics).
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreCounts {
    /// PUT requests.
    pub puts: f64,
    /// Bytes PUT.
    pub put_bytes: f64,
    /// GET requests.
    pub gets: f64,
    /// Bytes received by GETs.
    pub get_bytes: f64,
    /// DELETE requests.
    pub deletes: f64,
    /// LIST requests.
    pub lists: f64,
}

impl std::ops::Sub for StoreCounts {
    type Output = StoreCounts;
    fn sub(self, o: StoreCounts) -> StoreCounts {
        StoreCounts {
            puts: self.puts - o.puts,
            put_bytes: self.put_bytes - o.put_bytes,
            gets: self.gets - o.gets,
            get_bytes: self.get_bytes - o.get_bytes,
            deletes: self.deletes - o.deletes,
            lists: self.lists - o.lists,
        }
    }
}

/// The `fjord` binary next to this one, or `$FJORD_BIN`.
pub fn default_binary() -> PathBuf {
    if let Some(b) = std::env::var_os("FJORD_BIN") {
        return PathBuf::from(b);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("fjord")))
        .unwrap_or_else(|| PathBuf::from("target/release/fjord"))
}
