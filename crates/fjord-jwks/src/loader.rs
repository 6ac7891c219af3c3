//! Where a JWKS is, reading or fetching it, and the task that keeps it fresh:
//! - a `file://` JWKS is checked every [`FILE_CHECK_INTERVAL`] and read again when its size or
//!   modification time changed;
//! - an `http(s)://` JWKS is fetched again every refresh interval (reqwest on rustls, the HTTP
//!   client object_store already uses);
//! - either is reloaded at once when [`crate::Verifier`] meets a token with an unknown `kid`.
//!
//! A reload that fails, or finds no usable key, keeps the previous key set: it is logged and
//! counted ([`JwksStats`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fjord_auth::oauth::{Jwks, JwtConfig, JwtValidator, OAuthError};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::Verifier;

/// How often a JWKS file is checked for changes.
pub const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Largest JWKS document read.
pub const MAX_JWKS_BYTES: usize = 1 << 20;

/// Time allowed for one JWKS fetch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a JWKS could not be found, read or used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The location is not a `file://` (absolute path), `https://` or `http://` URL.
    #[error("JWKS location {url:?}: {reason}")]
    Location {
        /// The location as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file could not be read.
    #[error("reading {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The document is larger than [`MAX_JWKS_BYTES`].
    #[error("{source_name}: the JWKS is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge {
        /// Where it is.
        source_name: String,
    },
    /// An HTTP fetch failed.
    #[error("fetching {url}: {error}")]
    Fetch {
        /// The URL.
        url: String,
        /// Why.
        error: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("fetching {url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
    },
    /// The document is not a JSON Web Key Set.
    #[error("{source_name}: {error}")]
    Parse {
        /// Where it is.
        source_name: String,
        /// Why.
        error: OAuthError,
    },
    /// The set has no key Fjord can verify with.
    #[error(
        "{source_name}: no usable key (RSA or EC P-256/P-384 signature keys); skipped: {skipped}"
    )]
    NoUsableKey {
        /// Where it is.
        source_name: String,
        /// The keys skipped, and why.
        skipped: String,
    },
    /// The HTTP client could not be built.
    #[error("building the HTTP client for the JWKS: {0}")]
    Client(reqwest::Error),
}

/// Where the JWKS is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A local file.
    File(PathBuf),
    /// An http:// or https:// URL.
    Url(String),
}

impl JwksSource {
    /// The source a `file://`, `http://` or `https://` URL names.
    pub fn parse(url: &str) -> Result<JwksSource, JwksError> {
        let url = url.trim();
        let bad = |reason: &str| JwksError::Location {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad(
                    "a file:// URL needs an absolute path (file:///path/jwks.json)",
                ));
            }
            return Ok(JwksSource::File(PathBuf::from(path)));
        }
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") || lower.starts_with("http://") {
            reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
            return Ok(JwksSource::Url(url.to_string()));
        }
        Err(bad("must start with file://, https:// or http://"))
    }
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::File(p) => write!(f, "file://{}", p.display()),
            JwksSource::Url(u) => f.write_str(u),
        }
    }
}

/// A bearer-token verifier's settings, checked (Kafka's `sasl.oauthbearer.*`).
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    /// Where the keys are.
    pub source: JwksSource,
    /// How often an http(s) JWKS is fetched again.
    pub refresh: Duration,
    /// What tokens are checked against.
    pub jwt: JwtConfig,
}

impl OAuthSettings {
    /// Loads the key set now (a verifier that cannot check tokens should not start) and returns
    /// the [`Verifier`] with the [`Reloader`] that keeps its keys fresh once spawned.
    pub async fn load(&self) -> Result<(Verifier, Reloader), JwksError> {
        let mut loader = JwksLoader::new(self.source.clone())?;
        let jwks = loader
            .load(false)
            .await?
            .ok_or_else(|| JwksError::NoUsableKey {
                source_name: self.source.to_string(),
                skipped: "nothing loaded".into(),
            })?;
        loader.stats.reloads.fetch_add(1, Ordering::Relaxed);
        let (keys_tx, keys_rx) = watch::channel(Arc::new(jwks));
        let refresh = Arc::new(Notify::new());
        let verifier = Verifier::new(
            JwtValidator::new(self.jwt.clone()),
            keys_rx,
            refresh.clone(),
        );
        let reloader = Reloader {
            loader,
            interval: self.refresh,
            keys: keys_tx,
            refresh,
        };
        Ok((verifier, reloader))
    }
}

/// What keeps a [`Verifier`]'s keys fresh, until spawned ([`Reloader::spawn`]).
#[derive(Debug)]
pub struct Reloader {
    loader: JwksLoader,
    interval: Duration,
    keys: watch::Sender<Arc<Jwks>>,
    refresh: Arc<Notify>,
}

impl Reloader {
    /// The reload counters.
    pub fn stats(&self) -> Arc<JwksStats> {
        self.loader.stats.clone()
    }

    /// Runs [`run`] as the task `task` until `shutdown`.
    pub fn spawn(self, task: &str, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(run(
            task.to_string(),
            self.loader,
            self.interval,
            self.keys,
            self.refresh,
            shutdown,
        ))
    }
}

/// JWKS reload counters.
#[derive(Debug, Default)]
pub struct JwksStats {
    /// Key sets loaded (the first included).
    pub reloads: AtomicU64,
    /// Reloads that failed or found no usable key (the previous set stayed).
    pub errors: AtomicU64,
}

/// Reads or fetches the JWKS and keeps what is needed to tell whether a file changed.
#[derive(Debug)]
pub struct JwksLoader {
    source: JwksSource,
    client: Option<reqwest::Client>,
    /// A file's (length, modification time) when last read.
    seen: Option<(u64, Option<SystemTime>)>,
    /// Counters.
    pub stats: Arc<JwksStats>,
}

