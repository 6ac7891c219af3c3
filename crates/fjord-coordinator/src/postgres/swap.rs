//! [`LogLifecycle::swap_rows`](crate::LogLifecycle::swap_rows) on PostgreSQL: compaction swaps.
//!
//! One transaction, locking in the crate's order: the commit watermark (shared, as commits do:
//! a swap's object is refused if made before it), the partition row (`FOR UPDATE`: no commit,
//! log start move or other swap of the partition runs meanwhile, and a deleted topic is seen),
//! then the replaced rows' objects in key order. It compares the partition's rows in the
//! replaced span with the swap's (compare-and-swap): a difference is [`SwapOutcome::Lost`] and
//! only the new object is recorded, dead. Otherwise the replaced rows go, their objects lose a
//! reference each, the new rows and object go in, the cleaner checkpoint rises, and the time
//! index (migration 0007) is rebuilt from the swapped span on.

use deadpool_postgres::Transaction;

use super::db::{db, get, to_db, unknown_partition};
use super::PostgresCoordinator;
use crate::model::*;
use crate::state::{check_commit_watermark, check_swap};
use crate::{CoordinatorError, Result};

pub(super) async fn cleaned_to(c: &PostgresCoordinator, tp: TopicPartition) -> Result<i64> {
    let rows = c
        .query(
            "SELECT cleaned_to FROM fjord_partitions WHERE topic_id = $1 AND partition = $2",
            &[&tp.topic_id, &tp.partition],
            "reading a cleaner checkpoint",
        )
        .await?;
    let row = rows.first().ok_or_else(|| unknown_partition(tp))?;
    get(row, 0)
}

pub(super) async fn swap_rows(c: &PostgresCoordinator, swap: RowSwap) -> Result<SwapOutcome> {
    check_swap(&swap)?;
    let (first, last) = match (swap.replaced.first(), swap.replaced.last()) {
        (Some(f), Some(l)) => (f.base_offset, l.last_offset),
        _ => return Err(CoordinatorError::Invalid("an empty swap".into())),
    };
    let tp = swap.tp;
    let at_ms = c.clock().now_ms();
    let mut client = c.client().await?;
    let tx = client
        .transaction()
        .await
        .map_err(db("starting a compaction swap"))?;
    let watermark = tx
        .query_one(
            "SELECT commit_watermark_ms FROM fjord_gc WHERE id = 1 FOR SHARE",
            &[],
        )
        .await
        .map_err(db("reading the commit watermark"))?;
    check_commit_watermark(&swap.object_key, get(&watermark, 0)?)?;
    let log_start: i64 = get(
        &tx.query_opt(
            "SELECT log_start FROM fjord_partitions
             WHERE topic_id = $1 AND partition = $2 FOR UPDATE",
            &[&tp.topic_id, &tp.partition],
        )
        .await
        .map_err(db("locking a partition for a swap"))?
        .ok_or_else(|| unknown_partition(tp))?,
        0,
    )?;
    let known = tx
        .query_opt(
            "SELECT 1 FROM fjord_objects WHERE key = $1",
            &[&swap.object_key],
        )
        .await
        .map_err(db("looking up a swap's object"))?;
    if known.is_some() {
        return Err(CoordinatorError::Invalid(format!(
            "object {} is already known: a swap needs a new object",
            swap.object_key
        )));
    }
    let current: Vec<RowRef> = tx
        .query(
            "SELECT base_offset, last_offset, object_key FROM fjord_index_rows
             WHERE topic_id = $1 AND partition = $2 AND base_offset BETWEEN $3 AND $4
             ORDER BY base_offset",
            &[&tp.topic_id, &tp.partition, &first, &last],
        )
        .await
        .map_err(db("reading the rows a swap replaces"))?
        .iter()
        .map(|row| {
            Ok(RowRef {
                base_offset: get(row, 0)?,
                last_offset: get(row, 1)?,
                object_key: get(row, 2)?,
            })
        })
        .collect::<Result<_>>()?;
    let outcome = if current == swap.replaced {
        SwapOutcome::Swapped
    } else {
        SwapOutcome::Lost
    };
    let new_rows = if outcome == SwapOutcome::Swapped {
        swap.rows.len() as i64
    } else {
        0
    };
    if outcome == SwapOutcome::Swapped {
        replace_rows(&tx, &swap, first, last, log_start, at_ms).await?;
    }
    tx.execute(
        "INSERT INTO fjord_objects (key, row_count, dead_since)
         VALUES ($1, $2::int8, CASE WHEN $2::int8 = 0 THEN $3::int8 END)",
        &[&swap.object_key, &new_rows, &at_ms],
    )
    .await
    .map_err(db("recording a swap's object"))?;
    tx.commit()
        .await
        .map_err(db("committing a compaction swap"))?;
    Ok(outcome)
}

