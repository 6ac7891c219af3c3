//! The coordinator: Fjord's metadata store.
//!
//! It owns topics and their configs, each partition's high watermark and the index that maps
//! offset ranges to byte ranges of immutable objects, idempotent-producer state, and the
//! bookkeeping that lets unreferenced objects be garbage-collected. It never stores record bytes.
//!
//! One trait, [`Coordinator`], several implementations that all pass the conformance suite in
//! [`testsuite`]:
//! - [`embedded::EmbeddedCoordinator`]: a single process, a journal file under the data dir.
//! - [`postgres::PostgresCoordinator`]: a PostgreSQL database, shared by the brokers of a cluster.
//!
//! Invariants every implementation keeps:
//! - Offsets of a partition are dense and strictly increasing; an offset, once committed, names
//!   the same record forever.
//! - [`Coordinator::commit`] is atomic: all of a flush's outcomes are decided and made durable
//!   together, or none is. It is idempotent per object key: committing the same object again
//!   returns the first outcomes and changes nothing.
//! - A batch from an idempotent producer is appended at most once (retries are answered with the
//!   offsets of the first append).
//! - Consumer group offsets and metadata blobs are stored apart from topics: deleting a topic
//!   leaves groups' offsets for it in place.
//! - At most one incarnation of a broker node id holds a live lease at any time.

pub mod embedded;
mod error;
mod model;
pub mod postgres;
pub mod state;
pub mod testsuite;

pub use error::{CoordinatorError, Result};
pub use model::*;

use async_trait::async_trait;
use uuid::Uuid;

