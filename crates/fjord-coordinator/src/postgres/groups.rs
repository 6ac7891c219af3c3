//! Consumer groups on PostgreSQL: committed offsets (`fjord_group_offsets`) and metadata blobs
//! (`fjord_groups`), both keyed by `group_key = sha256(group_id)` (see
//! `migrations/postgres/0002_groups.sql`).
//!
//! Every call is one statement, so one implicit transaction. Group ids, topic names and metadata
//! go in and out as UTF-8 bytes (`bytea`); a value that does not decode is
//! [`CoordinatorError::Corrupt`].
//!
//! Lock order: statements that change several offset rows lock them in (topic, partition) order
//! (the commit sorts its rows; deletions lock with a sorted `SELECT ... FOR UPDATE` first), so
//! concurrent commits and deletions on one group from several brokers never deadlock.

use super::db::{db, get, now_ms};
use super::PostgresCoordinator;
use crate::model::CommittedOffset;
use crate::state::{check_group_id, check_group_state, normalize_offsets};
use crate::{CoordinatorError, Result};

const COMMIT_OFFSETS: &str = "INSERT INTO fjord_group_offsets
    (group_id, topic, partition, committed_offset, leader_epoch, metadata, commit_timestamp_ms)
    SELECT $1, t, p, o, e, m, ts
    FROM UNNEST($2::bytea[], $3::int4[], $4::int8[], $5::int4[], $6::bytea[], $7::int8[])
        AS u(t, p, o, e, m, ts)
    ORDER BY t, p
    ON CONFLICT (group_key, topic, partition) DO UPDATE SET
        committed_offset = EXCLUDED.committed_offset,
        leader_epoch = EXCLUDED.leader_epoch,
        metadata = EXCLUDED.metadata,
        commit_timestamp_ms = EXCLUDED.commit_timestamp_ms";

const FETCH_OFFSETS: &str = "SELECT topic, partition, committed_offset, leader_epoch, metadata,
        commit_timestamp_ms
    FROM fjord_group_offsets WHERE group_key = sha256($1)
    ORDER BY topic, partition";

const DELETE_OFFSETS: &str = "DELETE FROM fjord_group_offsets
    WHERE (group_key, topic, partition) IN (
        SELECT group_key, topic, partition FROM fjord_group_offsets
        WHERE group_key = sha256($1)
          AND (topic, partition) IN (SELECT * FROM UNNEST($2::bytea[], $3::int4[]))
        ORDER BY topic, partition FOR UPDATE)";

const SAVE_GROUP: &str =
    "INSERT INTO fjord_groups (group_id, state, updated_ms) VALUES ($1, $2, $3)
    ON CONFLICT (group_key) DO UPDATE SET state = EXCLUDED.state, updated_ms = EXCLUDED.updated_ms";

const LOAD_GROUP: &str = "SELECT state FROM fjord_groups WHERE group_key = sha256($1)";

const LIST_GROUPS: &str = "SELECT group_id FROM fjord_groups
    UNION SELECT group_id FROM fjord_group_offsets
    ORDER BY 1";

/// Deletes the blob and the offsets (locked in order, like [`DELETE_OFFSETS`]) in one statement;
/// returns how many rows went.
const DELETE_GROUP: &str = "WITH blob AS (
        DELETE FROM fjord_groups WHERE group_key = sha256($1) RETURNING 1
    ), offsets AS (
        DELETE FROM fjord_group_offsets WHERE (group_key, topic, partition) IN (
            SELECT group_key, topic, partition FROM fjord_group_offsets
            WHERE group_key = sha256($1)
            ORDER BY topic, partition FOR UPDATE)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM blob) + (SELECT count(*) FROM offsets)";

/// Runs one statement on a pooled connection and returns the number of rows it changed.
async fn execute(
    c: &PostgresCoordinator,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    what: &'static str,
) -> Result<u64> {
    let client = c.client().await?;
    let statement = client.prepare_cached(sql).await.map_err(db(what))?;
    client.execute(&statement, params).await.map_err(db(what))
}

/// A stored string (UTF-8 bytes).
fn text(bytes: Vec<u8>, what: &str) -> Result<String> {
    String::from_utf8(bytes)
        .map_err(|e| CoordinatorError::Corrupt(format!("postgres: {what} is not UTF-8: {e}")))
}

