//! The gateway's live state and request admission: the current [`Snapshot`] (routes, clusters,
//! delivery settings), configuration reloads, and the path a batch takes from the wire to the
//! [`Dispatcher`]: validate, route, rate-limit, reserve in-flight bytes, start.
//!
//! Invariants:
//! - a request works with one snapshot from start to end; a reload swaps in a new snapshot
//!   atomically and never changes one in use;
//! - a cluster whose connection settings are unchanged keeps its producer and breaker across
//!   reloads (so a weight change never drops connections or health history); a changed or new
//!   cluster gets a fresh producer; a removed one is flushed and dropped in the background;
//! - the snapshot lock is held only to clone an `Arc`, never across an `.await`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::backend::Producer;
use crate::breaker::Settings;
use crate::cluster::{Cluster, Health};
use crate::config::{
    CallerConfig, ClusterConfig, ConfigError, DeliveryConfig, GatewayConfig, LimitsConfig,
};
use crate::dispatch::{count_failures, message_bytes, Batch, Dispatcher, MessageOutcome};
use crate::hlc::{Clock, Hlc};
use crate::kafka::KafkaSetupError;
use crate::limits::{Budget, InflightBytes, Rate, RateLimiter};
use crate::metrics::Metrics;
use crate::pb;
use crate::routing::RouteTable;
use crate::status::RequestError;

/// Why the gateway could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsSetupError),
    #[error("loading the JWKS of [auth]: {0}")]
    Jwks(#[from] fjord_jwks::JwksError),
}

/// Builds the producer of a cluster (librdkafka in production, in-memory in tests).
pub trait ProducerFactory: Send + Sync {
    fn create(
        &self,
        name: &str,
        config: &ClusterConfig,
        delivery: &DeliveryConfig,
        health: Arc<Health>,
    ) -> Result<Arc<dyn Producer>, GatewayError>;
}

/// What a request works with, swapped whole on reload.
#[derive(Debug)]
pub struct Snapshot {
    pub routes: RouteTable,
    pub clusters: BTreeMap<Arc<str>, Arc<Cluster>>,
    pub delivery: DeliveryConfig,
    pub limits: LimitsConfig,
    limiter: Arc<RateLimiter>,
    /// `[[caller]]` by name; empty: every caller may produce to every topic.
    callers: BTreeMap<String, CallerConfig>,
}

/// The running gateway, shared by the gRPC service, the reloader and the prober.
pub struct Gateway {
    factory: Box<dyn ProducerFactory>,
    dispatcher: Arc<Dispatcher>,
    metrics: Arc<Metrics>,
    inflight: Arc<InflightBytes>,
    snapshot: RwLock<Arc<Snapshot>>,
    /// The configuration in force; reloads are serialized on it.
    config: Mutex<GatewayConfig>,
    /// Wall-clock time (the HLC's, and tokens' expiry).
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("snapshot", &self.snapshot)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    pub fn new(
        config: GatewayConfig,
        factory: Box<dyn ProducerFactory>,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, GatewayError> {
        config.validate()?;
        let dispatcher = Arc::new(Dispatcher::new(
            Hlc::new(clock.clone()),
            config.resolved_gateway_id(),
            metrics.clone(),
        ));
        let snapshot = build_snapshot(&config, None, &*factory, &metrics)?;
        Ok(Self {
            factory,
            dispatcher,
            inflight: Arc::new(InflightBytes::new(
                config.limits.max_inflight_bytes,
                metrics.inflight_bytes.clone(),
            )),
            metrics,
            snapshot: RwLock::new(Arc::new(snapshot)),
            config: Mutex::new(config),
            clock,
        })
    }

    /// The wall clock.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().clone()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn gateway_id(&self) -> &str {
        self.dispatcher.gateway_id()
    }

    pub fn clusters(&self) -> Vec<Arc<Cluster>> {
        self.snapshot().clusters.values().cloned().collect()
    }

    /// The configuration in force.
    pub fn config(&self) -> GatewayConfig {
        self.config.lock().clone()
    }

    /// Applies a new configuration; on error the old one stays in force.
    pub fn reload(&self, new: GatewayConfig) -> Result<(), GatewayError> {
        let result = self.apply(new);
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .config_reloads
            .get_or_create(&crate::metrics::ResultLabels { result: label })
            .inc();
        result
    }

