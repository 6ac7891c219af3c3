//! The PostgreSQL coordinator: all state in one PostgreSQL database, shared by every broker of a
//! cluster.
//!
//! It owns the `fjord_*` tables of the database it connects to (created by the numbered migrations
//! in `migrations/postgres/`, applied by its `migrate` module) and a small pool of connections
//! (`deadpool-postgres` over `tokio-postgres`, no TLS). It keeps no state in memory besides the
//! pool and prepared statements, so any number of instances, in one process or many, may use the
//! same database at once.
//!
//! Invariants:
//! - Every call is one transaction (read committed). Writers lock the rows they change before
//!   deciding, always in one order: a commit's claim on its own object key (`fjord_commits`), the
//!   topic row, partition rows sorted by `(topic_id, partition)`, object rows sorted by key. Two
//!   writers therefore never deadlock, and a partition's offsets are assigned by one commit at a
//!   time, densely, across all brokers.
//!   Consumer-group tables are independent of those: a group's offset rows are locked in
//!   `(topic, partition)` order (the `groups` module).
//! - A commit (the `commit` module) decides with the same pure rules as the embedded coordinator
//!   ([`crate::state`]), so both give identical outcomes for identical histories.
//! - Driver and server failures are [`CoordinatorError::Storage`] (retriable; a transaction that
//!   failed changed nothing). A re-commit of an object whose commit outcome was lost returns the
//!   recorded outcomes (kept for ten minutes).
//! - Log start offsets (the `lifecycle` module) only rise, under the partition row's lock; the
//!   index rows wholly below go with them, and their objects' row counts (the `objects` module)
//!   fall in the same transaction.
//! - Broker leases (the `brokers` module) are measured by the database's clock, never the
//!   broker's, so brokers with skewed clocks agree on who is live.
//! - ACL changes (the `security` module) serialize on one version row, which every change that
//!   adds or removes a binding bumps in its own transaction. Client quota changes (the `quotas`
//!   module) do the same on a version row of their own.
//! - A commit that appended data notifies every listening session of the database when it
//!   commits; [`PostgresCoordinator::spawn_commit_listener`] turns those notifications into
//!   wake-ups on other brokers (the `listen` module), outside the pool, on a connection of its
//!   own.

mod brokers;
mod commit;
mod db;
mod expiry;
mod groups;
mod lifecycle;
mod listen;
mod migrate;
mod objects;
mod quotas;
mod security;
mod swap;
#[cfg(test)]
mod tests;
mod tls;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::Json;
use tokio_postgres::Row;
use uuid::Uuid;

use self::db::{db, get, index_row, is_unique_violation, unknown_partition, INDEX_ROW_COLUMNS};
use crate::clock::Clock;
use crate::model::*;
use crate::security::{
    AclBinding, AclFilter, AclSnapshot, ScramCredential, ScramMechanism, ScramUser,
};
use crate::state::{
    apply_config_changes, bump_target, check_new_partition_count, check_partition_increase,
    producer_decision, ProducerDecision,
};
use crate::{
    AclStore, BrokerRegistry, Coordinator, CoordinatorError, CredentialStore, GroupStore,
    LogLifecycle, MetadataExpiry, ObjectLedger, Result,
};

pub use self::listen::{CommitListener, LISTENER_APPLICATION_NAME};

/// Connection settings beyond the URL.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Most connections held open at once.
    pub pool_size: usize,
    /// How long to wait for a TCP connection and for the server's greeting, unless the URL sets
    /// `connect_timeout`.
    pub connect_timeout: Duration,
    /// How long a call waits for a free pooled connection before failing with a storage error.
    pub wait_timeout: Duration,
    /// Extra CA certificates (PEM) trusted for TLS connections (`sslmode=require`), besides the
    /// system's (see the `tls` module).
    pub ca_file: Option<std::path::PathBuf>,
    /// Times topic deletions, group saves and housekeeping (leases use the database's clock).
    pub clock: Arc<dyn Clock>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            pool_size: 8,
            connect_timeout: Duration::from_secs(10),
            wait_timeout: Duration::from_secs(30),
            ca_file: None,
            clock: crate::clock::system(),
        }
    }
}

