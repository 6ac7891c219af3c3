//! A worker's assigned partitions and the consumer-group callbacks that keep them in step with
//! the assignment.
//!
//! [`State`] maps each assigned partition to its [`PartitionWork`] and hands out generations;
//! [`Context`] is the rdkafka consumer context whose rebalance callbacks add work on assignment
//! and, on revocation, cancel the partition's tasks, commit its commit point synchronously and
//! drop its work, so late events of its in-flight records (tagged with a generation that is never
//! reused) are ignored and nothing more is committed for it by this member. The lock is never
//! held across an `.await` (callbacks are synchronous).
//!
//! Invariants:
//! - the partitions in [`State`] are the consumer's assignment: after a rebalance error (when
//!   librdkafka unassigns without a revocation callback) the work of every partition no longer
//!   assigned is dropped without a commit, and an assignment of a partition still held replaces
//!   its work with a new generation, so an old offset tracker is never reused;
//! - a newly assigned partition is fetched: librdkafka keeps the application's pause flag of a
//!   partition across unassign and assign, so a partition paused for backpressure when it was
//!   revoked would stay paused forever once assigned back; assignment resumes it explicitly;
//! - a revocation of a lost assignment commits nothing (the group has moved on; the new owner's
//!   commits must not be overwritten).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

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

impl State {
    /// Starts work for newly assigned partitions, each with a generation never used before
    /// (`new_work` builds it). A partition already held is stale work of an assignment this
    /// member lost without a revocation: it is replaced, and returned so the caller releases it.
    pub(crate) fn assign(
        &mut self,
        tps: impl IntoIterator<Item = Tp>,
        mut new_work: impl FnMut(&Tp, u64) -> PartitionWork,
    ) -> Vec<(Tp, PartitionWork)> {
        let mut replaced = Vec::new();
        for tp in tps {
            let generation = self.next_generation;
            self.next_generation += 1;
            let work = new_work(&tp, generation);
            if let Some(old) = self.partitions.insert(tp.clone(), work) {
                replaced.push((tp, old));
            }
        }
        replaced
    }

    /// A rebalance completed (an assignment, possibly an empty incremental one): commits sent
    /// during it may have been refused (ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS) without the
    /// worker learning of it, so every held partition's commit point is sent again at the next
    /// commit tick, under the new generation.
    pub(crate) fn rebalanced(&mut self) {
        for work in self.partitions.values_mut() {
            work.last_committed = None;
        }
    }

    /// Forgets that `offset` was committed for `tp` (the commit failed, e.g. with
    /// ILLEGAL_GENERATION while a cooperative rebalance was under way), so that the next commit
    /// tick sends the partition's commit point again. Without this a partition whose last commit
    /// failed kept its lag until another of its records finished. A later commit already sent
    /// (a higher offset) is left alone: it reports its own outcome.
    pub(crate) fn commit_failed(&mut self, tp: &Tp, offset: i64) {
        if let Some(work) = self.partitions.get_mut(tp) {
            if work.last_committed.is_some_and(|last| last <= offset) {
                work.last_committed = None;
            }
        }
    }

    /// Drops the work of every partition not in `assigned` and returns it.
    pub(crate) fn retain_assigned(&mut self, assigned: &HashSet<Tp>) -> Vec<(Tp, PartitionWork)> {
        let gone: Vec<Tp> = self
            .partitions
            .keys()
            .filter(|tp| !assigned.contains(*tp))
            .cloned()
            .collect();
        gone.into_iter()
            .filter_map(|tp| self.partitions.remove(&tp).map(|w| (tp, w)))
            .collect()
    }
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
                tracing::warn!(subscription = %self.sub.name(), cluster = %self.cluster, error = %e,
                    "rebalance error: librdkafka unassigns; dropping the work of what it takes away")
            }
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.assign(consumer, tpl),
            Rebalance::Error(_) => self.reconcile(consumer),
            Rebalance::Revoke(_) => {}
        }
    }

    /// rdkafka 0.39 does not call this for `CommitMode::Async` commits (fede1024/rust-rdkafka
    /// issue 856: it submits them without a reply queue), so a failed asynchronous commit is
    /// not seen here today; the worker recommits after every rebalance and periodically instead
    /// (`State::rebalanced`, `worker.rs`). Kept for when the callback is delivered.
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let whole = result.is_err();
        if let Err(e) = result {
            tracing::warn!(subscription = %self.sub.name(), cluster = %self.cluster, error = %e,
                partitions = offsets.count(), "offset commit failed; retried at the next tick");
        }
        let mut st = self.state.lock();
        for elem in offsets.elements() {
            if let (true, Offset::Offset(offset)) = (whole || elem.error().is_err(), elem.offset())
            {
                st.commit_failed(&(elem.topic().to_string(), elem.partition()), offset);
            }
        }
    }
}

