//! The S3-compatible server `--store s3` runs against: the one at `--s3-endpoint`, or an
//! `s3s-fs` (the `s3s` project's filesystem-backed S3 server, `cargo install s3s-fs --version
//! 0.14.1 --features binary --locked`) that this module starts on loopback with a fresh root
//! directory and stops when dropped.
//!
//! Brokers reach it through the real `object_store` S3 client (HTTP, SigV4, path-style), so
//! the figures include everything a broker pays against S3 except the network distance.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::broker::free_port;

/// The bucket brokers write to; each broker gets its own prefix.
pub const BUCKET: &str = "fjord-bench";
const ACCESS_KEY: &str = "fjordbench";
const SECRET_KEY: &str = "fjordbench-secret";

/// `fjord serve` arguments for an S3 store at `endpoint`, under a fresh prefix.
#[allow(clippy::disallowed_methods)] // only a unique name
pub fn broker_args(endpoint: &str) -> Vec<String> {
    let prefix = format!("run-{}", std::process::id());
    let unique = format!(
        "{prefix}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let mut args = vec![
        "--object-store".to_string(),
        format!("s3://{BUCKET}/{unique}"),
    ];
    for option in [
        format!("endpoint={endpoint}"),
        "allow_http=true".into(),
        "region=us-east-1".into(),
        "virtual_hosted_style_request=false".into(),
        format!("access_key_id={ACCESS_KEY}"),
        format!("secret_access_key={SECRET_KEY}"),
        // What a broker does by default over TLS (real S3); this loopback server speaks plain
        // HTTP, where the broker would otherwise hash every object for the signature.
        "unsigned_payload=true".into(),
    ] {
        args.push("--object-store-option".into());
        args.push(option);
    }
    args
}

/// A running `s3s-fs`.
pub struct S3Server {
    child: Child,
    _root: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

fn find_s3s_fs() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("s3s-fs"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let home = std::env::var_os("HOME")?;
        let p = Path::new(&home).join(".cargo/bin/s3s-fs");
        p.is_file().then_some(p)
    })
}

impl S3Server {
    /// Starts `s3s-fs` with an empty bucket and waits until it accepts connections.
    pub fn start() -> anyhow::Result<S3Server> {
        let Some(binary) = find_s3s_fs() else {
            bail!(
                "--store s3 needs --s3-endpoint or s3s-fs on PATH \
                 (cargo install s3s-fs --version 0.14.1 --features binary --locked)"
            );
        };
        let root = tempfile::tempdir().context("creating the s3s-fs root")?;
        std::fs::create_dir(root.path().join(BUCKET)).context("creating the bucket")?;
        let port = free_port()?;
        let log = std::fs::File::create(root.path().join("s3s-fs.log"))?;
        let child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let server = S3Server {
            child,
            _root: root,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("s3s-fs did not listen on port {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