    fn apply(&self, new: GatewayConfig) -> Result<(), GatewayError> {
        new.validate()?;
        let mut current = self.config.lock();
        if *current == new {
            return Ok(());
        }
        for (what, changed) in [
            ("listen", current.listen != new.listen),
            (
                "metrics_listen",
                current.metrics_listen != new.metrics_listen,
            ),
            ("gateway_id", current.gateway_id != new.gateway_id),
            ("tls", current.tls != new.tls),
            ("auth", current.auth != new.auth),
            (
                "limits.max_inflight_bytes",
                current.limits.max_inflight_bytes != new.limits.max_inflight_bytes,
            ),
        ] {
            if changed {
                tracing::warn!(
                    setting = what,
                    "changing this setting needs a restart; ignored"
                );
            }
        }
        let old = self.snapshot();
        let snapshot = build_snapshot(&new, Some(&old), &*self.factory, &self.metrics)?;
        let removed: Vec<Arc<Cluster>> = old
            .clusters
            .iter()
            .filter(|(name, c)| {
                snapshot
                    .clusters
                    .get(*name)
                    .is_none_or(|n| !Arc::ptr_eq(n, c))
            })
            .map(|(_, c)| c.clone())
            .collect();
        *self.snapshot.write() = Arc::new(snapshot);
        *current = new;
        drop(current);
        for cluster in removed {
            tracing::info!(cluster = %cluster.name, "cluster removed or reconfigured: draining its old producer");
            tokio::spawn(async move {
                cluster.producer.flush(Duration::from_secs(30)).await;
            });
        }
        tracing::info!("configuration reloaded");
        Ok(())
    }

    /// Admits a batch (validation, routing, rate limit, in-flight room) and starts it; the
    /// returned future yields one outcome per message. Batches started one after another reach
    /// the clusters in that order.
    pub async fn start(
        &self,
        caller: &str,
        request: pb::ProduceBatchRequest,
        caller_deadline: Option<Duration>,
    ) -> Result<impl Future<Output = Vec<MessageOutcome>> + Send + 'static, RequestError> {
        self.start_as(caller, None, request, caller_deadline).await
    }

    /// [`Gateway::start`] for a caller whose client certificate names it `verified` (mutual
    /// TLS), checked against `[[caller]]` before anything else.
    pub async fn start_as(
        &self,
        caller: &str,
        verified: Option<&str>,
        request: pb::ProduceBatchRequest,
        caller_deadline: Option<Duration>,
    ) -> Result<impl Future<Output = Vec<MessageOutcome>> + Send + 'static, RequestError> {
        let snapshot = self.snapshot();
        check_access(&snapshot, verified, &request.topic)?;
        let bytes = validate(&request, &snapshot.limits)?;
        let group = snapshot
            .routes
            .group_for(&request.topic)
            .cloned()
            .ok_or_else(|| RequestError::NoRoute {
                topic: request.topic.clone(),
            })?;
        if let Err(exceeded) =
            snapshot
                .limiter
                .try_take(caller, request.messages.len(), bytes, Instant::now())
        {
            match exceeded.budget {
                Budget::Messages => self.metrics.rate_limited.inc(),
                Budget::Bytes => self.metrics.byte_rate_limited.inc(),
            };
            return Err(RequestError::RateLimited {
                caller: caller.to_owned(),
                limit: exceeded,
            });
        }
        let wait = Duration::from_millis(snapshot.limits.admission_wait_ms);
        let permit = self
            .inflight
            .acquire(bytes, wait)
            .await
            .ok_or(RequestError::Overloaded {
                limit: snapshot.limits.max_inflight_bytes,
            })?;
        let mut timeout = snapshot.delivery.delivery_timeout();
        if let Some(d) = caller_deadline {
            timeout = timeout.min(d);
        }
        let batch = Batch {
            topic: request.topic,
            messages: request.messages,
        };
        // Held by the request and by each round's records until the clusters answered them: the
        // bound covers what the producers hold, and dropping the request gives nothing back early.
        let outcomes = self.dispatcher.start(
            snapshot,
            group,
            batch,
            Instant::now() + timeout,
            Arc::new(permit),
        );
        let metrics = self.metrics.clone();
        Ok(async move {
            let outcomes = outcomes.await;
            count_failures(&metrics, &outcomes);
            outcomes
        })
    }
}

