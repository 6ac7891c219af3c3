//! Prometheus metrics of the forwarder and the HTTP endpoint that serves them (`GET /metrics`).
//!
//! Owns the registry, the metric families and their names (`fjord_forwarder_*`). Workers get
//! per-subscription handles ([`SubscriptionMetrics`]) resolved once, so the delivery path does
//! no label lookups; per-partition gauges are created on assignment and removed on revocation,
//! so a revoked partition does not keep reporting a stale lag.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::error::ForwardError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriptionLabels {
    pub subscription: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub subscription: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub subscription: String,
    pub cluster: String,
    pub topic: String,
    pub partition: i32,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric family; one per process.
pub struct Metrics {
    registry: Registry,
    delivered: Family<SubscriptionLabels, Counter>,
    acked: Family<SubscriptionLabels, Counter>,
    retried: Family<SubscriptionLabels, Counter>,
    retry_topic: Family<SubscriptionLabels, Counter>,
    dead_lettered: Family<SubscriptionLabels, Counter>,
    dead_lettered_without_payload: Family<SubscriptionLabels, Counter>,
    park_errors: Family<SubscriptionLabels, Counter>,
    failed: Family<SubscriptionLabels, Gauge>,
    in_flight: Family<SubscriptionLabels, Gauge>,
    pending: Family<SubscriptionLabels, Gauge>,
    latency: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
    commit_lag: Family<PartitionLabels, Gauge>,
    committed: Family<PartitionLabels, Gauge>,
    paused: Family<PartitionLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fjord_forwarder");
        let m = Metrics {
            delivered: Family::default(),
            acked: Family::default(),
            retried: Family::default(),
            retry_topic: Family::default(),
            dead_lettered: Family::default(),
            dead_lettered_without_payload: Family::default(),
            park_errors: Family::default(),
            failed: Family::default(),
            in_flight: Family::default(),
            pending: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            commit_lag: Family::default(),
            committed: Family::default(),
            paused: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "delivered",
            "Delivery attempts sent to the endpoint",
            m.delivered.clone(),
        );
        registry.register(
            "acked",
            "Records acknowledged by the endpoint",
            m.acked.clone(),
        );
        registry.register(
            "retried",
            "Attempts that ended in a retry (RETRY, or a retryable status)",
            m.retried.clone(),
        );
        registry.register(
            "retry_topic",
            "Records written to the retry topic",
            m.retry_topic.clone(),
        );
        registry.register(
            "dead_lettered",
            "Records written to the dead-letter topic",
            m.dead_lettered.clone(),
        );
        registry.register(
            "dead_lettered_without_payload",
            "Dead-letter records written without their value and user headers (too large for the cluster)",
            m.dead_lettered_without_payload.clone(),
        );
        registry.register(
            "park_errors",
            "Failed tries to write a record to the retry or dead-letter topic",
            m.park_errors.clone(),
        );
        registry.register(
            "failed",
            "1 once the subscription has stopped on a failure (see the log for the cause)",
            m.failed.clone(),
        );
        registry.register(
            "in_flight",
            "Deliveries waiting for the endpoint's answer",
            m.in_flight.clone(),
        );
        registry.register(
            "pending",
            "Records fetched and not finished",
            m.pending.clone(),
        );
        registry.register(
            "handler_latency_seconds",
            "Time from sending a delivery to its verdict, by verdict",
            m.latency.clone(),
        );
        registry.register(
            "commit_lag",
            "Records between the committed offset and the highest fetched offset, per partition",
            m.commit_lag.clone(),
        );
        registry.register(
            "committed_offset",
            "Last committed offset, per partition",
            m.committed.clone(),
        );
        registry.register(
            "paused",
            "1 while fetching of the partition is paused for backpressure",
            m.paused.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Handles for one subscription.
    pub fn subscription(&self, name: &str) -> SubscriptionMetrics {
        let l = SubscriptionLabels {
            subscription: name.to_string(),
        };
        let latency = |outcome: &str| {
            self.latency.get_or_create_owned(&OutcomeLabels {
                subscription: name.to_string(),
                outcome: outcome.to_string(),
            })
        };
        SubscriptionMetrics {
            delivered: self.delivered.get_or_create_owned(&l),
            acked: self.acked.get_or_create_owned(&l),
            retried: self.retried.get_or_create_owned(&l),
            retry_topic: self.retry_topic.get_or_create_owned(&l),
            dead_lettered: self.dead_lettered.get_or_create_owned(&l),
            dead_lettered_without_payload: self
                .dead_lettered_without_payload
                .get_or_create_owned(&l),
            park_errors: self.park_errors.get_or_create_owned(&l),
            failed: self.failed.get_or_create_owned(&l),
            in_flight: self.in_flight.get_or_create_owned(&l),
            pending: self.pending.get_or_create_owned(&l),
            latency_ack: latency("ack"),
            latency_retry: latency("retry"),
            latency_dead_letter: latency("dead_letter"),
        }
    }

    /// Gauges of one assigned partition.
    pub fn partition(&self, labels: PartitionLabels) -> PartitionMetrics {
        PartitionMetrics {
            commit_lag: self.commit_lag.get_or_create_owned(&labels),
            committed: self.committed.get_or_create_owned(&labels),
            paused: self.paused.get_or_create_owned(&labels),
            labels,
        }
    }

    /// Forgets a revoked partition's gauges.
    pub fn remove_partition(&self, labels: &PartitionLabels) {
        self.commit_lag.remove(labels);
        self.committed.remove(labels);
        self.paused.remove(labels);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }
}

/// Per-subscription metric handles.
#[derive(Clone)]
pub struct SubscriptionMetrics {
    pub delivered: Counter,
    pub acked: Counter,
    pub retried: Counter,
    pub retry_topic: Counter,
    pub dead_lettered: Counter,
    pub dead_lettered_without_payload: Counter,
    pub park_errors: Counter,
    pub failed: Gauge,
    pub in_flight: Gauge,
    pub pending: Gauge,
    latency_ack: Histogram,
    latency_retry: Histogram,
    latency_dead_letter: Histogram,
}

impl SubscriptionMetrics {
    pub fn observe_latency(&self, verdict: &str, elapsed: Duration) {
        let h = match verdict {
            "ack" => &self.latency_ack,
            "dead_letter" => &self.latency_dead_letter,
            _ => &self.latency_retry,
        };
        h.observe(elapsed.as_secs_f64());
    }
}

/// Gauges of one partition.
pub struct PartitionMetrics {
    pub labels: PartitionLabels,
    pub commit_lag: Gauge,
    pub committed: Gauge,
    pub paused: Gauge,
}

/// Serves `GET /metrics` on `addr` until `cancel`.
pub async fn serve(
    metrics: Arc<Metrics>,
    addr: &str,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ForwardError> {
    let err = |source| ForwardError::Metrics {
        addr: addr.to_string(),
        source,
    };
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    );
    Ok(tokio::spawn(async move {
        let shutdown = async move { cancel.cancelled().await };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_partition_gauges_are_exported_and_removed() {
        let m = Metrics::new();
        let s = m.subscription("orders");
        s.delivered.inc();
        s.acked.inc();
        s.observe_latency("ack", Duration::from_millis(3));
        let labels = PartitionLabels {
            subscription: "orders".into(),
            cluster: "a".into(),
            topic: "t".into(),
            partition: 2,
        };
        let p = m.partition(labels.clone());
        p.commit_lag.set(17);
        let text = m.encode();
        assert!(
            text.contains("fjord_forwarder_delivered_total{subscription=\"orders\"} 1"),
            "{text}"
        );
        assert!(text.contains("fjord_forwarder_handler_latency_seconds_count{subscription=\"orders\",outcome=\"ack\"} 1"), "{text}");
        assert!(text.contains("partition=\"2\"} 17"), "{text}");
        m.remove_partition(&labels);
        assert!(!m.encode().contains("partition=\"2\""));
    }
}