/// A coordinator backed by PostgreSQL. Cheap to clone (clones share the pool).
#[derive(Clone)]
pub struct PostgresCoordinator {
    pool: Pool,
    /// Connection settings of [`spawn_commit_listener`](Self::spawn_commit_listener)'s session:
    /// the pool's (URL and connect timeout), named apart.
    listener_config: Arc<tokio_postgres::Config>,
    tls: tls::Tls,
    /// When this instance last pruned old commit outcomes (ms).
    last_prune_ms: Arc<AtomicI64>,
    clock: Arc<dyn Clock>,
}

/// Server-side limits of every session (PostgreSQL `options`): statements, lock waits and idle
/// transactions end with an error instead of holding rows without bound.
const SESSION_LIMITS: &str =
    "-c statement_timeout=60000 -c lock_timeout=15000 -c idle_in_transaction_session_timeout=60000";

/// How often (ms) an instance prunes remembered commit outcomes older than ten minutes.
const PRUNE_EVERY_MS: i64 = 60_000;

/// Rows fetched per round trip by [`Coordinator::index_rows`].
const INDEX_PAGE_ROWS: i64 = 256;

const TOPIC_COLUMNS: &str = "name, id, partitions, configs";

impl PostgresCoordinator {
    /// Connects to the database named by `url` (`postgres://user:password@host:port/dbname?...`,
    /// or the key=value form libpq accepts) and brings its schema up to date.
    pub async fn connect(url: &str) -> Result<PostgresCoordinator> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// [`connect`](Self::connect) with explicit options.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<PostgresCoordinator> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| CoordinatorError::Invalid(format!("bad PostgreSQL URL: {e}")))?;
        if config.get_application_name().is_none() {
            config.application_name("fjord");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        // Bounded work on the server: a statement, a lock wait and an idle transaction each end
        // with an error rather than hold rows (and a broker's commit pipeline) indefinitely. A
        // URL that sets `options` decides for itself.
        if config.get_options().is_none() {
            config.options(SESSION_LIMITS);
        }
        // A database gone without a word (a host lost, a partition) is noticed in about 20 s,
        // unless the URL sets keepalives itself.
        if config.get_keepalives_idle() == listen::DEFAULT_KEEPALIVE_IDLE {
            config.keepalives_idle(Duration::from_secs(10));
            if config.get_keepalives_interval().is_none() {
                config.keepalives_interval(Duration::from_secs(5));
            }
            if config.get_keepalives_retries().is_none() {
                config.keepalives_retries(2);
            }
        }
        let tls = tls::configure(&mut config, options.ca_file.as_deref())?;
        let listener_config = Arc::new(listen::listener_config(&config));
        let manager = Manager::from_config(
            config,
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.wait_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| CoordinatorError::Invalid(format!("PostgreSQL pool: {e}")))?;
        let coordinator = PostgresCoordinator {
            pool,
            listener_config,
            tls,
            last_prune_ms: Arc::new(AtomicI64::new(options.clock.now_ms())),
            clock: options.clock.clone(),
        };
        let mut client = coordinator.client().await?;
        migrate::migrate(&mut client).await?;
        Ok(coordinator)
    }

    /// The clock that stamps this instance's writes.
    pub(super) fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    async fn client(&self) -> Result<deadpool_postgres::Client> {
        self.pool.get().await.map_err(|e| {
            CoordinatorError::Storage(format!(
                "postgres: getting a connection: {}",
                db::describe_pool(&e)
            ))
        })
    }

