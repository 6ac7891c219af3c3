//! The producer side: writing records to retry and dead-letter topics, and creating those topics.
//!
//! Owns the [`Sink`] seam (tests substitute it) and its Kafka implementation (an idempotent
//! rdkafka producer with `acks=all`, one per source cluster), and [`park`], one write retried
//! with capped backoff. Invariants: [`park`] reports [`Written`](Park::Written) only once the
//! record is acknowledged by the cluster; it gives up, without having written, on a record the
//! cluster refuses as too large (retrying cannot help) and on a record not written within its
//! time limit; it never gives up silently (every failed try is logged and counted). What happens
//! next (the dead-letter topic, a smaller record, stopping the subscription) is `parking.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use crate::envelope::OutRecord;

/// Why a write failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The record is larger than the producer or the topic accepts: the same record will never
    /// be written.
    #[error("record too large: {0}")]
    TooLarge(String),
    /// Anything else (the cluster is unreachable, the topic does not exist, ...): it may work
    /// later.
    #[error("{0}")]
    Failed(String),
}

/// Writes one record and resolves when the cluster acknowledged it.
pub trait Sink: Send + Sync + 'static {
    fn send(&self, record: OutRecord) -> BoxFuture<'static, Result<(), SinkError>>;
    /// The largest record (key, value and headers) the producer sends.
    fn max_record_bytes(&self) -> usize;
}

/// [`Sink`] to a Kafka-compatible cluster.
#[derive(Clone)]
pub struct KafkaSink {
    producer: FutureProducer,
    max_record_bytes: usize,
}

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// The client settings shared by everything talking to one cluster.
pub fn client_config(bootstrap: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (k, v) in properties {
        config.set(k, v);
    }
    config
}

impl KafkaSink {
    /// A producer with `config`'s settings. Each write is given up by librdkafka after at most
    /// 30 s, or after `limit` if shorter, so one try never outlasts [`park`]'s time limit by more
    /// than that.
    pub fn new(mut config: ClientConfig, limit: Option<Duration>) -> Result<Self, KafkaError> {
        let message_timeout = limit.map_or(30_000, |l| l.as_millis().clamp(1, 30_000));
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", message_timeout.to_string());
        let max_record_bytes = config
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES);
        Ok(KafkaSink {
            producer: config.create()?,
            max_record_bytes,
        })
    }
}

/// Sorts a producer error: too large (never writable) or anything else.
fn classify(e: &KafkaError) -> SinkError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge) => {
            SinkError::TooLarge(e.to_string())
        }
        _ => SinkError::Failed(e.to_string()),
    }
}

impl Sink for KafkaSink {
    fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    fn send(&self, record: OutRecord) -> BoxFuture<'static, Result<(), SinkError>> {
        let producer = self.producer.clone();
        Box::pin(async move {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (key, value) in &record.headers {
                headers = headers.insert(KafkaHeader {
                    key,
                    value: value.as_deref(),
                });
            }
            let mut out: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&record.topic).headers(headers);
            if let Some(k) = record.key.as_deref() {
                out = out.key(k);
            }
            if let Some(v) = record.value.as_deref() {
                out = out.payload(v);
            }
            producer
                .send(out, Duration::from_secs(30)) // waiting for queue space
                .await
                .map(|_| ())
                .map_err(|(e, _)| classify(&e))
        })
    }
}

/// How [`park`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Park {
    /// Acknowledged by the cluster.
    Written,
    /// Cancelled (the partition was revoked or the worker stopped) before it was acknowledged.
    Cancelled,
    /// Not written: the record is over the producer's limit or the cluster refused it as too
    /// large.
    TooLarge(String),
    /// Not written within the time limit; the last error.
    TimedOut(String),
}

