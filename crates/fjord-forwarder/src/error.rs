//! The forwarder's errors: what stops it from starting or running. Per-record failures are not
//! errors here: they are outcomes (`outcome.rs`) that the retry policy turns into actions.

use thiserror::Error;

/// A configuration file that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing the configuration: {0}")]
    Parse(toml::de::Error),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Why the forwarder could not start or stopped with a failure.
#[derive(Debug, Error)]
pub enum ForwardError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "subscription {subscription}: creating a Kafka client for cluster {cluster}: {source}"
    )]
    Kafka {
        subscription: String,
        cluster: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("subscription {subscription}: endpoint {endpoint:?}: {message}")]
    Endpoint {
        subscription: String,
        endpoint: String,
        message: String,
    },
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: String,
        source: std::io::Error,
    },
    #[error("installing the signal handler: {0}")]
    Signal(std::io::Error),
    #[error(
        "subscription {subscription} stopped: the record at {topic}/{partition}@{offset} of \
         cluster {cluster} could not be written to the dead-letter topic {dead_letter_topic} \
         within park_timeout_ms: {error} (it stays uncommitted and is delivered again once the \
         subscription runs again)"
    )]
    Park {
        subscription: String,
        cluster: String,
        topic: String,
        partition: i32,
        offset: i64,
        dead_letter_topic: String,
        error: String,
    },
    #[error("{0}")]
    Task(String),
}
