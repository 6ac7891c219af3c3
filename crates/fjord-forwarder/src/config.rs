//! `fjord forward` settings, read from a TOML file (`--config forwarder.toml`).
//!
//! Owns the shape of the file, its defaults and its validation. Settings are plain data: the
//! consumers, producers and gRPC channels they describe are built in `worker.rs` / `lib.rs`.
//! Invariants after [`ForwarderConfig::load`] / [`ForwarderConfig::validate`]: every subscription
//! names at least one cluster that is defined, at least one topic, a non-empty group id, endpoint
//! and dead-letter topic; limits are positive; retry and dead-letter topics are not among the
//! topics of any subscription (a loop would redeliver forever) and retry topics are not shared.
//! Unknown keys are rejected, so a typo never goes unnoticed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwarderConfig {
    /// `host:port` of the Prometheus endpoint (`GET /metrics`); unset: no endpoint.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Seconds that shutdown (SIGTERM) waits for records in flight before the final commit.
    #[serde(default = "defaults::shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
    /// Source clusters by name.
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// What to forward where; several per process.
    #[serde(rename = "subscription")]
    pub subscriptions: Vec<SubscriptionConfig>,
}

/// A Kafka-compatible cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// Extra librdkafka properties for every client of this cluster (security, timeouts, ...).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values come from environment variables, property -> variable
    /// name: secrets such as `sasl.password` stay out of the file.
    #[serde(default)]
    pub properties_env: BTreeMap<String, String>,
}

/// librdkafka properties that hold secrets: set in `properties`, they are logged as a warning.
pub const SECRET_PROPERTIES: [&str; 4] = [
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "sasl.oauthbearer.client.secret",
];

impl ClusterConfig {
    /// Every librdkafka property of the cluster's clients: `properties`, and those of
    /// `properties_env` read from the environment now. An error names a variable that is not
    /// set and a property given both ways.
    pub fn client_properties(&self) -> Result<BTreeMap<String, String>, ConfigError> {
        let mut all = self.properties.clone();
        for (property, var) in &self.properties_env {
            if all.contains_key(property) {
                return Err(ConfigError::Invalid(format!(
                    "property {property:?} is set in both properties and properties_env"
                )));
            }
            let value = std::env::var(var).map_err(|_| {
                ConfigError::Invalid(format!(
                    "properties_env: {property:?} names the environment variable {var:?}, \
                     which is not set (or not UTF-8)"
                ))
            })?;
            all.insert(property.clone(), value);
        }
        Ok(all)
    }
}

/// How records of one partition may overlap in delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderingMode {
    /// Any record may be in flight at once (up to the concurrency limit).
    None,
    /// Records with the same key one at a time, in offset order; null keys are unordered.
    Key,
    /// One record of a partition at a time, in offset order.
    Partition,
}

/// Where a group without committed offsets starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    Earliest,
    Latest,
}

impl StartFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            StartFrom::Earliest => "earliest",
            StartFrom::Latest => "latest",
        }
    }
}

/// One endpoint URL or several replicas.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Endpoints {
    One(String),
    Many(Vec<String>),
}

impl Endpoints {
    pub fn urls(&self) -> &[String] {
        match self {
            Endpoints::One(url) => std::slice::from_ref(url),
            Endpoints::Many(urls) => urls,
        }
    }
}

impl std::fmt::Display for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.urls().join(","))
    }
}

