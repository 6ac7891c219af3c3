//! One group in a broker's memory, and how its state reaches the store.
//!
//! A [`Slot`] holds both state machines of a group id ([`Group`] for the classic protocol,
//! [`ConsumerGroup`] for KIP-848), each behind a short synchronous lock (`group` before
//! `consumer` when both are taken), and the bookkeeping that ties them to the store:
//!
//! - Each state machine counts the changes to its durable state (`version`), bumped *before* any
//!   member is told of a change. [`Slot::seen`] is their sum; a caller that is about to tell a
//!   member something reads it after computing the answer.
//! - [`Slot::make_durable`] saves the group unless what was seen is saved already. Saves are
//!   compare-and-set on the store version the slot's state descends from
//!   ([`fjord_coordinator::GroupStore::save_group`]); only after the save does the caller answer.
//!   So no member learns a generation, an assignment or a member epoch that a crash could undo,
//!   and the number is never handed out twice.
//! - A save refused because another broker wrote the group meanwhile (a view-change race: both
//!   believed they coordinate it) *retires* the slot: its waiting members are told
//!   NOT_COORDINATOR and find the coordinator again, and the next request loads the group
//!   afresh. The same happens when an offset commit fenced with the slot's version is refused
//!   twice.
//!
//! Invariants: saves of one slot are serialized (`persist` lock) and carry state at least as new
//! as the previous save; `durable` only grows; `store_version` is the version of the last save
//! or load, and only a successful save changes it.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use kafka_protocol::ResponseError;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;

use fjord_coordinator::{CoordinatorError, GroupStore};

use super::consumer::ConsumerGroup;
use super::group::{Group, GroupState};

/// One group and its persistence.
pub struct Slot {
    /// The classic state machine. Its `Dead` state marks the whole slot deleted (or retired).
    pub group: Mutex<Group>,
    /// The consumer-protocol state machine (taken after `group` when both are needed).
    pub consumer: Mutex<ConsumerGroup>,
    /// Held while saving; the last blob saved or loaded (identical states are not saved again).
    persist: tokio::sync::Mutex<Option<Vec<u8>>>,
    /// When a request last named the group.
    pub(super) touched: Mutex<Instant>,
    /// The store version this slot's state descends from.
    store_version: AtomicI64,
    /// [`Slot::seen`] as of the last save or load.
    durable: AtomicU64,
    /// Set once another broker is known to coordinate the group.
    retired: AtomicBool,
}

impl Slot {
    /// A slot for state loaded (or not) from the store at `store_version` (0: nothing stored),
    /// whose stored blob was `saved`.
    pub(super) fn new(
        group: Group,
        consumer: ConsumerGroup,
        now: Instant,
        store_version: i64,
        saved: Option<Vec<u8>>,
    ) -> Slot {
        let durable = group.version.wrapping_add(consumer.version);
        Slot {
            group: Mutex::new(group),
            consumer: Mutex::new(consumer),
            persist: tokio::sync::Mutex::new(saved),
            touched: Mutex::new(now),
            store_version: AtomicI64::new(store_version),
            durable: AtomicU64::new(durable),
            retired: AtomicBool::new(false),
        }
    }

    /// Changes made to the group so far (both state machines). Read it after computing an
    /// answer and before [`make_durable`](Self::make_durable).
    pub fn seen(&self) -> u64 {
        let g = self.group.lock();
        let c = self.consumer.lock();
        g.version.wrapping_add(c.version)
    }

    /// The store version to fence offset writes with, read together with a check of the group's
    /// state: `check` runs under the group's locks.
    pub fn validate<R>(&self, check: impl FnOnce(&Group, &ConsumerGroup) -> R) -> (R, i64) {
        let g = self.group.lock();
        let c = self.consumer.lock();
        (check(&g, &c), self.store_version.load(Ordering::Acquire))
    }

