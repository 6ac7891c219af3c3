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
//!   leaves groups' offsets for it in place. A group's blob is written by compare-and-set on a
//!   version that never repeats, and offset commits can be made conditional on it
//!   ([`GroupStore`]): two brokers that both believe they coordinate a group cannot both write it.
//! - A partition's log start offset never goes down and never passes its high watermark
//!   ([`LogLifecycle`]); index rows wholly below it are deleted with it.
//! - An object is reported dead only once no index row references it ([`ObjectLedger`]).
//! - At most one incarnation of a broker node id holds a live lease at any time.
//! - Idempotent-producer memory is bounded in time: it expires ([`MetadataExpiry`]).
//! - SCRAM credentials are stored as salted keys, one per (user, mechanism) ([`CredentialStore`]).
//! - ACL bindings are stored at most once and their version rises with every change ([`AclStore`]).
//! - Client quotas are validated as a whole before any is stored, and their version rises with
//!   every change ([`QuotaStore`]).

mod broker_registry;
pub mod clock;
pub mod embedded;
mod error;
mod expiry;
pub mod faults;
mod group_store;
mod log_lifecycle;
mod model;
mod object_ledger;
pub mod postgres;
pub mod quota_state;
pub mod quotas;
pub mod security;
pub mod security_state;
pub mod state;
pub mod testsuite;

pub use broker_registry::BrokerRegistry;
pub use error::{CoordinatorError, Result};
pub use expiry::MetadataExpiry;
pub use group_store::GroupStore;
pub use log_lifecycle::LogLifecycle;
pub use model::*;
pub use object_ledger::ObjectLedger;
pub use quotas::QuotaStore;
pub use security::{AclStore, CredentialStore};

use async_trait::async_trait;
use uuid::Uuid;

/// The metadata store behind a broker: topics, the log index and producer ids here; consumer
/// groups ([`GroupStore`]), the live-broker registry ([`BrokerRegistry`]), log start offsets and
/// compaction swaps ([`LogLifecycle`]), object bookkeeping ([`ObjectLedger`]), expiry of
/// producer memory ([`MetadataExpiry`]), SCRAM credentials ([`CredentialStore`]), ACLs
/// ([`AclStore`]) and client quotas ([`QuotaStore`]) in traits of their own, each with its conformance tests
/// in [`testsuite`]. Implementations are cheap to share (`Arc<dyn Coordinator>`).
#[async_trait]
pub trait Coordinator:
    GroupStore
    + BrokerRegistry
    + LogLifecycle
    + ObjectLedger
    + MetadataExpiry
    + CredentialStore
    + AclStore
    + QuotaStore
    + Send
    + Sync
    + 'static
{
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
}
