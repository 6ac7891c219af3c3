//! [`MetadataExpiry`](crate::MetadataExpiry) on PostgreSQL: expired idempotent-producer memory
//! deleted from `fjord_producer_state` and `fjord_producers` (migration 0009).
//!
//! Two bounded statements, each its own transaction: expired per-partition states first, then
//! ids no state refers to any more. Each `DELETE` picks at most `max` candidates by an index range
//! scan and repeats its condition on the rows it deletes, so a row that a commit or an
//! InitProducerId updated meanwhile (READ COMMITTED rechecks the updated version) is kept. Rows
//! from before the migration carry its time, so nothing needs stamping here, unlike the
//! embedded coordinator.

use super::db::db;
use super::PostgresCoordinator;
use crate::model::ProducerExpiryStep;
use crate::Result;

/// `$1`: expire at or before this time (ms), `$2`: at most this many rows.
const EXPIRE_STATES: &str = "DELETE FROM fjord_producer_state
    WHERE (topic_id, partition, producer_id) IN (
        SELECT topic_id, partition, producer_id FROM fjord_producer_state
        WHERE last_append_ms <= $1
        LIMIT $2)
    AND last_append_ms <= $1";

/// `$1`: expire ids (re)initialised at or before this time (ms) that no partition remembers,
/// `$2`: at most this many.
const EXPIRE_IDS: &str = "DELETE FROM fjord_producers AS p
    WHERE producer_id IN (
        SELECT producer_id FROM fjord_producers AS q
        WHERE init_ms <= $1
          AND NOT EXISTS (SELECT 1 FROM fjord_producer_state AS s
                          WHERE s.producer_id = q.producer_id)
        LIMIT $2)
    AND init_ms <= $1
    AND NOT EXISTS (SELECT 1 FROM fjord_producer_state AS s WHERE s.producer_id = p.producer_id)";

pub(super) async fn expire_producers(
    c: &PostgresCoordinator,
    now_ms: i64,
    expiration_ms: i64,
    max: usize,
) -> Result<ProducerExpiryStep> {
    // `producer_expired`: now - last >= expiration, i.e. last <= now - expiration.
    let before = now_ms.saturating_sub(expiration_ms);
    let limit = i64::try_from(max).unwrap_or(i64::MAX);
    let client = c.client().await?;
    let states = client
        .execute(EXPIRE_STATES, &[&before, &limit])
        .await
        .map_err(db("expiring producer states"))?;
    let left = limit.saturating_sub(i64::try_from(states).unwrap_or(i64::MAX));
    let ids = if left > 0 {
        client
            .execute(EXPIRE_IDS, &[&before, &left])
            .await
            .map_err(db("expiring producer ids"))?
    } else {
        0
    };
    Ok(ProducerExpiryStep {
        states_expired: states,
        ids_expired: ids,
        more: max > 0 && states + ids >= max as u64,
    })
}
