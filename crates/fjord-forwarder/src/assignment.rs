//! A worker's assigned partitions and the consumer-group callbacks that keep them in step with
//! the assignment.
//!
//! [`State`] maps each assigned partition to its [`PartitionWork`] and hands out generations;
//! [`Context`] is the rdkafka consumer context whose rebalance callbacks add work on assignment
//! and, on revocation, cancel the partition's tasks, commit its commit point synchronously and
//! drop its work, so late events of its in-flight records (tagged with a generation that is never
//! reused) are ignored and nothing more is committed for it by this member. The lock is never
//! held across an `.await` (callbacks are synchronous).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::OrderingMode;
use crate::metrics::{Metrics, PartitionLabels};
use crate::partition::PartitionWork;
use crate::subscription::Subscription;

/// A topic partition.
pub(crate) type Tp = (String, i32);

/// The assigned partitions; shared by the event loop and the rebalance callbacks.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) partitions: HashMap<Tp, PartitionWork>,
    pub(crate) next_generation: u64,
}

/// The consumer's context: rebalance callbacks that keep [`State`] in step with the assignment.
pub struct Context {
    pub(crate) state: Arc<Mutex<State>>,
    pub(crate) sub: Arc<Subscription>,
    pub(crate) cluster: String,
    pub(crate) metrics: Arc<Metrics>,
    /// Parent of every partition's token; cancelled when the worker has finished draining.
    pub(crate) abort: CancellationToken,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => self.revoke(consumer, tpl),
            Rebalance::Error(e) => {
                tracing::warn!(subscription = %self.sub.name(), cluster = %self.cluster, error = %e, "rebalance error")
            }
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.assign(tpl);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(subscription = %self.sub.name(), cluster = %self.cluster, error = %e,
                partitions = offsets.count(), "offset commit failed");
        }
    }
}

impl Context {
    fn assign(&self, tpl: &TopicPartitionList) {
        let mut st = self.state.lock();
        let mut added = Vec::new();
        for el in tpl.elements() {
            let tp = (el.topic().to_string(), el.partition());
            if st.partitions.contains_key(&tp) {
                continue;
            }
            let generation = st.next_generation;
            st.next_generation += 1;
            let ordering = if self.sub.is_retry_topic(&tp.0) {
                OrderingMode::None
            } else {
                self.sub.config.ordering
            };
            let metrics = self.metrics.partition(PartitionLabels {
                subscription: self.sub.name().to_string(),
                cluster: self.cluster.clone(),
                topic: tp.0.clone(),
                partition: tp.1,
            });
            let work = PartitionWork::new(generation, ordering, self.abort.child_token(), metrics);
            added.push(format!("{}/{}", tp.0, tp.1));
            st.partitions.insert(tp, work);
        }
        tracing::info!(subscription = %self.sub.name(), cluster = %self.cluster,
            partitions = ?added, "partitions assigned");
    }

    /// Commits the revoked partitions' commit points and drops their work.
    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let mut commit = TopicPartitionList::new();
        let mut abandoned = 0;
        let mut revoked = Vec::new();
        {
            let mut st = self.state.lock();
            for el in tpl.elements() {
                let tp = (el.topic().to_string(), el.partition());
                let Some(work) = st.partitions.remove(&tp) else {
                    continue;
                };
                work.cancel.cancel();
                if let Some(point) = work.commit_point() {
                    if let Err(e) = commit.add_partition_offset(&tp.0, tp.1, Offset::Offset(point))
                    {
                        tracing::warn!(error = %e, "building the revocation commit");
                    }
                }
                abandoned += work.pending();
                self.sub.remove_pending(work.bytes(), work.pending() as i64);
                self.metrics.remove_partition(&work.metrics.labels);
                revoked.push(format!("{}/{}", tp.0, tp.1));
            }
        }
        if commit.count() > 0 {
            if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                tracing::warn!(subscription = %self.sub.name(), cluster = %self.cluster, error = %e,
                    "commit on revocation failed (the records after the last commit will be redelivered)");
            }
        }
        tracing::info!(subscription = %self.sub.name(), cluster = %self.cluster,
            partitions = ?revoked, abandoned, "partitions revoked");
    }
}
