//! A fault-injecting decorator over any coordinator, for tests that need the store to fail, stall
//! or wait at a precise moment (decorators over the trait object, as slatedb and object_store do
//! for stores).
//!
//! [`FaultyCoordinator`] forwards every call to the coordinator it wraps. Before a call it asks
//! its [`Faults`] what to do with that operation ([`Op`]): go on, fail with a retriable storage
//! error, or stop at a [`Hold`] until the test releases it (the test can wait until a call has
//! arrived there). With no faults armed it changes nothing.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::model::*;
use crate::security::{
    AclBinding, AclFilter, AclSnapshot, ScramCredential, ScramMechanism, ScramUser,
};
use crate::{
    AclStore, BrokerRegistry, Coordinator, CoordinatorError, CredentialStore, GroupStore,
    LogLifecycle, MetadataExpiry, ObjectLedger, Result,
};

/// An operation faults can be armed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`Coordinator::commit`] and [`Coordinator::commit_many`].
    Commit,
    /// [`Coordinator::partition_offsets`].
    PartitionOffsets,
    /// [`GroupStore::commit_offsets`].
    CommitOffsets,
    /// [`GroupStore::save_group`].
    SaveGroup,
    /// [`GroupStore::load_group`].
    LoadGroup,
    /// [`ObjectLedger::known_objects`].
    KnownObjects,
}

/// What happens to the next call of an operation.
enum Fault {
    /// Fail with a storage error.
    Fail,
    /// Wait at a hold until released.
    Hold(Arc<HoldState>),
}

#[derive(Default)]
struct HoldState {
    arrived: Mutex<bool>,
    released: Mutex<bool>,
    arrive: Notify,
    release: Notify,
}

/// A call stopped on its way to the store; see [`Faults::hold`].
#[derive(Clone)]
pub struct Hold(Arc<HoldState>);

impl Hold {
    /// Waits until a call has arrived at the hold.
    pub async fn reached(&self) {
        loop {
            let notified = self.0.arrive.notified();
            if *self.0.arrived.lock() {
                return;
            }
            notified.await;
        }
    }

    /// Lets the held call (and any later one at this hold) go on.
    pub fn release(&self) {
        *self.0.released.lock() = true;
        self.0.release.notify_waiters();
    }
}

impl HoldState {
    async fn wait(&self) {
        *self.arrived.lock() = true;
        self.arrive.notify_waiters();
        loop {
            let notified = self.release.notified();
            if *self.released.lock() {
                return;
            }
            notified.await;
        }
    }
}

/// Faults armed on a decorator: per operation (any small `Copy` type naming the calls of one
/// trait), a queue of what its next calls meet, in order. [`Faults`] is the coordinator's;
/// object-store decorators use the same plan with their own operations.
pub struct FaultPlan<O> {
    armed: Mutex<Vec<(O, VecDeque<Fault>)>>,
}

/// The faults armed on a [`FaultyCoordinator`].
pub type Faults = FaultPlan<Op>;

/// An injected failure, for the decorator to turn into its own error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injected;

impl<O> Default for FaultPlan<O> {
    fn default() -> Self {
        FaultPlan {
            armed: Mutex::new(Vec::new()),
        }
    }
}

impl<O: Copy + PartialEq + std::fmt::Debug> FaultPlan<O> {
    /// The next `times` calls of `op` fail with a (retriable) storage error.
    pub fn fail(&self, op: O, times: usize) {
        let mut armed = self.armed.lock();
        let queue = Self::queue(&mut armed, op);
        queue.extend((0..times).map(|_| Fault::Fail));
    }

    /// The next call of `op` stops before reaching the store until the returned hold is
    /// released.
    pub fn hold(&self, op: O) -> Hold {
        let state = Arc::new(HoldState::default());
        let mut armed = self.armed.lock();
        Self::queue(&mut armed, op).push_back(Fault::Hold(state.clone()));
        Hold(state)
    }

    fn queue(armed: &mut Vec<(O, VecDeque<Fault>)>, op: O) -> &mut VecDeque<Fault> {
        let at = match armed.iter().position(|(o, _)| *o == op) {
            Some(at) => at,
            None => {
                armed.push((op, VecDeque::new()));
                armed.len() - 1
            }
        };
        &mut armed[at].1
    }

    /// Meets what is armed for the next call of `op`: nothing, an injected failure, or a hold.
    pub async fn meet(&self, op: O) -> std::result::Result<(), Injected> {
        let fault = {
            let mut armed = self.armed.lock();
            armed
                .iter_mut()
                .find(|(o, _)| *o == op)
                .and_then(|(_, queue)| queue.pop_front())
        };
        match fault {
            None => Ok(()),
            Some(Fault::Fail) => Err(Injected),
            Some(Fault::Hold(state)) => {
                state.wait().await;
                Ok(())
            }
        }
    }
}

impl Faults {
    async fn before(&self, op: Op) -> Result<()> {
        self.meet(op)
            .await
            .map_err(|Injected| CoordinatorError::Storage(format!("injected failure of {op:?}")))
    }
}

