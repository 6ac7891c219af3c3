//! Running a gateway process: the gRPC listener (the Gateway service, health checking, server
//! reflection; plaintext, or TLS with `[tls]`, see [`crate::tls`]), the metrics endpoint, the
//! prober of open clusters, configuration reloads (SIGHUP and a poll of the file's modification
//! time), and graceful shutdown.
//!
//! Health (`grpc.health.v1`, for the whole server and for `fjord.gateway.v1.Gateway`) is
//! SERVING while at least one backend cluster's breaker is not open, and NOT_SERVING when every
//! cluster's is (a load balancer then sends callers to another gateway; the prober keeps testing
//! the clusters and health returns with the first one that recovers).
//!
//! Every background task takes the same [`CancellationToken`]. On SIGTERM / Ctrl-C: health turns
//! NOT_SERVING, new requests get UNAVAILABLE, requests in progress are answered for at most
//! `drain_timeout_ms` (then their connections are dropped: a caller that stopped reading its
//! stream cannot hold shutdown up), the producers are flushed (at most [`FLUSH_TIMEOUT`]), and
//! [`run`] returns.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fjord_tls::ReloadingTls;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use fjord_jwks::Reloader;

use crate::auth::CallerAuth;
use crate::backend::Producer;
use crate::cluster::{probe_loop, Health};
use crate::config::{ClusterConfig, DeliveryConfig, GatewayConfig};
use crate::gateway::{Gateway, GatewayError, ProducerFactory};
use crate::hlc::SystemClock;
use crate::kafka::{client_config, KafkaProducer};
use crate::metrics::Metrics;
use crate::pb;
use crate::service::GatewayService;

/// How often open breakers are checked for a due probe.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// How long shutdown waits for the producers to deliver what they hold.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds librdkafka producers.
#[derive(Debug)]
pub struct KafkaFactory {
    gateway_id: String,
}

impl ProducerFactory for KafkaFactory {
    fn create(
        &self,
        name: &str,
        config: &ClusterConfig,
        delivery: &DeliveryConfig,
        health: Arc<Health>,
    ) -> Result<Arc<dyn Producer>, GatewayError> {
        let cc = client_config(name, config, &self.gateway_id, delivery.attempt_timeout())?;
        Ok(Arc::new(KafkaProducer::new(name, cc, health)?))
    }
}

