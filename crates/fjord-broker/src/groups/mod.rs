//! The group coordinator: consumer groups of the classic protocol and of the consumer protocol
//! (KIP-848), their membership in memory and their durable state (committed offsets, the last
//! Stable classic membership, the whole consumer-protocol group) in the coordinator store.
//!
//! One [`Slot`] per group id holds both state machines, [`group::Group`] (classic) and
//! [`consumer::ConsumerGroup`], each behind a short synchronous lock; no lock is held across an
//! await, and code that needs both locks takes `group` before `consumer`. A group id is used by
//! one protocol at a time: the consumer group is *active* ([`consumer::ConsumerGroup::is_active`])
//! once a ConsumerGroupHeartbeat created it, and then classic JoinGroups are refused while it has
//! members (INCONSISTENT_GROUP_PROTOCOL); a ConsumerGroupHeartbeat for a classic group with
//! members is refused with GROUP_ID_NOT_FOUND. An empty group of either kind can be taken over
//! by the other protocol (its committed offsets stay).
//!
//! The stored blob of a group is JSON: the classic [`Snapshot`] as before, or
//! `{"consumer": <ConsumerGroup>}` for a consumer-protocol group ([`Stored`]). How state reaches
//! the store is the [`slot`] module's: nothing is told to a member before it is durable, saves are
//! compare-and-set on the store's group version, and a broker whose save or fenced offset commit
//! is refused (another broker coordinated the group meanwhile) hands the group over. A background
//! tick (every 100 ms) expires sessions and completes rebalances whose deadline passed, and saves
//! what they changed.
//!
//! A group is loaded from the store the first time a request that may create it (JoinGroup, a
//! first ConsumerGroupHeartbeat) or that concerns an existing group names it, so a broker that
//! takes over a group (after a restart, or in cluster mode when groups move between brokers)
//! resumes it from durable state: a Stable group keeps its members, whose sessions start at load
//! time. Requests naming a group that exists nowhere are answered without keeping anything in
//! memory. A group without members that no request named for `idle_eviction` (10 minutes) leaves
//! memory the same way, so memory and the tick hold the groups in use, not every id ever named.
//!
//! Deadlines use Tokio's clock (`tokio::time::Instant`), the one the tick's timer runs on, so
//! that a paused test clock moves sessions and rebalances too.
//!
//! In a cluster each group has one coordinator, chosen by
//! [`ClusterView::group_coordinator`](crate::cluster::ClusterView::group_coordinator) over the
//! current view. Requests for groups this broker does not coordinate get NOT_COORDINATOR (clients
//! then ask FindCoordinator again), and the tick drops such groups from memory without persisting
//! them, so a group that comes back later is loaded afresh from durable state.

pub mod consumer;
pub mod group;
pub mod slot;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

use fjord_coordinator::{Coordinator, StoredGroup};
use kafka_protocol::ResponseError;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::cluster::ClusterView;

use self::consumer::ConsumerGroup;
use self::group::{Group, GroupSettings, GroupState, Snapshot};
pub use self::slot::{Outcome, Slot};

impl Slot {
    /// Whether the slot can leave memory at `now`: no members, nothing pending, and no request
    /// for `idle_eviction`.
    fn evictable(&self, now: Instant, idle_eviction: Duration) -> bool {
        now.duration_since(*self.touched.lock()) >= idle_eviction
            && self.group.lock().is_idle()
            && self.consumer.lock().is_idle()
    }
}

/// The stored form of a group.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stored {
    /// A consumer-protocol group.
    Consumer {
        /// The group.
        consumer: Box<ConsumerGroup>,
    },
    /// A classic group.
    Classic(Snapshot),
}

/// One group as ListGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Group id.
    pub id: String,
    /// State name ("Stable", "Empty", "Reconciling", ...).
    pub state: &'static str,
    /// Protocol type ("consumer" for consumers, "" if unknown).
    pub protocol_type: String,
    /// "classic" or "consumer".
    pub group_type: &'static str,
}