    /// The store version this slot's state descends from.
    pub fn store_version(&self) -> i64 {
        self.store_version.load(Ordering::Acquire)
    }

    /// Whether the slot was retired (another broker coordinates the group).
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Waits until no save of this slot is running.
    pub async fn settle(&self) {
        drop(self.persist.lock().await);
    }

    /// Takes the slot out of service: members waiting for a join or sync are told
    /// NOT_COORDINATOR.
    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.group.lock().retire();
    }

    /// Makes every change up to `seen` durable: returns at once when it is, else saves the group
    /// (unless its encoded state equals the last one saved). `Err` is what to answer instead of
    /// the news that was about to be told: COORDINATOR_NOT_AVAILABLE when the store failed (the
    /// client retries), NOT_COORDINATOR when another broker wrote the group (the slot is then
    /// retired, see [`Outcome::Fenced`]).
    pub(super) async fn make_durable(
        &self,
        store: &dyn GroupStore,
        seen: u64,
    ) -> Result<(), Outcome> {
        if self.is_retired() {
            return Err(Outcome::Fenced);
        }
        if self.durable.load(Ordering::Acquire) >= seen {
            return Ok(());
        }
        let mut saved = self.persist.lock().await;
        if self.is_retired() {
            return Err(Outcome::Fenced);
        }
        if self.durable.load(Ordering::Acquire) >= seen {
            return Ok(());
        }
        let (id, bytes, at, generation, state) = {
            let g = self.group.lock();
            let c = self.consumer.lock();
            let at = g.version.wrapping_add(c.version);
            if g.state == GroupState::Dead {
                // Deleted: nothing to save, and nothing to tell anyone.
                return Err(Outcome::Fenced);
            }
            (
                g.id.clone(),
                encode(&g, &c),
                at,
                g.generation,
                g.state.name(),
            )
        };
        let bytes = bytes.map_err(|e| {
            tracing::error!(group = %id, error = %e, "cannot encode group state");
            Outcome::Failed
        })?;
        if saved.as_ref() == Some(&bytes) {
            self.durable.fetch_max(at, Ordering::AcqRel);
            return Ok(());
        }
        let expected = self.store_version.load(Ordering::Acquire);
        match store.save_group(&id, expected, bytes.clone()).await {
            Ok(version) => {
                tracing::debug!(group = %id, expected, version, generation, state, "group state saved");
                self.store_version.store(version, Ordering::Release);
                *saved = Some(bytes);
                self.durable.fetch_max(at, Ordering::AcqRel);
                Ok(())
            }
            Err(CoordinatorError::Fenced(reason)) => {
                tracing::warn!(group = %id, %reason, "another broker wrote this group: handing it over");
                Err(Outcome::Fenced)
            }
            Err(e) => {
                tracing::warn!(group = %id, error = %e, "saving group state failed");
                Err(Outcome::Failed)
            }
        }
    }
}

/// Why a group's changes could not be made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The store failed; the change stays in memory and a later save may succeed.
    Failed,
    /// Another broker wrote the group (or it was deleted): this slot's state is stale.
    Fenced,
}

impl Outcome {
    /// The error a member is answered with.
    pub fn code(self) -> ResponseError {
        match self {
            Outcome::Failed => ResponseError::CoordinatorNotAvailable,
            Outcome::Fenced => ResponseError::NotCoordinator,
        }
    }
}

/// The stored form of a group: the classic snapshot, or `{"consumer": <ConsumerGroup>}` while the
/// consumer protocol uses the id and no classic member is present (see [`super::Stored`]).
fn encode(g: &Group, c: &ConsumerGroup) -> serde_json::Result<Vec<u8>> {
    if c.is_active() && g.members.is_empty() {
        #[derive(Serialize)]
        struct StoredRef<'a> {
            consumer: &'a ConsumerGroup,
        }
        serde_json::to_vec(&StoredRef { consumer: c })
    } else {
        serde_json::to_vec(&g.snapshot())
    }
}
