//! The gateway's Prometheus metrics and their endpoint (`GET /metrics`, OpenMetrics text).
//!
//! Owns every counter, gauge and histogram of the gateway; components get an `Arc<Metrics>` and
//! update them where the event happens (one place per event, so nothing is counted twice).
//! Metric names start with `fjord_gateway_`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    /// gRPC status code name (`ok`, `invalid_argument`, ...).
    pub code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The per-message error code (`timeout`, `no_healthy_cluster`, ...).
    pub code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub cluster: String,
    pub to: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric of the gateway.
#[derive(Debug)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: HistogramFamily<MethodLabels>,
    pub messages_delivered: Family<ClusterLabels, Counter>,
    pub bytes_delivered: Family<ClusterLabels, Counter>,
    pub message_errors: Family<ErrorLabels, Counter>,
    pub produce_seconds: HistogramFamily<ClusterLabels>,
    pub retries: Family<ClusterLabels, Counter>,
    pub breaker_state: Family<ClusterLabels, Gauge>,
    pub breaker_transitions: Family<TransitionLabels, Counter>,
    pub inflight_bytes: Gauge<i64, AtomicI64Compat>,
    pub config_reloads: Family<ResultLabels, Counter>,
    /// Refusals by a caller's message-rate limit.
    pub rate_limited: Counter,
    /// Refusals by a caller's byte-rate limit.
    pub byte_rate_limited: Counter,
    /// Caller authentications with `[auth]`, by result (ok, refused).
    pub authentications: Family<ResultLabels, Counter>,
    /// `[auth]`'s JWKS reloads, once its keys are loaded.
    pub jwks: OnceLock<Arc<fjord_jwks::JwksStats>>,
}

/// The gauge's atomic (prometheus-client's default for `Gauge<i64>`).
pub type AtomicI64Compat = std::sync::atomic::AtomicI64;

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            messages_delivered: Family::default(),
            bytes_delivered: Family::default(),
            message_errors: Family::default(),
            produce_seconds: Family::new_with_constructor(latency_histogram),
            retries: Family::default(),
            breaker_state: Family::default(),
            breaker_transitions: Family::default(),
            inflight_bytes: Gauge::default(),
            config_reloads: Family::default(),
            rate_limited: Counter::<u64, AtomicU64>::default(),
            byte_rate_limited: Counter::<u64, AtomicU64>::default(),
            authentications: Family::default(),
            jwks: OnceLock::new(),
        }
    }
}

impl Metrics {
    /// A registry exposing all metrics.
    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut r = Registry::with_prefix("fjord_gateway");
        r.register(
            "requests",
            "gRPC requests, by method and status code",
            self.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time to answer a request (a ProduceStream batch counts as one)",
            self.request_seconds.clone(),
        );
        r.register(
            "messages_delivered",
            "Messages stored, by cluster",
            self.messages_delivered.clone(),
        );
        r.register(
            "bytes_delivered",
            "Key, value and header bytes of messages stored, by cluster",
            self.bytes_delivered.clone(),
        );
        r.register(
            "message_errors",
            "Messages answered with an error, by error code",
            self.message_errors.clone(),
        );
        r.register(
            "produce_duration_seconds",
            "Time a cluster took to store a message or fail, by cluster",
            self.produce_seconds.clone(),
        );
        r.register(
            "retries",
            "Messages retried on another cluster after this one failed, by cluster",
            self.retries.clone(),
        );
        r.register(
            "breaker_state",
            "Circuit breaker state by cluster: 0 closed, 1 open, 2 half-open",
            self.breaker_state.clone(),
        );
        r.register(
            "breaker_transitions",
            "Circuit breaker state changes, by cluster and new state",
            self.breaker_transitions.clone(),
        );
        r.register(
            "inflight_bytes",
            "Bytes of messages held by requests in progress",
            self.inflight_bytes.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads, by result (ok, error)",
            self.config_reloads.clone(),
        );
        r.register(
            "rate_limited",
            "Requests refused by a caller's message-rate limit",
            self.rate_limited.clone(),
        );
        r.register(
            "byte_rate_limited",
            "Requests refused by a caller's byte-rate limit",
            self.byte_rate_limited.clone(),
        );
        r.register(
            "authentications",
            "Caller authentications with [auth] (bearer tokens), by result (ok, refused)",
            self.authentications.clone(),
        );
        r.register_collector(Box::new(JwksCollector(self.clone())));
        r
    }
}

/// `[auth]`'s JWKS reload counters, read at scrape time (nothing without `[auth]`).
#[derive(Debug)]
struct JwksCollector(Arc<Metrics>);

impl Collector for JwksCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(jwks) = self.0.jwks.get() else {
            return Ok(());
        };
        for (name, help, value) in [
            (
                "jwks_reloads",
                "Key sets (JWKS) of [auth] loaded, the first included",
                &jwks.reloads,
            ),
            (
                "jwks_reload_errors",
                "JWKS reloads that failed or found no usable key (the previous keys stay in force)",
                &jwks.errors,
            ),
        ] {
            let counter = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value.load(Ordering::Relaxed)).encode(counter)?;
        }
        Ok(())
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let registry = Arc::new(metrics.registry());
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move { render(&registry) }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

fn render(registry: &Registry) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => (
            [(
                CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed").into_response(),
    }
}
