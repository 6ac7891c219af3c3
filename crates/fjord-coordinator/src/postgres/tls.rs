//! TLS to PostgreSQL (rustls, through `tokio-postgres-rustls`).
//!
//! Connections use TLS when the URL asks for it with `sslmode=require`; then the server's
//! certificate is always verified (chain and host name, like libpq's `verify-full`) against the
//! system's roots plus the PEM certificates of `PostgresOptions::ca_file` (for example a cloud
//! provider's database CA bundle). Without `sslmode` in the URL, or with `sslmode=disable`,
//! connections are plain TCP. (libpq's `prefer`, which silently falls back to plain text, and
//! `require` without verification are deliberately not offered.)

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{CoordinatorError, Result};

/// The connector every connection of a coordinator uses (plain TCP unless the config requires
/// TLS; see the module doc).
pub(super) type Tls = MakeRustlsConnect;

/// Decides plain or TLS for `config` (setting its `sslmode`) and builds the connector.
pub(super) fn configure(
    config: &mut tokio_postgres::Config,
    ca_file: Option<&Path>,
) -> Result<Tls> {
    let invalid = |what: String| CoordinatorError::Invalid(format!("PostgreSQL TLS: {what}"));
    if config.get_ssl_mode() != SslMode::Require {
        // `prefer` (also the default when the URL says nothing) would try TLS and fall back to
        // plain text: connect plainly instead, and never fail on an unverifiable certificate.
        config.ssl_mode(SslMode::Disable);
        if let Some(file) = ca_file {
            return Err(invalid(format!(
                "a CA file ({}) is given but the URL does not ask for TLS: add sslmode=require",
                file.display()
            )));
        }
    }
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "skipping a system root certificate");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(file) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
            .map_err(|e| invalid(format!("reading {}: {e}", file.display())))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| invalid(format!("parsing {}: {e}", file.display())))?;
        if certs.is_empty() {
            return Err(invalid(format!(
                "{} holds no PEM certificate",
                file.display()
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| invalid(format!("a certificate in {}: {e}", file.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(tls))
}
