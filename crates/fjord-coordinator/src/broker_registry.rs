//! The live-broker registry: leases in the store.

use async_trait::async_trait;
use uuid::Uuid;

use crate::model::{BrokerRegistration, LiveBroker};
use crate::Result;

/// Live brokers. A broker registers with a lease and renews it before it ends; a broker whose
/// lease ended is not live. Leases are measured by the coordinator's clock (the database's for
/// PostgreSQL), so brokers with skewed clocks agree on who is live. A lease is 1 ms to a day
/// ([`crate::state::MAX_BROKER_LEASE_MS`]); anything else, or a registration that
/// [`crate::state::check_broker_registration`] refuses, is
/// [`CoordinatorError::Invalid`](crate::CoordinatorError::Invalid).
#[async_trait]
pub trait BrokerRegistry: Send + Sync {
    /// Registers (or re-registers) a broker with a lease of `lease_ms`. Fails with `Invalid` if
    /// another live incarnation holds the node id. The same incarnation registering again
    /// replaces its host, port and rack and restarts its lease.
    async fn register_broker(
        &self,
        registration: BrokerRegistration,
        lease_ms: i64,
    ) -> Result<LiveBroker>;

    /// Extends the lease of this incarnation to `lease_ms` from now; `Invalid` ("lease lost") if
    /// its lease already lapsed or another incarnation took the node id: the broker must then
    /// register again.
    async fn renew_broker(
        &self,
        node_id: i32,
        incarnation: Uuid,
        lease_ms: i64,
    ) -> Result<LiveBroker>;

    /// Removes the broker at once (graceful shutdown). Unknown or already-replaced incarnations
    /// are a no-op.
    async fn deregister_broker(&self, node_id: i32, incarnation: Uuid) -> Result<()>;

    /// Brokers whose lease has not expired, sorted by node id.
    async fn live_brokers(&self) -> Result<Vec<LiveBroker>>;
}
