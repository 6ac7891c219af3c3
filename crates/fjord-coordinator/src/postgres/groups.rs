//! Consumer groups on PostgreSQL: committed offsets (`fjord_group_offsets`) and metadata blobs
//! (`fjord_groups`), both keyed by `group_key = sha256(group_id)` (see
//! `migrations/postgres/0002_groups.sql`).
//!
//! Group ids, topic names and metadata go in and out as UTF-8 bytes (`bytea`); a value that does
//! not decode is [`CoordinatorError::Corrupt`].
//!
//! Fencing (migration `0004_group_versions.sql`): a blob's version comes from the
//! `fjord_group_versions` sequence on every save. Writes to one group serialize on a
//! transaction-scoped advisory lock derived from its key: saves and deletions take it
//! exclusively, fenced offset writes shared, then read the version and compare. So a fenced
//! commit's check and its write happen with no save of the group in between, also while the group
//! has no row to lock yet. Unfenced reads and writes are single statements.
//!
//! Lock order: the group's advisory lock first; then statements that change several offset rows
//! lock them in (topic, partition) order (the commit sorts its rows; deletions lock with a sorted
//! `SELECT ... FOR UPDATE` first), so concurrent commits and deletions on one group from several
//! brokers never deadlock.

use tokio_postgres::types::ToSql;

use super::db::{db, get};
use super::PostgresCoordinator;
use crate::model::{CommittedOffset, StoredGroup};
use crate::state::{
    check_group_id, check_group_state, check_group_version, group_fenced, normalize_offsets,
};
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

/// The group's advisory lock, exclusive (saves, deletions) or shared (fenced offset writes): a
/// 64-bit hash of its key.
const LOCK_GROUP: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended(encode(sha256($1), 'hex'), 0))";
const LOCK_GROUP_SHARED: &str =
    "SELECT pg_advisory_xact_lock_shared(hashtextextended(encode(sha256($1), 'hex'), 0))";

const GROUP_VERSION: &str = "SELECT version FROM fjord_groups WHERE group_key = sha256($1)";

/// A first save: only if no blob exists.
const INSERT_GROUP: &str = "INSERT INTO fjord_groups (group_id, state, updated_ms, version)
    VALUES ($1, $2, $3, nextval('fjord_group_versions'))
    ON CONFLICT (group_key) DO NOTHING RETURNING version";

/// A later save: only over the expected version.
const UPDATE_GROUP: &str = "UPDATE fjord_groups
    SET state = $2, updated_ms = $3, version = nextval('fjord_group_versions')
    WHERE group_key = sha256($1) AND version = $4 RETURNING version";

const LOAD_GROUP: &str =
    "SELECT state, version, updated_ms FROM fjord_groups WHERE group_key = sha256($1)";

const GROUP_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM fjord_groups WHERE group_key = sha256($1))
    OR EXISTS (SELECT 1 FROM fjord_group_offsets WHERE group_key = sha256($1))";

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

/// A stored string (UTF-8 bytes).
fn text(bytes: Vec<u8>, what: &str) -> Result<String> {
    String::from_utf8(bytes)
        .map_err(|e| CoordinatorError::Corrupt(format!("postgres: {what} is not UTF-8: {e}")))
}

