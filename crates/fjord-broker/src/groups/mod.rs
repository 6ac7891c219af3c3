//! The group coordinator: consumer groups of the classic protocol, their membership in memory
//! and their durable state (committed offsets, the last Stable membership) in the coordinator
//! store.
//!
//! One [`Slot`] per group holds its [`group::Group`] state machine behind a short synchronous
//! lock; no lock is held across an await. Durable writes go through the slot's `persist` lock so
//! that snapshots of one group reach the store in the order they were taken. A background tick
//! (every 100 ms) expires sessions and completes rebalances whose deadline passed.
//!
//! A group is loaded from the store the first time a request names it, so a broker that takes
//! over a group (after a restart, or in cluster mode when groups move between brokers) resumes it
//! from durable state: a Stable group keeps its members, whose sessions start at load time.

pub mod group;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use fjord_coordinator::Coordinator;
use kafka_protocol::ResponseError;
use parking_lot::Mutex;

use self::group::{Group, GroupSettings, GroupState, Snapshot};

/// One group and what serializes its persistence.
pub struct Slot {
    /// The state machine.
    pub group: Mutex<Group>,
    persist: tokio::sync::Mutex<()>,
}

/// All groups this broker coordinates.
pub struct GroupCoordinator {
    store: Arc<dyn Coordinator>,
    settings: GroupSettings,
    groups: Mutex<HashMap<String, Arc<Slot>>>,
}

impl GroupCoordinator {
    /// A group coordinator over `store`, with its background tick running on the current runtime
    /// for as long as the returned value lives.
    pub fn start(store: Arc<dyn Coordinator>, settings: GroupSettings) -> Arc<GroupCoordinator> {
        let coordinator = Arc::new(GroupCoordinator {
            store,
            settings,
            groups: Mutex::new(HashMap::new()),
        });
        tokio::spawn(tick_loop(Arc::downgrade(&coordinator)));
        coordinator
    }

    /// The store behind the groups.
    pub fn store(&self) -> &Arc<dyn Coordinator> {
        &self.store
    }

    /// The group named `id`, loaded from the store or created empty.
    pub async fn slot(&self, id: &str) -> Result<Arc<Slot>, ResponseError> {
        if id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        if let Some(slot) = self.live(id) {
            return Ok(slot);
        }
        let group = match self.load(id).await? {
            Some(snapshot) => Group::restore(id, snapshot, self.settings.clone(), Instant::now()),
            None => Group::new(id, self.settings.clone()),
        };
        let mut groups = self.groups.lock();
        // Another request may have loaded it meanwhile; the first one wins.
        let slot = groups.entry(id.to_string()).or_insert_with(|| {
            Arc::new(Slot {
                group: Mutex::new(group),
                persist: tokio::sync::Mutex::new(()),
            })
        });
        Ok(slot.clone())
    }

    fn live(&self, id: &str) -> Option<Arc<Slot>> {
        let mut groups = self.groups.lock();
        let slot = groups.get(id)?.clone();
        if slot.group.lock().state == GroupState::Dead {
            groups.remove(id);
            return None;
        }
        Some(slot)
    }

    async fn load(&self, id: &str) -> Result<Option<Snapshot>, ResponseError> {
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
        if let Some(slot) = self.live(id) {
            let g = slot.group.lock();
            if !g.members.is_empty() || g.generation > 0 {
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
            (g.id.clone(), serde_json::to_vec(&g.snapshot()))
        };
        let bytes = bytes.map_err(|_| ResponseError::UnknownServerError)?;
        self.store.save_group(&id, bytes).await.map_err(|e| {
            tracing::warn!(group = %id, error = %e, "saving group state failed");
            ResponseError::CoordinatorNotAvailable
        })
    }

    /// Every group known in memory or in the store, with its state and protocol type.
    pub async fn list(&self) -> Result<Vec<(String, GroupState, String)>, ResponseError> {
        let stored = self
            .store
            .list_groups()
            .await
            .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
        let mut out: HashMap<String, (GroupState, String)> = HashMap::new();
        for id in stored {
            out.insert(id, (GroupState::Empty, String::new()));
        }
        let slots: Vec<Arc<Slot>> = self.groups.lock().values().cloned().collect();
        for slot in slots {
            let g = slot.group.lock();
            match g.state {
                GroupState::Dead => {
                    out.remove(&g.id);
                }
                GroupState::Empty if g.generation == 0 && !out.contains_key(&g.id) => {}
                state => {
                    out.insert(
                        g.id.clone(),
                        (state, g.protocol_type.clone().unwrap_or_default()),
                    );
                }
            }
        }
        let mut list: Vec<_> = out.into_iter().map(|(id, (s, p))| (id, s, p)).collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(list)
    }

    /// Deletes an empty group and its offsets.
    pub async fn delete(&self, id: &str) -> Result<(), ResponseError> {
        let slot = self.slot(id).await?;
        {
            let mut g = slot.group.lock();
            if !matches!(g.state, GroupState::Empty | GroupState::Dead) {
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
        let slots: Vec<Arc<Slot>> = self.groups.lock().values().cloned().collect();
        for slot in slots {
            let changed = slot.group.lock().tick(now);
            if changed {
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