pub(super) async fn commit_offsets(
    c: &PostgresCoordinator,
    group: &str,
    offsets: Vec<CommittedOffset>,
) -> Result<()> {
    check_group_id(group)?;
    let offsets = normalize_offsets(offsets)?;
    if offsets.is_empty() {
        return Ok(());
    }
    let topics: Vec<&[u8]> = offsets.iter().map(|o| o.topic.as_bytes()).collect();
    let partitions: Vec<i32> = offsets.iter().map(|o| o.partition).collect();
    let committed: Vec<i64> = offsets.iter().map(|o| o.offset).collect();
    let epochs: Vec<i32> = offsets.iter().map(|o| o.leader_epoch).collect();
    let metadata: Vec<Option<&[u8]>> = offsets
        .iter()
        .map(|o| o.metadata.as_deref().map(str::as_bytes))
        .collect();
    let timestamps: Vec<i64> = offsets.iter().map(|o| o.commit_timestamp_ms).collect();
    execute(
        c,
        COMMIT_OFFSETS,
        &[
            &group.as_bytes(),
            &topics,
            &partitions,
            &committed,
            &epochs,
            &metadata,
            &timestamps,
        ],
        "committing group offsets",
    )
    .await?;
    Ok(())
}

pub(super) async fn fetch_offsets(
    c: &PostgresCoordinator,
    group: &str,
) -> Result<Vec<CommittedOffset>> {
    check_group_id(group)?;
    let rows = c
        .query(
            FETCH_OFFSETS,
            &[&group.as_bytes()],
            "fetching group offsets",
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(CommittedOffset {
                topic: text(get(row, 0)?, "an offset's topic")?,
                partition: get(row, 1)?,
                offset: get(row, 2)?,
                leader_epoch: get(row, 3)?,
                metadata: get::<Option<Vec<u8>>>(row, 4)?
                    .map(|m| text(m, "an offset's metadata"))
                    .transpose()?,
                commit_timestamp_ms: get(row, 5)?,
            })
        })
        .collect()
}

pub(super) async fn delete_offsets(
    c: &PostgresCoordinator,
    group: &str,
    partitions: Vec<(String, i32)>,
) -> Result<()> {
    check_group_id(group)?;
    if partitions.is_empty() {
        return Ok(());
    }
    let topics: Vec<&[u8]> = partitions.iter().map(|(t, _)| t.as_bytes()).collect();
    let indexes: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
    execute(
        c,
        DELETE_OFFSETS,
        &[&group.as_bytes(), &topics, &indexes],
        "deleting group offsets",
    )
    .await?;
    Ok(())
}

pub(super) async fn save_group(c: &PostgresCoordinator, group: &str, state: Vec<u8>) -> Result<()> {
    check_group_id(group)?;
    check_group_state(&state)?;
    execute(
        c,
        SAVE_GROUP,
        &[&group.as_bytes(), &state, &now_ms()],
        "saving a group",
    )
    .await?;
    Ok(())
}

pub(super) async fn load_group(c: &PostgresCoordinator, group: &str) -> Result<Option<Vec<u8>>> {
    check_group_id(group)?;
    let rows = c
        .query(LOAD_GROUP, &[&group.as_bytes()], "loading a group")
        .await?;
    rows.first().map(|row| get(row, 0)).transpose()
}

pub(super) async fn list_groups(c: &PostgresCoordinator) -> Result<Vec<String>> {
    c.query(LIST_GROUPS, &[], "listing groups")
        .await?
        .iter()
        .map(|row| text(get(row, 0)?, "a group id"))
        .collect()
}

pub(super) async fn delete_group(c: &PostgresCoordinator, group: &str) -> Result<bool> {
    check_group_id(group)?;
    const WHAT: &str = "deleting a group";
    let client = c.client().await?;
    let statement = client
        .prepare_cached(DELETE_GROUP)
        .await
        .map_err(db(WHAT))?;
    let row = client
        .query_one(&statement, &[&group.as_bytes()])
        .await
        .map_err(db(WHAT))?;
    Ok(get::<i64>(&row, 0)? > 0)
}