impl Context {
    /// Starts work for the assigned partitions and resumes their fetching.
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let tps: Vec<Tp> = tpl
            .elements()
            .iter()
            .map(|el| (el.topic().to_string(), el.partition()))
            .collect();
        let replaced = {
            let mut st = self.state.lock();
            st.rebalanced();
            st.assign(tps.iter().cloned(), |tp, generation| {
                let metrics = self.metrics.partition(PartitionLabels {
                    subscription: self.sub.name().to_string(),
                    cluster: self.cluster.clone(),
                    topic: tp.0.clone(),
                    partition: tp.1,
                });
                PartitionWork::new(
                    generation,
                    self.sub.ordering_of(&tp.0),
                    self.abort.child_token(),
                    metrics,
                )
            })
        };
        for (tp, work) in &replaced {
            tracing::warn!(subscription = %self.sub.name(), cluster = %self.cluster,
                topic = %tp.0, partition = tp.1, abandoned = work.pending(),
                "assigned a partition whose earlier assignment was lost without a revocation; \
                 starting it afresh");
            self.release(work);
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.resume(tpl) {
                tracing::warn!(subscription = %self.sub.name(), cluster = %self.cluster, error = %e,
                    "resuming newly assigned partitions");
            }
        }
        let added: Vec<String> = tps.iter().map(|(t, p)| format!("{t}/{p}")).collect();
        tracing::info!(subscription = %self.sub.name(), cluster = %self.cluster,
            partitions = ?added, "partitions assigned");
    }

    /// After a rebalance error: drops, without committing, the work of every partition that is
    /// no longer in the consumer's assignment.
    fn reconcile(&self, consumer: &BaseConsumer<Self>) {
        let assigned: HashSet<Tp> = match consumer.assignment() {
            Ok(tpl) => tpl
                .elements()
                .iter()
                .map(|el| (el.topic().to_string(), el.partition()))
                .collect(),
            Err(e) => {
                tracing::warn!(subscription = %self.sub.name(), cluster = %self.cluster, error = %e,
                    "reading the assignment after a rebalance error; dropping all partitions");
                HashSet::new()
            }
        };
        let dropped = self.state.lock().retain_assigned(&assigned);
        let mut abandoned = 0;
        let mut names = Vec::new();
        for (tp, work) in &dropped {
            abandoned += work.pending();
            names.push(format!("{}/{}", tp.0, tp.1));
            self.release(work);
        }
        if !dropped.is_empty() {
            tracing::warn!(subscription = %self.sub.name(), cluster = %self.cluster,
                partitions = ?names, abandoned,
                "partitions unassigned by a rebalance error; their uncommitted records will be delivered again");
        }
    }

    /// Cancels a partition's tasks and forgets its pending records and gauges.
    fn release(&self, work: &PartitionWork) {
        work.cancel.cancel();
        self.sub.remove_pending(work.bytes(), work.pending() as i64);
        self.metrics.remove_partition(&work.metrics.labels);
    }

    /// Commits the revoked partitions' commit points (unless the assignment was lost) and drops
    /// their work.
    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let lost = consumer.assignment_lost();
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
                if let Some(point) = work.commit_point().filter(|_| !lost) {
                    if let Err(e) = commit.add_partition_offset(&tp.0, tp.1, Offset::Offset(point))
                    {
                        tracing::warn!(error = %e, "building the revocation commit");
                    }
                }
                abandoned += work.pending();
                self.release(&work);
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
            partitions = ?revoked, abandoned, lost, "partitions revoked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OrderingMode;
    use crate::envelope::{Origin, Record};
    use crate::partition::Job;

    fn tp(p: i32) -> Tp {
        ("t".to_string(), p)
    }

    fn new_work(m: &Metrics) -> impl FnMut(&Tp, u64) -> PartitionWork + '_ {
        |tp, generation| {
            let labels = PartitionLabels {
                subscription: "s".into(),
                cluster: "a".into(),
                topic: tp.0.clone(),
                partition: tp.1,
            };
            PartitionWork::new(
                generation,
                OrderingMode::Key,
                CancellationToken::new(),
                m.partition(labels),
            )
        }
    }

    fn job(offset: i64) -> Job {
        let record = Record {
            topic: "t".into(),
            partition: 0,
            offset,
            key: None,
            value: None,
            headers: vec![],
            timestamp_ms: 0,
        };
        let origin = Origin::source(&record, "a");
        Job::new(record, origin)
    }

    /// Issue 14, item 3: an assignment of a partition still held (its earlier assignment was
    /// lost in a rebalance error, without a revocation) reused the old offset tracker, whose
    /// unfinished records of the old assignment held the commit point back or let it run ahead.
    #[test]
    fn assigning_a_partition_still_held_starts_a_new_generation() {
        let m = Metrics::new();
        let mut st = State::default();
        assert!(st.assign([tp(0), tp(1)], new_work(&m)).is_empty());
        let old = st.partitions[&tp(0)].generation;
        let work = st.partitions.get_mut(&tp(0)).unwrap();
        work.admit(job(5));
        assert_eq!(work.commit_point(), Some(5));

        let replaced = st.assign([tp(0)], new_work(&m));
        assert_eq!(replaced.len(), 1);
        assert_eq!(replaced[0].1.generation, old);
        let fresh = &st.partitions[&tp(0)];
        assert!(fresh.generation > old, "generations are never reused");
        assert_eq!((fresh.pending(), fresh.commit_point()), (0, None));
    }

    /// Issue 14, item 3: after a rebalance error librdkafka unassigns, but the work of the
    /// partitions it took away stayed, so the worker went on committing for them.
    #[test]
    fn partitions_no_longer_assigned_are_dropped() {
        let m = Metrics::new();
        let mut st = State::default();
        st.assign([tp(0), tp(1), tp(2)], new_work(&m));
        let still: HashSet<Tp> = [tp(1)].into_iter().collect();
        let mut dropped: Vec<i32> = st
            .retain_assigned(&still)
            .into_iter()
            .map(|(tp, _)| tp.1)
            .collect();
        dropped.sort();
        assert_eq!(dropped, [0, 2]);
        assert_eq!(st.partitions.keys().collect::<Vec<_>>(), [&tp(1)]);
        assert_eq!(st.retain_assigned(&HashSet::new()).len(), 1);
        assert!(st.partitions.is_empty());
    }
    /// Found by the rebalance drill (cooperative): a commit refused with ILLEGAL_GENERATION
    /// during a rebalance was recorded as done, so a partition whose records had all finished
    /// kept its lag for good.
    #[test]
    fn a_failed_commit_is_sent_again() {
        let m = Metrics::new();
        let mut st = State::default();
        st.assign([tp(0)], new_work(&m));
        let work = st.partitions.get_mut(&tp(0)).unwrap();
        work.admit(job(5));
        work.finish(5);
        assert_eq!(work.commit_due(), Some(6));
        work.last_committed = Some(6);
        assert_eq!(work.commit_due(), None);

        st.commit_failed(&tp(0), 4); // an older commit failing says nothing about 6
        assert_eq!(st.partitions[&tp(0)].commit_due(), None);
        st.commit_failed(&tp(0), 6);
        assert_eq!(st.partitions[&tp(0)].commit_due(), Some(6));
        st.commit_failed(&tp(9), 6); // a partition no longer held: nothing to do

        // The callback reporting a failure is not delivered for asynchronous commits (see
        // `commit_callback`): a completed rebalance sends every commit point again.
        st.partitions.get_mut(&tp(0)).unwrap().last_committed = Some(6);
        st.rebalanced();
        assert_eq!(st.partitions[&tp(0)].commit_due(), Some(6));
    }
}
