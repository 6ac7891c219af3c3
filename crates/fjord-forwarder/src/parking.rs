//! A record leaving memory: its write to the retry topic or the dead-letter topic, and what
//! happens when that write cannot succeed.
//!
//! The policy (docs/forwarder.md, "When the retry or dead-letter topic cannot be written"):
//! - a retry record that is too large for the cluster, or not written within the time limit
//!   (`park_timeout_ms`), goes to the dead-letter topic instead;
//! - a dead-letter record too large for the cluster is written without its value and user headers,
//!   with a `fjord.dropped` header saying why (the original is still in its source topic, at the
//!   position the headers name);
//! - a dead-letter record not written within the time limit is a failure of the subscription: the
//!   caller stops it with an error naming the record and the cause ([`Outcome::Failed`]).
//!
//! Invariants: a record is finished (its offset may be committed) only after one of these writes
//! was acknowledged, so nothing is lost on any path; and no path retries without end, so a write
//! that can never succeed cannot stall its partition silently.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::envelope::OutRecord;
use crate::metrics::SubscriptionMetrics;
use crate::sink::{self, Park, Sink};

/// The records a parked record may become.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The retry record, when the record goes to the retry topic first.
    pub retry: Option<OutRecord>,
    /// The dead-letter record.
    pub dead_letter: OutRecord,
}

/// Where a record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    RetryTopic,
    DeadLetter,
    /// The dead-letter topic, without the value and user headers.
    DeadLetterWithoutPayload,
}

/// How [`park`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Written(Destination),
    /// Cancelled before any write was acknowledged.
    Cancelled,
    /// The dead-letter record could not be written: the subscription cannot go on without losing
    /// the record.
    Failed {
        topic: String,
        error: String,
    },
}

