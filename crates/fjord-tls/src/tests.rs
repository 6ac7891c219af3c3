use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// A throwaway certificate authority whose files live in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
        }
    }

    /// A certificate with common name `cn` (and organization `Example`): (cert, key) PEM.
    fn issue(&self, cn: &str, server: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        // Most general first, as `openssl req -subj /O=Example/CN=...` writes it.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![if server {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = params.signed_by(&key, &*self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn files(&self, cn: &str, auth: ClientAuth) -> TlsFiles {
        let (cert, key) = self.issue(cn, true);
        TlsFiles {
            cert: self.write("server.pem", &cert),
            key: self.write("server.key", &key),
            client_ca: Some(self.write("ca.pem", &self.ca.pem())),
            client_auth: auth,
        }
    }
}

/// Handshakes with `server` as a client trusting `trust`, presenting `identity`; returns the
/// subject of the server's certificate and the client certificate's subject as the server saw
/// it (`None`: no certificate), or the error.
async fn handshake(
    server: &ReloadingTls,
    trust: &Pki,
    identity: Option<(String, String)>,
) -> Result<(String, Option<String>), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(trust.ca.pem().as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let (client_io, server_io) = tokio::io::duplex(64 << 10);
    let acceptor = server.acceptor();
    let accept = tokio::spawn(async move {
        let mut stream = acceptor
            .accept(server_io)
            .await
            .map_err(|e| e.to_string())?;
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| subject_name(c));
        // Proves the session works both ways (TLS 1.3 reports a refused client certificate
        // only here, after the client's handshake finished).
        let mut byte = [0u8; 1];
        stream
            .read_exact(&mut byte)
            .await
            .map_err(|e| e.to_string())?;
        stream.write_all(&byte).await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    });
    let mut stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), client_io)
        .await
        .map_err(|e| e.to_string())?;
    let server_subject = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| subject_name(c))
        .unwrap();
    stream.write_all(b"x").await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    let echoed = stream
        .read_exact(&mut byte)
        .await
        .map_err(|e| e.to_string());
    let peer = accept.await.unwrap()?;
    echoed?;
    Ok((server_subject, peer))
}

#[tokio::test]
async fn a_required_client_certificate_names_the_client() {
    let pki = Pki::new("main");
    let tls = ReloadingTls::new(pki.files("broker", ClientAuth::Required)).unwrap();
    let (server, client) = handshake(&tls, &pki, Some(pki.issue("writer", false)))
        .await
        .unwrap();
    assert_eq!(server, "CN=broker,O=Example");
    assert_eq!(client.as_deref(), Some("CN=writer,O=Example"));

    // Without a certificate, or with one from another CA: refused.
    assert!(handshake(&tls, &pki, None).await.is_err());
    let stranger = Pki::new("stranger");
    assert!(handshake(&tls, &pki, Some(stranger.issue("writer", false)))
        .await
        .is_err());
}

#[tokio::test]
async fn a_requested_client_certificate_may_be_left_out() {
    let pki = Pki::new("main");
    let tls = ReloadingTls::new(pki.files("broker", ClientAuth::Requested)).unwrap();
    let (_, client) = handshake(&tls, &pki, None).await.unwrap();
    assert_eq!(client, None);
    let (_, client) = handshake(&tls, &pki, Some(pki.issue("reader", false)))
        .await
        .unwrap();
    assert_eq!(client.as_deref(), Some("CN=reader,O=Example"));
}

#[tokio::test]
async fn changed_files_are_reloaded_and_broken_ones_leave_the_old_in_force() {
    let pki = Pki::new("main");
    let files = pki.files("first", ClientAuth::None);
    let tls = ReloadingTls::new(files.clone()).unwrap();
    assert!(!tls.check().unwrap(), "nothing changed");
    assert_eq!(
        handshake(&tls, &pki, None).await.unwrap().0,
        "CN=first,O=Example"
    );

    // A new certificate and key: new handshakes present it.
    let (cert, key) = pki.issue("second", true);
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, key).unwrap();
    assert!(tls.check().unwrap());
    assert_eq!(
        handshake(&tls, &pki, None).await.unwrap().0,
        "CN=second,O=Example"
    );

    // A certificate whose key has not been written yet: refused, the old pair stays, and the
    // same broken files are not reported again.
    let (cert, key) = pki.issue("third", true);
    std::fs::write(&files.cert, format!("{cert}\n")).unwrap();
    assert!(matches!(tls.check(), Err(TlsError::Identity { .. })));
    assert!(!tls.check().unwrap());
    assert_eq!(
        handshake(&tls, &pki, None).await.unwrap().0,
        "CN=second,O=Example"
    );
    std::fs::write(&files.key, key).unwrap();
    assert!(tls.check().unwrap());
    assert_eq!(
        handshake(&tls, &pki, None).await.unwrap().0,
        "CN=third,O=Example"
    );
    assert_eq!(tls.reloads.load(Ordering::Relaxed), 2);
    assert_eq!(tls.errors.load(Ordering::Relaxed), 1);
}

#[test]
fn bad_files_are_named_in_the_error() {
    let pki = Pki::new("main");
    let good = pki.files("broker", ClientAuth::Required);
    let missing = TlsFiles {
        cert: pki.dir.path().join("nope.pem"),
        ..good.clone()
    };
    let err = server_config(&missing).unwrap_err().to_string();
    assert!(err.contains("nope.pem"), "{err}");

    let not_pem = TlsFiles {
        key: pki.write("junk.key", "not a key"),
        ..good.clone()
    };
    let err = server_config(&not_pem).unwrap_err().to_string();
    assert!(
        err.contains("junk.key") && err.contains("no PEM private key"),
        "{err}"
    );

    let (_, other_key) = pki.issue("other", true);
    let mismatched = TlsFiles {
        key: pki.write("other.key", &other_key),
        ..good.clone()
    };
    assert!(matches!(
        server_config(&mismatched),
        Err(TlsError::Identity { .. })
    ));

    let no_ca = TlsFiles {
        client_ca: None,
        ..good.clone()
    };
    let err = server_config(&no_ca).unwrap_err().to_string();
    assert!(err.contains("needs a client CA file"), "{err}");

    let ca_without_certs = TlsFiles {
        client_ca: Some(pki.write("empty-ca.pem", "")),
        ..good
    };
    let err = server_config(&ca_without_certs).unwrap_err().to_string();
    assert!(err.contains("empty-ca.pem"), "{err}");
}

#[test]
fn client_auth_parses_as_kafka_writes_it() {
    assert_eq!("required".parse(), Ok(ClientAuth::Required));
    assert_eq!("REQUESTED".parse(), Ok(ClientAuth::Requested));
    assert_eq!("none".parse(), Ok(ClientAuth::None));
    assert!("maybe".parse::<ClientAuth>().is_err());
}