    /// Runs a read-only query on a pooled connection.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        what: &'static str,
    ) -> Result<Vec<Row>> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(db(what))?;
        client.query(&statement, params).await.map_err(db(what))
    }

    /// Drops remembered commit outcomes older than ten minutes, at most once a minute per instance.
    /// Failures only delay pruning.
    async fn maybe_prune_commits(&self) {
        let now = self.clock.now_ms();
        let last = self.last_prune_ms.load(Ordering::Relaxed);
        if now - last < PRUNE_EVERY_MS
            || self
                .last_prune_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let result = match self.client().await {
            Ok(client) => client
                .execute(commit::PRUNE_COMMITS, &[])
                .await
                .map_err(db("pruning old commit outcomes")),
            Err(e) => Err(e),
        };
        match result {
            Ok(n) => tracing::debug!(pruned = n, "pruned remembered commit outcomes"),
            Err(e) => tracing::warn!("{e}"),
        }
    }
}

fn topic_from_row(row: &Row) -> Result<TopicMeta> {
    let Json(configs): Json<BTreeMap<String, String>> = get(row, 3)?;
    Ok(TopicMeta {
        name: get(row, 0)?,
        id: get(row, 1)?,
        partitions: get(row, 2)?,
        configs,
    })
}

/// Locks topic `name` in `tx` and returns it.
async fn lock_topic(tx: &deadpool_postgres::Transaction<'_>, name: &str) -> Result<TopicMeta> {
    let statement = tx
        .prepare_cached(&format!(
            "SELECT {TOPIC_COLUMNS} FROM fjord_topics WHERE name = $1 FOR UPDATE"
        ))
        .await
        .map_err(db("locking a topic"))?;
    let row = tx
        .query_opt(&statement, &[&name])
        .await
        .map_err(db("locking a topic"))?
        .ok_or_else(|| CoordinatorError::UnknownTopic(name.to_string()))?;
    topic_from_row(&row)
}

#[async_trait]
impl Coordinator for PostgresCoordinator {
    async fn create_topic(&self, spec: TopicSpec) -> Result<TopicMeta> {
        if let Err(invalid) = check_new_partition_count(spec.partitions) {
            // The embedded coordinator reports a taken name first.
            return match self.topic(&spec.name).await? {
                Some(_) => Err(CoordinatorError::TopicExists(spec.name)),
                None => Err(invalid),
            };
        }
        let meta = TopicMeta {
            name: spec.name,
            id: Uuid::new_v4(),
            partitions: spec.partitions,
            configs: spec.configs,
        };
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(db("starting a topic creation"))?;
        let inserted = tx
            .execute(
                "INSERT INTO fjord_topics (name, id, partitions, configs) VALUES ($1, $2, $3, $4)",
                &[&meta.name, &meta.id, &meta.partitions, &Json(&meta.configs)],
            )
            .await;
        match inserted {
            Err(e) if is_unique_violation(&e, "fjord_topics_pkey") => {
                return Err(CoordinatorError::TopicExists(meta.name));
            }
            other => other.map_err(db("creating a topic"))?,
        };
        tx.execute(
            "INSERT INTO fjord_partitions (topic_id, partition)
             SELECT $1, generate_series(0, $2 - 1)",
            &[&meta.id, &meta.partitions],
        )
        .await
        .map_err(db("creating partitions"))?;
        tx.commit()
            .await
            .map_err(db("committing a topic creation"))?;
        Ok(meta)
    }

