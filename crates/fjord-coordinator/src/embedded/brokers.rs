//! The embedded coordinator's broker registry: in memory only, never journaled.
//!
//! An embedded coordinator serves exactly one process, so the only broker that can register is
//! the one running in that process, and its registration cannot outlive it: after a restart the
//! registry starts empty and the (new incarnation of the) broker registers again. Journaling
//! would add nothing but an fsynced entry per renewal, one per broker every few seconds.
//!
//! Leases use the system clock. Expired registrations are pruned lazily, on the next write.
//! A mutex makes each call's check and change one atomic step.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use uuid::Uuid;

use crate::model::{BrokerRegistration, LiveBroker};
use crate::state::{
    broker_lease_lost, broker_node_taken, check_broker_lease, check_broker_registration,
};
use crate::Result;

/// Registered brokers by node id (some possibly expired).
#[derive(Default)]
pub(super) struct Registry {
    brokers: Mutex<BTreeMap<i32, LiveBroker>>,
}

impl Registry {
    pub(super) fn register(
        &self,
        now_ms: i64,
        registration: BrokerRegistration,
        lease_ms: i64,
    ) -> Result<LiveBroker> {
        check_broker_registration(&registration)?;
        check_broker_lease(lease_ms)?;
        let mut brokers = self.brokers.lock();
        brokers.retain(|_, b| b.lease_expires_ms > now_ms);
        if let Some(current) = brokers.get(&registration.node_id) {
            if current.registration.incarnation != registration.incarnation {
                return Err(broker_node_taken(registration.node_id));
            }
        }
        let live = LiveBroker {
            lease_expires_ms: now_ms.saturating_add(lease_ms),
            registration,
        };
        brokers.insert(live.registration.node_id, live.clone());
        Ok(live)
    }

    pub(super) fn renew(
        &self,
        now_ms: i64,
        node_id: i32,
        incarnation: Uuid,
        lease_ms: i64,
    ) -> Result<LiveBroker> {
        check_broker_lease(lease_ms)?;
        let mut brokers = self.brokers.lock();
        match brokers.get_mut(&node_id) {
            Some(b) if b.registration.incarnation == incarnation && b.lease_expires_ms > now_ms => {
                b.lease_expires_ms = now_ms.saturating_add(lease_ms);
                Ok(b.clone())
            }
            _ => Err(broker_lease_lost(node_id, incarnation)),
        }
    }

    pub(super) fn deregister(&self, node_id: i32, incarnation: Uuid) {
        let mut brokers = self.brokers.lock();
        if brokers
            .get(&node_id)
            .is_some_and(|b| b.registration.incarnation == incarnation)
        {
            brokers.remove(&node_id);
        }
    }

    pub(super) fn live(&self, now_ms: i64) -> Vec<LiveBroker> {
        self.brokers
            .lock()
            .values()
            .filter(|b| b.lease_expires_ms > now_ms)
            .cloned()
            .collect()
    }
}