/// One subscription: topics of some clusters, read as a group and pushed to one endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// Name in logs, metrics and the `subscription` field of each delivery.
    pub name: String,
    /// Source clusters (names from `[clusters]`); the topics are read from each of them.
    pub clusters: Vec<String>,
    pub topics: Vec<String>,
    pub group_id: String,
    /// The RecordHandler service, e.g. `http://127.0.0.1:50051`, or a list of replicas of it
    /// (deliveries go round-robin over them).
    pub endpoint: Endpoints,
    #[serde(default = "defaults::ordering")]
    pub ordering: OrderingMode,
    /// Deliveries in flight at once, over all partitions and clusters of the subscription.
    #[serde(default = "defaults::concurrency")]
    pub concurrency: usize,
    /// Milliseconds one Deliver call may take; then it counts as DEADLINE_EXCEEDED.
    #[serde(default = "defaults::delivery_timeout_ms")]
    pub delivery_timeout_ms: u64,
    /// Deliveries per second (attempts, retries included); 0: unlimited.
    #[serde(default)]
    pub rate_limit: f64,
    /// Records fetched and not finished, per partition, before fetching of it pauses (20,000).
    #[serde(default = "defaults::max_pending_records_per_partition")]
    pub max_pending_records_per_partition: usize,
    /// Key + value bytes fetched and not finished, per partition, before fetching pauses.
    #[serde(default = "defaults::max_pending_bytes_per_partition")]
    pub max_pending_bytes_per_partition: usize,
    /// The same over all partitions of the subscription.
    #[serde(default = "defaults::max_pending_bytes")]
    pub max_pending_bytes: usize,
    /// Milliseconds between offset commits.
    #[serde(default = "defaults::commit_interval_ms")]
    pub commit_interval_ms: u64,
    #[serde(default = "defaults::start_from")]
    pub start_from: StartFrom,
    /// Records that exhausted their in-memory attempts wait here (on the record's source
    /// cluster); unset: they go to the dead-letter topic.
    #[serde(default)]
    pub retry_topic: Option<String>,
    /// Records that will never be delivered, with headers saying why (on the source cluster).
    pub dead_letter_topic: String,
    /// Milliseconds a write to the retry topic or the dead-letter topic is retried before the
    /// record goes to the dead-letter topic instead (from the retry topic), or the subscription
    /// stops with an error (from the dead-letter topic); 0: retried without limit.
    #[serde(default = "defaults::park_timeout_ms")]
    pub park_timeout_ms: u64,
    /// Create the retry and dead-letter topics at startup if missing.
    #[serde(default = "defaults::create_topics")]
    pub create_topics: bool,
    /// Partitions of topics created that way.
    #[serde(default = "defaults::created_topic_partitions")]
    pub created_topic_partitions: i32,
    #[serde(default)]
    pub retry: RetryConfig,
    /// Extra librdkafka properties of this subscription's consumers (override the cluster's).
    #[serde(default)]
    pub consumer_properties: BTreeMap<String, String>,
    /// TLS towards the endpoint; required for (and only for) `https://` endpoints.
    #[serde(default)]
    pub tls: Option<EndpointTlsConfig>,
}

/// TLS towards a subscription's endpoint (PEM files, read at startup; relative paths are
/// relative to the working directory).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointTlsConfig {
    /// CA certificates that the endpoint's certificate must chain to.
    pub ca_file: PathBuf,
    /// Client certificate chain presented to the endpoint (mutual TLS); with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name checked against the endpoint's certificate (default: the URL's host).
    #[serde(default)]
    pub domain: Option<String>,
}

/// When and how often a record is tried again.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts per round before the record leaves memory (to the retry topic, or the
    /// dead-letter topic when there is none or the rounds are used up).
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles (× `multiplier`) up to `max_backoff_ms`.
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub multiplier: f64,
    /// Fraction (0..1) of each backoff that is randomised (full jitter would be 1).
    pub jitter: f64,
    /// A RETRY asking for a longer delay than this goes through the retry topic.
    pub max_in_memory_delay_ms: u64,
    /// How long a record waits in the retry topic (unless the handler asked for longer).
    pub retry_topic_delay_ms: u64,
    /// Rounds through the retry topic before the dead-letter topic.
    pub retry_topic_rounds: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            initial_backoff_ms: 100,
            max_backoff_ms: 10_000,
            multiplier: 2.0,
            jitter: 0.2,
            max_in_memory_delay_ms: 30_000,
            retry_topic_delay_ms: 60_000,
            retry_topic_rounds: 3,
        }
    }
}