    async fn delete_topic(&self, name: &str) -> Result<TopicMeta> {
        let at_ms = self.clock.now_ms();
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(db("starting a topic deletion"))?;
        let meta = lock_topic(&tx, name).await?;
        // Lock order: topic, its partitions (waits out commits to them), the objects its rows
        // reference; each sorted.
        tx.query(
            "SELECT partition FROM fjord_partitions WHERE topic_id = $1
             ORDER BY partition FOR UPDATE",
            &[&meta.id],
        )
        .await
        .map_err(db("locking partitions of a deleted topic"))?;
        tx.query(
            "SELECT key FROM fjord_objects
             WHERE key IN (SELECT object_key FROM fjord_index_rows WHERE topic_id = $1)
             ORDER BY key FOR UPDATE",
            &[&meta.id],
        )
        .await
        .map_err(db("locking objects of a deleted topic"))?;
        tx.execute(
            "WITH gone AS (
                 DELETE FROM fjord_index_rows WHERE topic_id = $1 RETURNING object_key
             ), counts AS (
                 SELECT object_key, count(*) AS n FROM gone GROUP BY object_key
             )
             UPDATE fjord_objects AS o
             SET row_count = GREATEST(o.row_count - c.n, 0),
                 dead_since = CASE WHEN o.row_count - c.n <= 0 THEN $2 ELSE o.dead_since END
             FROM counts AS c WHERE o.key = c.object_key",
            &[&meta.id, &at_ms],
        )
        .await
        .map_err(db("releasing objects of a deleted topic"))?;
        // Cascades to partitions and producer state.
        tx.execute("DELETE FROM fjord_topics WHERE id = $1", &[&meta.id])
            .await
            .map_err(db("deleting a topic"))?;
        tx.commit()
            .await
            .map_err(db("committing a topic deletion"))?;
        Ok(meta)
    }

    async fn create_partitions(&self, name: &str, new_total: i32) -> Result<TopicMeta> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(db("starting a partition increase"))?;
        let mut meta = lock_topic(&tx, name).await?;
        check_partition_increase(name, meta.partitions, new_total)?;
        tx.execute(
            "INSERT INTO fjord_partitions (topic_id, partition)
             SELECT $1, generate_series($2, $3 - 1)",
            &[&meta.id, &meta.partitions, &new_total],
        )
        .await
        .map_err(db("creating partitions"))?;
        tx.execute(
            "UPDATE fjord_topics SET partitions = $2 WHERE id = $1",
            &[&meta.id, &new_total],
        )
        .await
        .map_err(db("raising a partition count"))?;
        tx.commit()
            .await
            .map_err(db("committing a partition increase"))?;
        meta.partitions = new_total;
        Ok(meta)
    }

    async fn alter_topic_configs(
        &self,
        name: &str,
        changes: Vec<(String, Option<String>)>,
    ) -> Result<TopicMeta> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(db("starting a config change"))?;
        let mut meta = lock_topic(&tx, name).await?;
        apply_config_changes(&mut meta.configs, changes);
        tx.execute(
            "UPDATE fjord_topics SET configs = $2 WHERE id = $1",
            &[&meta.id, &Json(&meta.configs)],
        )
        .await
        .map_err(db("changing topic configs"))?;
        tx.commit()
            .await
            .map_err(db("committing a config change"))?;
        Ok(meta)
    }

    async fn list_topics(&self) -> Result<Vec<TopicMeta>> {
        let sql = format!("SELECT {TOPIC_COLUMNS} FROM fjord_topics ORDER BY name");
        self.query(&sql, &[], "listing topics")
            .await?
            .iter()
            .map(topic_from_row)
            .collect()
    }

    async fn topic(&self, name: &str) -> Result<Option<TopicMeta>> {
        let sql = format!("SELECT {TOPIC_COLUMNS} FROM fjord_topics WHERE name = $1");
        self.query(&sql, &[&name], "reading a topic")
            .await?
            .first()
            .map(topic_from_row)
            .transpose()
    }

    async fn topic_by_id(&self, id: Uuid) -> Result<Option<TopicMeta>> {
        let sql = format!("SELECT {TOPIC_COLUMNS} FROM fjord_topics WHERE id = $1");
        self.query(&sql, &[&id], "reading a topic")
            .await?
            .first()
            .map(topic_from_row)
            .transpose()
    }

    async fn commit(&self, flush: FlushCommit) -> Result<Vec<BatchOutcome>> {
        let mut outcomes = self.commit_many(vec![flush]).await?;
        outcomes
            .pop()
            .ok_or_else(|| CoordinatorError::Storage("a commit decided nothing".into()))
    }

    async fn commit_many(&self, flushes: Vec<FlushCommit>) -> Result<Vec<Vec<BatchOutcome>>> {
        let outcomes = commit::commit(&self.pool, &flushes).await?;
        self.maybe_prune_commits().await;
        Ok(outcomes)
    }

    async fn partition_offsets(&self, tp: TopicPartition) -> Result<PartitionOffsets> {
        let rows = self
            .query(
                "SELECT log_start, high_watermark FROM fjord_partitions
                 WHERE topic_id = $1 AND partition = $2",
                &[&tp.topic_id, &tp.partition],
                "reading partition offsets",
            )
            .await?;
        let row = rows.first().ok_or_else(|| unknown_partition(tp))?;
        Ok(PartitionOffsets {
            log_start: get(row, 0)?,
            high_watermark: get(row, 1)?,
        })
    }

    async fn index_rows(
        &self,
        tp: TopicPartition,
        from_offset: i64,
        max_bytes: u64,
    ) -> Result<Vec<IndexRow>> {
        // Rows are contiguous and non-overlapping, so "the row holding `from`, then the ones
        // after it" is "rows ending at or after `from`", found from the last row starting at or
        // before it (an index probe, not a scan of the partition).
        let sql = format!(
            "SELECT {INDEX_ROW_COLUMNS} FROM fjord_index_rows
             WHERE topic_id = $1 AND partition = $2 AND last_offset >= $3
               AND base_offset >= COALESCE((
                   SELECT max(base_offset) FROM fjord_index_rows
                   WHERE topic_id = $1 AND partition = $2 AND base_offset <= $3), $3)
             ORDER BY base_offset
             LIMIT $4"
        );
        let mut rows: Vec<IndexRow> = Vec::new();
        let mut bytes = 0u64;
        let mut from = from_offset;
        loop {
            let page = self
                .query(
                    &sql,
                    &[&tp.topic_id, &tp.partition, &from, &INDEX_PAGE_ROWS],
                    "reading index rows",
                )
                .await?;
            let full = page.len() as i64 == INDEX_PAGE_ROWS;
            for row in &page {
                let Some(row) = index_row(row)? else { continue };
                if !rows.is_empty() && bytes.saturating_add(row.length) > max_bytes {
                    return Ok(rows);
                }
                bytes = bytes.saturating_add(row.length);
                from = row.last_offset.saturating_add(1);
                rows.push(row);
            }
            if !full {
                break;
            }
        }
        if rows.is_empty() {
            // No row: tell an empty partition from a missing one.
            self.partition_offsets(tp).await?;
        }
        Ok(rows)
    }

    async fn row_for_timestamp(
        &self,
        tp: TopicPartition,
        timestamp: i64,
    ) -> Result<Option<IndexRow>> {
        let sql = format!(
            "SELECT r.* FROM fjord_partitions AS p LEFT JOIN LATERAL (
                 SELECT {INDEX_ROW_COLUMNS} FROM fjord_index_rows AS i
                 WHERE i.topic_id = p.topic_id AND i.partition = p.partition
                   AND i.base_offset = (
                       SELECT x.base_offset FROM fjord_time_index AS x
                       WHERE x.topic_id = p.topic_id AND x.partition = p.partition
                         AND x.max_timestamp >= $3
                       ORDER BY x.max_timestamp LIMIT 1)
             ) AS r ON true
             WHERE p.topic_id = $1 AND p.partition = $2"
        );
        let rows = self
            .query(
                &sql,
                &[&tp.topic_id, &tp.partition, &timestamp],
                "finding a row by timestamp",
            )
            .await?;
        index_row(rows.first().ok_or_else(|| unknown_partition(tp))?)
    }

    async fn row_with_max_timestamp(&self, tp: TopicPartition) -> Result<Option<IndexRow>> {
        let sql = format!(
            "SELECT r.* FROM fjord_partitions AS p LEFT JOIN LATERAL (
                 SELECT {INDEX_ROW_COLUMNS} FROM fjord_index_rows AS i
                 WHERE i.topic_id = p.topic_id AND i.partition = p.partition
                   AND i.base_offset = (
                       SELECT x.base_offset FROM fjord_time_index AS x
                       WHERE x.topic_id = p.topic_id AND x.partition = p.partition
                       ORDER BY x.max_timestamp DESC LIMIT 1)
             ) AS r ON true
             WHERE p.topic_id = $1 AND p.partition = $2"
        );
        let rows = self
            .query(
                &sql,
                &[&tp.topic_id, &tp.partition],
                "finding the max-timestamp row",
            )
            .await?;
        index_row(rows.first().ok_or_else(|| unknown_partition(tp))?)
    }

    async fn init_producer_id(&self, request: InitProducer) -> Result<ProducerIdentity> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(db("starting InitProducerId"))?;
        let current = match bump_target(request) {
            Some(id) => tx
                .query_opt(
                    "SELECT epoch FROM fjord_producers WHERE producer_id = $1 FOR UPDATE",
                    &[&id],
                )
                .await
                .map_err(db("reading a producer epoch"))?
                .map(|row| get::<i16>(&row, 0))
                .transpose()?,
            None => None,
        };
        let identity = match producer_decision(request, current)? {
            ProducerDecision::Again(identity) => identity,
            ProducerDecision::Bump(identity) => {
                tx.execute(
                    "UPDATE fjord_producers SET epoch = $2, init_ms = $3 WHERE producer_id = $1",
                    &[
                        &identity.producer_id,
                        &identity.producer_epoch,
                        &self.clock.now_ms(),
                    ],
                )
                .await
                .map_err(db("bumping a producer epoch"))?;
                identity
            }
            ProducerDecision::Fresh => {
                let row = tx
                    .query_one(
                        "INSERT INTO fjord_producers (producer_id, epoch, init_ms)
                         VALUES (nextval('fjord_producer_ids'), 0, $1) RETURNING producer_id",
                        &[&self.clock.now_ms()],
                    )
                    .await
                    .map_err(db("allocating a producer id"))?;
                ProducerIdentity {
                    producer_id: get(&row, 0)?,
                    producer_epoch: 0,
                }
            }
        };
        tx.commit().await.map_err(db("committing InitProducerId"))?;
        Ok(identity)
    }
}