/// `fjord gateway --config FILE`: runs until SIGTERM or Ctrl-C.
pub async fn run(config_path: &Path) -> Result<(), GatewayError> {
    let config = GatewayConfig::load(config_path)?;
    // Certificate trouble stops the gateway before it binds anything.
    let tls = listener_tls(&config)?;
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(shutdown_on_signal(shutdown.clone()));
    let metrics = Arc::new(Metrics::default());
    let factory = KafkaFactory {
        gateway_id: config.resolved_gateway_id(),
    };
    let gateway = Arc::new(Gateway::new(
        config.clone(),
        Box::new(factory),
        metrics.clone(),
        Arc::new(SystemClock),
    )?);
    // So does a JWKS that cannot be loaded.
    let auth = CallerAuth::load(&config, gateway.clock(), metrics.clone()).await?;
    let listener = bind(&config.listen, "the gRPC listener").await?;
    let metrics_task = match &config.metrics_listen {
        Some(addr) => {
            let l = bind(addr, "the metrics listener").await?;
            tracing::info!(address = %local(&l), "metrics endpoint listening");
            Some(tokio::spawn(crate::metrics::serve(
                l,
                metrics.clone(),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let reloader = tokio::spawn(reload_loop(
        gateway.clone(),
        config_path.to_owned(),
        shutdown.clone(),
    ));
    tracing::info!(address = %local(&listener), gateway_id = gateway.gateway_id(),
        clusters = gateway.clusters().len(), tls = tls.is_some(),
        client_certificates = config.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some()),
        bearer_tokens = config.auth.is_some(), "gateway listening");
    let served = serve_with_tls(gateway.clone(), listener, tls, auth, shutdown.clone()).await;
    shutdown.cancel();
    joined("config-reload", reloader).await;
    if let Some(t) = metrics_task {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "the metrics endpoint failed"),
            Err(e) => tracing::error!(task = "metrics", error = %e, "background task failed"),
        }
    }
    signals.abort();
    flush_all(&gateway).await;
    tracing::info!("gateway stopped");
    served
}

/// The listener's TLS settings from the `[tls]` table (files read and checked now); `None`:
/// plaintext.
fn listener_tls(config: &GatewayConfig) -> Result<Option<Arc<ReloadingTls>>, GatewayError> {
    Ok(config.tls.as_ref().map(crate::tls::reloading).transpose()?)
}

/// Serves the gRPC API on `listener` until `shutdown` is cancelled, with the prober running;
/// over TLS if the gateway's configuration has a `[tls]` table (its files are read now), with
/// callers authenticated as its `[auth]` table says (the JWKS is loaded now).
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let config = gateway.config();
    let tls = listener_tls(&config)?;
    let auth = CallerAuth::load(&config, gateway.clock(), gateway.metrics().clone()).await?;
    serve_with_tls(gateway, listener, tls, auth, shutdown).await
}

async fn serve_with_tls(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<Arc<ReloadingTls>>,
    (auth, jwks): (CallerAuth, Option<Reloader>),
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let jwks_task = jwks.map(|reloader| reloader.spawn("gateway-jwks-reload", shutdown.clone()));
    // Health and reflection share the listener, so they are behind the same TLS.
    let mut server = tonic::transport::Server::builder();
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    health
        .set_serving::<pb::gateway_server::GatewayServer<GatewayService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let snapshot = gateway.snapshot();
    let max_request = snapshot.limits.max_request_bytes;
    let service = pb::gateway_server::GatewayServer::new(GatewayService::new(
        gateway.clone(),
        Arc::new(auth),
        shutdown.clone(),
    ))
    // Room for protobuf framing around the payload bytes the gateway limits itself (and clear
    // INVALID_ARGUMENT errors from those checks rather than the transport's).
    .max_decoding_message_size(max_request.saturating_mul(2).saturating_add(1 << 20));
    let prober = {
        let g = gateway.clone();
        let g2 = gateway.clone();
        tokio::spawn(probe_loop(
            move || g.clusters(),
            PROBE_INTERVAL,
            move || Duration::from_millis(g2.config().breaker.probe_timeout_ms),
            shutdown.clone(),
        ))
    };
    let watcher = tokio::spawn(health_loop(
        gateway.clone(),
        health.clone(),
        PROBE_INTERVAL,
        shutdown.clone(),
    ));
    let stopping = {
        let shutdown = shutdown.clone();
        let health = health.clone();
        async move {
            shutdown.cancelled().await;
            // The watcher has stopped before health turns NOT_SERVING for good.
            joined("health", watcher).await;
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            health
                .set_not_serving::<pb::gateway_server::GatewayServer<GatewayService>>()
                .await;
        }
    };
    let router = server
        .add_service(health_service)
        .add_service(reflection)
        .add_service(service);
    let tls_shutdown = shutdown.clone();
    let serving = async move {
        match tls {
            Some(tls) => {
                let incoming = crate::tls::incoming(listener, tls, tls_shutdown);
                router
                    .serve_with_incoming_shutdown(incoming, stopping)
                    .await
            }
            None => {
                router
                    .serve_with_incoming_shutdown(
                        TcpIncoming::from(listener).with_nodelay(Some(true)),
                        stopping,
                    )
                    .await
            }
        }
    };
    // The graceful drain waits for every connection to close; bound it.
    let drain_expired = {
        let shutdown = shutdown.clone();
        let gateway = gateway.clone();
        async move {
            shutdown.cancelled().await;
            let drain = Duration::from_millis(gateway.config().drain_timeout_ms);
            tokio::time::sleep(drain).await;
            drain
        }
    };
    let result = tokio::select! {
        result = serving => result,
        drain = drain_expired => {
            tracing::warn!(drain_timeout = ?drain,
                "requests still in progress after the drain timeout: dropping their connections");
            Ok(())
        }
    };
    shutdown.cancel();
    joined("prober", prober).await;
    if let Some(task) = jwks_task {
        joined("gateway-jwks-reload", task).await;
    }
    result.map_err(GatewayError::from)
}

/// Waits for a background task that was told to stop; a task that panicked is logged.
async fn joined(task: &str, handle: tokio::task::JoinHandle<()>) {
    if let Err(e) = handle.await {
        tracing::error!(task, error = %e, "background task failed");
    }
}

/// Whether any backend cluster can take messages (its breaker is not open).
fn any_cluster_usable(gateway: &Gateway) -> bool {
    gateway
        .clusters()
        .iter()
        .any(|c| c.health.state() != crate::breaker::State::Open)
}

/// Keeps the health status in step with the clusters' breakers until `shutdown`.
async fn health_loop(
    gateway: Arc<Gateway>,
    health: tonic_health::server::HealthReporter,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut serving = true;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let usable = any_cluster_usable(&gateway);
        if usable == serving {
            continue;
        }
        serving = usable;
        let status = if usable {
            tracing::info!("a backend cluster is usable again: health SERVING");
            ServingStatus::Serving
        } else {
            tracing::warn!("every backend cluster's breaker is open: health NOT_SERVING");
            ServingStatus::NotServing
        };
        health.set_service_status("", status).await;
        if usable {
            health
                .set_serving::<pb::gateway_server::GatewayServer<GatewayService>>()
                .await;
        } else {
            health
                .set_not_serving::<pb::gateway_server::GatewayServer<GatewayService>>()
                .await;
        }
    }
}