/// Writes `plan` through `sink` by the policy of the module docs. `limit` bounds each write's
/// retries (`None`: retried until written or cancelled).
pub async fn park(
    sink: &dyn Sink,
    plan: Plan,
    cancel: &CancellationToken,
    limit: Option<Duration>,
    metrics: &SubscriptionMetrics,
) -> Outcome {
    let errors = &metrics.park_errors;
    if let Some(retry) = plan.retry {
        let topic = retry.topic.clone();
        match sink::park(sink, retry, cancel, limit, errors).await {
            Park::Written => return Outcome::Written(Destination::RetryTopic),
            Park::Cancelled => return Outcome::Cancelled,
            Park::TooLarge(error) | Park::TimedOut(error) => {
                tracing::warn!(%topic, %error, dead_letter_topic = %plan.dead_letter.topic,
                    "cannot write to the retry topic; writing to the dead-letter topic instead");
            }
        }
    }
    let topic = plan.dead_letter.topic.clone();
    let error = match sink::park(sink, plan.dead_letter.clone(), cancel, limit, errors).await {
        Park::Written => return Outcome::Written(Destination::DeadLetter),
        Park::Cancelled => return Outcome::Cancelled,
        Park::TimedOut(error) => error,
        Park::TooLarge(why) => {
            let small = plan.dead_letter.without_payload(&why);
            tracing::warn!(%topic, %why, "dead-letter record too large; writing it without its value and user headers");
            match sink::park(sink, small, cancel, limit, errors).await {
                Park::Written => {
                    metrics.dead_lettered_without_payload.inc();
                    return Outcome::Written(Destination::DeadLetterWithoutPayload);
                }
                Park::Cancelled => return Outcome::Cancelled,
                Park::TooLarge(e) | Park::TimedOut(e) => e,
            }
        }
    };
    Outcome::Failed { topic, error }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    use bytes::Bytes;
    use futures::future::BoxFuture;
    use parking_lot::Mutex;

    use crate::metrics::Metrics;
    use crate::sink::SinkError;

    /// A cluster whose topics each answer one way; records what it acknowledged.
    #[derive(Default)]
    struct Cluster {
        refuse: HashMap<String, SinkError>,
        max: usize,
        written: Arc<Mutex<Vec<OutRecord>>>,
    }

    impl Sink for Cluster {
        fn send(&self, record: OutRecord) -> BoxFuture<'static, Result<(), SinkError>> {
            let result = match self.refuse.get(&record.topic) {
                Some(e) => Err(e.clone()),
                None => {
                    self.written.lock().push(record);
                    Ok(())
                }
            };
            Box::pin(async move { result })
        }

        fn max_record_bytes(&self) -> usize {
            self.max
        }
    }

    fn record(topic: &str, value: usize) -> OutRecord {
        OutRecord {
            topic: topic.into(),
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from(vec![b'v'; value])),
            headers: vec![
                (
                    "fjord.original.offset".into(),
                    Some(Bytes::from_static(b"7")),
                ),
                ("user".into(), Some(Bytes::from_static(b"u"))),
            ],
        }
    }

    fn plan(value: usize) -> Plan {
        Plan {
            retry: Some(record("retry", value)),
            dead_letter: record("dlq", value),
        }
    }

    const LIMIT: Option<Duration> = Some(Duration::from_secs(30));

    async fn run(cluster: &Cluster, plan: Plan) -> (Outcome, SubscriptionMetrics) {
        let metrics = Metrics::new().subscription("s");
        let outcome = park(cluster, plan, &CancellationToken::new(), LIMIT, &metrics).await;
        (outcome, metrics)
    }

    #[tokio::test(start_paused = true)]
    async fn a_writable_retry_topic_takes_the_record() {
        let cluster = Cluster {
            max: 1_000,
            ..Cluster::default()
        };
        let (outcome, _) = run(&cluster, plan(10)).await;
        assert_eq!(outcome, Outcome::Written(Destination::RetryTopic));
        assert_eq!(cluster.written.lock()[0].topic, "retry");
    }

    /// Issue 14, item 2: a retry topic that does not exist (auto-create off) stalled the
    /// partition forever.
    #[tokio::test(start_paused = true)]
    async fn a_retry_topic_that_cannot_be_written_falls_back_to_the_dead_letter_topic() {
        let cluster = Cluster {
            max: 1_000,
            refuse: [(
                "retry".to_string(),
                SinkError::Failed("UnknownTopicOrPartition".into()),
            )]
            .into(),
            ..Cluster::default()
        };
        let (outcome, metrics) = run(&cluster, plan(10)).await;
        assert_eq!(outcome, Outcome::Written(Destination::DeadLetter));
        assert_eq!(cluster.written.lock()[0], record("dlq", 10));
        assert!(metrics.park_errors.get() > 1);
    }

    /// Issue 14, item 2: a record that fitted its source topic but not, with the headers, the
    /// dead-letter topic was retried forever.
    #[tokio::test(start_paused = true)]
    async fn a_dead_letter_record_too_large_is_written_without_its_payload() {
        let cluster = Cluster {
            max: 500,
            ..Cluster::default()
        };
        let (outcome, metrics) = run(&cluster, plan(490)).await;
        assert_eq!(
            outcome,
            Outcome::Written(Destination::DeadLetterWithoutPayload)
        );
        {
            let written = cluster.written.lock();
            assert_eq!(written.len(), 1);
            assert_eq!(
                (written[0].topic.as_str(), &written[0].value),
                ("dlq", &None)
            );
            assert!(written[0]
                .headers
                .iter()
                .any(|(k, _)| k == crate::envelope::DROPPED));
        }
        assert_eq!(metrics.dead_lettered_without_payload.get(), 1);

        // Refused as too large by the cluster itself (a topic limit below the producer's).
        let cluster = Cluster {
            max: 1_000,
            refuse: [(
                "dlq".to_string(),
                SinkError::TooLarge("MessageSizeTooLarge".into()),
            )]
            .into(),
            ..Cluster::default()
        };
        let (outcome, _) = run(
            &cluster,
            Plan {
                retry: None,
                dead_letter: record("dlq", 10),
            },
        )
        .await;
        // The record without its payload goes to the same topic, which refuses it too: failed.
        assert!(matches!(outcome, Outcome::Failed { ref topic, .. } if topic == "dlq"));
    }

    /// Issue 14, item 2: a dead-letter topic that cannot be written is reported as a failure once
    /// the time limit has passed, instead of being retried silently forever.
    #[tokio::test(start_paused = true)]
    async fn an_unwritable_dead_letter_topic_fails_after_the_limit() {
        let cluster = Cluster {
            max: 1_000,
            refuse: [
                ("retry".to_string(), SinkError::Failed("down".into())),
                (
                    "dlq".to_string(),
                    SinkError::Failed("TopicAuthorizationFailed".into()),
                ),
            ]
            .into(),
            ..Cluster::default()
        };
        let started = tokio::time::Instant::now();
        let (outcome, _) = run(&cluster, plan(10)).await;
        assert_eq!(
            outcome,
            Outcome::Failed {
                topic: "dlq".into(),
                error: "TopicAuthorizationFailed".into()
            }
        );
        let took = started.elapsed();
        assert!(took <= 2 * LIMIT.unwrap(), "{took:?}");
        assert!(cluster.written.lock().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_ends_the_write_without_finishing_the_record() {
        let cluster = Cluster {
            max: 1_000,
            refuse: [("retry".to_string(), SinkError::Failed("down".into()))].into(),
            ..Cluster::default()
        };
        let metrics = Metrics::new().subscription("s");
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            c.cancel();
        });
        let outcome = park(&cluster, plan(10), &cancel, None, &metrics).await;
        assert_eq!(outcome, Outcome::Cancelled);
        assert!(cluster.written.lock().is_empty());
    }
}