/// All groups this broker coordinates.
pub struct GroupCoordinator {
    store: Arc<dyn Coordinator>,
    settings: GroupSettings,
    groups: Mutex<HashMap<String, Arc<Slot>>>,
    cluster: watch::Receiver<Arc<ClusterView>>,
}

impl GroupCoordinator {
    /// A group coordinator over `store` for the groups `cluster` places on this broker, with its
    /// background tick running on the current runtime for as long as the returned value lives.
    pub fn start(
        store: Arc<dyn Coordinator>,
        settings: GroupSettings,
        cluster: watch::Receiver<Arc<ClusterView>>,
    ) -> Arc<GroupCoordinator> {
        let coordinator = Arc::new(GroupCoordinator {
            store,
            settings,
            groups: Mutex::new(HashMap::new()),
            cluster,
        });
        tokio::spawn(tick_loop(Arc::downgrade(&coordinator)));
        coordinator
    }

    /// The settings of every group.
    pub fn settings(&self) -> &GroupSettings {
        &self.settings
    }

    /// The store behind the groups.
    pub fn store(&self) -> &Arc<dyn Coordinator> {
        &self.store
    }

    /// Groups held in memory.
    pub fn in_memory(&self) -> usize {
        self.groups.lock().len()
    }

    /// Whether this broker coordinates group `id` in the current view.
    pub fn coordinates(&self, id: &str) -> bool {
        self.cluster.borrow().coordinates(id)
    }

    /// NOT_COORDINATOR unless this broker coordinates group `id`.
    pub fn check_coordinator(&self, id: &str) -> Result<(), ResponseError> {
        if self.coordinates(id) {
            Ok(())
        } else {
            Err(ResponseError::NotCoordinator)
        }
    }

    /// The group named `id`, loaded from the store or created empty: for requests that may
    /// create a group (JoinGroup, a first ConsumerGroupHeartbeat).
    pub async fn slot(&self, id: &str) -> Result<Arc<Slot>, ResponseError> {
        self.lookup(id, true)
            .await?
            .ok_or(ResponseError::CoordinatorNotAvailable)
    }

    /// The group named `id` if it exists in memory or in the store; `None` (and nothing kept in
    /// memory) when it exists nowhere.
    pub async fn existing(&self, id: &str) -> Result<Option<Arc<Slot>>, ResponseError> {
        self.lookup(id, false).await
    }

