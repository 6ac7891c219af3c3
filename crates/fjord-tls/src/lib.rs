//! TLS for Fjord's Kafka listeners (`SSL` and, later, `SASL_SSL`).
//!
//! Owns: turning PEM files into a rustls server configuration (every error names its file),
//! client-certificate verification as Kafka's `ssl.client.auth` (`none`, `requested`,
//! `required`), reloading the files when they change, and naming the principal behind a client
//! certificate ([`subject_name`], then [`PrincipalMapper`]).
//!
//! Invariants:
//! - a configuration in force was wholly checked: the key belongs to the certificate, the client
//!   CA file holds at least one usable CA, client authentication has a CA to check against;
//! - a reload that fails leaves the configuration in force unchanged (logged and counted), and
//!   is retried only when the files change again;
//! - a client certificate the broker sees has chained to a CA of the client CA file (rustls
//!   verified it during the handshake).

mod mapping;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio_util::sync::CancellationToken;

pub use mapping::{MappingError, PrincipalMapper};
pub use tokio_rustls::client::TlsStream as ClientTlsStream;
pub use tokio_rustls::server::TlsStream;
pub use tokio_rustls::TlsAcceptor;
pub use tokio_rustls::TlsConnector;

/// Longest a client may take to finish the TLS handshake before its connection is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether clients present certificates (Kafka's `ssl.client.auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// A certificate is asked for; clients without one connect as `User:ANONYMOUS`.
    Requested,
    /// Clients without a certificate that chains to the client CA are refused.
    Required,
}

impl FromStr for ClientAuth {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(ClientAuth::None),
            "requested" => Ok(ClientAuth::Requested),
            "required" => Ok(ClientAuth::Required),
            other => Err(format!(
                "ssl client auth {other:?}: expected none, requested or required"
            )),
        }
    }
}

/// The files of a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain (PEM), the broker's own certificate first.
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// Whether client certificates are asked for or required.
    pub client_auth: ClientAuth,
}

/// Why TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("tls: reading {what} {path}: {error}")]
    Read {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A file is not PEM, or holds nothing of the kind expected.
    #[error("tls: {what} {path}: {detail}")]
    Pem {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// rustls refused the certificate and key (e.g. the key is not the certificate's).
    #[error("tls: certificate {cert} with key {key}: {error}")]
    Identity {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' complaint.
        error: rustls::Error,
    },
    /// The client CA file cannot verify clients.
    #[error("tls: client CA {path}: {detail}")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Client authentication without a CA to check certificates against.
    #[error("tls: ssl client auth {0:?} needs a client CA file")]
    NoClientCa(ClientAuth),
}

/// Reads and checks `files` into a rustls server configuration (aws-lc-rs, TLS 1.2 and 1.3).
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = certificates("certificate", &files.cert)?;
    let key_pem = read("key", &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        what: "key",
        path: files.key.clone(),
        detail: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".to_string()
            }
            other => other.to_string(),
        },
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Identity {
            cert: files.cert.clone(),
            key: files.key.clone(),
            error,
        })?;
    let builder = match (files.client_auth, &files.client_ca) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (auth, None) => return Err(TlsError::NoClientCa(auth)),
        (auth, Some(ca)) => {
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certificates("client CA", ca)?);
            if added == 0 {
                return Err(TlsError::ClientCa {
                    path: ca.clone(),
                    detail: "no usable CA certificate".into(),
                });
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = match auth {
                ClientAuth::Requested => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            let verifier = verifier.build().map_err(|e| TlsError::ClientCa {
                path: ca.clone(),
                detail: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|error| TlsError::Identity {
            cert: files.cert.clone(),
            key: files.key.clone(),
            error,
        })?;
    Ok(Arc::new(config))
}

/// A rustls client configuration that trusts the CAs in `ca` and, for mutual TLS, presents
/// `identity` (certificate chain, key). For Fjord's own clients (the CLI).
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certificates("CA", ca)?);
    if added == 0 {
        return Err(TlsError::Pem {
            what: "CA",
            path: ca.to_path_buf(),
            detail: "no usable CA certificate".into(),
        });
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Pem {
            what: "CA",
            path: ca.to_path_buf(),
            detail: e.to_string(),
        })?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certificates("certificate", cert)?;
            let key_pem = read("key", key)?;
            let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
                what: "key",
                path: key.to_path_buf(),
                detail: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|error| TlsError::Identity {
                    cert: cert.to_path_buf(),
                    key: key.to_path_buf(),
                    error,
                })?
        }
    };
    Ok(Arc::new(config))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        what,
        path: path.to_path_buf(),
        error,
    })
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            path: path.to_path_buf(),
            detail: "holds no PEM certificate".into(),
        });
    }
    Ok(certs)
}

