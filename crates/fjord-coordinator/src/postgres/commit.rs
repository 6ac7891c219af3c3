//! [`Coordinator::commit`](crate::Coordinator::commit) on PostgreSQL: one transaction per flush.
//!
//! The transaction, in order (statements of one step are pipelined on the connection):
//! 1. *Claim* the object key by inserting its `fjord_commits` row. A concurrent commit of the same
//!    key waits here for the first to finish; if the row already exists, the recorded outcomes are
//!    returned and nothing changes (idempotent re-commit).
//! 2. *Lock* the touched partition rows with `SELECT ... FOR UPDATE`, ordered by
//!    `(topic_id, partition)`: every broker locks in the same order, so commits cannot deadlock
//!    each other, and a partition's high watermark and producer state cannot change until this
//!    transaction ends. Then *load* the producer state of the touched (partition, producer) pairs.
//! 3. *Decide* with the pure rules in [`crate::state`] ([`decide_commit`], [`commit_effects`]),
//!    the same code the embedded coordinator runs.
//! 4. *Write*: index rows, high watermarks, producer state, the object's row count and the
//!    outcomes, each as one statement over arrays (`UNNEST`); when anything was appended, a
//!    notification on the commits channel (the `listen` module), delivered to listening brokers
//!    only once the transaction commits; then commit. A commit that appends nothing (duplicates,
//!    rejections, a re-commit) does not notify.
//!
//! Partitions that do not exist (or were deleted before the lock was granted) return no row from
//! the lock and their batches are rejected with `UnknownTopicOrPartition`. Topic deletion locks
//! the same partition rows first, so it never interleaves with a commit to them.

use std::collections::{BTreeSet, HashMap, VecDeque};

use deadpool_postgres::Pool;
use tokio_postgres::types::{Json, ToSql};
use uuid::Uuid;

use super::db::{db, get, to_db};
use super::listen;
use crate::model::*;
use crate::state::{commit_effects, decide_commit, CommitView, ProducerPartitionState};
use crate::{CoordinatorError, Result};

const CLAIM: &str = "INSERT INTO fjord_commits (object_key) VALUES ($1) ON CONFLICT DO NOTHING";

const RECORDED: &str = "SELECT outcomes FROM fjord_commits WHERE object_key = $1";

const LOCK_PARTITIONS: &str = "SELECT topic_id, partition, high_watermark FROM fjord_partitions
    WHERE (topic_id, partition) IN (SELECT * FROM UNNEST($1::uuid[], $2::int4[]))
    ORDER BY topic_id, partition
    FOR UPDATE";

const LOAD_PRODUCERS: &str = "SELECT topic_id, partition, producer_id, epoch, batches
    FROM fjord_producer_state
    WHERE (topic_id, partition, producer_id)
        IN (SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::int8[]))";

const INSERT_ROWS: &str = "INSERT INTO fjord_index_rows
    (topic_id, partition, base_offset, last_offset, object_key, position, length, max_timestamp)
    SELECT t, p, b, l, $5, pos, len, ts
    FROM UNNEST($1::uuid[], $2::int4[], $3::int8[], $4::int8[], $6::int8[], $7::int8[], $8::int8[])
        AS u(t, p, b, l, pos, len, ts)";

const SET_HIGH_WATERMARKS: &str = "UPDATE fjord_partitions AS p SET high_watermark = u.hw
    FROM UNNEST($1::uuid[], $2::int4[], $3::int8[]) AS u(topic_id, partition, hw)
    WHERE p.topic_id = u.topic_id AND p.partition = u.partition";

const UPSERT_PRODUCERS: &str = "INSERT INTO fjord_producer_state
    (topic_id, partition, producer_id, epoch, batches)
    SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::int8[], $4::int2[], $5::jsonb[])
    ON CONFLICT (topic_id, partition, producer_id)
    DO UPDATE SET epoch = EXCLUDED.epoch, batches = EXCLUDED.batches";

/// Adds the object's new rows to its count; an object with none is garbage from the start, as in
/// the embedded coordinator (an existing row is then left alone).
const UPSERT_OBJECT: &str = "INSERT INTO fjord_objects AS o (key, row_count, dead_since)
    VALUES ($1, $2::int8, CASE WHEN $2::int8 = 0 THEN $3::int8 END)
    ON CONFLICT (key) DO UPDATE SET row_count = o.row_count + EXCLUDED.row_count, dead_since = NULL
    WHERE EXCLUDED.row_count > 0";

