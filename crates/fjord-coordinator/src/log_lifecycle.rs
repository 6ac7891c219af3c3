//! The log's lifecycle in the store: where each partition's log starts (retention and
//! DeleteRecords move it), and compaction swaps that replace a partition's index rows by fewer
//! rows in a new object.
//!
//! A partition's log start offset only ever rises, and never beyond its high watermark. Offsets
//! below it are gone for readers: Fetch answers OFFSET_OUT_OF_RANGE, ListOffsets(earliest)
//! answers the log start, and timestamp lookups skip rows wholly below it. Index rows below the
//! log start stay in the store for now; deleting them and the objects nothing live references
//! any more is the object lifecycle's job, which decides from the log start.
//!
//! Both calls are single-partition transactions serialized with commits to the partition (the
//! embedded coordinator's one writer; PostgreSQL's partition row lock) and idempotent: they
//! raise the log start to `max(current, target)`, so two brokers running retention at once, or
//! a retried call, are harmless. A partition deleted meanwhile answers
//! [`CoordinatorError::UnknownTopic`](crate::CoordinatorError::UnknownTopic).

use async_trait::async_trait;

use crate::model::{
    PartitionOffsets, RetentionLimits, RetentionStep, RowSwap, SwapOutcome, TopicPartition,
};
use crate::Result;

/// Moving partitions' log start offsets: DeleteRecords and retention.
#[async_trait]
pub trait LogLifecycle: Send + Sync {
    /// DeleteRecords: raises the log start of `tp` to `before` (`-1`: the high watermark) and
    /// returns the partition's offsets after. Kafka's semantics: the new start may fall inside a
    /// stored batch (readers skip the records before it); a `before` at or below the current log
    /// start changes nothing. A `before` above the high watermark, or negative other than -1, is
    /// [`CoordinatorError::OffsetOutOfRange`](crate::CoordinatorError::OffsetOutOfRange).
    async fn delete_records(&self, tp: TopicPartition, before: i64) -> Result<PartitionOffsets>;

    /// Retention: advances the log start of `tp` past the leading whole index rows that `limits`
    /// expire ([`crate::state::retention_decision`]), looking at no more than `max_rows` rows
    /// from the log start on (bounded work; [`RetentionStep::more`] tells the caller to call
    /// again). Never moves into the middle of a row.
    async fn apply_retention(
        &self,
        tp: TopicPartition,
        limits: RetentionLimits,
        max_rows: usize,
    ) -> Result<RetentionStep>;

    /// Compaction (object merging and log compaction): replaces `swap.replaced` by `swap.rows`
    /// in one transaction, serialized with commits and log start moves on the partition, if
    /// and only if every replaced row is still there unchanged and no other row lies between
    /// them (compare-and-swap); otherwise [`SwapOutcome::Lost`] and nothing changes. Either way
    /// the new object enters the object ledger: referenced by its rows, or dead at once. The
    /// replaced rows' objects lose those references. Refused like a commit
    /// ([`CoordinatorError::Fenced`](crate::CoordinatorError::Fenced)) when the new object was
    /// made before the commit watermark; [`CoordinatorError::Invalid`](crate::CoordinatorError::Invalid)
    /// when the swap is malformed (new rows outside the replaced offsets, overlapping or out of
    /// order, in another object, or an object key already known); a deleted partition is
    /// [`CoordinatorError::UnknownTopic`](crate::CoordinatorError::UnknownTopic).
    async fn swap_rows(&self, swap: RowSwap) -> Result<SwapOutcome>;

    /// Log compaction's checkpoint: the partition is clean (deduplicated) below this offset
    /// (0 when it never was cleaned; see [`RowSwap::cleaned_to`]).
    async fn cleaned_to(&self, tp: TopicPartition) -> Result<i64>;
}
