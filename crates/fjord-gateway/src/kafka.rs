//! The librdkafka producer of one backend cluster (the `rdkafka` crate).
//!
//! One long-lived idempotent producer per cluster, shared by all callers of the gateway: its
//! batching (`linger.ms`) turns thousands of callers into a handful of broker connections, and
//! idempotence keeps the order of records handed over one after another within a partition, even
//! across the client's internal retries. `message.timeout.ms` is the gateway's per-attempt
//! timeout, so a record stuck on a sick cluster fails in bounded time and the gateway can try
//! another cluster.
//!
//! The client's callbacks feed the cluster's health: "all brokers down" opens its breaker at once;
//! a fatal error (the idempotent producer lost its guarantees) makes the next `send` replace the
//! client with a fresh one. librdkafka's log lines go to `tracing`.
//!
//! Delivery reports arrive on the client's polling thread and complete the record's
//! [`Report`] (its opaque): one small allocation per record, no future or channel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::RwLock;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::ClientContext;

use crate::backend::{ErrorKind, ProduceError, Producer, Record, Report, Stored};
use crate::cluster::Health;
use crate::config::{ClusterConfig, SecurityProtocol};

/// Why a producer could not be created.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("cluster {cluster}: environment variable {var} (named in the config) is not set")]
    MissingSecret { cluster: String, var: String },
    #[error("cluster {cluster}: creating the producer: {error}")]
    Client { cluster: String, error: KafkaError },
}

/// The librdkafka client's callbacks.
#[derive(Debug)]
pub struct GatewayContext {
    health: Arc<Health>,
    fatal: Arc<AtomicBool>,
}

impl ClientContext for GatewayContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let cluster = &**self.health.name();
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(cluster, fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(cluster, fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(cluster, fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(cluster, fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let cluster = &**self.health.name();
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) if all_down(reason) => {
                tracing::warn!(cluster, "all brokers down: {reason}");
                self.health.force_open("all brokers down");
            }
            Some(RDKafkaErrorCode::Fatal) => {
                tracing::error!(
                    cluster,
                    "fatal producer error, the client will be replaced: {reason}"
                );
                self.fatal.store(true, Ordering::Release);
                self.health.force_open("fatal producer error");
            }
            Some(RDKafkaErrorCode::Authentication) => {
                tracing::error!(cluster, "SASL authentication failed: {reason}");
                self.health
                    .set_problem(format!("SASL authentication failed: {reason}"));
            }
            Some(RDKafkaErrorCode::SSL) => {
                tracing::error!(cluster, "TLS failed: {reason}");
                self.health.set_problem(format!("TLS failed: {reason}"));
            }
            _ => tracing::debug!(cluster, error = %error, "librdkafka: {reason}"),
        }
    }
}

impl ProducerContext for GatewayContext {
    type DeliveryOpaque = Box<Report>;

    fn delivery(&self, result: &DeliveryResult<'_>, report: Box<Report>) {
        let answer = match result {
            Ok(m) => {
                self.health.clear_problem();
                Ok(Stored {
                    partition: m.partition(),
                    offset: m.offset(),
                })
            }
            Err((e, _)) => {
                let mut error = produce_error(e);
                // A message that timed out or found no broker on a cluster the client cannot
                // authenticate to: say so, not just "timed out".
                if matches!(error.kind, ErrorKind::Timeout | ErrorKind::Unavailable) {
                    if let Some(problem) = self.health.problem() {
                        error.detail = format!("{problem} ({})", error.detail);
                    }
                }
                Err(error)
            }
        };
        (*report).complete(answer);
    }
}

/// Whether an "all brokers down" event really says so. librdkafka formats the counts when it
/// reports the event, and a broker may have reconnected in between ("0/2 brokers are down"):
/// such a report must not open the breaker of a healthy cluster. Unparsable reasons are trusted.
fn all_down(reason: &str) -> bool {
    let counts = reason
        .split_whitespace()
        .find_map(|w| w.split_once('/'))
        .and_then(|(d, n)| Some((d.parse::<u32>().ok()?, n.parse::<u32>().ok()?)));
    match counts {
        Some((down, total)) => down > 0 && down == total,
        None => true,
    }
}

