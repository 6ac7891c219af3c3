//! The objects the index references, and which of them garbage collection may delete.
//!
//! Every object a commit names is in the ledger with the number of index rows that reference it
//! (its live rows). Rows go away when retention or DeleteRecords moves a partition's log start
//! past them, when their topic is deleted, or (later) when a compaction swap replaces them; an
//! object whose live rows reach zero is *dead* from that moment, and the ledger remembers when.
//! An object committed with nothing appended is dead from its commit.
//!
//! Garbage collection asks for dead objects older than its delay ([`ObjectLedger::dead_objects`],
//! oldest first, bounded), deletes them from object storage and then forgets them
//! ([`ObjectLedger::forget_objects`]): the database, not a bucket listing, says what to delete.
//! The rare orphan sweep lists one time prefix of the bucket at a time and asks which keys the
//! ledger knows ([`ObjectLedger::known_objects`]); anything else made before the commit
//! watermark ([`ObjectLedger::raise_commit_watermark`]) was never committed and never will be.
//!
//! Invariants every implementation keeps:
//! - an object with live rows is never reported dead, and forgetting it changes nothing;
//! - an object's dead time is when its last row went, by the coordinator's clock;
//! - the ledger holds only objects not yet forgotten, so its size follows the data retained.

use std::collections::BTreeSet;

use async_trait::async_trait;

use crate::model::{DeadObject, LedgerSize};
use crate::Result;

/// Object bookkeeping for garbage collection.
#[async_trait]
pub trait ObjectLedger: Send + Sync {
    /// Up to `limit` objects no index row references any more that became unreferenced at or
    /// before `dead_before_ms`, oldest first.
    async fn dead_objects(&self, dead_before_ms: i64, limit: usize) -> Result<Vec<DeadObject>>;

    /// Which of `keys` the ledger knows (live, or dead and not yet forgotten).
    async fn known_objects(&self, keys: Vec<String>) -> Result<BTreeSet<String>>;

    /// Forgets dead objects after they were deleted from object storage. Keys of objects that
    /// are live, or unknown, are ignored.
    async fn forget_objects(&self, keys: Vec<String>) -> Result<()>;

    /// Raises the commit watermark to `at_ms` (it never goes down) and returns it. From then on
    /// a commit of an object whose key was made before the watermark
    /// ([`crate::state::object_key_time_ms`]) is refused with
    /// [`CoordinatorError::Fenced`](crate::CoordinatorError::Fenced), in the same serialization
    /// order as commits: garbage collection raises it before it decides which listed objects are
    /// orphans, and deletes an orphan only below it, so an object it deletes can never become
    /// referenced afterwards.
    async fn raise_commit_watermark(&self, at_ms: i64) -> Result<i64>;

    /// How much the index holds now: its rows (over all partitions) and the objects in the
    /// ledger (live, or dead and not yet forgotten). Exact, and cheap enough to ask once per
    /// garbage-collection pass (PostgreSQL counts the two tables).
    async fn ledger_size(&self) -> Result<LedgerSize>;
}
