//! The gRPC service `fjord.gateway.v1.Gateway`: turns wire requests into [`Gateway::start`]
//! calls and outcomes into responses, and counts requests.
//!
//! ProduceStream: one task per stream reads batches in order and starts each before reading the
//! next (so they reach the clusters in order), keeps at most `stream_inflight_batches` in flight,
//! and answers them in the order they came. A request-level error ends the stream with that
//! status after the batches before it were answered. Shutdown stops reading and drains, for at
//! most `drain_timeout_ms` (a caller that stopped reading cannot hold the gateway up).
//!
//! Every request (and every batch of a stream) is counted exactly once in
//! `fjord_gateway_requests_total`, also when it is dropped unanswered ([`RequestCount`]).
//!
//! Every request (and every stream, once) is authenticated first ([`CallerAuth`]); a stream
//! authenticated by a token ends when the token expires.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Caller, CallerAuth};
use crate::gateway::Gateway;
use crate::metrics::{MethodLabels, Metrics, RequestLabels};
use crate::pb;
use crate::status::{code_label, to_result, RequestError};

pub use crate::auth::CALLER_METADATA;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct GatewayService {
    gateway: Arc<Gateway>,
    auth: Arc<CallerAuth>,
    shutdown: CancellationToken,
}

impl GatewayService {
    pub fn new(gateway: Arc<Gateway>, auth: Arc<CallerAuth>, shutdown: CancellationToken) -> Self {
        Self {
            gateway,
            auth,
            shutdown,
        }
    }

    fn count(&self, method: &'static str, deadline: Option<Instant>) -> RequestCount {
        RequestCount {
            metrics: self.gateway.metrics().clone(),
            method,
            started: Instant::now(),
            deadline,
            done: false,
        }
    }
}

/// Counts one request (or one batch of a stream) once, however it ends: with its code when it
/// is answered; dropped unanswered (the caller cancelled, its deadline passed and the request
/// was dropped, the stream went away) as `deadline_exceeded` if its deadline had passed, else
/// `cancelled`.
#[derive(Debug)]
struct RequestCount {
    metrics: Arc<Metrics>,
    method: &'static str,
    started: Instant,
    deadline: Option<Instant>,
    done: bool,
}

impl RequestCount {
    fn finish(mut self, code: tonic::Code) {
        self.done = true;
        self.record(code);
    }

    fn record(&self, code: tonic::Code) {
        let method = self.method;
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                method,
                code: code_label(code),
            })
            .inc();
        self.metrics
            .request_seconds
            .get_or_create(&MethodLabels { method })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for RequestCount {
    fn drop(&mut self) {
        if !self.done {
            let code = match self.deadline {
                Some(d) if Instant::now() >= d => tonic::Code::DeadlineExceeded,
                _ => tonic::Code::Cancelled,
            };
            self.record(code);
        }
    }
}

/// The caller's deadline from the `grpc-timeout` header (`<digits><unit>`, units H M S m u n).
pub fn grpc_timeout<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<pb::ProduceStreamResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::gateway_server::Gateway for GatewayService {
    async fn produce_batch(
        &self,
        request: Request<pb::ProduceBatchRequest>,
    ) -> Result<Response<pb::ProduceBatchResponse>, Status> {
        let timeout = grpc_timeout(&request);
        let count = self.count("ProduceBatch", timeout.map(|t| Instant::now() + t));
        let result = async {
            if self.shutdown.is_cancelled() {
                return Err(RequestError::ShuttingDown);
            }
            let caller = self.auth.authenticate(&request).await?;
            let outcomes = self
                .gateway
                .start_as(
                    &caller.name,
                    caller.verified.as_deref(),
                    request.into_inner(),
                    timeout,
                )
                .await?
                .await;
            Ok(pb::ProduceBatchResponse {
                results: outcomes.into_iter().map(to_result).collect(),
            })
        }
        .await;
        match result {
            Ok(response) => {
                count.finish(tonic::Code::Ok);
                Ok(Response::new(response))
            }
            Err(e) => {
                tracing::debug!(error = %e, "ProduceBatch refused");
                count.finish(e.code());
                Err(e.into())
            }
        }
    }

    type ProduceStreamStream = ResponseStream;

    async fn produce_stream(
        &self,
        request: Request<Streaming<pb::ProduceStreamRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        if self.shutdown.is_cancelled() {
            self.count("ProduceStream", None)
                .finish(RequestError::ShuttingDown.code());
            return Err(RequestError::ShuttingDown.into());
        }
        let peer = request.remote_addr();
        let caller = match self.auth.authenticate(&request).await {
            Ok(caller) => caller,
            Err(e) => {
                self.count("ProduceStream", None).finish(e.code());
                return Err(e.into());
            }
        };
        // The caller's deadline is for the whole stream: each batch gets what is left of it.
        let deadline = grpc_timeout(&request).map(|t| Instant::now() + t);
        let inbound = request.into_inner();
        let limit = self.gateway.snapshot().limits.stream_inflight_batches;
        let (tx, rx) = mpsc::channel(limit);
        tokio::spawn(run_stream(
            self.clone(),
            caller,
            peer,
            deadline,
            inbound,
            tx,
            limit,
        ));
        let out = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(out)))
    }
}

