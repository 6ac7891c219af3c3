//! TLS on the gateway's own gRPC listener: turns the `[tls]` table (PEM files) into tonic's
//! [`ServerTlsConfig`] (rustls, aws-lc-rs).
//!
//! Owns reading and checking the files. Everything a file can get wrong is found here, before
//! the listener accepts a connection, and named with the file: unreadable, no certificate in
//! `cert_file` or `client_ca_file`, no private key in `key_file`, a key that does not match the
//! certificate. Invariants of a config built here:
//! - the server presents the whole chain of `cert_file`, with ALPN `h2`;
//! - with `client_ca_file`, every connection must present a client certificate that chains to
//!   one of its CAs (mutual TLS; client authentication is not optional);
//! - a handshake that has not finished after [`HANDSHAKE_TIMEOUT`] is dropped.
//!
//! The files are read once, when the listener starts (no hot reload of certificates).
//!
//! [`identity`] names the caller behind a verified client certificate (for the rate limits).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::ListenerTlsConfig;

/// Longest a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the listener's TLS settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("tls: cert_file and key_file are required")]
    Incomplete,
    #[error("tls: reading {key} {path}: {error}")]
    Read {
        key: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("tls: {key} {path}: {detail}")]
    BadPem {
        key: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("tls: {key} {path} holds no PEM certificate")]
    NoCertificate { key: &'static str, path: PathBuf },
    #[error("tls: key_file {path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("tls: cert_file {cert} and key_file {key}: {error}")]
    BadIdentity {
        cert: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
    #[error("tls: client_ca_file {path}: {detail}")]
    BadClientCa { path: PathBuf, detail: String },
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

/// Reads and checks the files of `config` and builds the listener's TLS settings.
pub fn server_config(config: &ListenerTlsConfig) -> Result<ServerTlsConfig, TlsSetupError> {
    let (Some(cert_path), Some(key_path)) = (&config.cert_file, &config.key_file) else {
        return Err(TlsSetupError::Incomplete);
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // tonic builds its rustls config with the process-wide provider; pin it to aws-lc-rs so a
    // second provider compiled in by another crate cannot make that ambiguous. Already
    // installed (by us or by another part of the process) is fine.
    let _ = CryptoProvider::install_default((*provider).clone());

    let cert_pem = read("cert_file", cert_path)?;
    let chain = certificates("cert_file", cert_path, &cert_pem)?;
    let key_pem = read("key_file", key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsSetupError::NoKey {
            path: key_path.clone(),
        },
        other => TlsSetupError::BadPem {
            key: "key_file",
            path: key_path.clone(),
            detail: other.to_string(),
        },
    })?;
    // The same checks tonic makes when it starts serving, here with the file names: a key
    // rustls cannot use, or one that does not belong to the certificate.
    rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|error| TlsSetupError::BadIdentity {
            cert: cert_path.clone(),
            key: key_path.clone(),
            error,
        })?;
    let mut tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .timeout(HANDSHAKE_TIMEOUT);

    if let Some(ca_path) = &config.client_ca_file {
        let ca_pem = read("client_ca_file", ca_path)?;
        let mut roots = rustls::RootCertStore::empty();
        let (added, _ignored) =
            roots.add_parsable_certificates(certificates("client_ca_file", ca_path, &ca_pem)?);
        if added == 0 {
            return Err(TlsSetupError::BadClientCa {
                path: ca_path.clone(),
                detail: "no usable CA certificate".into(),
            });
        }
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| TlsSetupError::BadClientCa {
                path: ca_path.clone(),
                detail: e.to_string(),
            })?;
        tls = tls
            .client_ca_root(Certificate::from_pem(ca_pem))
            .client_auth_optional(false);
    }
    Ok(tls)
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|error| TlsSetupError::Read {
        key,
        path: path.to_owned(),
        error,
    })
}

/// Every certificate of a PEM file; at least one.
fn certificates(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::BadPem {
            key,
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            key,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(server_config(&tls(&c, &k, None)).is_ok());
        // The certificate doubles as a client CA.
        assert!(server_config(&tls(&c, &k, Some(&c))).is_ok());
    }

    #[test]
    fn file_problems_are_reported_with_the_file() {
        let f = Files::new();
        let (cert, key) = self_signed();
        let (c, k) = (f.write("c.pem", &cert), f.write("k.pem", &key));
        let missing = f.dir.path().join("missing.pem");
        let err = |cfg: ListenerTlsConfig| server_config(&cfg).unwrap_err().to_string();

        let e = err(tls(&missing, &k, None));
        assert!(
            e.starts_with("tls: reading cert_file ") && e.contains("missing.pem"),
            "{e}"
        );
        let e = err(tls(&c, &missing, None));
        assert!(e.starts_with("tls: reading key_file "), "{e}");
        // Certificate and key swapped.
        let e = err(tls(&k, &c, None));
        assert!(
            e.contains("cert_file") && e.contains("holds no PEM certificate"),
            "{e}"
        );
        let e = err(tls(&c, &c, None));
        assert!(e.contains("holds no PEM private key"), "{e}");
        // A key of another certificate.
        let (_, other_key) = self_signed();
        let other = f.write("other-key.pem", &other_key);
        let e = err(tls(&c, &other, None));
        assert!(e.contains("cert_file") && e.contains("key_file"), "{e}");
        // A client CA file without certificates.
        let e = err(tls(&c, &k, Some(&k)));
        assert!(
            e.contains("client_ca_file") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = err(tls(&c, &k, Some(&missing)));
        assert!(e.starts_with("tls: reading client_ca_file "), "{e}");
        // Incomplete settings (refused by config validation first, and here too).
        let half = ListenerTlsConfig {
            key_file: None,
            ..tls(&c, &k, None)
        };
        assert!(matches!(
            server_config(&half),
            Err(TlsSetupError::Incomplete)
        ));
    }
}
