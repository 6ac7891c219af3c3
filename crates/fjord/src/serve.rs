//! `fjord serve`: builds the components from the settings and runs the broker until a signal.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use fjord_broker::cluster::membership::{Membership, MembershipSettings};
use fjord_broker::cluster::ClusterView;
use fjord_broker::{Broker, BrokerSettings};
use fjord_coordinator::embedded::EmbeddedCoordinator;
use fjord_coordinator::postgres::{PostgresCoordinator, PostgresOptions};
use fjord_coordinator::Coordinator;
use fjord_server::ServerSettings;
use fjord_storage::instrumented::{InstrumentedStore, LatencyModel};
use fjord_storage::reader::{ReadCache, Reader};
use fjord_storage::writer::{Writer, WriterSettings};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::ServeConfig;

/// Runs a broker until SIGTERM or SIGINT, then shuts down gracefully. `open_files` is the
/// process's open-file limit (see [`fjord_server::fdlimit`]), which bounds the connections served.
pub async fn run(config: ServeConfig, open_files: Option<u64>) -> anyhow::Result<()> {
    let clock: Arc<dyn fjord_coordinator::clock::Clock> = if config.simulated_clock_offset_ms != 0 {
        tracing::warn!(
            offset_ms = config.simulated_clock_offset_ms,
            "this broker's wall clock is SIMULATED to run ahead (a test setting)"
        );
        Arc::new(OffsetClock(config.simulated_clock_offset_ms))
    } else {
        fjord_coordinator::clock::system()
    };
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let mut postgres = None;
    let coordinator: Arc<dyn Coordinator> = match config.coordinator.as_str() {
        "embedded" => {
            let dir = config.data_dir.join("coordinator");
            Arc::new(
                EmbeddedCoordinator::open_with_clock(&dir, clock.clone()).with_context(|| {
                    format!("opening the embedded coordinator in {}", dir.display())
                })?,
            )
        }
        url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let options = PostgresOptions {
                pool_size: config.postgres_pool_size,
                ca_file: config.postgres_ca_file.clone(),
                clock: clock.clone(),
                ..PostgresOptions::default()
            };
            let pg = PostgresCoordinator::connect_with(url, options)
                .await
                .context("connecting to the PostgreSQL coordinator")?;
            postgres = Some(pg.clone());
            Arc::new(pg)
        }
        other => bail!("unknown coordinator '{other}' (use 'embedded' or postgres://...)"),
    };
    let store_url = config.object_store.clone().unwrap_or_else(|| {
        format!(
            "file://{}",
            absolute(&config.data_dir.join("objects")).display()
        )
    });
    let store_options: Vec<(String, String)> = config
        .object_store_options
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let latency = match &config.simulated_store_latency {
        Some(spec) => {
            let model = LatencyModel::parse(spec).map_err(|e| anyhow::anyhow!("{e}"))?;
            tracing::warn!(
                ?model,
                "object store latency is SIMULATED (a benchmark setting)"
            );
            Some(model)
        }
        None => None,
    };
    let store = InstrumentedStore::new(
        fjord_storage::store::from_url_with_options(&store_url, &store_options)?,
        latency,
    );
    let store_stats = store.stats();
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(store);

    let listeners = crate::listeners::resolve(&config)?;
    let (advertised_host, advertised_port) = listeners.inter_broker().advertised.clone();
    // TLS files are read and checked before anything binds.
    let tls = match &listeners.tls {
        Some(files) => Some(Arc::new(
            fjord_tls::ReloadingTls::new(files.clone()).context("loading the TLS files")?,
        )),
        None => None,
    };
    let authorizer = {
        let settings = crate::users::authorizer_settings(&config)?;
        if settings.enabled {
            let store: Arc<dyn fjord_coordinator::AclStore> = coordinator.clone();
            let authorizer = fjord_broker::authz::Authorizer::new(settings, store);
            authorizer.refresh().await.context("loading the ACLs")?;
            Arc::new(authorizer)
        } else {
            Arc::new(fjord_broker::authz::Authorizer::disabled())
        }
    };
    let quotas = {
        let store: Arc<dyn fjord_coordinator::QuotaStore> = coordinator.clone();
        let quotas = fjord_broker::quotas::QuotaManager::new(
            fjord_broker::quotas::QuotaSettings::default(),
            store,
            clock.clone(),
        );
        quotas
            .refresh()
            .await
            .context("loading the client quotas")?;
        Arc::new(quotas)
    };
    if let Some(user) = &config.sasl_bootstrap_user {
        if listeners.sasl.is_none() {
            bail!("sasl_bootstrap_user is set but no listener uses SASL");
        }
        crate::users::bootstrap(coordinator.as_ref(), user).await?;
    }
    // OAUTHBEARER's keys are loaded before anything binds: a broker that cannot check tokens
    // does not start. The reload task starts with the others, below.
    let mut jwks_reload = None;
    let oauth = match &listeners.oauthbearer {
        Some(o) => {
            let (verifier, reloader) = o
                .load()
                .await
                .with_context(|| format!("loading the OAUTHBEARER JWKS from {}", o.source))?;
            tracing::info!(source = %o.source, keys = verifier.keys().len(), "OAUTHBEARER: JWKS loaded");
            jwks_reload = Some(reloader);
            Some(verifier)
        }
        None => None,
    };
    let authenticator = listeners.sasl.clone().map(|settings| {
        let credentials: Arc<dyn fjord_coordinator::CredentialStore> = coordinator.clone();
        let auth = fjord_broker::sasl::Authenticator::new(settings, credentials, clock.clone());
        Arc::new(match oauth {
            Some(oauth) => auth.with_oauth(oauth),
            None => auth,
        })
    });
    let security = fjord_server::ListenerSecurity {
        tls: tls.clone(),
        principals: Arc::new(listeners.principals.clone()),
        sasl: authenticator.clone(),
    };
    // Listen before registering: once registered, other brokers send clients here.
    let mut bound = Vec::new();
    for spec in &listeners.specs {
        let tcp = fjord_server::bind(&spec.bind, config.listen_backlog)
            .await
            .with_context(|| format!("binding listener {} on {}", spec.name, spec.bind))?;
        bound.push(
            fjord_server::Listener::new(&spec.name, spec.protocol, tcp, security.clone())
                .map_err(anyhow::Error::new)?,
        );
    }
    let embedded = config.coordinator == "embedded";
    let membership = Membership::join(
        coordinator.clone(),
        MembershipSettings {
            node_id: config.node_id.or(embedded.then_some(0)),
            host: advertised_host.clone(),
            port: advertised_port,
            rack: config.zone.clone(),
            // The single --listen listener registers no list: it is host and port, which
            // brokers of earlier versions read too.
            listeners: if config.listeners.is_empty() {
                Vec::new()
            } else {
                listeners.endpoints()
            },
            lease: Duration::from_millis(config.broker_lease_ms),
        },
    )
    .await
    .context("registering this broker with the coordinator")?;
    let node_id = membership.node_id();
    // The registry's view, less the peers this broker finds dead by probing them directly (a
    // killed broker keeps its lease for broker_lease_ms; its clients must move at once).
    let probes = CancellationToken::new();
    let (cluster, prober) = if embedded || config.peer_probe_interval_ms == 0 {
        (membership.view(), None)
    } else {
        let (view, task) = fjord_broker::cluster::reachability::spawn(
            membership.view(),
            fjord_broker::cluster::reachability::ReachabilitySettings {
                interval: Duration::from_millis(config.peer_probe_interval_ms),
                ..Default::default()
            },
            probes.clone(),
        );
        (view, Some(task))
    };

    let cache = Arc::new(ReadCache::new(config.read_cache_bytes));
    let (commits_tx, commits) = watch::channel(0u64);
    let commits_tx = Arc::new(commits_tx);
    // Commits by other brokers wake this broker's long-polling fetches (the embedded coordinator
    // serves one process, whose commits the writer announces itself).
    let commit_listener = postgres
        .as_ref()
        .map(|pg| pg.spawn_commit_listener(commits_tx.clone()));
    let (writer, writer_task) = Writer::start_with_clock(
        WriterSettings {
            flush_bytes: config.flush_bytes,
            flush_interval: Duration::from_millis(config.flush_interval_ms),
            max_inflight_flushes: config.max_inflight_flushes,
            seal_when_idle: config.flush_when_idle,
            max_buffer_bytes: config.max_buffer_bytes,
            broker_id: node_id,
            upload_hedge_after: (config.upload_hedge_ms > 0)
                .then(|| Duration::from_millis(config.upload_hedge_ms)),
            ..WriterSettings::default()
        },
        clock.clone(),
        store.clone(),
        coordinator.clone(),
        cache.clone(),
        commits_tx.clone(),
    );
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
        cluster.clone(),
    );
    let broker = Arc::new(Broker {
        groups,
        settings: BrokerSettings {
            node_id,
            advertised_host,
            advertised_port,
            cluster_id: config.cluster_id.clone(),
            auto_create_topics: config.auto_create_topics,
            default_partitions: config.default_partitions,
            message_max_bytes: config.message_max_bytes,
            rack: config.zone.clone(),
            fetch_max_bytes: config.fetch_max_bytes,
            fetch_memory_bytes: config.fetch_memory_bytes,
            retention_ms: config.log_retention_ms,
            retention_bytes: config.log_retention_bytes,
            segment_ms: config.log_roll_ms,
            ..BrokerSettings::default()
        },
        fetch_memory: fjord_broker::memory::MemoryBudget::new(config.fetch_memory_bytes),
        clock: clock.clone(),
        coordinator,
        writer,
        reader: Reader::new(store.clone(), cache).with_hedge_after(
            (config.read_hedge_ms > 0).then(|| Duration::from_millis(config.read_hedge_ms)),
        ),
        commits,
        fetch_sessions: fjord_broker::fetch_session::FetchSessions::new(
            fjord_broker::fetch_session::SessionLimits::default(),
        ),
        cluster: cluster.clone(),
        offsets_cache: Default::default(),
        authorizer: authorizer.clone(),
        quotas: quotas.clone(),
    });

    let listening: Vec<String> = listeners
        .specs
        .iter()
        .map(|l| format!("{}={}://{}", l.name, l.protocol, l.bind))
        .collect();
    tracing::info!(
        node_id,
        listen = %config.listen,
        listeners = %listening.join(","),
        object_store = %store_url,
        coordinator = %redact(&config.coordinator),
        data_dir = %config.data_dir.display(),
        "fjord broker ready"
    );

    let shutdown = CancellationToken::new();
    // Leaving the cluster is the first thing shutdown does, so other brokers stop sending
    // clients here while this one drains.
    let leave = CancellationToken::new();
    let mut membership_task = tokio::spawn(membership.run(leave.clone()));
    let gc_stats = Arc::new(fjord_storage::gc::GcStats::default());
    let gc = tokio::spawn(gc_loop(
        fjord_storage::gc::Collector::new(
            store.clone(),
            broker.coordinator.clone(),
            fjord_storage::gc::GcSettings {
                grace_ms: millis(Duration::from_secs(config.gc_grace_secs)),
                delete_delay_ms: i64::try_from(config.log_segment_delete_delay_ms)
                    .unwrap_or(i64::MAX),
                sweep_interval_ms: millis(Duration::from_secs(
                    config.gc_orphan_sweep_interval_secs,
                )),
                ..Default::default()
            },
        ),
        gc_stats.clone(),
        clock.clone(),
        cluster.clone(),
        Duration::from_secs(config.gc_interval_secs),
        shutdown.clone(),
    ));
    let retention_stats = Arc::new(fjord_broker::retention::RetentionStats::default());
    let retention = tokio::spawn(fjord_broker::retention::run(
        broker.clone(),
        fjord_broker::retention::RetentionSettings {
            default_retention_ms: config.log_retention_ms,
            default_retention_bytes: config.log_retention_bytes,
            check_interval: Duration::from_millis(config.log_retention_check_interval_ms),
            ..Default::default()
        },
        retention_stats.clone(),
        shutdown.clone(),
    ));
    let compaction_stats = Arc::new(fjord_broker::compaction::CompactionStats::default());
    let compaction = (config.compaction_interval_ms > 0).then(|| {
        let compactor = fjord_storage::compactor::Compactor::new(
            store.clone(),
            broker.coordinator.clone(),
            clock.clone(),
            fjord_storage::compactor::CompactionSettings {
                target_object_bytes: config.compaction_target_bytes,
                max_row_bytes: config.compaction_max_row_bytes,
                settled_row_bytes: config.compaction_max_row_bytes / 4 * 3,
                min_age_ms: i64::try_from(config.compaction_min_age_ms).unwrap_or(i64::MAX),
                broker_id: node_id,
                ..Default::default()
            },
        )
        .with_before_swap((config.compaction_test_pause_before_swap_ms > 0).then(|| {
            fjord_storage::compactor::pause_before_swap(Duration::from_millis(
                config.compaction_test_pause_before_swap_ms,
            ))
        }));
        tokio::spawn(fjord_broker::compaction::run(
            broker.clone(),
            compactor,
            fjord_broker::compaction::CompactionDutySettings {
                interval: Duration::from_millis(config.compaction_interval_ms),
                bytes_per_pass: config.compaction_bytes_per_pass,
                ..Default::default()
            },
            compaction_stats.clone(),
            shutdown.clone(),
        ))
    });
    let expiry_stats = Arc::new(fjord_broker::expiry::ExpiryStats::default());
    let expiry = tokio::spawn(fjord_broker::expiry::run(
        broker.clone(),
        fjord_broker::expiry::ExpirySettings {
            producer_id_expiration_ms: config.producer_id_expiration_ms,
            producer_check_interval: Duration::from_millis(
                config.producer_id_expiration_check_interval_ms,
            ),
            offsets_retention_ms: config.offsets_retention_ms(),
            offsets_check_interval: Duration::from_millis(
                config.offsets_retention_check_interval_ms,
            ),
            ..Default::default()
        },
        expiry_stats.clone(),
        shutdown.clone(),
    ));
    let cleaner_stats = Arc::new(fjord_broker::cleaner::CleanerStats::default());
    let cleaner = tokio::spawn(fjord_broker::cleaner::run(
        broker.clone(),
        store.clone(),
        fjord_broker::cleaner::CleanerSettings {
            enabled: config.log_cleaner_enable,
            check_interval: Duration::from_millis(config.log_cleaner_backoff_ms),
            default_segment_ms: config.log_roll_ms,
            dedupe_buffer_bytes: config.log_cleaner_dedupe_buffer_size,
            ..Default::default()
        },
        cleaner_stats.clone(),
        shutdown.clone(),
    ));
    let metrics = match &config.metrics_listen {
        Some(address) => {
            let listener = TcpListener::bind(address)
                .await
                .with_context(|| format!("binding the metrics endpoint {address}"))?;
            Some(tokio::spawn(crate::metrics::serve(
                listener,
                crate::metrics::Sources {
                    store: store_stats,
                    writer: broker.writer.metrics(),
                    hedged_gets: broker.reader.hedged_gets(),
                    duties: crate::metrics::DutyStats {
                        retention: retention_stats.clone(),
                        cleaner: cleaner_stats.clone(),
                        gc: gc_stats.clone(),
                        compaction: compaction_stats.clone(),
                        expiry: expiry_stats.clone(),
                    },
                    security: crate::metrics::SecurityStats {
                        sasl: authenticator.clone(),
                        authorizer: authorizer.clone(),
                        quotas: broker.quotas.clone(),
                        jwks: jwks_reload.as_ref().map(|r| r.stats()),
                    },
                    cluster: cluster.clone(),
                },
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let max_connections = fjord_server::fdlimit::connection_cap(config.max_connections, open_files);
    if max_connections < config.max_connections {
        tracing::info!(
            max_connections,
            open_file_limit = open_files,
            "client connections capped below --max-connections to fit the open-file limit"
        );
    }
    let tls_reload = tls.map(|tls| {
        tokio::spawn(fjord_tls::watch(
            "tls-reload".to_string(),
            tls,
            Duration::from_millis(config.ssl_reload_interval_ms),
            shutdown.clone(),
        ))
    });
    let acl_refresh = tokio::spawn(authorizer.clone().run(shutdown.clone()));
    let jwks_task = jwks_reload.map(|reloader| reloader.spawn("jwks-reload", shutdown.clone()));
    let quota_refresh = tokio::spawn(quotas.clone().run(shutdown.clone()));
    let server = tokio::spawn(fjord_server::serve(
        bound,
        broker.clone(),
        ServerSettings {
            max_request_bytes: config.max_request_bytes,
            max_connections,
            drain_timeout: Duration::from_secs(config.shutdown_timeout_secs),
            ..ServerSettings::default()
        },
        shutdown.clone(),
    ));
    // Run until a signal, or until this broker may no longer serve under its node id.
    let fenced = tokio::select! {
        signal = wait_for_signal() => {
            signal?;
            None
        }
        left = &mut membership_task => Some(match left {
            Ok(Ok(())) => anyhow::anyhow!("cluster membership ended unexpectedly"),
            Ok(Err(e)) => anyhow::Error::new(e),
            Err(e) => anyhow::anyhow!("cluster membership task failed: {e}"),
        }),
    };
    tracing::info!(
        "shutting down: leaving the cluster, no new connections, answering requests in flight"
    );
    leave.cancel();
    if fenced.is_none() {
        let _ = membership_task.await;
    }
    probes.cancel();
    if let Some(prober) = prober {
        if let Err(e) = prober.await {
            tracing::warn!(error = %e, "peer probing task failed");
        }
    }
    shutdown.cancel();
    // Throttled responses go out at once: draining must not wait out client quotas.
    quotas.release_holds();
    // Flush and commit what is buffered now, while connections answer what they already read:
    // their produce replies wait for exactly that.
    let (served, ()) = tokio::join!(server, writer_task.close());
    if let Err(e) = served {
        tracing::error!(error = %e, "listener task failed");
    }
    if let Err(e) = gc.await {
        tracing::warn!(error = %e, "garbage collection task failed");
    }
    if let Some(task) = tls_reload {
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "TLS reload task failed");
        }
    }
    if let Err(e) = acl_refresh.await {
        tracing::warn!(error = %e, "ACL refresh task failed");
    }
    if let Some(task) = jwks_task {
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "JWKS reload task failed");
        }
    }
    if let Err(e) = quota_refresh.await {
        tracing::warn!(error = %e, "quota refresh task failed");
    }
    if let Err(e) = cleaner.await {
        tracing::error!(error = %e, "log cleaner task failed");
    }
    if let Err(e) = retention.await {
        tracing::warn!(error = %e, "retention task failed");
    }
    if let Err(e) = expiry.await {
        tracing::warn!(error = %e, "metadata expiry task failed");
    }
    if let Some(compaction) = compaction {
        if let Err(e) = compaction.await {
            tracing::warn!(error = %e, "compaction task failed");
        }
    }
    if let Some(metrics) = metrics {
        match metrics.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "metrics endpoint failed"),
            Err(e) => tracing::warn!(error = %e, "metrics task failed"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(listener) = commit_listener {
        listener.stop().await;
    }
    drop(broker);
    tracing::info!("shutdown complete");
    match fenced {
        Some(e) => Err(e.context("stopped because this broker lost its place in the cluster")),
        None => Ok(()),
    }
}

/// The system's clock, `.0` ms ahead (`--simulated-clock-offset-ms`, a test setting).
#[derive(Debug)]
struct OffsetClock(i64);

impl fjord_coordinator::clock::Clock for OffsetClock {
    fn now_ms(&self) -> i64 {
        fjord_coordinator::clock::SystemClock
            .now_ms()
            .saturating_add(self.0)
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Runs garbage collection every `interval` while this broker runs the cluster's background
/// duties, until `shutdown`.
async fn gc_loop(
    collector: fjord_storage::gc::Collector,
    stats: Arc<fjord_storage::gc::GcStats>,
    clock: Arc<dyn fjord_coordinator::clock::Clock>,
    cluster: watch::Receiver<Arc<ClusterView>>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let duty = GcDuty {
        collector,
        stats,
        clock,
    };
    fjord_broker::duty::run(
        duty,
        interval,
        move || cluster.borrow().runs_background_duties(),
        shutdown,
    )
    .await;
}

/// Garbage collection as a [`fjord_broker::duty::Duty`]; every pass is counted in its stats.
struct GcDuty {
    collector: fjord_storage::gc::Collector,
    stats: Arc<fjord_storage::gc::GcStats>,
    clock: Arc<dyn fjord_coordinator::clock::Clock>,
}

impl fjord_broker::duty::Duty for GcDuty {
    type Report = fjord_storage::gc::GcReport;
    type Error = fjord_storage::gc::GcError;

    fn name(&self) -> &'static str {
        "garbage-collection"
    }

    async fn pass(&mut self) -> Result<Self::Report, Self::Error> {
        let result = self.collector.pass(self.clock.now_ms()).await;
        self.stats.record(&result);
        result
    }

    fn noteworthy(&self, report: &Self::Report) -> bool {
        report.deleted_dead + report.deleted_orphans > 0 || report.swept
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
