//! The broker's Prometheus endpoint (`--metrics-listen`): `GET /metrics` in the OpenMetrics text
//! format, built with `prometheus-client` and served with `axum`.
//!
//! Values are read at scrape time from the components that own them (the object store's request
//! counts, the write path's stage histograms, the cluster view); this module owns no counters of
//! its own, so nothing is counted twice and nothing can drift.

use std::sync::Arc;

use anyhow::Context;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use fjord_broker::cleaner::CleanerStats;
use fjord_broker::cluster::ClusterView;
use fjord_broker::compaction::CompactionStats;
use fjord_broker::expiry::ExpiryStats;
use fjord_broker::retention::RetentionStats;
use fjord_storage::gc::GcStats;
use fjord_storage::instrumented::StoreStats;
use fjord_storage::writer_metrics::WriterMetrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The counts of the broker's background duties.
#[derive(Debug, Clone, Default)]
pub struct DutyStats {
    /// Retention passes.
    pub retention: Arc<RetentionStats>,
    /// Log cleaner (compaction) passes.
    pub cleaner: Arc<CleanerStats>,
    /// Object garbage collection.
    pub gc: Arc<GcStats>,
    /// Object compaction.
    pub compaction: Arc<CompactionStats>,
    /// Expiry of producer ids and group offsets.
    pub expiry: Arc<ExpiryStats>,
}

/// The counts of authentication and authorization.
#[derive(Clone)]
pub struct SecurityStats {
    /// SASL authentications (absent without a SASL listener).
    pub sasl: Option<Arc<fjord_broker::sasl::Authenticator>>,
    /// Authorization decisions and ACL reloads.
    pub authorizer: Arc<fjord_broker::authz::Authorizer>,
    /// Client quotas: throttled responses and reloads.
    pub quotas: Arc<fjord_broker::quotas::QuotaManager>,
    /// OAUTHBEARER's JWKS reloads (absent without OAUTHBEARER).
    pub jwks: Option<Arc<fjord_jwks::JwksStats>>,
}

impl std::fmt::Debug for SecurityStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityStats").finish_non_exhaustive()
    }
}

/// Reads the object store's counts, the duties' counts and the cluster view at scrape time.
#[derive(Debug)]
struct BrokerCollector {
    store: Arc<StoreStats>,
    duties: DutyStats,
    security: SecurityStats,
    cluster: watch::Receiver<Arc<ClusterView>>,
}