async fn run_stream(
    service: GatewayService,
    caller: Caller,
    peer: Option<std::net::SocketAddr>,
    deadline: Option<Instant>,
    mut inbound: Streaming<pb::ProduceStreamRequest>,
    tx: mpsc::Sender<Result<pb::ProduceStreamResponse, Status>>,
    limit: usize,
) {
    let mut in_flight = FuturesOrdered::new();
    let mut reading = true;
    let mut failure: Option<Status> = None;
    // Set at shutdown: answers not delivered by then are dropped.
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        let can_read = reading && in_flight.len() < limit;
        tokio::select! {
            _ = service.shutdown.cancelled(), if drain_until.is_none() => {
                let drain = Duration::from_millis(service.gateway.config().drain_timeout_ms);
                drain_until = Some(tokio::time::Instant::now() + drain);
                if reading {
                    reading = false;
                    failure = Some(RequestError::ShuttingDown.into());
                }
            }
            _ = sleep_until(drain_until) => {
                tracing::warn!(caller = caller.name, batches = in_flight.len(),
                    "ProduceStream: not drained within drain_timeout_ms; dropping it");
                return;
            }
            next = inbound.next(), if can_read => match next {
                Some(Ok(req)) => {
                    let id = req.request_id;
                    let batch = req.batch.unwrap_or_default();
                    let count = service.count("ProduceStream", deadline);
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    let started = match service.auth.check_fresh(&caller, peer) {
                        Ok(()) => service
                            .gateway
                            .start_as(&caller.name, caller.verified.as_deref(), batch, left)
                            .await,
                        Err(e) => Err(e),
                    };
                    match started {
                        Ok(outcomes) => in_flight.push_back(async move {
                            (id, outcomes.await, count)
                        }),
                        Err(e) => {
                            count.finish(e.code());
                            reading = false;
                            failure = Some(e.into());
                        }
                    }
                }
                Some(Err(status)) => {
                    tracing::debug!(%status, "ProduceStream: the caller's stream failed");
                    reading = false;
                }
                None => reading = false,
            },
            Some((id, outcomes, count)) = in_flight.next(), if !in_flight.is_empty() => {
                count.finish(tonic::Code::Ok);
                let response = pb::ProduceStreamResponse {
                    request_id: id,
                    results: outcomes.into_iter().map(to_result).collect(),
                };
                if !send(&tx, Ok(response), drain_until).await {
                    return; // the caller went away, or stopped reading while we drain
                }
            }
            else => break,
        }
        if !reading && in_flight.is_empty() {
            break;
        }
    }
    if let Some(status) = failure {
        send(&tx, Err(status), drain_until).await;
    }
}

/// Sleeps until `until`; forever if `None`.
async fn sleep_until(until: Option<tokio::time::Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Sends an answer of a stream; false if the caller went away, or did not take it before
/// `until` (shutdown's drain).
async fn send(
    tx: &mpsc::Sender<Result<pb::ProduceStreamResponse, Status>>,
    item: Result<pb::ProduceStreamResponse, Status>,
    until: Option<tokio::time::Instant>,
) -> bool {
    match until {
        None => tx.send(item).await.is_ok(),
        Some(t) => matches!(tokio::time::timeout_at(t, tx.send(item)).await, Ok(Ok(()))),
    }
}
