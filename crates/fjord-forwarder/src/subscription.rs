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

use crate::config::SubscriptionConfig;
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

    pub fn is_retry_topic(&self, topic: &str) -> bool {
        self.config.retry_topic.as_deref() == Some(topic)
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