impl Collector for BrokerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = self.store.snapshot();
        let mut requests = encoder.encode_descriptor(
            "fjord_object_store_requests",
            "Object store requests issued, by kind (PUT counts each multipart part)",
            None,
            MetricType::Counter,
        )?;
        for (op, n) in [
            ("put", c.puts),
            ("get", c.gets),
            ("list", c.lists),
            ("delete", c.deletes),
            ("other", c.others),
        ] {
            ConstCounter::new(n).encode(requests.encode_family(&[("op", op)])?)?;
        }
        let mut bytes = encoder.encode_descriptor(
            "fjord_object_store_bytes",
            "Bytes sent to (put) and received from (get) the object store",
            None,
            MetricType::Counter,
        )?;
        for (op, n) in [("put", c.put_bytes), ("get", c.get_bytes)] {
            ConstCounter::new(n).encode(bytes.encode_family(&[("op", op)])?)?;
        }
        let view = self.cluster.borrow().clone();
        let brokers = encoder.encode_descriptor(
            "fjord_cluster_live_brokers",
            "Live brokers in this broker's view of the cluster",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(view.members().len() as i64).encode(brokers)?;
        let duties = encoder.encode_descriptor(
            "fjord_cluster_background_duties",
            "1 if this broker runs the cluster's background duties (retention, object compaction, object GC)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(view.runs_background_duties())).encode(duties)?;
        for (name, help, value) in [
            (
                "fjord_index_rows",
                "Index rows over all partitions, as counted by this broker's last garbage-collection pass (0 unless it runs the background duties)",
                &self.duties.gc.index_rows,
            ),
            (
                "fjord_index_objects",
                "Objects in the index's ledger (referenced, or dead and not yet deleted), as counted by this broker's last garbage-collection pass",
                &self.duties.gc.ledger_objects,
            ),
        ] {
            let gauge = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            let n = i64::try_from(value.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(i64::MAX);
            ConstGauge::new(n).encode(gauge)?;
        }
        let seconds = encoder.encode_descriptor(
            "fjord_retention_pass_seconds",
            "Time spent in retention passes (divide by fjord_retention_passes_total for a pass's cost)",
            None,
            MetricType::Counter,
        )?;
        let micros = self
            .duties
            .retention
            .pass_micros
            .load(std::sync::atomic::Ordering::Relaxed);
        ConstCounter::new(micros as f64 / 1e6).encode(seconds)?;
        for (name, help, value) in [
            (
                "fjord_retention_passes",
                "Retention passes run by this broker",
                &self.duties.retention.passes,
            ),
            (
                "fjord_retention_errors",
                "Retention coordinator calls that failed (logged; retried next pass)",
                &self.duties.retention.errors,
            ),
            (
                "fjord_retention_expired_rows",
                "Index rows that retention moved log start offsets past",
                &self.duties.retention.rows_expired,
            ),
            (
                "fjord_retention_partitions",
                "Partitions looked at by retention passes",
                &self.duties.retention.partitions,
            ),
            (
                "fjord_cleaner_passes",
                "Log cleaner (compaction) passes run by this broker",
                &self.duties.cleaner.passes,
            ),
            (
                "fjord_cleaner_errors",
                "Log cleaner failures (logged; the partition is retried next pass)",
                &self.duties.cleaner.errors,
            ),
            (
                "fjord_cleaner_cleanings",
                "Partition cleanings finished (the cleaner checkpoint moved)",
                &self.duties.cleaner.cleanings,
            ),
            (
                "fjord_cleaner_swaps_lost",
                "Cleaner row swaps lost to a concurrent change (retried next pass)",
                &self.duties.cleaner.swaps_lost,
            ),
            (
                "fjord_cleaner_records_read",
                "Records read by log cleaner rewrites",
                &self.duties.cleaner.records_read,
            ),
            (
                "fjord_cleaner_records_removed",
                "Records removed by the log cleaner (superseded, keyless, expired tombstones)",
                &self.duties.cleaner.records_removed,
            ),
            (
                "fjord_cleaner_read_bytes",
                "Bytes read by log cleaner rewrites",
                &self.duties.cleaner.bytes_read,
            ),
            (
                "fjord_cleaner_written_bytes",
                "Bytes written by log cleaner rewrites",
                &self.duties.cleaner.bytes_written,
            ),
            (
                "fjord_gc_passes",
                "Object garbage-collection passes run by this broker",
                &self.duties.gc.passes,
            ),
            (
                "fjord_gc_errors",
                "Garbage-collection passes that failed (logged; retried next pass)",
                &self.duties.gc.errors,
            ),
            (
                "fjord_gc_deleted_objects",
                "Objects deleted after their last index row went (file.delete.delay.ms later)",
                &self.duties.gc.deleted_dead,
            ),
            (
                "fjord_gc_deleted_orphans",
                "Objects deleted that were uploaded but never committed",
                &self.duties.gc.deleted_orphans,
            ),
            (
                "fjord_compaction_passes",
                "Object compaction passes run by this broker",
                &self.duties.compaction.passes,
            ),
            (
                "fjord_compaction_swaps",
                "Merged per-partition objects swapped in for the index rows they replace",
                &self.duties.compaction.swaps,
            ),
            (
                "fjord_compaction_lost",
                "Merges that lost their swap to retention, DeleteRecords, topic deletion or another swap",
                &self.duties.compaction.lost,
            ),
            (
                "fjord_compaction_errors",
                "Merges that failed (logged; retried next pass)",
                &self.duties.compaction.errors,
            ),
            (
                "fjord_compaction_bytes_written",
                "Bytes of merged objects uploaded by object compaction",
                &self.duties.compaction.bytes_written,
            ),
            (
                "fjord_compaction_rows_replaced",
                "Index rows replaced by compaction swaps",
                &self.duties.compaction.rows_replaced,
            ),
            (
                "fjord_compaction_rows_written",
                "Index rows written by compaction swaps",
                &self.duties.compaction.rows_written,
            ),
            (
                "fjord_gc_listed_keys",
                "Object keys listed by orphan sweeps",
                &self.duties.gc.listed,
            ),
            (
                "fjord_producer_expiry_passes",
                "Producer id expiry passes run by this broker",
                &self.duties.expiry.producer_passes,
            ),
            (
                "fjord_offset_expiry_passes",
                "Group offset expiry passes run by this broker",
                &self.duties.expiry.group_passes,
            ),
            (
                "fjord_expiry_errors",
                "Metadata expiry coordinator calls that failed (logged; retried next pass)",
                &self.duties.expiry.errors,
            ),
            (
                "fjord_expired_producer_states",
                "Per-partition idempotent-producer states expired (producer.id.expiration.ms)",
                &self.duties.expiry.producer_states_expired,
            ),
            (
                "fjord_expired_producers",
                "Producer ids expired (producer.id.expiration.ms)",
                &self.duties.expiry.producers_expired,
            ),
            (
                "fjord_expired_group_offsets",
                "Committed offsets of empty consumer groups expired (offsets.retention.minutes)",
                &self.duties.expiry.group_offsets_expired,
            ),
            (
                "fjord_expired_groups",
                "Empty consumer groups deleted after their offsets expired",
                &self.duties.expiry.groups_deleted,
            ),
            (
                "fjord_expiry_fenced",
                "Group expiries refused because the group was written meanwhile (retried)",
                &self.duties.expiry.fenced,
            ),
        ] {
            let counter = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value.load(std::sync::atomic::Ordering::Relaxed)).encode(counter)?;
        }
        let load = |v: &std::sync::atomic::AtomicU64| v.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(sasl) = &self.security.sasl {
            let mut auth = encoder.encode_descriptor(
                "fjord_sasl_authentications",
                "SASL authentications by result (throttled: refused unchecked, the address failed too often)",
                None,
                MetricType::Counter,
            )?;
            for (result, n) in [
                ("success", load(&sasl.stats.successes)),
                ("failure", load(&sasl.stats.failures)),
                ("throttled", load(&sasl.stats.throttled)),
            ] {
                ConstCounter::new(n).encode(auth.encode_family(&[("result", result)])?)?;
            }
        }
        let authz = &self.security.authorizer.stats;
        let quotas = &self.security.quotas.stats;
        let mut security = vec![
            (
                "fjord_quota_throttled",
                "Responses delayed by a client quota (byte rate or request time)",
                load(&quotas.throttled),
            ),
            (
                "fjord_quota_reloads",
                "Times this broker loaded a new version of the client quotas",
                load(&quotas.reloads),
            ),
            (
                "fjord_quota_reload_errors",
                "Client quota reloads that failed (the previous quotas stay in force; retried)",
                load(&quotas.reload_errors),
            ),
        ];
        if let Some(jwks) = &self.security.jwks {
            security.push((
                "fjord_jwks_reloads",
                "OAUTHBEARER key sets (JWKS) loaded, the first included",
                load(&jwks.reloads),
            ));
            security.push((
                "fjord_jwks_reload_errors",
                "JWKS reloads that failed or found no usable key (the previous keys stay in force)",
                load(&jwks.errors),
            ));
        }
        for (name, help, n) in security.into_iter().chain([
            (
                "fjord_authorization_denied",
                "Operations on resources refused by the ACLs",
                load(&authz.denied),
            ),
            (
                "fjord_acl_reloads",
                "Times this broker loaded a new version of the ACLs",
                load(&authz.reloads),
            ),
            (
                "fjord_acl_reload_errors",
                "ACL reloads that failed (the previous ACLs stay in force; retried)",
                load(&authz.reload_errors),
            ),
        ]) {
            let counter = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(n).encode(counter)?;
        }
        Ok(())
    }
}