type Client = ThreadedProducer<GatewayContext>;

/// A cluster's producer, replaced when it turns fatal.
pub struct KafkaProducer {
    cluster: String,
    client_config: ClientConfig,
    health: Arc<Health>,
    fatal: Arc<AtomicBool>,
    client: RwLock<Client>,
}

impl std::fmt::Debug for KafkaProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProducer")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// The librdkafka properties for a cluster: the gateway's defaults, the security settings, then
/// the cluster's `overrides`.
pub fn client_config(
    name: &str,
    config: &ClusterConfig,
    gateway_id: &str,
    attempt_timeout: Duration,
) -> Result<ClientConfig, KafkaSetupError> {
    let secret = |var: &str| {
        std::env::var(var).map_err(|_| KafkaSetupError::MissingSecret {
            cluster: name.to_owned(),
            var: var.to_owned(),
        })
    };
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap_servers)
        .set("client.id", format!("fjord-gateway-{gateway_id}"))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            attempt_timeout.as_millis().to_string(),
        )
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "1000")
        .set("queue.buffering.max.messages", "1000000")
        // A topic missing on this cluster fails its messages fast (UNKNOWN_TOPIC, retried on
        // another cluster) instead of timing out and counting against the cluster's breaker.
        .set("topic.metadata.propagation.max.ms", "1000")
        .set(
            "security.protocol",
            config.security_protocol.as_librdkafka(),
        );
    if matches!(
        config.security_protocol,
        SecurityProtocol::Ssl | SecurityProtocol::SaslSsl
    ) {
        if let Some(tls) = &config.tls {
            if let Some(p) = &tls.ca_location {
                c.set("ssl.ca.location", p.display().to_string());
            }
            if let Some(p) = &tls.certificate_location {
                c.set("ssl.certificate.location", p.display().to_string());
            }
            if let Some(p) = &tls.key_location {
                c.set("ssl.key.location", p.display().to_string());
            }
            if let Some(var) = &tls.key_password_env {
                c.set("ssl.key.password", secret(var)?);
            }
            let verify = if tls.verify_hostname { "https" } else { "none" };
            c.set("ssl.endpoint.identification.algorithm", verify);
        }
    }
    if let Some(sasl) = &config.sasl {
        c.set("sasl.mechanism", &sasl.mechanism)
            .set("sasl.username", &sasl.username)
            .set("sasl.password", secret(&sasl.password_env)?);
    }
    for (k, v) in &config.overrides {
        c.set(k, v);
    }
    Ok(c)
}

impl KafkaProducer {
    pub fn new(
        name: &str,
        client_config: ClientConfig,
        health: Arc<Health>,
    ) -> Result<Self, KafkaSetupError> {
        let fatal = Arc::new(AtomicBool::new(false));
        let client = Self::create(name, &client_config, &health, &fatal)?;
        Ok(Self {
            cluster: name.to_owned(),
            client_config,
            health,
            fatal,
            client: RwLock::new(client),
        })
    }

    fn create(
        name: &str,
        config: &ClientConfig,
        health: &Arc<Health>,
        fatal: &Arc<AtomicBool>,
    ) -> Result<Client, KafkaSetupError> {
        let context = GatewayContext {
            health: health.clone(),
            fatal: fatal.clone(),
        };
        config
            .create_with_context(context)
            .map_err(|error| KafkaSetupError::Client {
                cluster: name.to_owned(),
                error,
            })
    }

    /// The current client, replacing it first if it went fatal.
    fn client(&self) -> Client {
        self.renew_if_fatal();
        self.client.read().clone()
    }