pub(super) async fn commit_offsets(
    c: &PostgresCoordinator,
    group: &str,
    offsets: Vec<CommittedOffset>,
    fence: Option<i64>,
) -> Result<()> {
    check_group_id(group)?;
    let offsets = normalize_offsets(offsets)?;
    if offsets.is_empty() && fence.is_none() {
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
    let params: [&(dyn ToSql + Sync); 7] = [
        &group.as_bytes(),
        &topics,
        &partitions,
        &committed,
        &epochs,
        &metadata,
        &timestamps,
    ];
    fenced_write(
        c,
        group,
        fence,
        (!offsets.is_empty()).then_some((COMMIT_OFFSETS, &params[..])),
        "committing group offsets",
    )
    .await?;
    Ok(())
}

/// Runs `write` (a statement and its parameters; none: only the check) on `group`'s rows. With a
/// fence, in a transaction holding the group's shared advisory lock, after checking that its blob
/// version is the fence; without, as one statement. Returns the rows it changed.
async fn fenced_write(
    c: &PostgresCoordinator,
    group: &str,
    fence: Option<i64>,
    write: Option<(&str, &[&(dyn ToSql + Sync)])>,
    what: &'static str,
) -> Result<u64> {
    let mut client = c.client().await?;
    let Some(expected) = fence else {
        let Some((sql, params)) = write else {
            return Ok(0);
        };
        let statement = client.prepare_cached(sql).await.map_err(db(what))?;
        return client.execute(&statement, params).await.map_err(db(what));
    };
    let tx = client.transaction().await.map_err(db(what))?;
    let key: &[u8] = group.as_bytes();
    tx.execute(LOCK_GROUP_SHARED, &[&key])
        .await
        .map_err(db(what))?;
    let current = version(&tx, key, what).await?;
    check_group_version(group, expected, current)?;
    let changed = match write {
        Some((sql, params)) => {
            let statement = tx.prepare_cached(sql).await.map_err(db(what))?;
            tx.execute(&statement, params).await.map_err(db(what))?
        }
        None => 0,
    };
    tx.commit().await.map_err(db(what))?;
    Ok(changed)
}

/// The group's blob version in `tx` (0: no blob).
async fn version(
    tx: &deadpool_postgres::Transaction<'_>,
    key: &[u8],
    what: &'static str,
) -> Result<i64> {
    let statement = tx.prepare_cached(GROUP_VERSION).await.map_err(db(what))?;
    tx.query_opt(&statement, &[&key])
        .await
        .map_err(db(what))?
        .map(|row| get::<i64>(&row, 0))
        .transpose()
        .map(|v| v.unwrap_or(0))
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
    fence: Option<i64>,
) -> Result<()> {
    check_group_id(group)?;
    if partitions.is_empty() && fence.is_none() {
        return Ok(());
    }
    let topics: Vec<&[u8]> = partitions.iter().map(|(t, _)| t.as_bytes()).collect();
    let indexes: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
    let params: [&(dyn ToSql + Sync); 3] = [&group.as_bytes(), &topics, &indexes];
    fenced_write(
        c,
        group,
        fence,
        (!partitions.is_empty()).then_some((DELETE_OFFSETS, &params[..])),
        "deleting group offsets",
    )
    .await?;
    Ok(())
}

pub(super) async fn save_group(
    c: &PostgresCoordinator,
    group: &str,
    expected: i64,
    state: Vec<u8>,
) -> Result<i64> {
    check_group_id(group)?;
    check_group_state(&state)?;
    const WHAT: &str = "saving a group";
    let mut client = c.client().await?;
    let tx = client.transaction().await.map_err(db(WHAT))?;
    let key: &[u8] = group.as_bytes();
    tx.execute(LOCK_GROUP, &[&key]).await.map_err(db(WHAT))?;
    let row = if expected == 0 {
        let statement = tx.prepare_cached(INSERT_GROUP).await.map_err(db(WHAT))?;
        tx.query_opt(&statement, &[&key, &state, &c.clock().now_ms()])
            .await
            .map_err(db(WHAT))?
    } else {
        let statement = tx.prepare_cached(UPDATE_GROUP).await.map_err(db(WHAT))?;
        tx.query_opt(&statement, &[&key, &state, &c.clock().now_ms(), &expected])
            .await
            .map_err(db(WHAT))?
    };
    let Some(row) = row else {
        let current = version(&tx, key, WHAT).await?;
        return Err(group_fenced(group, expected, current));
    };
    let saved: i64 = get(&row, 0)?;
    tx.commit().await.map_err(db(WHAT))?;
    Ok(saved)
}

pub(super) async fn load_group(
    c: &PostgresCoordinator,
    group: &str,
) -> Result<Option<StoredGroup>> {
    check_group_id(group)?;
    let rows = c
        .query(LOAD_GROUP, &[&group.as_bytes()], "loading a group")
        .await?;
    rows.first()
        .map(|row| {
            Ok(StoredGroup {
                state: get(row, 0)?,
                version: get(row, 1)?,
                saved_ms: get(row, 2)?,
            })
        })
        .transpose()
}

pub(super) async fn group_exists(c: &PostgresCoordinator, group: &str) -> Result<bool> {
    check_group_id(group)?;
    let rows = c
        .query(
            GROUP_EXISTS,
            &[&group.as_bytes()],
            "checking a group exists",
        )
        .await?;
    rows.first().map_or(Ok(false), |row| get(row, 0))
}

pub(super) async fn list_groups(c: &PostgresCoordinator) -> Result<Vec<String>> {
    c.query(LIST_GROUPS, &[], "listing groups")
        .await?
        .iter()
        .map(|row| text(get(row, 0)?, "a group id"))
        .collect()
}

pub(super) async fn delete_group(
    c: &PostgresCoordinator,
    group: &str,
    fence: Option<i64>,
) -> Result<bool> {
    check_group_id(group)?;
    const WHAT: &str = "deleting a group";
    let mut client = c.client().await?;
    let tx = client.transaction().await.map_err(db(WHAT))?;
    let key: &[u8] = group.as_bytes();
    tx.execute(LOCK_GROUP, &[&key]).await.map_err(db(WHAT))?;
    if let Some(expected) = fence {
        check_group_version(group, expected, version(&tx, key, WHAT).await?)?;
    }
    let statement = tx.prepare_cached(DELETE_GROUP).await.map_err(db(WHAT))?;
    let row = tx.query_one(&statement, &[&key]).await.map_err(db(WHAT))?;
    let deleted = get::<i64>(&row, 0)? > 0;
    tx.commit().await.map_err(db(WHAT))?;
    Ok(deleted)
}
