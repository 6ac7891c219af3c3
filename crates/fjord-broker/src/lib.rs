//! Fjord's Kafka API: one handler module per API family, behind a thin dispatcher.
//!
//! [`Broker`] holds the components a handler needs (coordinator, writer, reader, settings).
//! [`dispatch::start`] decodes a request frame with `kafka-protocol`, runs the handler and
//! encodes its response at the negotiated version. Handlers never see bytes on the wire and
//! never write them. Errors become Kafka error codes only in [`error`].

pub mod authz;
pub mod cleaner;
pub mod cluster;
pub mod compaction;
pub mod dispatch;
pub mod duty;
pub mod error;
pub mod expiry;
pub mod fetch_session;
pub mod groups;
mod handlers;
pub mod memory;
pub mod offsets_cache;
pub mod quotas;
pub mod retention;
pub mod sasl;
pub mod session;
pub mod testkit;
pub mod topic_config;
mod topics;
pub mod versions;

use std::sync::Arc;

use fjord_coordinator::Coordinator;
use fjord_storage::reader::Reader;
use fjord_storage::writer::Writer;
use tokio::sync::watch;

/// Broker settings (plain data, from the command line, environment or a file).
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// This broker's node id.
    pub node_id: i32,
    /// Host that clients are told to connect to.
    pub advertised_host: String,
    /// Port that clients are told to connect to.
    pub advertised_port: i32,
    /// Cluster id returned in Metadata and DescribeCluster.
    pub cluster_id: String,
    /// Create unknown topics on Metadata and Produce requests.
    pub auto_create_topics: bool,
    /// Partitions of automatically created topics (and of CreateTopics with -1).
    pub default_partitions: i32,
    /// Largest record batch accepted when the topic does not set `max.message.bytes`.
    pub message_max_bytes: i32,
    /// Client rack / zone of this broker, if any.
    pub rack: Option<String>,
    /// Largest partition count a topic may have (CreateTopics, CreatePartitions).
    pub max_partitions_per_topic: i32,
    /// Most record bytes one fetch response carries, whatever the client asks for (Kafka's
    /// `fetch.max.bytes`; the first batch may exceed it so that no consumer gets stuck).
    pub fetch_max_bytes: i32,
    /// Most record bytes all fetch responses being built or sent hold at once.
    pub fetch_memory_bytes: usize,
    /// `retention.ms` of topics that do not set it (Kafka's `log.retention.ms`; -1: forever).
    pub retention_ms: i64,
    /// `retention.bytes` of topics that do not set it (Kafka's `log.retention.bytes`).
    pub retention_bytes: i64,
    /// `segment.ms` of topics that do not set it (Kafka's `log.roll.ms`; see [`cleaner`]).
    pub segment_ms: i64,
}

impl BrokerSettings {
    /// The value this broker gives topic config `name` when a topic does not set it, where that
    /// comes from a broker setting (a flag) rather than Kafka's default; `None`: Kafka's default
    /// (`topic_config`). DescribeConfigs reports these, so what clients see is what is enforced.
    pub fn topic_default(&self, name: &str) -> Option<String> {
        let value = match name {
            "retention.ms" => self.retention_ms.to_string(),
            "retention.bytes" => self.retention_bytes.to_string(),
            "max.message.bytes" => self.message_max_bytes.to_string(),
            "segment.ms" => self.segment_ms.to_string(),
            _ => return None,
        };
        let kafka = topic_config::lookup(name).map(|d| d.default);
        (kafka != Some(value.as_str())).then_some(value)
    }
}

/// Kafka's default `fetch.max.bytes`: 55 MiB.
pub const DEFAULT_FETCH_MAX_BYTES: i32 = 55 << 20;

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            node_id: 0,
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            cluster_id: "fjord".into(),
            auto_create_topics: true,
            default_partitions: 1,
            message_max_bytes: 1_048_588,
            rack: None,
            max_partitions_per_topic: 10_000,
            fetch_max_bytes: DEFAULT_FETCH_MAX_BYTES,
            fetch_memory_bytes: 512 << 20,
            retention_ms: retention::DEFAULT_RETENTION_MS,
            retention_bytes: -1,
            segment_ms: cleaner::DEFAULT_SEGMENT_MS,
        }
    }
}

/// Everything a request handler needs. Shared by all connections.
pub struct Broker {
    /// Settings.
    pub settings: BrokerSettings,
    /// Metadata store.
    pub coordinator: Arc<dyn Coordinator>,
    /// The write path.
    pub writer: Writer,
    /// The read path.
    pub reader: Reader,
    /// Counts commits; long-polling fetches wait for it to change.
    pub commits: watch::Receiver<u64>,
    /// Fetch sessions of this broker's clients.
    pub fetch_sessions: fetch_session::FetchSessions,
    /// Consumer groups this broker coordinates.
    pub groups: Arc<groups::GroupCoordinator>,
    /// The live brokers (see [`cluster`]); a single-broker view outside cluster mode.
    pub cluster: watch::Receiver<Arc<cluster::ClusterView>>,
    /// Partition offsets for fetches, by commit generation.
    pub offsets_cache: offsets_cache::OffsetsCache,
    /// Memory for the record data of fetch responses (`settings.fetch_memory_bytes`).
    pub fetch_memory: memory::MemoryBudget,
    /// Wall-clock time (commit timestamps of offsets).
    pub clock: Arc<dyn fjord_coordinator::clock::Clock>,
    /// Who may do what (see [`authz`]).
    pub authorizer: Arc<authz::Authorizer>,
    /// Client quotas (see [`quotas`]).
    pub quotas: Arc<quotas::QuotaManager>,
}

impl Broker {
    /// The current cluster view.
    pub fn view(&self) -> Arc<cluster::ClusterView> {
        self.cluster.borrow().clone()
    }
}