    /// Replaces the client if it went fatal.
    fn renew_if_fatal(&self) {
        // A plain load first: the flag is read for every record, and a swap would write the
        // cache line every time.
        if self.fatal.load(Ordering::Acquire) && self.fatal.swap(false, Ordering::AcqRel) {
            match Self::create(
                &self.cluster,
                &self.client_config,
                &self.health,
                &self.fatal,
            ) {
                Ok(fresh) => {
                    tracing::warn!(cluster = %self.cluster, "replaced the fatal producer");
                    *self.client.write() = fresh;
                }
                Err(e) => {
                    tracing::error!(error = %e, "replacing the fatal producer failed");
                    self.fatal.store(true, Ordering::Release);
                }
            }
        }
    }
}

/// Maps a librdkafka error to what the gateway does about it.
pub fn classify(error: &KafkaError) -> ErrorKind {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut) => ErrorKind::Timeout,
        Some(C::QueueFull) => ErrorKind::QueueFull,
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize) => ErrorKind::TooLarge,
        Some(C::UnknownTopicOrPartition | C::UnknownPartition | C::UnknownTopic) => {
            ErrorKind::UnknownTopicOrPartition
        }
        Some(
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::InvalidRecord
            | C::InvalidMessage
            | C::PolicyViolation
            | C::InvalidTopic
            | C::InvalidArgument
            | C::InvalidTimestamp,
        ) => ErrorKind::Rejected,
        _ => ErrorKind::Unavailable,
    }
}

/// Errors after which the record may be stored although it failed: besides timeouts, a record
/// purged while in flight, written to fewer in-sync replicas than required, or failed by a fatal
/// idempotence error.
fn maybe_stored(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    classify(error) == ErrorKind::Timeout
        || matches!(
            error.rdkafka_error_code(),
            Some(C::PurgeInflight | C::NotEnoughReplicasAfterAppend | C::Fatal)
        )
}

/// A delivery report's error.
fn produce_error(error: &KafkaError) -> ProduceError {
    ProduceError::new(classify(error), error.to_string()).maybe_stored(maybe_stored(error))
}

