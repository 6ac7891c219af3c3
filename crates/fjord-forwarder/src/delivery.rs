//! The delivery client: one attempt of one record against the endpoint.
//!
//! Owns the [`Deliverer`] seam (the worker depends on the trait, tests substitute it) and its
//! gRPC implementation. Invariants: an attempt always ends in a [`Verdict`] within the delivery
//! timeout (a slow or hung endpoint counts as DEADLINE_EXCEEDED, a refused connection as
//! UNAVAILABLE: see `outcome.rs` for the table); nothing here retries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tonic::transport::{Channel, Endpoint};

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
    /// A client for `endpoints` (`http://host:port` each, at least one); connects on first use
    /// and reconnects after failures.
    pub fn new<S: AsRef<str>>(endpoints: &[S]) -> Result<Self, String> {
        let mut clients = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let endpoint = Endpoint::from_shared(endpoint.as_ref().to_string())
                .map_err(|e| format!("{}: {e}", endpoint.as_ref()))?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(true);
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
