//! [`Coordinator::commit_many`](crate::Coordinator::commit_many) on PostgreSQL: one transaction
//! per group of flushes (a single commit is a group of one).
//!
//! The transaction, in order:
//! 1. *Claim* the object keys by inserting their `fjord_commits` rows; read the *commit watermark*
//!    (`FOR SHARE`: garbage collection raising it waits for this transaction) and refuse, as a
//!    whole, any newly claimed object made before it; *lock* the partition rows
//!    the group touches with `SELECT ... FOR UPDATE`, ordered by `(topic_id, partition)`; *load*
//!    the producer state of the touched (partition, producer) pairs. The three statements are
//!    pipelined, claim first: a concurrent commit of the same key waits at the claim, not while
//!    holding partition locks, and every broker locks partitions in the same order, so commits
//!    cannot deadlock each other. A partition's high watermark and producer state cannot change
//!    until this transaction ends. A key that was already claimed gets its recorded outcomes and
//!    changes nothing (idempotent re-commit).
//! 2. *Decide* each flush in order with the pure rules in [`crate::state`] ([`decide_commit`],
//!    [`commit_effects`]), the same code the embedded coordinator runs, against the locked state
//!    as the earlier flushes of the group leave it.
//! 3. *Write*, pipelined: per flush its index rows, high watermarks, producer state, the object's
//!    row count and the outcomes, each as one statement over arrays (`UNNEST`); when anything was
//!    appended, a notification on the commits channel (the `listen` module), delivered to
//!    listening brokers only once the transaction commits; then commit. A flush that appends
//!    nothing (duplicates, rejections, a re-commit) does not notify.
//!
//! Partitions that do not exist (or were deleted before the lock was granted) return no row from
//! the lock and their batches are rejected with `UnknownTopicOrPartition`. Topic deletion locks
//! the same partition rows first, so it never interleaves with a commit to them.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use deadpool_postgres::Pool;
use tokio_postgres::types::{Json, ToSql};
use uuid::Uuid;

use super::db::{db, get, to_db};
use super::listen;
use crate::model::*;
use crate::state::{
    check_commit_watermark, commit_effects, decide_commit, CommitView, ProducerPartitionState,
};
use crate::{CoordinatorError, Result};

const CLAIM: &str = "INSERT INTO fjord_commits (object_key) SELECT * FROM UNNEST($1::text[])
    ON CONFLICT DO NOTHING RETURNING object_key";

const RECORDED: &str =
    "SELECT object_key, outcomes FROM fjord_commits WHERE object_key = ANY($1::text[])";

/// The commit watermark, held (shared) until the transaction ends: raising it waits for this
/// commit, and a raise that came first is seen.
const WATERMARK: &str = "SELECT commit_watermark_ms FROM fjord_gc WHERE id = 1 FOR SHARE";

const LOCK_PARTITIONS: &str = "SELECT topic_id, partition, high_watermark FROM fjord_partitions
    WHERE (topic_id, partition) IN (SELECT * FROM UNNEST($1::uuid[], $2::int4[]))
    ORDER BY topic_id, partition
    FOR UPDATE";

const LOAD_PRODUCERS: &str = "SELECT topic_id, partition, producer_id, epoch, batches,
        last_append_ms
    FROM fjord_producer_state
    WHERE (topic_id, partition, producer_id)
        IN (SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::int8[]))";

const INSERT_ROWS: &str = "INSERT INTO fjord_index_rows
    (topic_id, partition, base_offset, last_offset, object_key, position, length, max_timestamp)
    SELECT t, p, b, l, $5, pos, len, ts
    FROM UNNEST($1::uuid[], $2::int4[], $3::int8[], $4::int8[], $6::int8[], $7::int8[], $8::int8[])
        AS u(t, p, b, l, pos, len, ts)";

/// The new rows that beat every retained row before them (the partition's last time index entry
/// and the earlier new rows) join the time index (see migration 0007).
const INSERT_TIME_INDEX: &str = "INSERT INTO fjord_time_index
    (topic_id, partition, base_offset, max_timestamp)
    SELECT n.t, n.p, n.b, n.ts FROM (
        SELECT u.t, u.p, u.b, u.ts, GREATEST(
            max(u.ts) OVER (PARTITION BY u.t, u.p ORDER BY u.b
                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
            (SELECT x.max_timestamp FROM fjord_time_index AS x
             WHERE x.topic_id = u.t AND x.partition = u.p
             ORDER BY x.max_timestamp DESC LIMIT 1)
        ) AS before
        FROM UNNEST($1::uuid[], $2::int4[], $3::int8[], $4::int8[]) AS u(t, p, b, ts)
    ) AS n
    WHERE n.before IS NULL OR n.ts > n.before";

const SET_HIGH_WATERMARKS: &str = "UPDATE fjord_partitions AS p SET high_watermark = u.hw
    FROM UNNEST($1::uuid[], $2::int4[], $3::int8[]) AS u(topic_id, partition, hw)
    WHERE p.topic_id = u.topic_id AND p.partition = u.partition";

const UPSERT_PRODUCERS: &str = "INSERT INTO fjord_producer_state
    (topic_id, partition, producer_id, epoch, batches, last_append_ms)
    SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::int8[], $4::int2[], $5::jsonb[], $6::int8[])
    ON CONFLICT (topic_id, partition, producer_id)
    DO UPDATE SET epoch = EXCLUDED.epoch, batches = EXCLUDED.batches,
        last_append_ms = EXCLUDED.last_append_ms";

