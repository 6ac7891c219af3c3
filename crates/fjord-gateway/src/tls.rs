//! TLS on the gateway's own gRPC listener, with fjord-tls (the brokers' TLS): the `[tls]` table
//! (PEM files) becomes a [`ReloadingTls`], and [`incoming`] turns accepted TCP connections into
//! TLS streams for tonic.
//!
//! Everything a file can get wrong is found by fjord-tls before the listener accepts a
//! connection, and named with the file (unreadable, no certificate, no private key, a key that
//! does not match the certificate, no usable client CA). Invariants:
//! - the server presents the whole chain of `cert_file`, with ALPN `h2`;
//! - with `client_ca_file`, every connection must present a client certificate that chains to
//!   one of its CAs (mutual TLS; client authentication is not optional);
//! - a handshake that has not finished after [`HANDSHAKE_TIMEOUT`] is dropped, and handshakes
//!   run beside each other (a slow client holds up no other);
//! - the files are checked every [`RELOAD_INTERVAL`]; changed files that load are used for the
//!   handshakes that start afterwards, files that do not load leave the previous certificate in
//!   force (logged).
//!
//! [`identity`] names the caller behind a verified client certificate (for the rate limits).

use std::sync::Arc;
use std::time::Duration;

use fjord_tls::{ClientAuth, ReloadingTls, TlsFiles, TlsStream};
use futures::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::config::ListenerTlsConfig;

pub use fjord_tls::HANDSHAKE_TIMEOUT;

/// How often the certificate files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Why the listener's TLS settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("tls: cert_file and key_file are required")]
    Incomplete,
    #[error(transparent)]
    Files(#[from] fjord_tls::TlsError),
}

/// Reads and checks the files of `config`: the listener's TLS, reloaded by [`incoming`].
pub fn reloading(config: &ListenerTlsConfig) -> Result<Arc<ReloadingTls>, TlsSetupError> {
    let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) else {
        return Err(TlsSetupError::Incomplete);
    };
    let files = TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: config.client_ca_file.clone(),
        client_auth: match config.client_ca_file {
            Some(_) => ClientAuth::Required,
            None => ClientAuth::None,
        },
    };
    Ok(Arc::new(ReloadingTls::with_alpn(
        files,
        vec![b"h2".to_vec()],
    )?))
}

/// The TLS connections of `listener` for tonic, until `shutdown`: each accepted connection's
/// handshake runs in its own task (bounded by [`HANDSHAKE_TIMEOUT`]); failed handshakes are
/// logged at debug level and dropped. Also checks `tls`'s files for changes until `shutdown`.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
    tokio::spawn(fjord_tls::watch(
        "gateway listener".into(),
        tls.clone(),
        RELOAD_INTERVAL,
        shutdown.clone(),
    ));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<TlsStream<TcpStream>>(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(stream).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "tls handshake failed"),
                    Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                }
            });
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|s| s.map(Ok)))
}

/// Longest caller identity taken from a certificate (longer ones are cut).
const MAX_IDENTITY_CHARS: usize = 256;

/// The identity of a client certificate (DER), as the caller of the rate limits: its subject
/// distinguished name (RFC 4514, e.g. `CN=billing,O=Example`), or, for a certificate with an
/// empty subject, `serial <hex> of <issuer DN>`. `None` if it does not parse (it was verified
/// by the handshake, so that does not happen in practice).
pub fn identity(der: &[u8]) -> Option<String> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let tbs = &cert.tbs_certificate;
    let subject = tbs.subject.to_string();
    let name = if subject.is_empty() {
        let serial: String = tbs
            .serial_number
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("serial {serial} of {}", tbs.issuer)
    } else {
        subject
    };
    Some(name.chars().take(MAX_IDENTITY_CHARS).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }
        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    #[test]
    fn a_certificate_is_named_by_its_subject() {
        let mut params = rcgen::CertificateParams::new(vec!["svc.test".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "billing");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let id = identity(cert.der()).unwrap();
        assert!(
            id.contains("CN=billing") && id.contains("O=Example"),
            "{id}"
        );
        // Without a subject: serial and issuer.
        let mut params = rcgen::CertificateParams::new(vec!["svc.test".to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.serial_number = Some(rcgen::SerialNumber::from(vec![0x1f, 0x2e]));
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(identity(cert.der()).unwrap(), "serial 1f2e of ");
        assert_eq!(identity(b"not a certificate"), None);
    }

    fn self_signed() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    fn tls(cert: &Path, key: &Path, ca: Option<&Path>) -> ListenerTlsConfig {
        ListenerTlsConfig {
            cert_file: Some(cert.to_owned()),
            key_file: Some(key.to_owned()),
            client_ca_file: ca.map(Path::to_owned),
        }
    }

    #[test]
    fn a_matching_certificate_and_key_are_accepted() {
        let f = Files::new();
        let (cert, key) = self_signed();
        let (c, k) = (f.write("c.pem", &cert), f.write("k.pem", &key));
        assert!(reloading(&tls(&c, &k, None)).is_ok());
        // The certificate doubles as a client CA.
        assert!(reloading(&tls(&c, &k, Some(&c))).is_ok());
    }

    #[test]
    fn file_problems_are_reported_with_the_file() {
        let f = Files::new();
        let (cert, key) = self_signed();
        let (c, k) = (f.write("c.pem", &cert), f.write("k.pem", &key));
        let missing = f.dir.path().join("missing.pem");
        let err = |cfg: ListenerTlsConfig| reloading(&cfg).unwrap_err().to_string();

        let e = err(tls(&missing, &k, None));
        assert!(
            e.starts_with("tls: reading certificate ") && e.contains("missing.pem"),
            "{e}"
        );
        let e = err(tls(&c, &missing, None));
        assert!(e.starts_with("tls: reading key "), "{e}");
        // Certificate and key swapped.
        let e = err(tls(&k, &c, None));
        assert!(
            e.contains("k.pem") && e.contains("holds no PEM certificate"),
            "{e}"
        );
        let e = err(tls(&c, &c, None));
        assert!(e.contains("holds no PEM private key"), "{e}");
        // A key of another certificate.
        let (_, other_key) = self_signed();
        let other = f.write("other-key.pem", &other_key);
        let e = err(tls(&c, &other, None));
        assert!(e.contains("c.pem") && e.contains("other-key.pem"), "{e}");
        // A client CA file without certificates.
        let e = err(tls(&c, &k, Some(&k)));
        assert!(
            e.contains("client CA") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = err(tls(&c, &k, Some(&missing)));
        assert!(e.starts_with("tls: reading client CA "), "{e}");
        // Incomplete settings (refused by config validation first, and here too).
        let half = ListenerTlsConfig {
            key_file: None,
            ..tls(&c, &k, None)
        };
        assert!(matches!(reloading(&half), Err(TlsSetupError::Incomplete)));
    }
}