impl Producer for KafkaProducer {
    fn send(&self, record: Record<'_>, report: Report) {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in record.headers {
            headers = headers.insert(Header { key, value: *value });
        }
        let mut br: BaseRecord<'_, [u8], [u8], Box<Report>> =
            BaseRecord::with_opaque_to(record.topic, Box::new(report))
                .payload(record.value)
                .headers(headers);
        if let Some(key) = record.key {
            br = br.key(key);
        }
        if let Some(ts) = record.timestamp_ms {
            br = br.timestamp(ts);
        }
        if let Some(p) = record.partition {
            br = br.partition(p);
        }
        self.renew_if_fatal();
        let refused = self.client.read().send(br).err();
        if let Some((e, br)) = refused {
            // Refused by the client before it queued the record: certainly not stored.
            let error = ProduceError::new(classify(&e), e.to_string()).maybe_stored(false);
            (*br.delivery_opaque).complete(Err(error));
        }
    }

    fn probe(&self, timeout: Duration) -> BoxFuture<'static, Result<(), ProduceError>> {
        let client = self.client();
        async move {
            let answer = tokio::task::spawn_blocking(move || {
                client.client().fetch_metadata(None, timeout).map(|_| ())
            })
            .await;
            match answer {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(produce_error(&e)),
                Err(e) => Err(ProduceError::new(ErrorKind::Unavailable, e.to_string())),
            }
        }
        .boxed()
    }

    fn flush(&self, timeout: Duration) -> BoxFuture<'static, ()> {
        let client = self.client();
        let cluster = self.cluster.clone();
        async move {
            let flushed = tokio::task::spawn_blocking(move || client.flush(timeout)).await;
            if let Ok(Err(e)) = flushed {
                tracing::warn!(cluster, error = %e, "flush incomplete");
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SaslConfig, TlsConfig};
    use std::collections::BTreeMap;

    fn cluster() -> ClusterConfig {
        ClusterConfig {
            bootstrap_servers: "h1:9092,h2:9092".into(),
            security_protocol: SecurityProtocol::Plaintext,
            tls: None,
            sasl: None,
            overrides: BTreeMap::from([("linger.ms".to_owned(), "20".to_owned())]),
        }
    }

    #[test]
    fn defaults_then_overrides() {
        let c = client_config("a", &cluster(), "gw1", Duration::from_secs(3)).unwrap();
        assert_eq!(c.get("bootstrap.servers"), Some("h1:9092,h2:9092"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("message.timeout.ms"), Some("3000"));
        assert_eq!(c.get("client.id"), Some("fjord-gateway-gw1"));
        assert_eq!(c.get("linger.ms"), Some("20"));
        assert_eq!(c.get("topic.metadata.propagation.max.ms"), Some("1000"));
        assert_eq!(c.get("security.protocol"), Some("plaintext"));
    }

    #[test]
    fn security_settings() {
        let mut cfg = cluster();
        cfg.security_protocol = SecurityProtocol::SaslSsl;
        cfg.tls = Some(TlsConfig {
            ca_location: Some("/etc/ca.pem".into()),
            certificate_location: None,
            key_location: None,
            key_password_env: None,
            verify_hostname: false,
        });
        cfg.sasl = Some(SaslConfig {
            mechanism: "SCRAM-SHA-512".into(),
            username: "gw".into(),
            password_env: "FJORD_GATEWAY_TEST_SECRET_UNSET".into(),
        });
        let err = client_config("b", &cfg, "gw", Duration::from_secs(1)).unwrap_err();
        assert!(
            err.to_string().contains("FJORD_GATEWAY_TEST_SECRET_UNSET"),
            "{err}"
        );
        cfg.sasl = Some(SaslConfig {
            password_env: "PATH".into(), // any variable that is set
            ..cfg.sasl.clone().unwrap()
        });
        let c = client_config("b", &cfg, "gw", Duration::from_secs(1)).unwrap();
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("ssl.ca.location"), Some("/etc/ca.pem"));
        assert_eq!(c.get("ssl.endpoint.identification.algorithm"), Some("none"));
    }

    #[test]
    fn all_brokers_down_reports_are_checked() {
        assert!(all_down("2/2 brokers are down"));
        assert!(!all_down("0/2 brokers are down"));
        assert!(!all_down("1/2 brokers are down"));
        assert!(all_down("brokers are down"));
    }

    #[test]
    fn error_classes() {
        let e = |c| KafkaError::MessageProduction(c);
        assert_eq!(
            classify(&e(RDKafkaErrorCode::MessageTimedOut)),
            ErrorKind::Timeout
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::QueueFull)),
            ErrorKind::QueueFull
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::MessageSizeTooLarge)),
            ErrorKind::TooLarge
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::UnknownTopicOrPartition)),
            ErrorKind::UnknownTopicOrPartition
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::TopicAuthorizationFailed)),
            ErrorKind::Rejected
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::BrokerTransportFailure)),
            ErrorKind::Unavailable
        );
    }

    #[test]
    fn errors_that_leave_the_outcome_unknown() {
        let e = |c| KafkaError::MessageProduction(c);
        assert!(produce_error(&e(RDKafkaErrorCode::MessageTimedOut)).maybe_stored);
        assert!(produce_error(&e(RDKafkaErrorCode::PurgeInflight)).maybe_stored);
        assert!(produce_error(&e(RDKafkaErrorCode::NotEnoughReplicasAfterAppend)).maybe_stored);
        assert!(!produce_error(&e(RDKafkaErrorCode::MessageSizeTooLarge)).maybe_stored);
        assert!(!produce_error(&e(RDKafkaErrorCode::QueueFull)).maybe_stored);
        assert!(!produce_error(&e(RDKafkaErrorCode::TopicAuthorizationFailed)).maybe_stored);
    }
}