/// Adds the object's new rows to its count; an object with none is garbage from the start, as in
/// the embedded coordinator (an existing row is then left alone).
const UPSERT_OBJECT: &str = "INSERT INTO fjord_objects AS o (key, row_count, dead_since)
    VALUES ($1, $2::int8, CASE WHEN $2::int8 = 0 THEN $3::int8 END)
    ON CONFLICT (key) DO UPDATE SET row_count = o.row_count + EXCLUDED.row_count, dead_since = NULL
    WHERE EXCLUDED.row_count > 0";

const RECORD_OUTCOMES: &str = "UPDATE fjord_commits SET outcomes = $2 WHERE object_key = $1";

/// Wakes listening brokers when the transaction commits: `$1` is the channel, `$2` the payload.
const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// How long a commit's outcomes are remembered for idempotent re-commits: ten minutes, thirty
/// times the writer's retry deadline (20 s), after which nobody repeats a commit. An hour kept
/// 0.5 GB of outcomes at 20 MB/s of small flushes (157 commits/s in the 30-minute soak).
pub(super) const PRUNE_COMMITS: &str =
    "DELETE FROM fjord_commits WHERE committed_at < now() - interval '10 minutes'";

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

/// Runs one transaction committing `flushes` in order; outcomes per flush.
pub(super) async fn commit(pool: &Pool, flushes: &[FlushCommit]) -> Result<Vec<Vec<BatchOutcome>>> {
    if flushes.is_empty() {
        return Ok(Vec::new());
    }
    // Refuse what cannot be stored before touching the database.
    for batch in flushes.iter().flat_map(|f| &f.batches) {
        to_db(batch.position, "batch position")?;
        to_db(batch.length, "batch length")?;
    }
    let keys: Vec<&str> = flushes.iter().map(|f| f.object_key.as_str()).collect();
    let tps: BTreeSet<TopicPartition> = flushes
        .iter()
        .flat_map(|f| &f.batches)
        .map(|b| b.tp)
        .collect();
    let (tp_topics, tp_partitions): (Vec<Uuid>, Vec<i32>) =
        tps.iter().map(|tp| (tp.topic_id, tp.partition)).unzip();
    let producer_keys: BTreeSet<(TopicPartition, i64)> = flushes
        .iter()
        .flat_map(|f| &f.batches)
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
    let (claim, watermark, lock, load) = futures::try_join!(
        tx.prepare_cached(CLAIM),
        tx.prepare_cached(WATERMARK),
        tx.prepare_cached(LOCK_PARTITIONS),
        tx.prepare_cached(LOAD_PRODUCERS),
    )
    .map_err(db("preparing commit statements"))?;

    // 1: claim, watermark, lock, load, pipelined. The driver sends requests in the order their
    // futures are first polled, which `try_join!` does in the order written, and the server runs
    // them in that order.
    let (claimed_rows, watermark_row, locked_rows, producer_rows) = futures::try_join!(
        async { tx.query(&claim, &[&keys]).await },
        async { tx.query_one(&watermark, &[]).await },
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
    let claimed = claimed_rows
        .iter()
        .map(|row| get::<String>(row, 0))
        .collect::<Result<HashSet<String>>>()?;
    let watermark_ms: i64 = get(&watermark_row, 0)?;
    // New commits of objects made before the watermark are refused (garbage collection may have
    // deleted them); re-commits answer below with what was recorded.
    for key in &claimed {
        check_commit_watermark(key, watermark_ms)?;
    }

    // Outcomes decided earlier: by an earlier transaction (re-commits), or in this group.
    let mut decided: HashMap<String, Vec<BatchOutcome>> = HashMap::new();
    let unclaimed: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| !claimed.contains(*k))
        .collect();
    if !unclaimed.is_empty() {
        for row in tx
            .query(RECORDED, &[&unclaimed])
            .await
            .map_err(db("reading recorded commit outcomes"))?
        {
            let key: String = get(&row, 0)?;
            let recorded: Option<Json<Vec<BatchOutcome>>> = get(&row, 1)?;
            let Json(outcomes) = recorded.ok_or_else(|| {
                CoordinatorError::Corrupt(format!(
                    "commit of object '{key}' is recorded without outcomes"
                ))
            })?;
            decided.insert(key, outcomes);
        }
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
                last_append_ms: get(row, 5)?,
            },
        );
    }

    // 2: decide, with the rules the embedded coordinator uses, each flush seeing the earlier ones.
    let mut all = Vec::with_capacity(flushes.len());
    let mut writes = Vec::new();
    for flush in flushes {
        if let Some(outcomes) = decided.get(&flush.object_key) {
            all.push(outcomes.clone());
            continue;
        }
        let outcomes = decide_commit(&locked, flush);
        let effects = commit_effects(&locked, flush, &outcomes);
        writes.push(FlushWrites::new(flush, &effects, &outcomes)?);
        locked
            .high_watermarks
            .extend(effects.high_watermarks.iter().map(|(tp, hw)| (*tp, *hw)));
        locked.producers.extend(effects.producers);
        decided.insert(flush.object_key.clone(), outcomes.clone());
        all.push(outcomes);
    }
    if writes.is_empty() {
        // Only re-commits: nothing to write; ending the transaction releases the locks.
        tx.rollback().await.map_err(db("ending a re-commit"))?;
        return Ok(all);
    }

    // 3: write, every statement of every flush pipelined.
    let (insert_rows, insert_time_index, set_hws, upsert_producers, upsert_object, record, notify) =
        futures::try_join!(
            tx.prepare_cached(INSERT_ROWS),
            tx.prepare_cached(INSERT_TIME_INDEX),
            tx.prepare_cached(SET_HIGH_WATERMARKS),
            tx.prepare_cached(UPSERT_PRODUCERS),
            tx.prepare_cached(UPSERT_OBJECT),
            tx.prepare_cached(RECORD_OUTCOMES),
            tx.prepare_cached(NOTIFY),
        )
        .map_err(db("preparing commit statements"))?;
    let mut statements: Vec<(&tokio_postgres::Statement, Vec<&(dyn ToSql + Sync)>)> = Vec::new();
    for w in &writes {
        if !w.rows.topics.is_empty() {
            statements.push((
                &insert_rows,
                vec![
                    &w.rows.topics,
                    &w.rows.partitions,
                    &w.rows.base_offsets,
                    &w.rows.last_offsets,
                    &w.object_key,
                    &w.rows.positions,
                    &w.rows.lengths,
                    &w.rows.max_timestamps,
                ],
            ));
            statements.push((
                &insert_time_index,
                vec![
                    &w.rows.topics,
                    &w.rows.partitions,
                    &w.rows.base_offsets,
                    &w.rows.max_timestamps,
                ],
            ));
            statements.push((&set_hws, vec![&w.hw_topics, &w.hw_partitions, &w.hw_values]));
            statements.push((&notify, vec![&listen::CHANNEL, &w.notify_payload]));
        }
        if !w.producers.topics.is_empty() {
            statements.push((
                &upsert_producers,
                vec![
                    &w.producers.topics,
                    &w.producers.partitions,
                    &w.producers.ids,
                    &w.producers.epochs,
                    &w.producers.batches,
                    &w.producers.last_append_ms,
                ],
            ));
        }
        statements.push((
            &upsert_object,
            vec![&w.object_key, &w.rows_added, &w.timestamp_ms],
        ));
        statements.push((&record, vec![&w.object_key, &w.outcomes]));
    }
    futures::future::try_join_all(
        statements
            .iter()
            .map(|(statement, params)| tx.execute(*statement, params)),
    )
    .await
    .map_err(db("writing a commit"))?;
    tx.commit().await.map_err(db("committing a flush"))?;
    Ok(all)
}

