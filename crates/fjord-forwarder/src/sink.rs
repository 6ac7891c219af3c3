//! The producer side: writing records to retry and dead-letter topics, and creating those topics.
//!
//! Owns the [`Sink`] seam (tests substitute it) and its Kafka implementation (an idempotent
//! rdkafka producer with `acks=all`, one per source cluster). Invariants: [`park`] returns only
//! once the record is acknowledged by the cluster, or when cancelled; it retries failures
//! forever with capped backoff, because a record whose retry/dead-letter write failed must stay
//! unfinished (its offset uncommitted) rather than be lost.

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

use crate::envelope::OutRecord;

/// Writes one record and resolves when the cluster acknowledged it.
pub trait Sink: Send + Sync + 'static {
    fn send(&self, record: OutRecord) -> BoxFuture<'static, Result<(), String>>;
}

/// [`Sink`] to a Kafka-compatible cluster.
#[derive(Clone)]
pub struct KafkaSink {
    producer: FutureProducer,
}

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
    pub fn new(mut config: ClientConfig) -> Result<Self, KafkaError> {
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000");
        Ok(KafkaSink {
            producer: config.create()?,
        })
    }
}

impl Sink for KafkaSink {
    fn send(&self, record: OutRecord) -> BoxFuture<'static, Result<(), String>> {
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
                .send(out, Duration::from_secs(30))
                .await
                .map(|_| ())
                .map_err(|(e, _)| e.to_string())
        })
    }
}

/// Writes `record` through `sink`, retrying until it is acknowledged; `false` if cancelled first.
pub async fn park(sink: &dyn Sink, record: OutRecord, cancel: &CancellationToken) -> bool {
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return false,
            r = sink.send(record.clone()) => r,
        };
        match attempt {
            Ok(()) => return true,
            Err(e) => {
                tracing::warn!(topic = %record.topic, error = %e, ?backoff, "writing a record failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return false,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
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
        fn send(&self, _: OutRecord) -> BoxFuture<'static, Result<(), String>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let fail = n < self.failures;
            Box::pin(async move {
                if fail {
                    Err("broker down".into())
                } else {
                    Ok(())
                }
            })
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
        assert!(park(&sink, out(), &CancellationToken::new()).await);
        assert_eq!(calls.load(Ordering::SeqCst), 5);
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
        assert!(!park(&sink, out(), &cancel).await);
    }
}
