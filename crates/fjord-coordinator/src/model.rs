//! Plain data exchanged with a coordinator.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSpec {
    /// Topic name (already validated by the caller).
    pub name: String,
    /// Number of partitions, at least 1.
    pub partitions: i32,
    /// Topic configs set explicitly (defaults are not stored).
    pub configs: BTreeMap<String, String>,
}

/// A topic as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    /// Topic name.
    pub name: String,
    /// Topic id (Metadata v10+, Fetch v13+).
    pub id: Uuid,
    /// Number of partitions.
    pub partitions: i32,
    /// Topic configs set explicitly.
    pub configs: BTreeMap<String, String>,
}

/// One partition of one topic, addressed by topic id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TopicPartition {
    /// Topic id.
    pub topic_id: Uuid,
    /// Partition index.
    pub partition: i32,
}

/// Idempotent producer fields of a record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerBatchInfo {
    /// Producer id (>= 0).
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i16,
    /// Sequence number of the batch's first record.
    pub base_sequence: i32,
}

/// One record batch inside an uploaded object, to be committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitBatch {
    /// The partition it belongs to.
    pub tp: TopicPartition,
    /// Byte position of the batch inside the object.
    pub position: u64,
    /// Length of the batch in bytes.
    pub length: u64,
    /// Number of offsets the batch spans (`lastOffsetDelta + 1`).
    pub offset_count: i64,
    /// The batch's max timestamp (already the log-append time where that applies).
    pub max_timestamp: i64,
    /// Present for batches of idempotent producers.
    pub producer: Option<ProducerBatchInfo>,
    /// Which append of the flush (one produce request) the batch came from. A partition's
    /// consecutive batches of one append are one unit, as Kafka appends a partition's record set:
    /// all of them are appended, or all are rejected.
    #[serde(default)]
    pub append: u32,
}

/// Everything one flush commits: one object and its batches, grouped by partition in object order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushCommit {
    /// The object's key in object storage.
    pub object_key: String,
    /// The object's total size in bytes.
    pub object_size: u64,
    /// Wall-clock time of the commit in ms (log-append time).
    pub timestamp_ms: i64,
    /// The batches to commit, in arrival order per partition.
    pub batches: Vec<CommitBatch>,
}

/// Why a batch was not appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchRejection {
    /// The topic or partition no longer exists.
    UnknownTopicOrPartition,
    /// A sequence gap for this producer.
    OutOfOrderSequence,
    /// The producer's epoch is older than the current one.
    ProducerFenced,
    /// The producer id is unknown to this partition and the batch does not start a sequence.
    UnknownProducerId,
    /// The producer's epoch is newer than any the coordinator handed out.
    InvalidProducerEpoch,
}

/// What happened to one batch of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchOutcome {
    /// Appended at this base offset.
    Appended {
        /// First offset of the batch.
        base_offset: i64,
    },
    /// Already appended by an earlier commit (an idempotent retry); not stored again.
    Duplicate {
        /// First offset of the batch as first appended.
        base_offset: i64,
    },
    /// Not appended.
    Rejected(BatchRejection),
}

/// Offsets bounding a partition's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffsets {
    /// First offset still readable.
    pub log_start: i64,
    /// One past the last committed offset (high watermark = log end offset).
    pub high_watermark: i64,
}

/// What retention keeps of a partition, resolved from its topic's configs by the caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionLimits {
    /// Rows whose max timestamp is before this (ms) are expired (`now - retention.ms`); `None`:
    /// no time limit.
    pub expire_before_ms: Option<i64>,
    /// Rows are dropped from the front while what remains is still at least this many bytes
    /// (Kafka's `retention.bytes`); `None`: no size limit.
    pub max_bytes: Option<u64>,
}

impl RetentionLimits {
    /// Whether these limits can never expire anything.
    pub fn is_unlimited(&self) -> bool {
        self.expire_before_ms.is_none() && self.max_bytes.is_none()
    }
}

/// What one [`crate::LogLifecycle::apply_retention`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionStep {
    /// The partition's offsets after the call.
    pub offsets: PartitionOffsets,
    /// How many index rows the log start moved past.
    pub rows_expired: u64,
    /// Whether the call stopped at its row limit with every row it looked at expired: another
    /// call may expire more.
    pub more: bool,
}

/// An index row a swap replaces, as the compactor read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowRef {
    /// First offset of the row.
    pub base_offset: i64,
    /// Last offset of the row (inclusive).
    pub last_offset: i64,
    /// The object holding its bytes.
    pub object_key: String,
}

impl From<&IndexRow> for RowRef {
    fn from(row: &IndexRow) -> Self {
        RowRef {
            base_offset: row.base_offset,
            last_offset: row.last_offset,
            object_key: row.object_key.clone(),
        }
    }
}