mod defaults {
    use super::{OrderingMode, StartFrom};
    pub fn shutdown_timeout_secs() -> u64 {
        10
    }
    pub fn ordering() -> OrderingMode {
        OrderingMode::Key
    }
    pub fn concurrency() -> usize {
        100
    }
    pub fn delivery_timeout_ms() -> u64 {
        30_000
    }
    /// Enough for about a second of deliveries at high rates: a paused partition loses what
    /// librdkafka had prefetched, and after resuming it is fetched again only once the fetch in
    /// flight returns (up to `fetch.wait.max.ms`), so a small window leaves the partition idle for
    /// most of each pause cycle (1,000 records capped a 1-partition, concurrency-200 subscription
    /// at ~2,500 records/s; 20,000 reaches ~9,000). Memory stays bounded by the byte limits.
    pub fn max_pending_records_per_partition() -> usize {
        20_000
    }
    pub fn max_pending_bytes_per_partition() -> usize {
        16 << 20
    }
    pub fn max_pending_bytes() -> usize {
        256 << 20
    }
    pub fn commit_interval_ms() -> u64 {
        1_000
    }
    pub fn start_from() -> StartFrom {
        StartFrom::Earliest
    }
    /// Long enough to ride out a broker restart or a leader election, short enough that a topic
    /// that cannot be written (deleted, no permission, refused) is reported within minutes.
    pub fn park_timeout_ms() -> u64 {
        300_000
    }
    pub fn create_topics() -> bool {
        true
    }
    pub fn created_topic_partitions() -> i32 {
        1
    }
}