#[async_trait]
impl ObjectLedger for PostgresCoordinator {
    async fn dead_objects(&self, dead_before_ms: i64, limit: usize) -> Result<Vec<DeadObject>> {
        objects::dead_objects(self, dead_before_ms, limit).await
    }

    async fn known_objects(&self, keys: Vec<String>) -> Result<BTreeSet<String>> {
        objects::known_objects(self, keys).await
    }

    async fn forget_objects(&self, keys: Vec<String>) -> Result<()> {
        objects::forget_objects(self, keys).await
    }

    async fn raise_commit_watermark(&self, at_ms: i64) -> Result<i64> {
        objects::raise_commit_watermark(self, at_ms).await
    }

    async fn ledger_size(&self) -> Result<LedgerSize> {
        objects::ledger_size(self).await
    }
}

#[async_trait]
impl GroupStore for PostgresCoordinator {
    async fn commit_offsets(
        &self,
        group: &str,
        offsets: Vec<CommittedOffset>,
        fence: Option<i64>,
    ) -> Result<()> {
        groups::commit_offsets(self, group, offsets, fence).await
    }

    async fn fetch_offsets(&self, group: &str) -> Result<Vec<CommittedOffset>> {
        groups::fetch_offsets(self, group).await
    }

    async fn delete_offsets(
        &self,
        group: &str,
        partitions: Vec<(String, i32)>,
        fence: Option<i64>,
    ) -> Result<()> {
        groups::delete_offsets(self, group, partitions, fence).await
    }