    async fn lookup(&self, id: &str, create: bool) -> Result<Option<Arc<Slot>>, ResponseError> {
        if id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        self.check_coordinator(id)?;
        if let Some(slot) = self.live(id) {
            return Ok(Some(slot));
        }
        let now = Instant::now();
        let stored = self.load(id).await?;
        let (version, saved, decoded) = match stored {
            Some((StoredGroup { state, version, .. }, decoded)) => (version, Some(state), decoded),
            None if !create => return Ok(None),
            None => (0, None, None),
        };
        let (group, consumer) = match decoded {
            Some(Stored::Classic(snapshot)) => (
                Group::restore(id, snapshot, self.settings.clone(), now),
                ConsumerGroup::new(id, self.settings.clone()),
            ),
            Some(Stored::Consumer { consumer }) => (
                Group::new(id, self.settings.clone()),
                (*consumer).restored(self.settings.clone(), now),
            ),
            None => (
                Group::new(id, self.settings.clone()),
                ConsumerGroup::new(id, self.settings.clone()),
            ),
        };
        tracing::debug!(group = id, version, "group loaded");
        let mut groups = self.groups.lock();
        // Another request may have loaded it meanwhile; the first one wins.
        let slot = groups
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(Slot::new(group, consumer, now, version, saved)));
        *slot.touched.lock() = now;
        Ok(Some(slot.clone()))
    }

    fn live(&self, id: &str) -> Option<Arc<Slot>> {
        let mut groups = self.groups.lock();
        let slot = groups.get(id)?.clone();
        if slot.is_retired() || slot.group.lock().state == GroupState::Dead {
            groups.remove(id);
            return None;
        }
        *slot.touched.lock() = Instant::now();
        Some(slot)
    }

    /// The stored group, decoded (`None` inside when the blob is unreadable: the members rejoin
    /// and rebuild it, over the stored version).
    async fn load(&self, id: &str) -> Result<Option<(StoredGroup, Option<Stored>)>, ResponseError> {
        let stored = self.store.load_group(id).await.map_err(|e| {
            tracing::warn!(group = id, error = %e, "loading group state failed");
            ResponseError::CoordinatorNotAvailable
        })?;
        Ok(stored.map(|stored| {
            let decoded = match serde_json::from_slice(&stored.state) {
                Ok(decoded) => Some(decoded),
                Err(e) => {
                    tracing::error!(group = id, error = %e, "stored group state is unreadable; starting empty");
                    None
                }
            };
            (stored, decoded)
        }))
    }

    /// Whether the group exists: it has members or durable state.
    pub async fn exists(&self, id: &str) -> Result<bool, ResponseError> {
        self.check_coordinator(id)?;
        if let Some(slot) = self.live(id) {
            let g = slot.group.lock();
            if !g.members.is_empty() || g.generation > 0 || slot.consumer.lock().is_active() {
                return Ok(true);
            }
        }
        self.store
            .group_exists(id)
            .await
            .map_err(|_| ResponseError::CoordinatorNotAvailable)
    }

    /// Makes the group's changes up to `seen` durable before a member is told of them (see
    /// [`Slot::make_durable`]). A slot whose save was fenced is retired and leaves memory.
    pub async fn make_durable(&self, slot: &Arc<Slot>, seen: u64) -> Result<(), ResponseError> {
        match slot.make_durable(&*self.store, seen).await {
            Ok(()) => Ok(()),
            Err(Outcome::Fenced) => {
                self.retire(slot);
                Err(ResponseError::NotCoordinator)
            }
            Err(Outcome::Failed) => Err(ResponseError::CoordinatorNotAvailable),
        }
    }

    /// Drops group `id` from memory if no request holds it and it has no members and nothing
    /// pending: for a group whose durable state was deleted by offset expiry
    /// ([`crate::expiry`]), so that it is no longer listed or described; the next request
    /// loads it afresh. A slot in use stays; its next save is fenced (the stored version is
    /// gone) and it is retired then.
    pub fn forget_idle(&self, id: &str) {
        let mut groups = self.groups.lock();
        let Some(slot) = groups.get(id) else {
            return;
        };
        if Arc::strong_count(slot) == 1
            && slot.group.lock().is_idle()
            && slot.consumer.lock().is_idle()
        {
            slot.retire();
            groups.remove(id);
        }
    }

    /// Takes a slot whose state is stale (another broker wrote the group) out of service and out
    /// of memory; the next request loads the group afresh.
    pub fn retire(&self, slot: &Arc<Slot>) {
        slot.retire();
        let mut groups = self.groups.lock();
        let id = slot.group.lock().id.clone();
        if groups.get(&id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            groups.remove(&id);
        }
    }

    /// Every group this broker coordinates, known in memory or in the store, with its state,
    /// protocol type and group type. Stored groups not in memory are loaded, so that their kind
    /// is known. (As in Kafka, listing all groups of a cluster asks every broker.)
    pub async fn list(&self) -> Result<Vec<Listed>, ResponseError> {
        let mut stored = self
            .store
            .list_groups()
            .await
            .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
        stored.retain(|id| self.coordinates(id));
        for id in &stored {
            if self.live(id).is_none() {
                self.existing(id).await?;
            }
        }
        let mut out: HashMap<String, Listed> = HashMap::new();
        for id in stored {
            out.insert(
                id.clone(),
                Listed {
                    id,
                    state: GroupState::Empty.name(),
                    protocol_type: String::new(),
                    group_type: "classic",
                },
            );
        }
        let slots: Vec<Arc<Slot>> = self.groups.lock().values().cloned().collect();
        for slot in slots {
            let g = slot.group.lock();
            if !self.coordinates(&g.id) {
                continue;
            }
            let c = slot.consumer.lock();
            if g.state != GroupState::Dead && g.members.is_empty() && c.is_active() {
                out.insert(
                    g.id.clone(),
                    Listed {
                        id: g.id.clone(),
                        state: c.state().name(),
                        protocol_type: "consumer".to_string(),
                        group_type: "consumer",
                    },
                );
                continue;
            }
            match g.state {
                GroupState::Dead => {
                    out.remove(&g.id);
                }
                // An empty group the store does not have was never saved, or was deleted (by
                // offset expiry, possibly on another broker): not listed.
                GroupState::Empty if !out.contains_key(&g.id) => {}
                state => {
                    out.insert(
                        g.id.clone(),
                        Listed {
                            id: g.id.clone(),
                            state: state.name(),
                            protocol_type: g.protocol_type.clone().unwrap_or_default(),
                            group_type: "classic",
                        },
                    );
                }
            }
        }
        let mut list: Vec<Listed> = out.into_values().collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }

    /// Deletes an empty group and its offsets (fenced: a broker with a stale view of the group
    /// deletes nothing).
    pub async fn delete(&self, id: &str) -> Result<(), ResponseError> {
        let Some(slot) = self.existing(id).await? else {
            // No blob; perhaps committed offsets, which go with no blob to fence against.
            return match self.store.delete_group(id, Some(0)).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(ResponseError::GroupIdNotFound),
                Err(fjord_coordinator::CoordinatorError::Fenced(_)) => {
                    Err(ResponseError::NotCoordinator)
                }
                Err(_) => Err(ResponseError::CoordinatorNotAvailable),
            };
        };
        {
            let mut g = slot.group.lock();
            if !matches!(g.state, GroupState::Empty | GroupState::Dead)
                || !slot.consumer.lock().members.is_empty()
            {
                return Err(ResponseError::NonEmptyGroup);
            }
            g.kill();
        }
        slot.settle().await;
        self.groups.lock().remove(id);
        match self
            .store
            .delete_group(id, Some(slot.store_version()))
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(ResponseError::GroupIdNotFound),
            Err(fjord_coordinator::CoordinatorError::Fenced(_)) => {
                Err(ResponseError::NotCoordinator)
            }
            Err(_) => Err(ResponseError::CoordinatorNotAvailable),
        }
    }

    fn tick(self: &Arc<Self>, now: Instant) {
        let slots: Vec<Arc<Slot>> = {
            let view = self.cluster.borrow().clone();
            let idle_eviction = self.settings.idle_eviction;
            let mut groups = self.groups.lock();
            // Groups that moved to another broker: forget them (their durable state stays).
            // Idle groups leave memory too, so that it holds the groups in use rather than every
            // id ever named; the next request loads them again. Only a slot no request or
            // persist task holds is dropped: references are taken under this lock, so none can
            // appear meanwhile, and one group never has two live slots.
            groups.retain(|id, slot| {
                let ours = view.coordinates(id);
                if !ours {
                    tracing::info!(group = %id, "group moved to another broker; dropping it here");
                    slot.retire();
                    return false;
                }
                !(Arc::strong_count(slot) == 1 && slot.evictable(now, idle_eviction))
            });
            groups.values().cloned().collect()
        };
        for slot in slots {
            let before = slot.seen();
            slot.group.lock().tick(now);
            slot.consumer.lock().tick(now);
            let seen = slot.seen();
            if seen != before {
                // Expired members and completed rebalances reach the store; members waiting for
                // a join result make it durable themselves too (whichever comes first saves).
                let this = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = this.make_durable(&slot, seen).await {
                        let id = slot.group.lock().id.clone();
                        tracing::warn!(group = %id, error = ?e, "saving a group after its tick failed; the next change saves it");
                    }
                });
            }
        }
    }
}

async fn tick_loop(coordinator: Weak<GroupCoordinator>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(coordinator) = coordinator.upgrade() else {
            return;
        };
        coordinator.tick(Instant::now());
    }
}

#[cfg(test)]
mod tests;