async fn replace_rows(
    tx: &Transaction<'_>,
    swap: &RowSwap,
    first: i64,
    last: i64,
    log_start: i64,
    at_ms: i64,
) -> Result<()> {
    let tp = swap.tp;
    let mut keys: Vec<&str> = swap
        .replaced
        .iter()
        .map(|r| r.object_key.as_str())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    tx.query(
        "SELECT key FROM fjord_objects WHERE key = ANY($1) ORDER BY key FOR UPDATE",
        &[&keys],
    )
    .await
    .map_err(db("locking the objects a swap releases"))?;
    tx.execute(
        "WITH gone AS (
             DELETE FROM fjord_index_rows
             WHERE topic_id = $1 AND partition = $2 AND base_offset BETWEEN $3 AND $4
             RETURNING object_key
         ), counts AS (
             SELECT object_key, count(*) AS n FROM gone GROUP BY object_key
         )
         UPDATE fjord_objects AS o
         SET row_count = GREATEST(o.row_count - c.n, 0),
             dead_since = CASE WHEN o.row_count - c.n <= 0 THEN $5 ELSE o.dead_since END
         FROM counts AS c WHERE o.key = c.object_key",
        &[&tp.topic_id, &tp.partition, &first, &last, &at_ms],
    )
    .await
    .map_err(db("deleting the rows a swap replaces"))?;
    let mut bases = Vec::with_capacity(swap.rows.len());
    let mut lasts = Vec::with_capacity(swap.rows.len());
    let mut positions = Vec::with_capacity(swap.rows.len());
    let mut lengths = Vec::with_capacity(swap.rows.len());
    let mut timestamps = Vec::with_capacity(swap.rows.len());
    for row in &swap.rows {
        bases.push(row.base_offset);
        lasts.push(row.last_offset);
        positions.push(to_db(row.position, "position")?);
        lengths.push(to_db(row.length, "length")?);
        timestamps.push(row.max_timestamp);
    }
    tx.execute(
        "INSERT INTO fjord_index_rows
             (topic_id, partition, base_offset, last_offset, object_key, position, length,
              max_timestamp)
         SELECT $1, $2, u.b, u.l, $3, u.p, u.n, u.ts
         FROM UNNEST($4::int8[], $5::int8[], $6::int8[], $7::int8[], $8::int8[])
             AS u(b, l, p, n, ts)",
        &[
            &tp.topic_id,
            &tp.partition,
            &swap.object_key,
            &bases,
            &lasts,
            &positions,
            &lengths,
            &timestamps,
        ],
    )
    .await
    .map_err(db("inserting a swap's rows"))?;
    if let Some(cleaned_to) = swap.cleaned_to {
        tx.execute(
            "UPDATE fjord_partitions SET cleaned_to = GREATEST(cleaned_to, $3)
             WHERE topic_id = $1 AND partition = $2",
            &[&tp.topic_id, &tp.partition, &cleaned_to],
        )
        .await
        .map_err(db("raising a cleaner checkpoint"))?;
    }
    reindex_times(tx, tp, first, log_start).await
}

/// Rebuilds the time index of `tp` from offset `first` on (the swapped span and what follows):
/// its entries there go, and the rows there larger than every retained row before them join.
async fn reindex_times(
    tx: &Transaction<'_>,
    tp: TopicPartition,
    first: i64,
    log_start: i64,
) -> Result<()> {
    // Rows wholly below the log start are not retained (they may not be deleted yet).
    let holding = tx
        .query_opt(
            "SELECT base_offset, last_offset FROM fjord_index_rows
             WHERE topic_id = $1 AND partition = $2 AND base_offset <= $3
             ORDER BY base_offset DESC LIMIT 1",
            &[&tp.topic_id, &tp.partition, &log_start],
        )
        .await
        .map_err(db("finding the row holding the log start"))?;
    let retained_from = match holding {
        Some(row) if get::<i64>(&row, 1)? >= log_start => get::<i64>(&row, 0)?,
        _ => log_start,
    };
    let from = first.max(retained_from);
    tx.execute(
        "DELETE FROM fjord_time_index WHERE topic_id = $1 AND partition = $2 AND base_offset >= $3",
        &[&tp.topic_id, &tp.partition, &first],
    )
    .await
    .map_err(db("dropping time index entries of swapped rows"))?;
    tx.execute(
        "INSERT INTO fjord_time_index (topic_id, partition, base_offset, max_timestamp)
         SELECT $1, $2, n.b, n.ts FROM (
             SELECT i.base_offset AS b, i.max_timestamp AS ts, GREATEST(
                 max(i.max_timestamp) OVER (ORDER BY i.base_offset
                     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
                 (SELECT max(x.max_timestamp) FROM fjord_time_index AS x
                  WHERE x.topic_id = $1 AND x.partition = $2 AND x.base_offset < $3)
             ) AS before
             FROM fjord_index_rows AS i
             WHERE i.topic_id = $1 AND i.partition = $2 AND i.base_offset >= $3
         ) AS n
         WHERE n.before IS NULL OR n.ts > n.before",
        &[&tp.topic_id, &tp.partition, &from],
    )
    .await
    .map_err(db("indexing swapped rows"))?;
    Ok(())
}
