//! [`ObjectLedger`](crate::ObjectLedger) on PostgreSQL: `fjord_objects` (live row counts and
//! dead times) and the commit watermark in `fjord_gc`.
//!
//! Row counts change with the index rows that reference an object, in the same transaction:
//! commits add, and topic deletion and the pruning of rows below a log start ([`release_rows`])
//! subtract, locking the object rows in key order first (the crate-wide lock order), so two
//! releases never deadlock. Dead objects are found through the partial index
//! `fjord_objects_dead` (migration 0006), never by scanning every object.

use std::collections::BTreeSet;

use deadpool_postgres::Transaction;
use uuid::Uuid;

use super::db::{db, get};
use super::PostgresCoordinator;
use crate::model::{DeadObject, LedgerSize};
use crate::{CoordinatorError, Result};

pub(super) async fn dead_objects(
    c: &PostgresCoordinator,
    dead_before_ms: i64,
    limit: usize,
) -> Result<Vec<DeadObject>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    c.query(
        "SELECT key, dead_since FROM fjord_objects
         WHERE row_count = 0 AND dead_since <= $1
         ORDER BY dead_since, key LIMIT $2",
        &[&dead_before_ms, &limit],
        "listing dead objects",
    )
    .await?
    .iter()
    .map(|row| {
        Ok(DeadObject {
            key: get(row, 0)?,
            dead_since_ms: get(row, 1)?,
        })
    })
    .collect()
}

pub(super) async fn ledger_size(c: &PostgresCoordinator) -> Result<LedgerSize> {
    let rows = c
        .query(
            "SELECT (SELECT count(*) FROM fjord_index_rows), (SELECT count(*) FROM fjord_objects)",
            &[],
            "counting index rows and objects",
        )
        .await?;
    let row = rows
        .first()
        .ok_or_else(|| CoordinatorError::Corrupt("counting index rows returned nothing".into()))?;
    let count = |i: usize| -> Result<u64> { Ok(u64::try_from(get::<i64>(row, i)?).unwrap_or(0)) };
    Ok(LedgerSize {
        index_rows: count(0)?,
        objects: count(1)?,
    })
}

pub(super) async fn known_objects(
    c: &PostgresCoordinator,
    keys: Vec<String>,
) -> Result<BTreeSet<String>> {
    if keys.is_empty() {
        return Ok(BTreeSet::new());
    }
    c.query(
        "SELECT key FROM fjord_objects WHERE key = ANY($1)",
        &[&keys],
        "looking up objects",
    )
    .await?
    .iter()
    .map(|row| get(row, 0))
    .collect()
}

pub(super) async fn forget_objects(c: &PostgresCoordinator, keys: Vec<String>) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let client = c.client().await?;
    // Locks in key order, like topic deletion; objects referenced again are kept.
    client
        .execute(
            "DELETE FROM fjord_objects WHERE key IN (
                 SELECT key FROM fjord_objects WHERE key = ANY($1) AND row_count = 0
                 ORDER BY key FOR UPDATE)",
            &[&keys],
        )
        .await
        .map_err(db("forgetting objects"))?;
    Ok(())
}

pub(super) async fn raise_commit_watermark(c: &PostgresCoordinator, at_ms: i64) -> Result<i64> {
    let rows = c
        .query(
            "UPDATE fjord_gc SET commit_watermark_ms = GREATEST(commit_watermark_ms, $1)
             WHERE id = 1 RETURNING commit_watermark_ms",
            &[&at_ms],
            "raising the commit watermark",
        )
        .await?;
    let row = rows
        .first()
        .ok_or_else(|| CoordinatorError::Corrupt("postgres: fjord_gc has no row".into()))?;
    get(row, 0)
}

/// Deletes up to `max_rows` index rows of partition (`topic_id`, `partition`) wholly below
/// `log_start`, in offset order, and releases their objects at `at_ms` (an object whose last
/// row goes is dead from then). The caller holds the partition row's lock. Returns how many rows
/// went.
pub(super) async fn release_rows(
    tx: &Transaction<'_>,
    topic_id: Uuid,
    partition: i32,
    log_start: i64,
    max_rows: usize,
    at_ms: i64,
) -> Result<u64> {
    let limit = i64::try_from(max_rows).unwrap_or(i64::MAX);
    // The rows to go, then their objects locked in key order, then both changes.
    const BELOW: &str = "SELECT base_offset, object_key FROM fjord_index_rows
        WHERE topic_id = $1 AND partition = $2 AND base_offset < $3 AND last_offset < $3
        ORDER BY base_offset LIMIT $4";
    tx.query(
        &format!(
            "SELECT key FROM fjord_objects WHERE key IN (SELECT object_key FROM ({BELOW}) b)
             ORDER BY key FOR UPDATE"
        ),
        &[&topic_id, &partition, &log_start, &limit],
    )
    .await
    .map_err(db("locking objects of expired rows"))?;
    let row = tx
        .query_one(
            &format!(
                "WITH below AS ({BELOW}), gone AS (
                     DELETE FROM fjord_index_rows AS r USING below
                     WHERE r.topic_id = $1 AND r.partition = $2
                       AND r.base_offset = below.base_offset
                     RETURNING r.object_key
                 ), counts AS (
                     SELECT object_key, count(*) AS n FROM gone GROUP BY object_key
                 ), released AS (
                     UPDATE fjord_objects AS o
                     SET row_count = GREATEST(o.row_count - c.n, 0),
                         dead_since = CASE WHEN o.row_count - c.n <= 0 THEN $5
                                           ELSE o.dead_since END
                     FROM counts AS c WHERE o.key = c.object_key
                     RETURNING 1
                 )
                 SELECT (SELECT count(*) FROM gone)::bigint"
            ),
            &[&topic_id, &partition, &log_start, &limit, &at_ms],
        )
        .await
        .map_err(db("deleting expired rows"))?;
    let gone: i64 = get(&row, 0)?;
    Ok(u64::try_from(gone).unwrap_or(0))
}