/// Checks a request against the limits; returns its size in bytes.
pub fn validate(
    request: &pb::ProduceBatchRequest,
    limits: &LimitsConfig,
) -> Result<usize, RequestError> {
    if request.topic.is_empty() {
        return Err(RequestError::EmptyTopic);
    }
    if request.messages.is_empty() {
        return Err(RequestError::EmptyBatch);
    }
    if request.messages.len() > limits.max_messages_per_request {
        return Err(RequestError::TooManyMessages {
            count: request.messages.len(),
            limit: limits.max_messages_per_request,
        });
    }
    let mut total = 0usize;
    for (index, m) in request.messages.iter().enumerate() {
        let bytes = message_bytes(m);
        if bytes > limits.max_message_bytes {
            return Err(RequestError::MessageTooLarge {
                index,
                bytes,
                limit: limits.max_message_bytes,
            });
        }
        if let Some(partition) = m.partition.filter(|p| *p < 0) {
            return Err(RequestError::BadPartition { index, partition });
        }
        total += bytes;
    }
    if total > limits.max_request_bytes {
        return Err(RequestError::RequestTooLarge {
            bytes: total,
            limit: limits.max_request_bytes,
        });
    }
    Ok(total)
}

/// Whether `[[caller]]` lets the caller named `verified` by its certificate produce to `topic`.
fn check_access(
    snapshot: &Snapshot,
    verified: Option<&str>,
    topic: &str,
) -> Result<(), RequestError> {
    if snapshot.callers.is_empty() {
        return Ok(());
    }
    let Some(name) = verified else {
        return Err(RequestError::PermissionDenied(
            "no client certificate: [[caller]] lets only listed callers produce".into(),
        ));
    };
    match snapshot.callers.get(name) {
        None => Err(RequestError::PermissionDenied(format!(
            "caller {name:?} is not a [[caller]] of this gateway"
        ))),
        Some(c) if !c.allows(topic) => Err(RequestError::PermissionDenied(format!(
            "caller {name:?} may not produce to topic {topic:?}"
        ))),
        Some(_) => Ok(()),
    }
}

/// Builds a snapshot of `config`, reusing the clusters of `previous` whose connection settings
/// did not change (and its rate limiter if the limits did not change).
fn build_snapshot(
    config: &GatewayConfig,
    previous: Option<&Snapshot>,
    factory: &dyn ProducerFactory,
    metrics: &Arc<Metrics>,
) -> Result<Snapshot, GatewayError> {
    let settings = Settings::from(&config.breaker);
    let mut clusters = BTreeMap::new();
    for (name, cluster_config) in &config.clusters {
        let name: Arc<str> = Arc::from(name.as_str());
        let reusable = previous.and_then(|p| p.clusters.get(&name)).filter(|c| {
            c.config == *cluster_config && c.attempt_timeout == config.delivery.attempt_timeout()
        });
        let cluster = match reusable {
            Some(c) => {
                c.health.set_settings(settings.clone());
                c.clone()
            }
            None => {
                let health = Arc::new(Health::new(name.clone(), settings.clone(), metrics.clone()));
                let producer =
                    factory.create(&name, cluster_config, &config.delivery, health.clone())?;
                Arc::new(Cluster::new(
                    cluster_config.clone(),
                    config.delivery.attempt_timeout(),
                    producer,
                    health,
                ))
            }
        };
        clusters.insert(name, cluster);
    }
    let limits = &config.limits;
    let limiter = match previous {
        Some(p)
            if p.limits.caller_messages_per_sec == limits.caller_messages_per_sec
                && p.limits.caller_burst_messages == limits.caller_burst_messages
                && p.limits.caller_bytes_per_sec == limits.caller_bytes_per_sec
                && p.limits.caller_burst_bytes == limits.caller_burst_bytes =>
        {
            p.limiter.clone()
        }
        _ => Arc::new(RateLimiter::new(
            Rate::new(limits.caller_messages_per_sec, limits.caller_burst_messages),
            Rate::new(limits.caller_bytes_per_sec, limits.caller_burst_bytes),
        )),
    };
    Ok(Snapshot {
        routes: RouteTable::from_config(config),
        clusters,
        delivery: config.delivery.clone(),
        limits: config.limits.clone(),
        limiter,
        callers: config
            .callers
            .iter()
            .map(|c| (c.name.clone(), c.clone()))
            .collect(),
    })
}