/// A compaction swap (see [`crate::LogLifecycle::swap_rows`]): consecutive index rows of one
/// partition replaced by rows in one new object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowSwap {
    /// The partition.
    pub tp: TopicPartition,
    /// The rows replaced: every row of the partition from the first one's base offset to the
    /// last one's last offset, in offset order, none missing.
    pub replaced: Vec<RowRef>,
    /// The new object's key (made like a flush object's: it carries its time).
    pub object_key: String,
    /// The new object's size in bytes.
    pub object_size: u64,
    /// The rows that replace them, in offset order, not overlapping, all in `object_key`, within
    /// the replaced rows' offsets (log compaction leaves gaps; offsets are never renumbered).
    /// Empty when everything the replaced rows held was compacted away.
    pub rows: Vec<IndexRow>,
    /// Log compaction: the partition is clean (deduplicated) up to this offset (exclusive)
    /// after the swap; `None` leaves the cleaner checkpoint as it is.
    pub cleaned_to: Option<i64>,
}

/// What a [`crate::LogLifecycle::swap_rows`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SwapOutcome {
    /// The rows were replaced; the new object is referenced by the new rows (or dead at once if
    /// there are none).
    Swapped,
    /// Some replaced row is gone or changed (retention, DeleteRecords, another swap, topic
    /// deletion): nothing changed, and the new object is dead at once (garbage collection
    /// deletes it).
    Lost,
}

/// What one call of [`crate::MetadataExpiry::expire_producers`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerExpiryStep {
    /// Per-partition producer states (sequence memory) removed.
    pub states_expired: u64,
    /// Producer ids forgotten.
    pub ids_expired: u64,
    /// Whether the call stopped at its limit: another call may expire more.
    pub more: bool,
}

/// A contiguous run of batches of one partition inside one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRow {
    /// First offset of the run.
    pub base_offset: i64,
    /// Last offset of the run (inclusive).
    pub last_offset: i64,
    /// The object holding the bytes.
    pub object_key: String,
    /// Byte position of the run inside the object.
    pub position: u64,
    /// Byte length of the run.
    pub length: u64,
    /// Largest batch max timestamp in the run.
    pub max_timestamp: i64,
}

/// An InitProducerId call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitProducer {
    /// The caller's current id and epoch when it asks for an epoch bump (KIP-360), else `None`.
    pub existing: Option<(i64, i16)>,
}

/// A producer id and epoch handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerIdentity {
    /// Producer id.
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i16,
}

/// An object no index row references any more (see [`crate::ObjectLedger`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadObject {
    /// The object's key.
    pub key: String,
    /// When its last reference went away (ms, coordinator clock).
    pub dead_since_ms: i64,
}

/// How much the index holds (see [`crate::ObjectLedger::ledger_size`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerSize {
    /// Index rows over all partitions.
    pub index_rows: u64,
    /// Objects in the ledger: referenced by a row, or dead and not yet forgotten.
    pub objects: u64,
}

/// An offset committed by a consumer group for one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    /// Topic name (Kafka keys group offsets by name, not id). 1 to 249 bytes, like a topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// The committed offset (the next offset the group will consume).
    pub offset: i64,
    /// Leader epoch of the committed offset; -1 when unknown.
    pub leader_epoch: i32,
    /// The client's metadata string, if any.
    pub metadata: Option<String>,
    /// When the offset was committed (ms).
    pub commit_timestamp_ms: i64,
}

/// A consumer group's metadata blob as stored, with the version that fences writes to it (see
/// [`crate::GroupStore`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredGroup {
    /// The blob, as the broker encoded it.
    pub state: Vec<u8>,
    /// Its version: positive, and new on every save.
    pub version: i64,
    /// When it was saved (ms, by the saving coordinator's clock); 0 when unknown (saved before
    /// this was recorded). Offset expiry reads it as the time an empty group became empty.
    #[serde(default)]
    pub saved_ms: i64,
}

/// A broker announcing itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    /// The broker's node id (>= 0), unique among live brokers.
    pub node_id: i32,
    /// The host clients connect to.
    pub host: String,
    /// The port clients connect to.
    pub port: i32,
    /// The broker's rack, if configured.
    pub rack: Option<String>,
    /// A random id of this broker process; a restarted broker with the same node id gets a new one.
    pub incarnation: Uuid,
    /// Where clients of each of its listeners reach it (empty: at `host`:`port` on every
    /// listener, as brokers registered before listeners existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerEndpoint>,
}

/// A broker listener as its clients reach it (Kafka's advertised listener).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerEndpoint {
    /// The listener's name, e.g. `EXTERNAL` (unique per broker).
    pub name: String,
    /// The host its clients are told to connect to.
    pub host: String,
    /// The port its clients are told to connect to.
    pub port: i32,
    /// `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`.
    pub security_protocol: String,
}

/// A registered broker and when its lease ends (coordinator clock, ms since the epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveBroker {
    /// The registration as last given.
    pub registration: BrokerRegistration,
    /// When the lease ends (ms since the epoch, by the coordinator's clock); the broker is live
    /// while the coordinator's clock is before it.
    pub lease_expires_ms: i64,
}