/// The statement parameters of one flush's writes.
struct FlushWrites {
    object_key: String,
    timestamp_ms: i64,
    rows_added: i64,
    rows: RowColumns,
    hw_topics: Vec<Uuid>,
    hw_partitions: Vec<i32>,
    hw_values: Vec<i64>,
    producers: ProducerColumns,
    outcomes: Json<Vec<BatchOutcome>>,
    notify_payload: String,
}

impl FlushWrites {
    fn new(
        flush: &FlushCommit,
        effects: &crate::state::CommitEffects,
        outcomes: &[BatchOutcome],
    ) -> Result<FlushWrites> {
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
        let mut w = FlushWrites {
            object_key: flush.object_key.clone(),
            timestamp_ms: flush.timestamp_ms,
            rows_added: i64::try_from(effects.rows.len()).unwrap_or(i64::MAX),
            rows,
            hw_topics: Vec::new(),
            hw_partitions: Vec::new(),
            hw_values: Vec::new(),
            producers: ProducerColumns::default(),
            outcomes: Json(outcomes.to_vec()),
            notify_payload: listen::notify_payload(&flush.object_key).to_string(),
        };
        for (tp, hw) in &effects.high_watermarks {
            w.hw_topics.push(tp.topic_id);
            w.hw_partitions.push(tp.partition);
            w.hw_values.push(*hw);
        }
        for ((tp, producer_id), state) in &effects.producers {
            w.producers.topics.push(tp.topic_id);
            w.producers.partitions.push(tp.partition);
            w.producers.ids.push(*producer_id);
            w.producers.epochs.push(state.epoch);
            w.producers.batches.push(Json(state.batches.clone()));
            w.producers.last_append_ms.push(state.last_append_ms);
        }
        Ok(w)
    }
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
    last_append_ms: Vec<i64>,
}