    async fn save_group(&self, group: &str, expected: i64, state: Vec<u8>) -> Result<i64> {
        groups::save_group(self, group, expected, state).await
    }

    async fn load_group(&self, group: &str) -> Result<Option<StoredGroup>> {
        groups::load_group(self, group).await
    }

    async fn group_exists(&self, group: &str) -> Result<bool> {
        groups::group_exists(self, group).await
    }

    async fn list_groups(&self) -> Result<Vec<String>> {
        groups::list_groups(self).await
    }

    async fn delete_group(&self, group: &str, fence: Option<i64>) -> Result<bool> {
        groups::delete_group(self, group, fence).await
    }
}

#[async_trait]
impl LogLifecycle for PostgresCoordinator {
    async fn delete_records(&self, tp: TopicPartition, before: i64) -> Result<PartitionOffsets> {
        lifecycle::delete_records(self, tp, before).await
    }

    async fn apply_retention(
        &self,
        tp: TopicPartition,
        limits: RetentionLimits,
        max_rows: usize,
    ) -> Result<RetentionStep> {
        lifecycle::apply_retention(self, tp, limits, max_rows).await
    }

    async fn swap_rows(&self, swap: RowSwap) -> Result<SwapOutcome> {
        swap::swap_rows(self, swap).await
    }

