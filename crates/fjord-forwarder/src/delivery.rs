//! The delivery client: one attempt of one record against the endpoint.
//!
//! Owns the [`Deliverer`] seam (the worker depends on the trait, tests substitute it) and its
//! gRPC implementation. Invariants: an attempt always ends in a [`Verdict`] within the delivery
//! timeout (a slow or hung endpoint counts as DEADLINE_EXCEEDED, a refused connection as
//! UNAVAILABLE: see `outcome.rs` for the table); nothing here retries.
//!
//! `https://` endpoints use TLS ([`client_tls`]): the endpoint's certificate must chain to the
//! subscription's `ca_file`, and with `cert_file`/`key_file` the forwarder presents a client
//! certificate (mutual TLS). The files are read and checked once, at startup.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::EndpointTlsConfig;
use crate::outcome::{self, Verdict};
use crate::proto::record_handler_client::RecordHandlerClient;
use crate::proto::Delivery;

/// Delivers one attempt.
pub trait Deliverer: Send + Sync + 'static {
    fn deliver(&self, delivery: Delivery, timeout: Duration) -> BoxFuture<'static, Verdict>;
}

/// [`Deliverer`] over gRPC (`fjord.forwarder.v1.RecordHandler/Deliver`): one lazily
/// (re)connecting HTTP/2 channel per endpoint replica, each multiplexing many calls; calls go
/// round-robin over the replicas.
#[derive(Clone)]
pub struct GrpcDeliverer {
    clients: Arc<[RecordHandlerClient<Channel>]>,
    next: Arc<AtomicUsize>,
}

impl GrpcDeliverer {
    /// A client for `endpoints` (`http://host:port` or, with `tls`, `https://host:port` each,
    /// at least one); connects on first use and reconnects after failures.
    pub fn new<S: AsRef<str>>(
        endpoints: &[S],
        tls: Option<&ClientTlsConfig>,
    ) -> Result<Self, String> {
        let mut clients = Vec::with_capacity(endpoints.len());
        for url in endpoints {
            let url = url.as_ref();
            let mut endpoint = Endpoint::from_shared(url.to_string())
                .map_err(|e| format!("{url}: {e}"))?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(true);
            if let Some(tls) = tls {
                endpoint = endpoint
                    .tls_config(tls.clone())
                    .map_err(|e| format!("{url}: tls: {e}"))?;
            }
            clients.push(RecordHandlerClient::new(endpoint.connect_lazy()));
        }
        if clients.is_empty() {
            return Err("no endpoint".into());
        }
        Ok(GrpcDeliverer {
            clients: clients.into(),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }
}

/// Reads and checks the files of `tls` (each error names its file: unreadable, no certificate,
/// a key that is not the certificate's) and builds tonic's client TLS settings.
pub fn client_tls(tls: &EndpointTlsConfig) -> Result<ClientTlsConfig, String> {
    let identity = tls.cert_file.as_deref().zip(tls.key_file.as_deref());
    // fjord-tls checks the files the way the brokers' clients do; tonic then reads the PEM.
    fjord_tls::client_config(&tls.ca_file, identity).map_err(|e| e.to_string())?;
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("tls: reading {what} {}: {e}", path.display()))
    };
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("CA", &tls.ca_file)?))
        .timeout(Duration::from_secs(10));
    if let Some((cert, key)) = identity {
        config = config.identity(Identity::from_pem(
            read("certificate", cert)?,
            read("key", key)?,
        ));
    }
    if let Some(domain) = &tls.domain {
        config = config.domain_name(domain.clone());
    }
    Ok(config)
}

impl Deliverer for GrpcDeliverer {
    fn deliver(&self, delivery: Delivery, timeout: Duration) -> BoxFuture<'static, Verdict> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        let mut client = self.clients[i].clone();
        Box::pin(async move {
            let mut request = tonic::Request::new(delivery);
            request.set_timeout(timeout);
            match tokio::time::timeout(timeout, client.deliver(request)).await {
                Ok(Ok(reply)) => outcome::from_outcome(reply.get_ref()),
                Ok(Err(status)) => outcome::from_status(status.code(), status.message()),
                Err(_) => outcome::from_status(
                    tonic::Code::DeadlineExceeded,
                    &format!("no answer within the delivery timeout ({timeout:?})"),
                ),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tls(ca: PathBuf, identity: Option<(PathBuf, PathBuf)>) -> EndpointTlsConfig {
        let (cert_file, key_file) = identity.unzip();
        EndpointTlsConfig {
            ca_file: ca,
            cert_file,
            key_file,
            domain: None,
        }
    }

    #[tokio::test]
    async fn tls_files_are_checked_with_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["handler.test".to_owned()]).unwrap();
        let client = rcgen::generate_simple_self_signed(vec!["client".to_owned()]).unwrap();
        let write = |name: &str, text: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca_pem = write("ca.pem", ca.cert.pem());
        let cert = write("client.pem", client.cert.pem());
        let key = write("client.key", client.signing_key.serialize_pem());
        let other_key = write("other.key", ca.signing_key.serialize_pem());
        let missing = dir.path().join("missing.pem");

        let config = client_tls(&tls(ca_pem.clone(), None)).unwrap();
        assert!(client_tls(&tls(ca_pem.clone(), Some((cert.clone(), key.clone())))).is_ok());
        // The settings go onto https channels (connected lazily: nothing listens here).
        let d = GrpcDeliverer::new(&["https://127.0.0.1:1"], Some(&config)).unwrap();
        assert_eq!(d.clients.len(), 1);

        let err = client_tls(&tls(missing.clone(), None)).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
        let err = client_tls(&tls(key.clone(), None)).unwrap_err();
        assert!(
            err.contains("client.key") && err.contains("no PEM certificate"),
            "{err}"
        );
        let err = client_tls(&tls(ca_pem.clone(), Some((cert.clone(), other_key)))).unwrap_err();
        assert!(
            err.contains("client.pem") && err.contains("other.key"),
            "{err}"
        );
        let err = client_tls(&tls(ca_pem, Some((cert, missing)))).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
    }
}