/// What the endpoint reads at scrape time.
pub struct Sources {
    /// Object store request counts.
    pub store: Arc<StoreStats>,
    /// The write path's stage histograms.
    pub writer: Arc<WriterMetrics>,
    /// Hedged object-store reads.
    pub hedged_gets: Counter,
    /// Background duties.
    pub duties: DutyStats,
    /// Authentication and authorization.
    pub security: SecurityStats,
    /// The cluster view.
    pub cluster: watch::Receiver<Arc<ClusterView>>,
}

/// Serves `/metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    sources: Sources,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Sources {
        store,
        writer,
        hedged_gets,
        duties,
        security,
        cluster,
    } = sources;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BrokerCollector {
        store,
        duties,
        security,
        cluster,
    }));
    writer.register(&mut registry);
    registry.register(
        "fjord_read_hedged_gets",
        "Object-store reads still running after read_hedge_ms that got a second, identical GET",
        hedged_gets,
    );
    let registry = Arc::new(registry);
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let mut body = String::new();
                match prometheus_client::encoding::text::encode(&mut body, &registry) {
                    Ok(()) => (
                        axum::http::StatusCode::OK,
                        [(
                            CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    ),
                    Err(_) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
                        "encoding metrics failed".to_string(),
                    ),
                }
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving metrics")
}