    async fn cleaned_to(&self, tp: TopicPartition) -> Result<i64> {
        swap::cleaned_to(self, tp).await
    }
}

#[async_trait]
impl MetadataExpiry for PostgresCoordinator {
    async fn expire_producers(
        &self,
        now_ms: i64,
        expiration_ms: i64,
        max: usize,
    ) -> Result<ProducerExpiryStep> {
        expiry::expire_producers(self, now_ms, expiration_ms, max).await
    }
}

#[async_trait]
impl BrokerRegistry for PostgresCoordinator {
    async fn register_broker(
        &self,
        registration: BrokerRegistration,
        lease_ms: i64,
    ) -> Result<LiveBroker> {
        brokers::register(self, registration, lease_ms).await
    }

    async fn renew_broker(
        &self,
        node_id: i32,
        incarnation: Uuid,
        lease_ms: i64,
    ) -> Result<LiveBroker> {
        brokers::renew(self, node_id, incarnation, lease_ms).await
    }

    async fn deregister_broker(&self, node_id: i32, incarnation: Uuid) -> Result<()> {
        brokers::deregister(self, node_id, incarnation).await
    }

    async fn live_brokers(&self) -> Result<Vec<LiveBroker>> {
        brokers::live(self).await
    }
}

#[async_trait]
impl CredentialStore for PostgresCoordinator {
    async fn upsert_scram_credential(&self, user: &str, credential: ScramCredential) -> Result<()> {
        security::upsert_credential(self, user, credential).await
    }

    async fn delete_scram_credential(&self, user: &str, mechanism: ScramMechanism) -> Result<bool> {
        security::delete_credential(self, user, mechanism).await
    }

    async fn scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Result<Option<ScramCredential>> {
        security::credential(self, user, mechanism).await
    }

    async fn scram_users(&self) -> Result<Vec<ScramUser>> {
        security::scram_users(self).await
    }
}

#[async_trait]
impl crate::QuotaStore for PostgresCoordinator {
    async fn alter_client_quotas(
        &self,
        alterations: Vec<crate::quotas::QuotaAlteration>,
    ) -> Result<()> {
        quotas::alter(self, alterations).await
    }

    async fn client_quotas(&self) -> Result<crate::quotas::QuotaSnapshot> {
        quotas::snapshot(self).await
    }

    async fn quota_version(&self) -> Result<i64> {
        quotas::version(self).await
    }
}

#[async_trait]
impl AclStore for PostgresCoordinator {
    async fn create_acls(&self, bindings: Vec<AclBinding>) -> Result<()> {
        security::create_acls(self, bindings).await
    }

    async fn delete_acls(&self, filters: Vec<AclFilter>) -> Result<Vec<Vec<AclBinding>>> {
        security::delete_acls(self, filters).await
    }

    async fn acls(&self) -> Result<AclSnapshot> {
        security::acls(self).await
    }

    async fn acl_version(&self) -> Result<i64> {
        security::acl_version(self).await
    }
}
