//! [`LogLifecycle`](crate::LogLifecycle) on PostgreSQL: log start offsets in `fjord_partitions`.
//!
//! Each change is one transaction that locks the partition row (`FOR UPDATE`, the one row, so it
//! cannot deadlock with commits, which lock partition rows in sorted order, or with topic
//! deletion, which locks the topic first and then its partitions), decides with the same pure
//! rules as the embedded coordinator ([`crate::state`]) and raises `log_start` with `GREATEST`,
//! so concurrent or repeated calls never lower it. In the same transaction it deletes the index
//! rows wholly below the new log start, at most a bounded number per transaction, and releases
//! their objects ([`super::objects::release_rows`]); DeleteRecords goes on in further
//! transactions until none is left, and retention reports `more` so its caller calls again.
//! Retention first decides without the lock and takes it only when it has something to expire
//! or rows to delete, so idle partitions cost two index probes per pass. A change notifies the
//! commit channel, so other brokers' offset caches (keyed by commit notifications) reload the
//! partition.

use deadpool_postgres::Transaction;

use super::db::{db, from_db, get, unknown_partition};
use super::{listen, objects, PostgresCoordinator};
use crate::model::*;
use crate::state::{delete_records_target, retention_decision, RetainedRow};
use crate::Result;

/// The row holding the log start and those after it, as `WHERE` conditions on
/// `fjord_index_rows` (`$1` topic id, `$2` partition, `$3` log start): an index probe from the
/// last row starting at or before the log start.
const RETAINED_ROWS: &str = "topic_id = $1 AND partition = $2 AND last_offset >= $3
    AND base_offset >= COALESCE((
        SELECT max(base_offset) FROM fjord_index_rows
        WHERE topic_id = $1 AND partition = $2 AND base_offset <= $3), $3)";

async fn lock_partition(tx: &Transaction<'_>, tp: TopicPartition) -> Result<PartitionOffsets> {
    partition_row(
        tx,
        tp,
        "SELECT log_start, high_watermark FROM fjord_partitions
         WHERE topic_id = $1 AND partition = $2 FOR UPDATE",
    )
    .await
}

async fn read_partition(tx: &Transaction<'_>, tp: TopicPartition) -> Result<PartitionOffsets> {
    partition_row(
        tx,
        tp,
        "SELECT log_start, high_watermark FROM fjord_partitions
         WHERE topic_id = $1 AND partition = $2",
    )
    .await
}

async fn partition_row(
    tx: &Transaction<'_>,
    tp: TopicPartition,
    sql: &str,
) -> Result<PartitionOffsets> {
    let row = tx
        .query_opt(sql, &[&tp.topic_id, &tp.partition])
        .await
        .map_err(db("reading a partition"))?
        .ok_or_else(|| unknown_partition(tp))?;
    Ok(PartitionOffsets {
        log_start: get(&row, 0)?,
        high_watermark: get(&row, 1)?,
    })
}

/// The base offset of the partition's ($1, $2) first retained row: the row holding the log start,
/// else the log start (the rows from there on are retained).
macro_rules! retained_from {
    () => {
        "(SELECT COALESCE(
            (SELECT CASE WHEN r.last_offset >= p.log_start THEN r.base_offset ELSE p.log_start END
             FROM fjord_index_rows AS r
             WHERE r.topic_id = $1 AND r.partition = $2 AND r.base_offset <= p.log_start
             ORDER BY r.base_offset DESC LIMIT 1),
            p.log_start)
        FROM fjord_partitions AS p WHERE p.topic_id = $1 AND p.partition = $2)"
    };
}

/// After a log start moved up (see migration 0007), time index entries of rows no longer
/// retained go...
const TIME_INDEX_DROP: &str = concat!(
    "DELETE FROM fjord_time_index WHERE topic_id = $1 AND partition = $2 AND base_offset < ",
    retained_from!()
);