/// What a file looked like when last read: its modification time and length.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// A TLS configuration that follows its files: [`ReloadingTls::check`] rereads them when one
/// changed (by modification time or length) and swaps the new configuration in for the
/// handshakes that start afterwards. Connections already open keep theirs.
#[derive(Debug)]
pub struct ReloadingTls {
    files: TlsFiles,
    /// ALPN protocols offered, most preferred first (none for Kafka; `h2` for gRPC).
    alpn: Vec<Vec<u8>>,
    current: RwLock<Arc<ServerConfig>>,
    stamps: Mutex<Vec<Stamp>>,
    /// Reloads that took effect.
    pub reloads: AtomicU64,
    /// Reloads that failed (the previous configuration stayed).
    pub errors: AtomicU64,
}

impl ReloadingTls {
    /// Loads `files`; errors are the files' (the listener must not start without TLS).
    pub fn new(files: TlsFiles) -> Result<ReloadingTls, TlsError> {
        Self::with_alpn(files, Vec::new())
    }

    /// As [`ReloadingTls::new`], negotiating one of the `alpn` protocols (e.g. `h2` for gRPC,
    /// whose clients insist on it) in every configuration it loads.
    pub fn with_alpn(files: TlsFiles, alpn: Vec<Vec<u8>>) -> Result<ReloadingTls, TlsError> {
        let stamps = Self::stamps_of(&files);
        let config = Self::load(&files, &alpn)?;
        Ok(ReloadingTls {
            files,
            alpn,
            current: RwLock::new(config),
            stamps: Mutex::new(stamps),
            reloads: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }

    fn load(files: &TlsFiles, alpn: &[Vec<u8>]) -> Result<Arc<ServerConfig>, TlsError> {
        let config = server_config(files)?;
        if alpn.is_empty() {
            return Ok(config);
        }
        let mut config = Arc::unwrap_or_clone(config);
        config.alpn_protocols = alpn.to_vec();
        Ok(Arc::new(config))
    }

    fn stamps_of(files: &TlsFiles) -> Vec<Stamp> {
        let mut paths = vec![&files.cert, &files.key];
        paths.extend(&files.client_ca);
        paths.into_iter().map(|p| stamp(p)).collect()
    }

    /// The files this configuration follows.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// An acceptor with the configuration in force.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().clone())
    }

    /// Rereads the files if one changed since the last look: `Ok(true)` when a new
    /// configuration is in force, `Ok(false)` when nothing changed, an error (the old one stays)
    /// when the new files do not make a valid configuration. A failed set of files is not tried
    /// again until a file changes again (a certificate and its key replaced one after the other
    /// fail once, between the two writes, and load at the next look).
    pub fn check(&self) -> Result<bool, TlsError> {
        let now = Self::stamps_of(&self.files);
        {
            let mut seen = self.stamps.lock();
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        match Self::load(&self.files, &self.alpn) {
            Ok(config) => {
                *self.current.write() = config;
                self.reloads.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }
}

/// A task named `task` (for its logs) that checks `tls`'s files every `interval` until
/// `shutdown`, reloading them when they change.
pub async fn watch(
    task: String,
    tls: Arc<ReloadingTls>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let check = tls.clone();
        match tokio::task::spawn_blocking(move || check.check()).await {
            Ok(Ok(true)) => {
                tracing::info!(%task, cert = %tls.files.cert.display(), "tls: reloaded the certificate files")
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(%task, error = %e, "tls: the changed files do not load; the previous certificate stays in force")
            }
            Err(e) => tracing::error!(%task, error = %e, "tls: the reload check panicked"),
        }
    }
}

/// Longest principal name taken from a certificate; a longer subject is refused.
pub const MAX_SUBJECT_CHARS: usize = 1024;

/// The subject distinguished name of a certificate (DER) as Kafka writes it (RFC 4514, most
/// specific first: `CN=writer,OU=eng,O=Example`); `None` if it does not parse or is too long.
pub fn subject_name(der: &[u8]) -> Option<String> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let name = cert.tbs_certificate.subject.to_string();
    (name.chars().count() <= MAX_SUBJECT_CHARS).then_some(name)
}

#[cfg(test)]
mod tests;
