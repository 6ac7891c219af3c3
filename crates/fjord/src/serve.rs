//! `fjord serve`: builds the components from the settings and runs the broker until a signal.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use fjord_broker::{Broker, BrokerSettings};
use fjord_coordinator::embedded::EmbeddedCoordinator;
use fjord_coordinator::postgres::PostgresCoordinator;
use fjord_coordinator::Coordinator;
use fjord_server::ServerSettings;
use fjord_storage::reader::{ReadCache, Reader};
use fjord_storage::writer::{Writer, WriterSettings};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::ServeConfig;

/// Runs a broker until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let coordinator: Arc<dyn Coordinator> = match config.coordinator.as_str() {
        "embedded" => {
            let dir = config.data_dir.join("coordinator");
            Arc::new(EmbeddedCoordinator::open(&dir).with_context(|| {
                format!("opening the embedded coordinator in {}", dir.display())
            })?)
        }
        url if url.starts_with("postgres://") || url.starts_with("postgresql://") => Arc::new(
            PostgresCoordinator::connect(url)
                .await
                .context("connecting to the PostgreSQL coordinator")?,
        ),
        other => bail!("unknown coordinator '{other}' (use 'embedded' or postgres://...)"),
    };
    let store_url = config.object_store.clone().unwrap_or_else(|| {
        format!(
            "file://{}",
            absolute(&config.data_dir.join("objects")).display()
        )
    });
    let store = fjord_storage::store::from_url(&store_url)?;

    let cache = Arc::new(ReadCache::new(config.read_cache_bytes));
    let (commits_tx, commits) = watch::channel(0u64);
    let (writer, writer_task) = Writer::start(
        WriterSettings {
            flush_bytes: config.flush_bytes,
            flush_interval: Duration::from_millis(config.flush_interval_ms),
            max_inflight_flushes: config.max_inflight_flushes,
            max_buffer_bytes: config.max_buffer_bytes,
            broker_id: config.node_id,
            ..WriterSettings::default()
        },
        store.clone(),
        coordinator.clone(),
        cache.clone(),
        Arc::new(commits_tx),
    );
    let (advertised_host, advertised_port) = config.advertised()?;
    let groups = fjord_broker::groups::GroupCoordinator::start(
        coordinator.clone(),
        fjord_broker::groups::group::GroupSettings {
            initial_rebalance_delay: Duration::from_millis(config.group_initial_rebalance_delay_ms),
            consumer_session_timeout: Duration::from_millis(
                config.group_consumer_session_timeout_ms,
            ),
            consumer_heartbeat_interval: Duration::from_millis(
                config.group_consumer_heartbeat_interval_ms,
            ),
            ..Default::default()
        },
    );
    let broker = Arc::new(Broker {
        groups,
        settings: BrokerSettings {
            node_id: config.node_id,
            advertised_host,
            advertised_port,
            cluster_id: config.cluster_id.clone(),
            auto_create_topics: config.auto_create_topics,
            default_partitions: config.default_partitions,
            message_max_bytes: config.message_max_bytes,
            rack: config.zone.clone(),
            ..BrokerSettings::default()
        },
        coordinator,
        writer,
        reader: Reader::new(store.clone(), cache),
        commits,
        fetch_sessions: fjord_broker::fetch_session::FetchSessions::new(10_000),
    });

    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    tracing::info!(
        listen = %config.listen,
        object_store = %store_url,
        coordinator = %redact(&config.coordinator),
        data_dir = %config.data_dir.display(),
        "fjord broker ready"
    );

    let shutdown = CancellationToken::new();
    let gc = tokio::spawn(gc_loop(
        store.clone(),
        broker.coordinator.clone(),
        Duration::from_secs(config.gc_interval_secs),
        Duration::from_secs(config.gc_grace_secs),
        shutdown.clone(),
    ));
    let server = tokio::spawn(fjord_server::serve(
        listener,
        broker.clone(),
        ServerSettings {
            max_request_bytes: config.max_request_bytes,
            max_connections: config.max_connections,
            drain_timeout: Duration::from_secs(config.shutdown_timeout_secs),
            ..ServerSettings::default()
        },
        shutdown.clone(),
    ));
    wait_for_signal().await?;
    tracing::info!("shutting down: no new connections, answering requests in flight");
    shutdown.cancel();
    // Flush and commit what is buffered now, while connections answer what they already read:
    // their produce replies wait for exactly that.
    let (served, ()) = tokio::join!(server, writer_task.close());
    if let Err(e) = served {
        tracing::error!(error = %e, "listener task failed");
    }
    let _ = gc.await;
    drop(broker);
    tracing::info!("shutdown complete");
    Ok(())
}

/// Deletes garbage objects every `interval` until `shutdown`.
async fn gc_loop(
    store: Arc<dyn object_store::ObjectStore>,
    coordinator: Arc<dyn Coordinator>,
    interval: Duration,
    grace: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let pass = fjord_storage::gc::collect(&store, &coordinator, now, grace.as_millis() as i64);
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            result = pass => result,
        };
        match result {
            Ok(report) if report.deleted_dead + report.deleted_orphans > 0 => {
                tracing::info!(?report, "garbage collection")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "garbage collection failed; will retry"),
        }
    }
}

/// A URL with its password hidden, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

fn absolute(path: &std::path::Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