impl ForwarderConfig {
    /// Reads, parses and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: ForwarderConfig = toml::from_str(text).map_err(ConfigError::Parse)?;
        config.validate()?;
        Ok(config)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    /// Checks the invariants listed in the module docs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |what: String| Err(ConfigError::Invalid(what));
        if self.subscriptions.is_empty() {
            return invalid("no [[subscription]]".into());
        }
        for (name, cluster) in &self.clusters {
            cluster.client_properties().map_err(|e| match e {
                ConfigError::Invalid(m) => ConfigError::Invalid(format!("cluster {name}: {m}")),
                other => other,
            })?;
        }
        let mut names = BTreeSet::new();
        let mut retry_topics = BTreeSet::new();
        let all_topics: BTreeSet<&String> =
            self.subscriptions.iter().flat_map(|s| &s.topics).collect();
        for s in &self.subscriptions {
            let n = &s.name;
            if n.is_empty() || !names.insert(n.as_str()) {
                return invalid(format!("subscription name {n:?} is empty or used twice"));
            }
            if s.clusters.is_empty() || s.topics.is_empty() {
                return invalid(format!("subscription {n}: needs clusters and topics"));
            }
            if let Some(c) = s.clusters.iter().find(|c| !self.clusters.contains_key(*c)) {
                return invalid(format!("subscription {n}: cluster {c:?} is not defined"));
            }
            let no_endpoint =
                s.endpoint.urls().is_empty() || s.endpoint.urls().iter().any(|u| u.is_empty());
            if s.group_id.is_empty() || no_endpoint || s.dead_letter_topic.is_empty() {
                return invalid(format!(
                    "subscription {n}: group_id, endpoint and dead_letter_topic are required"
                ));
            }
            let https = s
                .endpoint
                .urls()
                .iter()
                .filter(|u| u.starts_with("https://"))
                .count();
            match &s.tls {
                None if https > 0 => {
                    return invalid(format!(
                    "subscription {n}: an https:// endpoint needs [subscription.tls] with ca_file"
                ))
                }
                Some(_) if https < s.endpoint.urls().len() => {
                    return invalid(format!(
                        "subscription {n}: with [subscription.tls] every endpoint must be https://"
                    ))
                }
                Some(t) if t.cert_file.is_some() != t.key_file.is_some() => {
                    return invalid(format!(
                        "subscription {n}: tls cert_file and key_file go together"
                    ))
                }
                Some(t) if t.domain.as_deref().is_some_and(str::is_empty) => {
                    return invalid(format!("subscription {n}: tls domain is empty"))
                }
                _ => {}
            }
            if s.concurrency == 0
                || s.max_pending_records_per_partition == 0
                || s.max_pending_bytes_per_partition == 0
                || s.max_pending_bytes == 0
                || s.delivery_timeout_ms == 0
                || s.commit_interval_ms == 0
                || s.created_topic_partitions <= 0
            {
                return invalid(format!("subscription {n}: limits must be positive"));
            }
            if !(s.rate_limit >= 0.0 && s.rate_limit.is_finite()) {
                return invalid(format!("subscription {n}: rate_limit must be >= 0"));
            }
            let r = &s.retry;
            if r.max_attempts == 0
                || r.multiplier.is_nan()
                || r.multiplier < 1.0
                || !(0.0..=1.0).contains(&r.jitter)
            {
                return invalid(format!(
                    "subscription {n}: retry needs max_attempts >= 1, multiplier >= 1, 0 <= jitter <= 1"
                ));
            }
            let mut own = vec![&s.dead_letter_topic];
            if let Some(t) = &s.retry_topic {
                if !retry_topics.insert(t.as_str()) || *t == s.dead_letter_topic {
                    return invalid(format!(
                        "subscription {n}: retry topic {t:?} is shared with another subscription \
                         or is the dead-letter topic"
                    ));
                }
                own.push(t);
            }
            if let Some(t) = own.into_iter().find(|t| all_topics.contains(t)) {
                return invalid(format!(
                    "subscription {n}: {t:?} is also a source topic (records would loop)"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [clusters.a]
        bootstrap = "127.0.0.1:9092"
        [[subscription]]
        name = "s"
        clusters = ["a"]
        topics = ["orders"]
        group_id = "g"
        endpoint = "http://127.0.0.1:50051"
        dead_letter_topic = "orders.dlq"
    "#;

    #[test]
    fn minimal_file_gets_defaults() {
        let c = ForwarderConfig::parse(MINIMAL).unwrap();
        let s = &c.subscriptions[0];
        assert_eq!(s.ordering, OrderingMode::Key);
        assert_eq!(s.concurrency, 100);
        assert_eq!(s.retry, RetryConfig::default());
        assert_eq!(s.retry_topic, None);
        assert!(c.metrics_listen.is_none());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let text = MINIMAL.replace("group_id", "concurency = 3\n group_id");
        assert!(matches!(
            ForwarderConfig::parse(&text),
            Err(ConfigError::Parse(_))
        ));
    }

    #[test]
    fn undefined_cluster_is_rejected() {
        let text = MINIMAL.replace(r#"clusters = ["a"]"#, r#"clusters = ["a", "b"]"#);
        let err = ForwarderConfig::parse(&text).unwrap_err().to_string();
        assert!(err.contains("\"b\" is not defined"), "{err}");
    }

    #[test]
    fn dead_letter_topic_that_is_a_source_is_rejected() {
        let text = MINIMAL.replace("orders.dlq", "orders");
        assert!(ForwarderConfig::parse(&text).is_err());
    }

    #[test]
    fn full_subscription_parses() {
        let text = MINIMAL.to_string()
            + r#"
        ordering = "none"
        concurrency = 200
        retry_topic = "orders.retry"
        rate_limit = 50.5
        [subscription.retry]
        max_attempts = 5
        retry_topic_rounds = 2
        [subscription.consumer_properties]
        "session.timeout.ms" = "6000"
        "#;
        let c = ForwarderConfig::parse(&text).unwrap();
        let s = &c.subscriptions[0];
        assert_eq!(s.ordering, OrderingMode::None);
        assert_eq!(s.retry.max_attempts, 5);
        assert_eq!(s.retry.retry_topic_rounds, 2);
        assert_eq!(s.retry.initial_backoff_ms, 100);
        assert_eq!(s.consumer_properties["session.timeout.ms"], "6000");
        assert!(c.clusters["a"].properties_env.is_empty());
        assert_eq!(s.endpoint.urls(), ["http://127.0.0.1:50051"]);
        let many = text.replace(
            r#"endpoint = "http://127.0.0.1:50051""#,
            r#"endpoint = ["http://h1:1", "http://h2:2"]"#,
        );
        let c = ForwarderConfig::parse(&many).unwrap();
        assert_eq!(c.subscriptions[0].endpoint.urls().len(), 2);
    }

    #[test]
    fn endpoint_tls_is_checked() {
        let https = MINIMAL.replace("http://127.0.0.1:50051", "https://handler.test:50051");
        let err = ForwarderConfig::parse(&https).unwrap_err().to_string();
        assert!(err.contains("needs [subscription.tls]"), "{err}");
        let text = https.clone() + "[subscription.tls]\nca_file = \"ca.pem\"\n";
        let c = ForwarderConfig::parse(&text).unwrap();
        let tls = c.subscriptions[0].tls.as_ref().unwrap();
        assert_eq!(tls.ca_file, PathBuf::from("ca.pem"));
        assert_eq!((tls.cert_file.as_ref(), tls.domain.as_ref()), (None, None));
        let mtls = text.clone() + "cert_file = \"c.pem\"\nkey_file = \"k.pem\"\ndomain = \"h\"\n";
        let c = ForwarderConfig::parse(&mtls).unwrap();
        assert_eq!(
            c.subscriptions[0].tls.as_ref().unwrap().domain.as_deref(),
            Some("h")
        );
        let half = text.clone() + "cert_file = \"c.pem\"\n";
        let err = ForwarderConfig::parse(&half).unwrap_err().to_string();
        assert!(err.contains("cert_file and key_file go together"), "{err}");
        let plain = MINIMAL.to_string() + "[subscription.tls]\nca_file = \"ca.pem\"\n";
        let err = ForwarderConfig::parse(&plain).unwrap_err().to_string();
        assert!(err.contains("every endpoint must be https://"), "{err}");
        let typo = text + "ca_fil = \"x\"\n";
        assert!(matches!(
            ForwarderConfig::parse(&typo),
            Err(ConfigError::Parse(_))
        ));
    }

    #[test]
    fn zero_limits_are_rejected() {
        let text = MINIMAL.to_string() + "concurrency = 0\n";
        assert!(ForwarderConfig::parse(&text).is_err());
        let text = MINIMAL.to_string() + "[subscription.retry]\nmax_attempts = 0\n";
        assert!(ForwarderConfig::parse(&text).is_err());
    }

    #[test]
    fn secret_properties_come_from_the_environment() {
        let text = |env: &str| {
            format!(
                r#"
                [clusters.a]
                bootstrap = "127.0.0.1:9092"
                properties = {{ "security.protocol" = "SASL_SSL" }}
                properties_env = {{ {env} }}
                [[subscription]]
                name = "s"
                clusters = ["a"]
                topics = ["t"]
                group_id = "g"
                endpoint = "http://127.0.0.1:50051"
                dead_letter_topic = "t.dlq"
                "#
            )
        };
        let var = "FJORD_FORWARDER_TEST_SASL_PASSWORD";
        std::env::set_var(var, "s3cret");
        let c = ForwarderConfig::parse(&text(&format!(r#""sasl.password" = "{var}""#))).unwrap();
        let props = c.clusters["a"].client_properties().unwrap();
        assert_eq!(props["sasl.password"], "s3cret");
        assert_eq!(props["security.protocol"], "SASL_SSL");

        let unset = ForwarderConfig::parse(&text(r#""sasl.password" = "FJORD_NO_SUCH_VARIABLE""#))
            .unwrap_err()
            .to_string();
        assert!(
            unset.contains("cluster a") && unset.contains("FJORD_NO_SUCH_VARIABLE"),
            "{unset}"
        );
        let twice = ForwarderConfig::parse(&text(&format!(r#""security.protocol" = "{var}""#)))
            .unwrap_err()
            .to_string();
        assert!(
            twice.contains("both properties and properties_env"),
            "{twice}"
        );
    }
}