/// A coordinator that meets the [`Faults`] armed on it before forwarding each call.
pub struct FaultyCoordinator {
    inner: Arc<dyn Coordinator>,
    faults: Arc<Faults>,
}

impl FaultyCoordinator {
    /// Wraps `inner`; arm faults through the returned [`Faults`].
    pub fn new(inner: Arc<dyn Coordinator>) -> (Arc<FaultyCoordinator>, Arc<Faults>) {
        let faults = Arc::new(Faults::default());
        (
            Arc::new(FaultyCoordinator {
                inner,
                faults: faults.clone(),
            }),
            faults,
        )
    }
}

#[async_trait]
impl Coordinator for FaultyCoordinator {
    async fn create_topic(&self, spec: TopicSpec) -> Result<TopicMeta> {
        self.inner.create_topic(spec).await
    }

    async fn delete_topic(&self, name: &str) -> Result<TopicMeta> {
        self.inner.delete_topic(name).await
    }

    async fn create_partitions(&self, name: &str, new_total: i32) -> Result<TopicMeta> {
        self.inner.create_partitions(name, new_total).await
    }

    async fn alter_topic_configs(
        &self,
        name: &str,
        changes: Vec<(String, Option<String>)>,
    ) -> Result<TopicMeta> {
        self.inner.alter_topic_configs(name, changes).await
    }

    async fn list_topics(&self) -> Result<Vec<TopicMeta>> {
        self.inner.list_topics().await
    }

    async fn topic(&self, name: &str) -> Result<Option<TopicMeta>> {
        self.inner.topic(name).await
    }

    async fn topic_by_id(&self, id: Uuid) -> Result<Option<TopicMeta>> {
        self.inner.topic_by_id(id).await
    }

    async fn commit(&self, flush: FlushCommit) -> Result<Vec<BatchOutcome>> {
        self.faults.before(Op::Commit).await?;
        self.inner.commit(flush).await
    }

    async fn commit_many(&self, flushes: Vec<FlushCommit>) -> Result<Vec<Vec<BatchOutcome>>> {
        self.faults.before(Op::Commit).await?;
        self.inner.commit_many(flushes).await
    }

    async fn partition_offsets(&self, tp: TopicPartition) -> Result<PartitionOffsets> {
        self.faults.before(Op::PartitionOffsets).await?;
        self.inner.partition_offsets(tp).await
    }

    async fn index_rows(
        &self,
        tp: TopicPartition,
        from_offset: i64,
        max_bytes: u64,
    ) -> Result<Vec<IndexRow>> {
        self.inner.index_rows(tp, from_offset, max_bytes).await
    }

    async fn row_for_timestamp(
        &self,
        tp: TopicPartition,
        timestamp: i64,
    ) -> Result<Option<IndexRow>> {
        self.inner.row_for_timestamp(tp, timestamp).await
    }

    async fn row_with_max_timestamp(&self, tp: TopicPartition) -> Result<Option<IndexRow>> {
        self.inner.row_with_max_timestamp(tp).await
    }

    async fn init_producer_id(&self, request: InitProducer) -> Result<ProducerIdentity> {
        self.inner.init_producer_id(request).await
    }
}

#[async_trait]
impl ObjectLedger for FaultyCoordinator {
    async fn dead_objects(&self, dead_before_ms: i64, limit: usize) -> Result<Vec<DeadObject>> {
        self.inner.dead_objects(dead_before_ms, limit).await
    }

    async fn known_objects(&self, keys: Vec<String>) -> Result<BTreeSet<String>> {
        self.faults.before(Op::KnownObjects).await?;
        self.inner.known_objects(keys).await
    }

    async fn forget_objects(&self, keys: Vec<String>) -> Result<()> {
        self.inner.forget_objects(keys).await
    }

    async fn raise_commit_watermark(&self, at_ms: i64) -> Result<i64> {
        self.inner.raise_commit_watermark(at_ms).await
    }

    async fn ledger_size(&self) -> Result<LedgerSize> {
        self.inner.ledger_size().await
    }
}

#[async_trait]
impl GroupStore for FaultyCoordinator {
    async fn commit_offsets(
        &self,
        group: &str,
        offsets: Vec<CommittedOffset>,
        fence: Option<i64>,
    ) -> Result<()> {
        self.faults.before(Op::CommitOffsets).await?;
        self.inner.commit_offsets(group, offsets, fence).await
    }

    async fn fetch_offsets(&self, group: &str) -> Result<Vec<CommittedOffset>> {
        self.inner.fetch_offsets(group).await
    }

    async fn delete_offsets(
        &self,
        group: &str,
        partitions: Vec<(String, i32)>,
        fence: Option<i64>,
    ) -> Result<()> {
        self.inner.delete_offsets(group, partitions, fence).await
    }

    async fn save_group(&self, group: &str, expected: i64, state: Vec<u8>) -> Result<i64> {
        self.faults.before(Op::SaveGroup).await?;
        self.inner.save_group(group, expected, state).await
    }

