//! The live-broker registry on PostgreSQL (`fjord_brokers`, see
//! `migrations/postgres/0003_brokers.sql`).
//!
//! Every call is one statement, so one implicit transaction, and all times come from the
//! database's clock: `now()` in ms ([`NOW_MS`]), so brokers with skewed clocks agree on whose
//! lease is live. Registration is a single `INSERT ... ON CONFLICT DO UPDATE ... WHERE`: the
//! conflicting row is locked while the condition (same incarnation, or an expired lease) is
//! checked, so of concurrent registrations of one node id by different incarnations exactly one
//! wins. Renewal is an `UPDATE` guarded the same way.

use tokio_postgres::types::Json;
use tokio_postgres::Row;
use uuid::Uuid;

use super::db::{db, get};
use super::PostgresCoordinator;
use crate::model::{BrokerRegistration, ListenerEndpoint, LiveBroker};
use crate::state::{
    broker_lease_lost, broker_node_taken, check_broker_lease, check_broker_registration,
};
use crate::Result;

/// The database's transaction time in ms since the epoch.
const NOW_MS: &str = "floor(extract(epoch FROM now()) * 1000)::bigint";

/// Columns a broker query selects, in the order [`live_broker`] reads them.
const COLUMNS: &str = "node_id, incarnation, host, port, rack, lease_expires_ms, listeners";

fn live_broker(row: &Row) -> Result<LiveBroker> {
    Ok(LiveBroker {
        registration: BrokerRegistration {
            node_id: get(row, 0)?,
            incarnation: get(row, 1)?,
            host: get(row, 2)?,
            port: get(row, 3)?,
            rack: get(row, 4)?,
            listeners: get::<Json<Vec<ListenerEndpoint>>>(row, 6)?.0,
        },
        lease_expires_ms: get(row, 5)?,
    })
}

/// Runs one statement on a pooled connection and returns its rows.
async fn query(
    c: &PostgresCoordinator,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    what: &'static str,
) -> Result<Vec<Row>> {
    let client = c.client().await?;
    let statement = client.prepare_cached(sql).await.map_err(db(what))?;
    client.query(&statement, params).await.map_err(db(what))
}

pub(super) async fn register(
    c: &PostgresCoordinator,
    registration: BrokerRegistration,
    lease_ms: i64,
) -> Result<LiveBroker> {
    check_broker_registration(&registration)?;
    check_broker_lease(lease_ms)?;
    let sql = format!(
        "INSERT INTO fjord_brokers AS b ({COLUMNS})
         VALUES ($1, $2, $3, $4, $5, {NOW_MS} + $6, $7)
         ON CONFLICT (node_id) DO UPDATE SET
             incarnation = EXCLUDED.incarnation,
             host = EXCLUDED.host,
             port = EXCLUDED.port,
             rack = EXCLUDED.rack,
             listeners = EXCLUDED.listeners,
             lease_expires_ms = EXCLUDED.lease_expires_ms
         WHERE b.incarnation = EXCLUDED.incarnation OR b.lease_expires_ms <= {NOW_MS}
         RETURNING {COLUMNS}"
    );
    let r = &registration;
    let rows = query(
        c,
        &sql,
        &[
            &r.node_id,
            &r.incarnation,
            &r.host,
            &r.port,
            &r.rack,
            &lease_ms,
            &Json(&r.listeners),
        ],
        "registering a broker",
    )
    .await?;
    match rows.first() {
        Some(row) => live_broker(row),
        None => Err(broker_node_taken(r.node_id)),
    }
}

pub(super) async fn renew(
    c: &PostgresCoordinator,
    node_id: i32,
    incarnation: Uuid,
    lease_ms: i64,
) -> Result<LiveBroker> {
    check_broker_lease(lease_ms)?;
    let sql = format!(
        "UPDATE fjord_brokers SET lease_expires_ms = {NOW_MS} + $3
         WHERE node_id = $1 AND incarnation = $2 AND lease_expires_ms > {NOW_MS}
         RETURNING {COLUMNS}"
    );
    let rows = query(
        c,
        &sql,
        &[&node_id, &incarnation, &lease_ms],
        "renewing a broker lease",
    )
    .await?;
    match rows.first() {
        Some(row) => live_broker(row),
        None => Err(broker_lease_lost(node_id, incarnation)),
    }
}

pub(super) async fn deregister(
    c: &PostgresCoordinator,
    node_id: i32,
    incarnation: Uuid,
) -> Result<()> {
    query(
        c,
        "DELETE FROM fjord_brokers WHERE node_id = $1 AND incarnation = $2",
        &[&node_id, &incarnation],
        "deregistering a broker",
    )
    .await?;
    Ok(())
}

pub(super) async fn live(c: &PostgresCoordinator) -> Result<Vec<LiveBroker>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM fjord_brokers WHERE lease_expires_ms > {NOW_MS} ORDER BY node_id"
    );
    query(c, &sql, &[], "listing live brokers")
        .await?
        .iter()
        .map(live_broker)
        .collect()
}