/// ...and the retained rows before the first entry left, which the dropped rows' timestamps
/// hid, are indexed: usually a few rows, as timestamps mostly grow.
const TIME_INDEX_FILL: &str = concat!(
    "INSERT INTO fjord_time_index (topic_id, partition, base_offset, max_timestamp)
    SELECT $1, $2, n.b, n.ts FROM (
        SELECT i.base_offset AS b, i.max_timestamp AS ts,
               max(i.max_timestamp) OVER (ORDER BY i.base_offset
                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before
        FROM fjord_index_rows AS i
        WHERE i.topic_id = $1 AND i.partition = $2
          AND i.base_offset < COALESCE(
              (SELECT min(x.base_offset) FROM fjord_time_index AS x
               WHERE x.topic_id = $1 AND x.partition = $2),
              9223372036854775807)
          AND i.base_offset >= ",
    retained_from!(),
    "
    ) AS n
    WHERE n.before IS NULL OR n.ts > n.before"
);

/// Most index rows one transaction deletes below a log start.
const RELEASE_BATCH: usize = 10_000;

/// Raises the log start of `tp` to `log_start` if that is higher (and tells other brokers), and
/// returns the offsets after; the transaction stays open.
async fn advance(
    tx: &Transaction<'_>,
    tp: TopicPartition,
    offsets: PartitionOffsets,
    log_start: i64,
) -> Result<PartitionOffsets> {
    if log_start <= offsets.log_start {
        return Ok(offsets);
    }
    tx.execute(
        "UPDATE fjord_partitions SET log_start = GREATEST(log_start, LEAST($3, high_watermark))
         WHERE topic_id = $1 AND partition = $2",
        &[&tp.topic_id, &tp.partition, &log_start],
    )
    .await
    .map_err(db("raising a log start"))?;
    for (sql, what) in [
        (
            TIME_INDEX_DROP,
            "dropping time index entries below a log start",
        ),
        (TIME_INDEX_FILL, "indexing rows after a log start"),
    ] {
        tx.execute(sql, &[&tp.topic_id, &tp.partition])
            .await
            .map_err(db(what))?;
    }
    let payload = format!("log-start {}/{}", tp.topic_id, tp.partition);
    tx.execute("SELECT pg_notify($1, $2)", &[&listen::CHANNEL, &payload])
        .await
        .map_err(db("notifying a log start change"))?;
    Ok(PartitionOffsets {
        log_start,
        high_watermark: offsets.high_watermark,
    })
}

/// Whether `tp` has index rows wholly below `log_start` (left to delete).
async fn rows_below(tx: &Transaction<'_>, tp: TopicPartition, log_start: i64) -> Result<bool> {
    let row = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM fjord_index_rows
                 WHERE topic_id = $1 AND partition = $2 AND base_offset < $3 AND last_offset < $3)",
            &[&tp.topic_id, &tp.partition, &log_start],
        )
        .await
        .map_err(db("looking for rows below a log start"))?;
    get(&row, 0)
}

pub(super) async fn delete_records(
    c: &PostgresCoordinator,
    tp: TopicPartition,
    before: i64,
) -> Result<PartitionOffsets> {
    let mut client = c.client().await?;
    let tx = client
        .transaction()
        .await
        .map_err(db("starting DeleteRecords"))?;
    let offsets = lock_partition(&tx, tp).await?;
    let log_start = delete_records_target(offsets, before)?;
    let after = advance(&tx, tp, offsets, log_start).await?;
    let at_ms = c.clock().now_ms();
    let mut released = objects::release_rows(
        &tx,
        tp.topic_id,
        tp.partition,
        after.log_start,
        RELEASE_BATCH,
        at_ms,
    )
    .await?;
    tx.commit().await.map_err(db("committing DeleteRecords"))?;
    // The log start has moved; the rows below it go in further bounded transactions.
    while released == RELEASE_BATCH as u64 {
        let tx = client
            .transaction()
            .await
            .map_err(db("starting to delete rows below a log start"))?;
        lock_partition(&tx, tp).await?;
        released = objects::release_rows(
            &tx,
            tp.topic_id,
            tp.partition,
            after.log_start,
            RELEASE_BATCH,
            at_ms,
        )
        .await?;
        tx.commit()
            .await
            .map_err(db("committing deleted rows below a log start"))?;
    }
    Ok(after)
}