/// Writes `record` through `sink`, retrying failures with capped backoff for up to `limit`
/// (`None`: no limit), counting each failed try in `errors`. A record over the sink's size
/// limit is not sent at all.
pub async fn park(
    sink: &dyn Sink,
    record: OutRecord,
    cancel: &CancellationToken,
    limit: Option<Duration>,
    errors: &Counter,
) -> Park {
    let size = record.size();
    if size > sink.max_record_bytes() {
        errors.inc();
        return Park::TooLarge(format!(
            "{size} bytes with headers, over the producer's message.max.bytes of {}",
            sink.max_record_bytes()
        ));
    }
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return Park::Cancelled,
            r = sink.send(record.clone()) => r,
        };
        let error = match attempt {
            Ok(()) => return Park::Written,
            Err(SinkError::TooLarge(e)) => {
                errors.inc();
                return Park::TooLarge(e);
            }
            Err(SinkError::Failed(e)) => e,
        };
        errors.inc();
        let elapsed = started.elapsed();
        if limit.is_some_and(|limit| elapsed + backoff > limit) {
            return Park::TimedOut(error);
        }
        tracing::warn!(topic = %record.topic, %error, ?backoff, ?elapsed, "writing a record failed; retrying");
        tokio::select! {
            _ = cancel.cancelled() => return Park::Cancelled,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Creates the topics that do not exist yet (existing ones are left alone).
pub async fn ensure_topics(
    config: &ClientConfig,
    topics: &[String],
    partitions: i32,
) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = config.create().map_err(|e| e.to_string())?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(-1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new, &options)
        .await
        .map_err(|e| e.to_string())?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(format!("creating topic {topic}: {code}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Flaky {
        failures: usize,
        calls: Arc<AtomicUsize>,
    }

    impl Sink for Flaky {
        fn send(&self, _: OutRecord) -> BoxFuture<'static, Result<(), SinkError>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let fail = n < self.failures;
            Box::pin(async move {
                if fail {
                    Err(SinkError::Failed("broker down".into()))
                } else {
                    Ok(())
                }
            })
        }

        fn max_record_bytes(&self) -> usize {
            100
        }
    }

    fn out() -> OutRecord {
        OutRecord {
            topic: "dlq".into(),
            key: None,
            value: None,
            headers: vec![],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn park_retries_until_acknowledged() {
        let calls = Arc::new(AtomicUsize::new(0));
        let sink = Flaky {
            failures: 4,
            calls: calls.clone(),
        };
        let errors = Counter::default();
        let parked = park(&sink, out(), &CancellationToken::new(), None, &errors).await;
        assert_eq!(parked, Park::Written);
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        assert_eq!(errors.get(), 4);
    }

    /// Issue 14, item 2: a write that could never succeed was retried every 5 s forever.
    #[tokio::test(start_paused = true)]
    async fn park_gives_up_after_its_time_limit() {
        let calls = Arc::new(AtomicUsize::new(0));
        let sink = Flaky {
            failures: usize::MAX,
            calls: calls.clone(),
        };
        let started = Instant::now();
        let limit = Duration::from_secs(60);
        let errors = Counter::default();
        let parked = park(
            &sink,
            out(),
            &CancellationToken::new(),
            Some(limit),
            &errors,
        )
        .await;
        assert_eq!(parked, Park::TimedOut("broker down".into()));
        assert!(started.elapsed() <= limit, "{:?}", started.elapsed());
        assert!(started.elapsed() >= limit - Duration::from_secs(5));
        assert_eq!(errors.get(), calls.load(Ordering::SeqCst) as u64);
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_over_the_size_limit_is_not_sent() {
        let calls = Arc::new(AtomicUsize::new(0));
        let sink = Flaky {
            failures: 0,
            calls: calls.clone(),
        };
        let big = OutRecord {
            value: Some(bytes::Bytes::from(vec![0u8; 200])),
            ..out()
        };
        let errors = Counter::default();
        let parked = park(&sink, big, &CancellationToken::new(), None, &errors).await;
        assert!(
            matches!(parked, Park::TooLarge(ref e) if e.contains("200 bytes")),
            "{parked:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn park_stops_when_cancelled() {
        let calls = Arc::new(AtomicUsize::new(0));
        let sink = Flaky {
            failures: usize::MAX,
            calls,
        };
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            c.cancel();
        });
        let parked = park(&sink, out(), &cancel, None, &Counter::default()).await;
        assert_eq!(parked, Park::Cancelled);
    }
}