/// Flushes every producer (shutdown).
pub async fn flush_all(gateway: &Gateway) {
    let flushes = gateway
        .clusters()
        .into_iter()
        .map(|c| async move { c.producer.flush(FLUSH_TIMEOUT).await });
    futures::future::join_all(flushes).await;
}

async fn bind(addr: &str, what: &str) -> Result<TcpListener, GatewayError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| GatewayError::Io {
            what: format!("binding {what} on {addr}"),
            error,
        })
}

fn local(l: &TcpListener) -> String {
    l.local_addr()
        .map(|a: SocketAddr| a.to_string())
        .unwrap_or_default()
}

async fn shutdown_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
    }
    shutdown.cancel();
}

/// Reloads the file on SIGHUP and whenever its modification time changes (polled every
/// `reload_poll_ms`, if not 0).
async fn reload_loop(gateway: Arc<Gateway>, path: PathBuf, shutdown: CancellationToken) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; reload by file watch only");
            None
        }
    };
    let mut seen = modified(&path);
    loop {
        let poll_ms = gateway.config().reload_poll_ms;
        let poll = async {
            if poll_ms == 0 {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(poll_ms)).await;
        };
        let hangup = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let why = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hangup => "SIGHUP",
            _ = poll => {
                let now = modified(&path);
                if now == seen {
                    continue;
                }
                "file changed"
            }
        };
        seen = modified(&path);
        let result = match GatewayConfig::load(&path) {
            Ok(config) => gateway.reload(config), // counts itself
            Err(e) => {
                gateway
                    .metrics()
                    .config_reloads
                    .get_or_create(&crate::metrics::ResultLabels { result: "error" })
                    .inc();
                Err(e.into())
            }
        };
        match result {
            Ok(()) => {
                tracing::info!(trigger = why, path = %path.display(), "configuration applied")
            }
            Err(e) => tracing::error!(trigger = why, error = %e,
                "reload failed; the previous configuration stays in force"),
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