const RECORD_OUTCOMES: &str = "UPDATE fjord_commits SET outcomes = $2 WHERE object_key = $1";

/// Wakes listening brokers when the transaction commits: `$1` is the channel, `$2` the payload.
const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// How long a commit's outcomes are remembered for idempotent re-commits.
pub(super) const PRUNE_COMMITS: &str =
    "DELETE FROM fjord_commits WHERE committed_at < now() - interval '1 hour'";

/// The locked partitions as the shared decision rules see them.
#[derive(Default)]
struct Locked {
    high_watermarks: HashMap<TopicPartition, i64>,
    producers: HashMap<(TopicPartition, i64), ProducerPartitionState>,
}

impl CommitView for Locked {
    fn high_watermark(&self, tp: TopicPartition) -> Option<i64> {
        self.high_watermarks.get(&tp).copied()
    }

    fn producer(&self, tp: TopicPartition, producer_id: i64) -> Option<&ProducerPartitionState> {
        self.producers.get(&(tp, producer_id))
    }
}

/// Runs one flush's commit transaction.
pub(super) async fn commit(pool: &Pool, flush: &FlushCommit) -> Result<Vec<BatchOutcome>> {
    // Refuse what cannot be stored before touching the database.
    for batch in &flush.batches {
        to_db(batch.position, "batch position")?;
        to_db(batch.length, "batch length")?;
    }
    let tps: BTreeSet<TopicPartition> = flush.batches.iter().map(|b| b.tp).collect();
    let (tp_topics, tp_partitions): (Vec<Uuid>, Vec<i32>) =
        tps.iter().map(|tp| (tp.topic_id, tp.partition)).unzip();
    let producer_keys: BTreeSet<(TopicPartition, i64)> = flush
        .batches
        .iter()
        .filter_map(|b| b.producer.map(|p| (b.tp, p.producer_id)))
        .collect();
    let mut pk_topics = Vec::with_capacity(producer_keys.len());
    let mut pk_partitions = Vec::with_capacity(producer_keys.len());
    let mut pk_producers = Vec::with_capacity(producer_keys.len());
    for (tp, producer_id) in &producer_keys {
        pk_topics.push(tp.topic_id);
        pk_partitions.push(tp.partition);
        pk_producers.push(*producer_id);
    }

    let mut client = pool.get().await.map_err(|e| {
        CoordinatorError::Storage(format!(
            "postgres: getting a connection: {}",
            super::db::describe_pool(&e)
        ))
    })?;
    let tx = client
        .transaction()
        .await
        .map_err(db("starting a commit"))?;
    let (claim, lock, load) = futures::try_join!(
        tx.prepare_cached(CLAIM),
        tx.prepare_cached(LOCK_PARTITIONS),
        tx.prepare_cached(LOAD_PRODUCERS),
    )
    .map_err(db("preparing commit statements"))?;

    // 1 and 2: claim, lock, load, pipelined. The driver sends requests in the order their
    // futures are first polled, which `try_join!` does in the order written, and the server runs
    // them in that order. Claiming before locking matters: two commits of one key must meet at
    // the claim, not while holding partition locks.
    let (claimed, locked_rows, producer_rows) = futures::try_join!(
        async { tx.execute(&claim, &[&flush.object_key]).await },
        async { tx.query(&lock, &[&tp_topics, &tp_partitions]).await },
        async {
            if producer_keys.is_empty() {
                Ok(Vec::new())
            } else {
                tx.query(&load, &[&pk_topics, &pk_partitions, &pk_producers])
                    .await
            }
        },
    )
    .map_err(db("locking partitions for a commit"))?;

    if claimed == 0 {
        let row = tx
            .query_one(RECORDED, &[&flush.object_key])
            .await
            .map_err(db("reading recorded commit outcomes"))?;
        let recorded: Option<Json<Vec<BatchOutcome>>> = get(&row, 0)?;
        // Ending the transaction releases the locks at once.
        tx.rollback().await.map_err(db("ending a re-commit"))?;
        return recorded.map(|Json(outcomes)| outcomes).ok_or_else(|| {
            CoordinatorError::Corrupt(format!(
                "commit of object '{}' is recorded without outcomes",
                flush.object_key
            ))
        });
    }

    let mut locked = Locked::default();
    for row in &locked_rows {
        let tp = TopicPartition {
            topic_id: get(row, 0)?,
            partition: get(row, 1)?,
        };
        locked.high_watermarks.insert(tp, get(row, 2)?);
    }
    for row in &producer_rows {
        let tp = TopicPartition {
            topic_id: get(row, 0)?,
            partition: get(row, 1)?,
        };
        let Json(batches): Json<VecDeque<(i32, i32, i64)>> = get(row, 4)?;
        locked.producers.insert(
            (tp, get(row, 2)?),
            ProducerPartitionState {
                epoch: get(row, 3)?,
                batches,
            },
        );
    }

    // 3: decide, with the rules the embedded coordinator uses.
    let outcomes = decide_commit(&locked, flush);
    let effects = commit_effects(&locked, flush, &outcomes);

    // 4: write.
    let rows_added = i64::try_from(effects.rows.len()).unwrap_or(i64::MAX);
    let mut rows = RowColumns::default();
    for (tp, row) in &effects.rows {
        rows.topics.push(tp.topic_id);
        rows.partitions.push(tp.partition);
        rows.base_offsets.push(row.base_offset);
        rows.last_offsets.push(row.last_offset);
        rows.positions.push(to_db(row.position, "row position")?);
        rows.lengths.push(to_db(row.length, "row length")?);
        rows.max_timestamps.push(row.max_timestamp);
    }
    let (hw_topics, hw_partitions, hw_values) = effects.high_watermarks.iter().fold(
        (Vec::new(), Vec::new(), Vec::new()),
        |(mut t, mut p, mut v), (tp, hw)| {
            t.push(tp.topic_id);
            p.push(tp.partition);
            v.push(*hw);
            (t, p, v)
        },
    );
    let mut producers = ProducerColumns::default();
    for ((tp, producer_id), state) in &effects.producers {
        producers.topics.push(tp.topic_id);
        producers.partitions.push(tp.partition);
        producers.ids.push(*producer_id);
        producers.epochs.push(state.epoch);
        producers.batches.push(Json(state.batches.clone()));
    }
    let outcomes_json = Json(&outcomes);
    let notify_payload = listen::notify_payload(&flush.object_key);

    let (insert_rows, set_hws, upsert_producers, upsert_object, record, notify) =
        futures::try_join!(
            tx.prepare_cached(INSERT_ROWS),
            tx.prepare_cached(SET_HIGH_WATERMARKS),
            tx.prepare_cached(UPSERT_PRODUCERS),
            tx.prepare_cached(UPSERT_OBJECT),
            tx.prepare_cached(RECORD_OUTCOMES),
            tx.prepare_cached(NOTIFY),
        )
        .map_err(db("preparing commit statements"))?;
    let mut writes: Vec<(&tokio_postgres::Statement, Vec<&(dyn ToSql + Sync)>)> = Vec::new();
    if !rows.topics.is_empty() {
        writes.push((
            &insert_rows,
            vec![
                &rows.topics,
                &rows.partitions,
                &rows.base_offsets,
                &rows.last_offsets,
                &flush.object_key,
                &rows.positions,
                &rows.lengths,
                &rows.max_timestamps,
            ],
        ));
        writes.push((&set_hws, vec![&hw_topics, &hw_partitions, &hw_values]));
        writes.push((&notify, vec![&listen::CHANNEL, &notify_payload]));
    }
    if !producers.topics.is_empty() {
        writes.push((
            &upsert_producers,
            vec![
                &producers.topics,
                &producers.partitions,
                &producers.ids,
                &producers.epochs,
                &producers.batches,
            ],
        ));
    }
    writes.push((
        &upsert_object,
        vec![&flush.object_key, &rows_added, &flush.timestamp_ms],
    ));
    writes.push((&record, vec![&flush.object_key, &outcomes_json]));
    futures::future::try_join_all(
        writes
            .iter()
            .map(|(statement, params)| tx.execute(*statement, params)),
    )
    .await
    .map_err(db("writing a commit"))?;
    tx.commit().await.map_err(db("committing a flush"))?;
    Ok(outcomes)
}

#[derive(Default)]
struct RowColumns {
    topics: Vec<Uuid>,
    partitions: Vec<i32>,
    base_offsets: Vec<i64>,
    last_offsets: Vec<i64>,
    positions: Vec<i64>,
    lengths: Vec<i64>,
    max_timestamps: Vec<i64>,
}

#[derive(Default)]
struct ProducerColumns {
    topics: Vec<Uuid>,
    partitions: Vec<i32>,
    ids: Vec<i64>,
    epochs: Vec<i16>,
    batches: Vec<Json<VecDeque<(i32, i32, i64)>>>,
}