    async fn load_group(&self, group: &str) -> Result<Option<StoredGroup>> {
        self.faults.before(Op::LoadGroup).await?;
        self.inner.load_group(group).await
    }

    async fn group_exists(&self, group: &str) -> Result<bool> {
        self.inner.group_exists(group).await
    }

    async fn list_groups(&self) -> Result<Vec<String>> {
        self.inner.list_groups().await
    }

    async fn delete_group(&self, group: &str, fence: Option<i64>) -> Result<bool> {
        self.inner.delete_group(group, fence).await
    }
}

#[async_trait]
impl LogLifecycle for FaultyCoordinator {
    async fn delete_records(&self, tp: TopicPartition, before: i64) -> Result<PartitionOffsets> {
        self.inner.delete_records(tp, before).await
    }

    async fn apply_retention(
        &self,
        tp: TopicPartition,
        limits: RetentionLimits,
        max_rows: usize,
    ) -> Result<RetentionStep> {
        self.inner.apply_retention(tp, limits, max_rows).await
    }

    async fn swap_rows(&self, swap: RowSwap) -> Result<SwapOutcome> {
        self.inner.swap_rows(swap).await
    }

    async fn cleaned_to(&self, tp: TopicPartition) -> Result<i64> {
        self.inner.cleaned_to(tp).await
    }
}

#[async_trait]
impl MetadataExpiry for FaultyCoordinator {
    async fn expire_producers(
        &self,
        now_ms: i64,
        expiration_ms: i64,
        max: usize,
    ) -> Result<ProducerExpiryStep> {
        self.inner
            .expire_producers(now_ms, expiration_ms, max)
            .await
    }
}

#[async_trait]
impl BrokerRegistry for FaultyCoordinator {
    async fn register_broker(
        &self,
        registration: BrokerRegistration,
        lease_ms: i64,
    ) -> Result<LiveBroker> {
        self.inner.register_broker(registration, lease_ms).await
    }

    async fn renew_broker(
        &self,
        node_id: i32,
        incarnation: Uuid,
        lease_ms: i64,
    ) -> Result<LiveBroker> {
        self.inner
            .renew_broker(node_id, incarnation, lease_ms)
            .await
    }

    async fn deregister_broker(&self, node_id: i32, incarnation: Uuid) -> Result<()> {
        self.inner.deregister_broker(node_id, incarnation).await
    }

    async fn live_brokers(&self) -> Result<Vec<LiveBroker>> {
        self.inner.live_brokers().await
    }
}

#[async_trait]
impl CredentialStore for FaultyCoordinator {
    async fn upsert_scram_credential(&self, user: &str, credential: ScramCredential) -> Result<()> {
        self.inner.upsert_scram_credential(user, credential).await
    }

    async fn delete_scram_credential(&self, user: &str, mechanism: ScramMechanism) -> Result<bool> {
        self.inner.delete_scram_credential(user, mechanism).await
    }

    async fn scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Result<Option<ScramCredential>> {
        self.inner.scram_credential(user, mechanism).await
    }

    async fn scram_users(&self) -> Result<Vec<ScramUser>> {
        self.inner.scram_users().await
    }
}

#[async_trait]
impl AclStore for FaultyCoordinator {
    async fn create_acls(&self, bindings: Vec<AclBinding>) -> Result<()> {
        self.inner.create_acls(bindings).await
    }

    async fn delete_acls(&self, filters: Vec<AclFilter>) -> Result<Vec<Vec<AclBinding>>> {
        self.inner.delete_acls(filters).await
    }

    async fn acls(&self) -> Result<AclSnapshot> {
        self.inner.acls().await
    }

    async fn acl_version(&self) -> Result<i64> {
        self.inner.acl_version().await
    }
}

#[async_trait]
impl crate::QuotaStore for FaultyCoordinator {
    async fn alter_client_quotas(
        &self,
        alterations: Vec<crate::quotas::QuotaAlteration>,
    ) -> Result<()> {
        self.inner.alter_client_quotas(alterations).await
    }

    async fn client_quotas(&self) -> Result<crate::quotas::QuotaSnapshot> {
        self.inner.client_quotas().await
    }

    async fn quota_version(&self) -> Result<i64> {
        self.inner.quota_version().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedCoordinator;

    #[tokio::test]
    async fn faults_fail_and_hold_the_calls_they_are_armed_for() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::open(dir.path()).unwrap());
        let (c, faults) = FaultyCoordinator::new(inner);
        faults.fail(Op::SaveGroup, 1);
        assert!(matches!(
            c.save_group("g", 0, vec![]).await,
            Err(CoordinatorError::Storage(_))
        ));
        let v = c.save_group("g", 0, vec![1]).await.unwrap();
        let hold = faults.hold(Op::LoadGroup);
        let c2 = c.clone();
        let load = tokio::spawn(async move { c2.load_group("g").await });
        hold.reached().await;
        assert!(!load.is_finished());
        hold.release();
        assert_eq!(load.await.unwrap().unwrap().unwrap().version, v);
        // Unarmed operations pass straight through.
        assert!(c.list_groups().await.unwrap().contains(&"g".to_string()));
    }
}