impl JwksLoader {
    /// A loader for `source`.
    pub fn new(source: JwksSource) -> Result<JwksLoader, JwksError> {
        let client = match &source {
            JwksSource::File(_) => None,
            JwksSource::Url(_) => Some(
                reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .build()
                    .map_err(JwksError::Client)?,
            ),
        };
        Ok(JwksLoader {
            source,
            client,
            seen: None,
            stats: Arc::default(),
        })
    }

    /// Where the keys are.
    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    /// Loads the key set; `None` when `only_if_changed` and a file has not changed.
    pub async fn load(&mut self, only_if_changed: bool) -> Result<Option<Jwks>, JwksError> {
        let bytes = match &self.source {
            JwksSource::File(path) => {
                let read = |error| JwksError::Read {
                    path: path.clone(),
                    error,
                };
                let meta = tokio::fs::metadata(path).await.map_err(read)?;
                let stamp = (meta.len(), meta.modified().ok());
                if only_if_changed && self.seen == Some(stamp) {
                    return Ok(None);
                }
                if meta.len() > MAX_JWKS_BYTES as u64 {
                    return Err(JwksError::TooLarge {
                        source_name: self.source.to_string(),
                    });
                }
                let bytes = tokio::fs::read(path).await.map_err(read)?;
                self.seen = Some(stamp);
                bytes
            }
            JwksSource::Url(url) => match &self.client {
                Some(client) => fetch(client, url).await?,
                None => {
                    return Err(JwksError::Location {
                        url: url.clone(),
                        reason: "no HTTP client".into(),
                    })
                }
            },
        };
        let (jwks, skipped) = Jwks::parse(&bytes).map_err(|error| JwksError::Parse {
            source_name: self.source.to_string(),
            error,
        })?;
        for why in &skipped {
            tracing::debug!(source = %self.source, why, "JWKS: key skipped");
        }
        if jwks.is_empty() {
            return Err(JwksError::NoUsableKey {
                source_name: self.source.to_string(),
                skipped: skipped.join("; "),
            });
        }
        Ok(Some(jwks))
    }
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, JwksError> {
    let failed = |error| JwksError::Fetch {
        url: url.to_string(),
        error,
    };
    let mut response = client
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(failed)?;
    if !response.status().is_success() {
        return Err(JwksError::Status {
            url: url.to_string(),
            status: response.status(),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge {
                source_name: url.to_string(),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Keeps `keys` fresh until `shutdown`: checks or fetches on a timer and whenever `refresh` is
/// notified. Errors are logged and counted; the previous key set stays in force.
pub async fn run(
    task: String,
    mut loader: JwksLoader,
    refresh_interval: Duration,
    keys: watch::Sender<Arc<Jwks>>,
    refresh: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let interval = match loader.source {
        JwksSource::File(_) => FILE_CHECK_INTERVAL,
        JwksSource::Url(_) => refresh_interval.max(Duration::from_secs(1)),
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        let forced = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => false,
            () = refresh.notified() => true,
        };
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = loader.load(!forced) => r,
        };
        match result {
            Ok(Some(jwks)) => {
                tracing::info!(%task, source = %loader.source, keys = jwks.len(), forced, "JWKS loaded");
                loader.stats.reloads.fetch_add(1, Ordering::Relaxed);
                keys.send_replace(Arc::new(jwks));
            }
            Ok(None) => {}
            Err(e) => {
                loader.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%task, source = %loader.source, error = %e, forced,
                    "JWKS reload failed; the previous keys stay in force");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn sources() {
        assert_eq!(
            JwksSource::parse("file:///etc/jwks.json").unwrap(),
            JwksSource::File("/etc/jwks.json".into())
        );
        assert!(matches!(
            JwksSource::parse("https://idp.example/jwks").unwrap(),
            JwksSource::Url(_)
        ));
        for bad in [
            "file://relative.json",
            "ftp://x/y",
            "/etc/jwks.json",
            "https://",
        ] {
            assert!(JwksSource::parse(bad).is_err(), "{bad}");
        }
    }

    const EC_JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"a",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    #[tokio::test]
    async fn a_file_is_read_again_only_when_it_changes_and_bad_reloads_keep_the_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, EC_JWKS).unwrap();
        let mut loader = JwksLoader::new(JwksSource::File(path.clone())).unwrap();
        let first = loader.load(false).await.unwrap().unwrap();
        assert!(first.has_kid("a"));
        assert!(loader.load(true).await.unwrap().is_none());
        assert!(loader.load(false).await.unwrap().is_some());
        std::fs::write(&path, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap();
        let err = loader.load(true).await.unwrap_err().to_string();
        assert!(err.contains("no usable key"), "{err}");

        // The task: a forced refresh reloads; errors are counted and the keys stay.
        std::fs::write(&path, "not json").unwrap();
        let mut loader = JwksLoader::new(JwksSource::File(path.clone())).unwrap();
        let stats = loader.stats.clone();
        assert!(loader.load(false).await.is_err());
        let (tx, mut rx) = watch::channel(Arc::new(first));
        let refresh = Arc::new(Notify::new());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            "jwks-test".into(),
            loader,
            Duration::from_secs(3600),
            tx,
            refresh.clone(),
            shutdown.clone(),
        ));
        refresh.notify_one();
        for _ in 0..200 {
            if stats.errors.load(Ordering::Relaxed) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(stats.errors.load(Ordering::Relaxed), 1);
        assert!(rx.borrow().has_kid("a"));
        std::fs::write(&path, EC_JWKS.replace("\"a\"", "\"b\"")).unwrap();
        refresh.notify_one();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert!(rx.borrow().has_kid("b"));
        shutdown.cancel();
        task.await.unwrap();
    }
}