pub(super) async fn apply_retention(
    c: &PostgresCoordinator,
    tp: TopicPartition,
    limits: RetentionLimits,
    max_rows: usize,
) -> Result<RetentionStep> {
    // Decide without the partition lock first: most calls find nothing to expire, and need not
    // queue behind (or hold up) commits to the partition. Only a decision to advance is taken
    // again under the lock (rows below the high watermark never change, so it decides the same
    // or, after a concurrent advance, nothing).
    let (unlocked, below) = retention_step(c, tp, &limits, max_rows, false).await?;
    if unlocked.rows_expired == 0 && !below {
        return Ok(unlocked);
    }
    Ok(retention_step(c, tp, &limits, max_rows, true).await?.0)
}

async fn retention_step(
    c: &PostgresCoordinator,
    tp: TopicPartition,
    limits: &RetentionLimits,
    max_rows: usize,
    write: bool,
) -> Result<(RetentionStep, bool)> {
    let mut client = c.client().await?;
    let tx = client
        .transaction()
        .await
        .map_err(db("starting a retention step"))?;
    let offsets = if write {
        lock_partition(&tx, tp).await?
    } else {
        read_partition(&tx, tp).await?
    };
    let limit = i64::try_from(max_rows).unwrap_or(i64::MAX);
    let rows: Vec<RetainedRow> = tx
        .query(
            &format!(
                "SELECT last_offset, length, max_timestamp FROM fjord_index_rows
                 WHERE {RETAINED_ROWS} ORDER BY base_offset LIMIT $4"
            ),
            &[&tp.topic_id, &tp.partition, &offsets.log_start, &limit],
        )
        .await
        .map_err(db("reading rows for retention"))?
        .iter()
        .map(|row| {
            Ok(RetainedRow {
                last_offset: get(row, 0)?,
                length: from_db(get(row, 1)?, "length")?,
                max_timestamp: get(row, 2)?,
            })
        })
        .collect::<Result<_>>()?;
    let retained_bytes = match limits.max_bytes {
        Some(_) => {
            let row = tx
                .query_one(
                    &format!(
                        "SELECT COALESCE(sum(length), 0)::bigint FROM fjord_index_rows
                         WHERE {RETAINED_ROWS}"
                    ),
                    &[&tp.topic_id, &tp.partition, &offsets.log_start],
                )
                .await
                .map_err(db("measuring a partition for retention"))?;
            from_db(get(&row, 0)?, "retained bytes")?
        }
        None => 0,
    };
    let (log_start, expired) = retention_decision(offsets, &rows, retained_bytes, limits);
    let more = expired == max_rows && max_rows > 0;
    if !write {
        let below = rows_below(&tx, tp, offsets.log_start).await?;
        tx.commit().await.map_err(db("ending a retention check"))?;
        let step = RetentionStep {
            offsets,
            rows_expired: expired as u64,
            more,
        };
        return Ok((step, below));
    }
    let after = advance(&tx, tp, offsets, log_start).await?;
    let released = objects::release_rows(
        &tx,
        tp.topic_id,
        tp.partition,
        after.log_start,
        max_rows.max(1),
        c.clock().now_ms(),
    )
    .await?;
    tx.commit()
        .await
        .map_err(db("committing a retention step"))?;
    let step = RetentionStep {
        offsets: after,
        rows_expired: expired as u64,
        more: more || released == max_rows.max(1) as u64,
    };
    Ok((step, false))
}