/// The metadata store behind a broker. Implementations are cheap to share (`Arc<dyn Coordinator>`).
#[async_trait]
pub trait Coordinator: Send + Sync + 'static {
    /// Creates a topic. Fails with [`CoordinatorError::TopicExists`] if the name is taken.
    async fn create_topic(&self, spec: TopicSpec) -> Result<TopicMeta>;

    /// Deletes a topic and its index. Objects it referenced become garbage once no other topic
    /// references them.
    async fn delete_topic(&self, name: &str) -> Result<TopicMeta>;

    /// Raises a topic's partition count (never lowers it).
    async fn create_partitions(&self, name: &str, new_total: i32) -> Result<TopicMeta>;

    /// Replaces the given config keys of a topic (a `None` value removes the key).
    async fn alter_topic_configs(
        &self,
        name: &str,
        changes: Vec<(String, Option<String>)>,
    ) -> Result<TopicMeta>;

    /// All topics, sorted by name.
    async fn list_topics(&self) -> Result<Vec<TopicMeta>>;

    /// One topic by name.
    async fn topic(&self, name: &str) -> Result<Option<TopicMeta>>;

    /// One topic by id.
    async fn topic_by_id(&self, id: Uuid) -> Result<Option<TopicMeta>>;

    /// Commits one uploaded object: assigns offsets to its batches in order, checks idempotent
    /// producer sequences, advances high watermarks and records index rows; all in one
    /// transaction. Returns one outcome per batch, in the order given.
    async fn commit(&self, flush: FlushCommit) -> Result<Vec<BatchOutcome>>;

    /// Commits flushes in order, with the result of committing them one after another, as one
    /// unit of durability where the backend can (group commit: the embedded journal syncs once,
    /// PostgreSQL runs one transaction). Outcomes per flush, in order. After an error any prefix
    /// of them may be committed; commits are idempotent per object key, so retrying the same
    /// list is safe.
    async fn commit_many(&self, flushes: Vec<FlushCommit>) -> Result<Vec<Vec<BatchOutcome>>> {
        let mut all = Vec::with_capacity(flushes.len());
        for flush in flushes {
            all.push(self.commit(flush).await?);
        }
        Ok(all)
    }

    /// Log start offset and high watermark of a partition.
    async fn partition_offsets(&self, tp: TopicPartition) -> Result<PartitionOffsets>;

    /// Index rows of a partition covering offsets from `from_offset` on, in offset order, up to
    /// about `max_bytes` of referenced data (at least one row when any exists).
    async fn index_rows(
        &self,
        tp: TopicPartition,
        from_offset: i64,
        max_bytes: u64,
    ) -> Result<Vec<IndexRow>>;

    /// The first index row whose max timestamp is at or after `timestamp`.
    async fn row_for_timestamp(
        &self,
        tp: TopicPartition,
        timestamp: i64,
    ) -> Result<Option<IndexRow>>;

    /// The index row holding the partition's largest timestamp (the earliest such row).
    async fn row_with_max_timestamp(&self, tp: TopicPartition) -> Result<Option<IndexRow>>;

    /// Allocates a producer id, or bumps the epoch of an existing one (KIP-360).
    async fn init_producer_id(&self, request: InitProducer) -> Result<ProducerIdentity>;

    /// Objects that no index row references any more and that were unreferenced at or before
    /// `older_than_ms`; and all objects the store knows, for reconciling a bucket listing.
    async fn object_references(&self) -> Result<ObjectReferences>;

    /// Forgets objects after they were deleted from object storage.
    async fn forget_objects(&self, keys: Vec<String>) -> Result<()>;

    // Consumer groups. A group id is any string of 1 to 32 KiB
    // ([`state::MAX_GROUP_ID_BYTES`]); every call below refuses another with
    // [`CoordinatorError::Invalid`]. A group exists while it has a saved blob or at least one
    // committed offset. Offsets are keyed by topic *name* and outlive the topic's deletion.

    /// Stores offsets for a group (upsert per (topic, partition)); all or nothing. When one
    /// partition appears more than once, the last one wins. An empty `offsets` is a no-op.
    /// Topic names must be 1 to 249 bytes ([`state::MAX_OFFSET_TOPIC_BYTES`]), else the whole
    /// commit is [`CoordinatorError::Invalid`].
    async fn commit_offsets(&self, group: &str, offsets: Vec<CommittedOffset>) -> Result<()>;

    /// All offsets of a group, sorted by (topic, partition); empty when none.
    async fn fetch_offsets(&self, group: &str) -> Result<Vec<CommittedOffset>>;

    /// Removes these partitions' offsets of a group (absent ones are ignored).
    async fn delete_offsets(&self, group: &str, partitions: Vec<(String, i32)>) -> Result<()>;

    /// Replaces the group's metadata blob (membership, generation, assignments, encoded by the
    /// broker). Any bytes, empty included, up to 16 MiB ([`state::MAX_GROUP_STATE_BYTES`]; a
    /// larger one is [`CoordinatorError::Invalid`]).
    async fn save_group(&self, group: &str, state: Vec<u8>) -> Result<()>;

    /// The group's metadata blob, if saved.
    async fn load_group(&self, group: &str) -> Result<Option<Vec<u8>>>;

    /// Every group that has a saved blob or committed offsets, sorted (bytewise).
    async fn list_groups(&self) -> Result<Vec<String>>;

    /// Removes a group's blob and all its offsets; false if the group had neither.
    async fn delete_group(&self, group: &str) -> Result<bool>;

    // Live brokers. A broker registers with a lease and renews it before it ends; a broker whose
    // lease ended is not live. Leases are measured by the coordinator's clock (the database's for
    // PostgreSQL), so brokers with skewed clocks agree on who is live. A lease is 1 ms to a day
    // ([`state::MAX_BROKER_LEASE_MS`]); anything else, or a registration that
    // [`state::check_broker_registration`] refuses, is [`CoordinatorError::Invalid`].

    /// Registers (or re-registers) a broker with a lease of `lease_ms`. Fails with
    /// [`CoordinatorError::Invalid`] if another live incarnation holds the node id. The same
    /// incarnation registering again replaces its host, port and rack and restarts its lease.
    async fn register_broker(
        &self,
        registration: BrokerRegistration,
        lease_ms: i64,
    ) -> Result<LiveBroker>;

    /// Extends the lease of this incarnation to `lease_ms` from now;
    /// [`CoordinatorError::Invalid`] ("lease lost") if its lease already lapsed or another
    /// incarnation took the node id: the broker must then register again.
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
