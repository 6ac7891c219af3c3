//! What the workers of one subscription share: settings, the endpoint client, the concurrency
//! and rate limits, the retry policy, the pending-byte budget and the metric handles.
//!
//! Owns the subscription-wide limits. Invariants: at most `concurrency` attempts of the
//! subscription are in flight at once, over all its partitions and clusters (each attempt holds
//! a permit of `permits`); `pending_bytes` is the sum of the pending bytes of every assigned
//! partition of every worker of the subscription.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::config::{OrderingMode, SubscriptionConfig};
use crate::delivery::Deliverer;
use crate::metrics::SubscriptionMetrics;
use crate::partition::Limits;
use crate::ratelimit::RateLimiter;
use crate::retry::RetryPolicy;

/// See the module docs.
pub struct Subscription {
    pub config: SubscriptionConfig,
    pub deliverer: Arc<dyn Deliverer>,
    pub permits: Arc<Semaphore>,
    pub limiter: RateLimiter,
    pub policy: RetryPolicy,
    pub metrics: SubscriptionMetrics,
    pending_bytes: AtomicUsize,
}

impl Subscription {
    pub fn new(
        config: SubscriptionConfig,
        deliverer: Arc<dyn Deliverer>,
        metrics: SubscriptionMetrics,
    ) -> Self {
        Subscription {
            permits: Arc::new(Semaphore::new(config.concurrency)),
            limiter: RateLimiter::new(config.rate_limit),
            policy: RetryPolicy::new(config.retry.clone(), config.retry_topic.is_some()),
            deliverer,
            metrics,
            pending_bytes: AtomicUsize::new(0),
            config,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn partition_limits(&self) -> Limits {
        Limits {
            max_records: self.config.max_pending_records_per_partition,
            max_bytes: self.config.max_pending_bytes_per_partition,
        }
    }

    pub fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.config.delivery_timeout_ms)
    }

    /// How long a write to the retry or dead-letter topic is retried (`None`: no limit).
    pub fn park_timeout(&self) -> Option<Duration> {
        (self.config.park_timeout_ms > 0)
            .then(|| Duration::from_millis(self.config.park_timeout_ms))
    }

    pub fn is_retry_topic(&self, topic: &str) -> bool {
        self.config.retry_topic.as_deref() == Some(topic)
    }

    /// The ordering of a partition of `topic`. Retry-topic partitions keep one record per key in
    /// flight when the subscription orders at all (`key` or `partition`): records of one key
    /// written there are delivered one after the other, as they were in their source partition.
    /// Not `partition` there: records wait in the retry topic until their own due times, and one
    /// waiting record must not hold back the unrelated keys behind it.
    pub fn ordering_of(&self, topic: &str) -> OrderingMode {
        match self.config.ordering {
            OrderingMode::None => OrderingMode::None,
            _ if self.is_retry_topic(topic) => OrderingMode::Key,
            mode => mode,
        }
    }

    pub fn add_pending(&self, bytes: usize, records: i64) {
        self.pending_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.metrics.pending.inc_by(records);
    }

    pub fn remove_pending(&self, bytes: usize, records: i64) {
        self.pending_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.metrics.pending.dec_by(records);
    }

    /// At or over the subscription's byte budget: every partition should pause.
    pub fn is_full(&self) -> bool {
        self.pending_bytes.load(Ordering::Relaxed) >= self.config.max_pending_bytes
    }

    /// Below half the budget: partitions may resume.
    pub fn has_room(&self) -> bool {
        self.pending_bytes.load(Ordering::Relaxed) <= self.config.max_pending_bytes / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ForwarderConfig;
    use crate::metrics::Metrics;
    use crate::outcome::Verdict;
    use crate::proto::Delivery;
    use futures::future::BoxFuture;

    struct Nowhere;

    impl Deliverer for Nowhere {
        fn deliver(&self, _: Delivery, _: Duration) -> BoxFuture<'static, Verdict> {
            Box::pin(async { Verdict::Ack })
        }
    }

    fn subscription(ordering: &str) -> Subscription {
        let config = ForwarderConfig::parse(&format!(
            r#"
            [clusters.a]
            bootstrap = "127.0.0.1:9092"
            [[subscription]]
            name = "s"
            clusters = ["a"]
            topics = ["orders"]
            group_id = "g"
            endpoint = "http://127.0.0.1:50051"
            ordering = "{ordering}"
            retry_topic = "orders.retry"
            dead_letter_topic = "orders.dlq"
            "#
        ))
        .unwrap();
        Subscription::new(
            config.subscriptions[0].clone(),
            Arc::new(Nowhere),
            Metrics::new().subscription("s"),
        )
    }

    /// Issue 14, item 3: retry-topic partitions were always unordered, so two retry records of
    /// one key could be in flight together.
    #[test]
    fn retry_topic_partitions_keep_one_record_per_key_in_flight() {
        let key = subscription("key");
        assert_eq!(key.ordering_of("orders"), OrderingMode::Key);
        assert_eq!(key.ordering_of("orders.retry"), OrderingMode::Key);
        let partition = subscription("partition");
        assert_eq!(partition.ordering_of("orders"), OrderingMode::Partition);
        assert_eq!(partition.ordering_of("orders.retry"), OrderingMode::Key);
        let none = subscription("none");
        assert_eq!(none.ordering_of("orders.retry"), OrderingMode::None);
    }
}
