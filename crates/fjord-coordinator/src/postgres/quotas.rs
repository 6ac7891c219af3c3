//! Client quotas on PostgreSQL (`fjord_client_quotas` and the one-row `fjord_quota_version`, see
//! `migrations/postgres/0012_quotas.sql`).
//!
//! A change is one transaction that first locks the version row (`SELECT ... FOR UPDATE`), so
//! changes serialize across brokers; it reads every stored entry, decides in Rust with
//! [`alter_entries`] (the same rule as the embedded coordinator), rewrites the rows of exactly
//! the changed entities and bumps the version if any changed. Reading the entries with their
//! version is one repeatable-read transaction, so the two agree.
//!
//! An entity is stored as the JSON of its normalized parts; a row that does not decode, or a
//! key this build does not know, is [`CoordinatorError::Corrupt`].

use std::collections::BTreeMap;

use super::db::{db, get};
use super::PostgresCoordinator;
use crate::quotas::{
    alter_entries, QuotaAlteration, QuotaEntity, QuotaEntry, QuotaKey, QuotaSnapshot, QuotaValues,
};
use crate::{CoordinatorError, Result};

const LOCK_VERSION: &str = "SELECT version FROM fjord_quota_version FOR UPDATE";
const READ_VERSION: &str = "SELECT version FROM fjord_quota_version";
const BUMP_VERSION: &str = "UPDATE fjord_quota_version SET version = version + 1";
const READ_ALL: &str = "SELECT entity, quota_key, value FROM fjord_client_quotas";
const DELETE_ENTITY: &str = "DELETE FROM fjord_client_quotas WHERE entity = $1";
const INSERT_VALUE: &str =
    "INSERT INTO fjord_client_quotas (entity, quota_key, value) VALUES ($1, $2, $3)";

fn encode(entity: &QuotaEntity) -> Result<String> {
    serde_json::to_string(entity)
        .map_err(|e| CoordinatorError::Invalid(format!("encoding quota entity: {e}")))
}

fn entries(rows: &[tokio_postgres::Row]) -> Result<BTreeMap<QuotaEntity, QuotaValues>> {
    let mut all: BTreeMap<QuotaEntity, QuotaValues> = BTreeMap::new();
    for row in rows {
        let entity: String = get(row, 0)?;
        let key: String = get(row, 1)?;
        let value: f64 = get(row, 2)?;
        let entity: QuotaEntity = serde_json::from_str(&entity).map_err(|e| {
            CoordinatorError::Corrupt(format!("postgres: quota entity {entity:?}: {e}"))
        })?;
        let key = QuotaKey::from_name(&key).ok_or_else(|| {
            CoordinatorError::Corrupt(format!("postgres: unknown quota key {key:?}"))
        })?;
        all.entry(entity).or_default().insert(key, value);
    }
    Ok(all)
}

pub(super) async fn alter(
    c: &PostgresCoordinator,
    alterations: Vec<QuotaAlteration>,
) -> Result<()> {
    const WHAT: &str = "altering client quotas";
    let mut client = c.client().await?;
    let tx = client.transaction().await.map_err(db(WHAT))?;
    tx.query_one(LOCK_VERSION, &[]).await.map_err(db(WHAT))?;
    let rows = tx.query(READ_ALL, &[]).await.map_err(db(WHAT))?;
    let current = entries(&rows)?;
    let changed = alter_entries(&current, alterations)?;
    if changed.is_empty() {
        tx.rollback().await.map_err(db(WHAT))?;
        return Ok(());
    }
    for (entity, values) in &changed {
        let entity = encode(entity)?;
        tx.execute(DELETE_ENTITY, &[&entity])
            .await
            .map_err(db(WHAT))?;
        for (key, value) in values {
            tx.execute(INSERT_VALUE, &[&entity, &key.name(), value])
                .await
                .map_err(db(WHAT))?;
        }
    }
    tx.execute(BUMP_VERSION, &[]).await.map_err(db(WHAT))?;
    tx.commit().await.map_err(db(WHAT))?;
    Ok(())
}

pub(super) async fn snapshot(c: &PostgresCoordinator) -> Result<QuotaSnapshot> {
    const WHAT: &str = "reading client quotas";
    let mut client = c.client().await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db(WHAT))?;
    let version: i64 = get(&tx.query_one(READ_VERSION, &[]).await.map_err(db(WHAT))?, 0)?;
    let rows = tx.query(READ_ALL, &[]).await.map_err(db(WHAT))?;
    tx.commit().await.map_err(db(WHAT))?;
    Ok(QuotaSnapshot {
        version,
        entries: entries(&rows)?
            .into_iter()
            .map(|(entity, values)| QuotaEntry { entity, values })
            .collect(),
    })
}

pub(super) async fn version(c: &PostgresCoordinator) -> Result<i64> {
    let rows = c
        .query(READ_VERSION, &[], "reading the quota version")
        .await?;
    let row = rows.first().ok_or_else(|| {
        CoordinatorError::Corrupt("postgres: fjord_quota_version is empty".into())
    })?;
    get(row, 0)
}
