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
//! `{"consumer": <ConsumerGroup>}` for a consumer-protocol group ([`Stored`]). Durable writes go through the slot's `persist` lock so
//! that snapshots of one group reach the store in the order they were taken. A background tick
//! (every 100 ms) expires sessions and completes rebalances whose deadline passed.
//!
//! A group is loaded from the store the first time a request names it, so a broker that takes
//! over a group (after a restart, or in cluster mode when groups move between brokers) resumes it
//! from durable state: a Stable group keeps its members, whose sessions start at load time. A
//! group without members that no request named for `idle_eviction` (10 minutes) leaves memory
//! the same way, so memory and the tick hold the groups in use, not every id ever named.
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

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

use fjord_coordinator::Coordinator;
use kafka_protocol::ResponseError;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::cluster::ClusterView;

use self::consumer::ConsumerGroup;
use self::group::{Group, GroupSettings, GroupState, Snapshot};

/// One group and what serializes its persistence.
pub struct Slot {
    /// The classic state machine. Its `Dead` state marks the whole slot deleted.
    pub group: Mutex<Group>,
    /// The consumer-protocol state machine (taken after `group` when both are needed).
    pub consumer: Mutex<ConsumerGroup>,
    persist: tokio::sync::Mutex<()>,
    /// When a request last named the group.
    touched: Mutex<Instant>,
}

impl Slot {
    fn new(group: Group, consumer: ConsumerGroup, now: Instant) -> Slot {
        Slot {
            group: Mutex::new(group),
            consumer: Mutex::new(consumer),
            persist: tokio::sync::Mutex::new(()),
            touched: Mutex::new(now),
        }
    }

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

    /// The group named `id`, loaded from the store or created empty.
    pub async fn slot(&self, id: &str) -> Result<Arc<Slot>, ResponseError> {
        if id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        self.check_coordinator(id)?;
        if let Some(slot) = self.live(id) {
            return Ok(slot);
        }
        let now = Instant::now();
        let (group, consumer) = match self.load(id).await? {
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
        let mut groups = self.groups.lock();
        // Another request may have loaded it meanwhile; the first one wins.
        let slot = groups
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(Slot::new(group, consumer, now)));
        *slot.touched.lock() = now;
        Ok(slot.clone())
    }

    fn live(&self, id: &str) -> Option<Arc<Slot>> {
        let mut groups = self.groups.lock();
        let slot = groups.get(id)?.clone();
        if slot.group.lock().state == GroupState::Dead {
            groups.remove(id);
            return None;
        }
        *slot.touched.lock() = Instant::now();
        Some(slot)
    }

    async fn load(&self, id: &str) -> Result<Option<Stored>, ResponseError> {
        let blob = self.store.load_group(id).await.map_err(|e| {
            tracing::warn!(group = id, error = %e, "loading group state failed");
            ResponseError::CoordinatorNotAvailable
        })?;
        match blob {
            None => Ok(None),
            Some(bytes) => match serde_json::from_slice(&bytes) {
                Ok(snapshot) => Ok(Some(snapshot)),
                Err(e) => {
                    // Unreadable state is not fatal: the members rejoin and rebuild it.
                    tracing::error!(group = id, error = %e, "stored group state is unreadable; starting empty");
                    Ok(None)
                }
            },
        }
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
        let known = self
            .store
            .list_groups()
            .await
            .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
        Ok(known.iter().any(|g| g == id))
    }

    /// Saves the group's durable state.
    pub async fn persist(&self, slot: &Slot) -> Result<(), ResponseError> {
        let _ordered = slot.persist.lock().await;
        let (id, bytes) = {
            let g = slot.group.lock();
            if g.state == GroupState::Dead {
                return Ok(());
            }
            let c = slot.consumer.lock();
            let bytes = if c.is_active() && g.members.is_empty() {
                #[derive(Serialize)]
                struct StoredRef<'a> {
                    consumer: &'a ConsumerGroup,
                }
                serde_json::to_vec(&StoredRef { consumer: &c })
            } else {
                serde_json::to_vec(&g.snapshot())
            };
            (g.id.clone(), bytes)
        };
        let bytes = bytes.map_err(|_| ResponseError::UnknownServerError)?;
        // A group that moved away meanwhile belongs to its new coordinator's store writes.
        self.check_coordinator(&id)?;
        self.store.save_group(&id, bytes).await.map_err(|e| {
            tracing::warn!(group = %id, error = %e, "saving group state failed");
            ResponseError::CoordinatorNotAvailable
        })
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
                self.slot(id).await?;
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
                GroupState::Empty if g.generation == 0 && !out.contains_key(&g.id) => {}
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

    /// Deletes an empty group and its offsets.
    pub async fn delete(&self, id: &str) -> Result<(), ResponseError> {
        let slot = self.slot(id).await?;
        {
            let mut g = slot.group.lock();
            if !matches!(g.state, GroupState::Empty | GroupState::Dead)
                || !slot.consumer.lock().members.is_empty()
            {
                return Err(ResponseError::NonEmptyGroup);
            }
            g.kill();
        }
        let _ordered = slot.persist.lock().await;
        self.groups.lock().remove(id);
        match self.store.delete_group(id).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ResponseError::GroupIdNotFound),
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
                    return false;
                }
                !(Arc::strong_count(slot) == 1 && slot.evictable(now, idle_eviction))
            });
            groups.values().cloned().collect()
        };
        for slot in slots {
            let classic = slot.group.lock().tick(now);
            let consumer = slot.consumer.lock().tick(now);
            if classic || consumer {
                let this = self.clone();
                tokio::spawn(async move {
                    let _ = this.persist(&slot).await;
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
