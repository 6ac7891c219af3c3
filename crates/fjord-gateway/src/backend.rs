//! What the gateway needs from a cluster's producer, as a trait: hand over a record, learn where
//! it was stored; probe the cluster; flush on shutdown.
//!
//! [`crate::kafka`] implements it with librdkafka; tests implement it in memory with injected
//! faults. Contract of [`Producer::send`]: it never blocks, and records handed over one after
//! another by one caller keep that order within a partition of the cluster (this is what per-key
//! order rests on). The record's [`Report`] is completed once the cluster has stored the record,
//! or with the reason it did not; a report dropped without an answer counts as `Unavailable`.
//!
//! Outcomes are collected per round, not per record: the records a batch hands over together
//! share one [`Deliveries`], which wakes its waiter once, when the last of them is answered (or
//! its deadline passes). This keeps the per-record cost of the hot path to filling in a slot: no
//! future, channel, timer or task wake-up per record.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// One message as it goes to a cluster.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    /// The caller's headers followed by the gateway's (`fjord-hlc`, `fjord-gateway`).
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
    pub timestamp_ms: Option<i64>,
    pub partition: Option<i32>,
}

/// Where a cluster stored a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub partition: i32,
    pub offset: i64,
}

/// Why a cluster did not store a record, in the terms the gateway acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No answer in time.
    Timeout,
    /// Connection trouble, no leader, brokers down, the client broken: the cluster is sick.
    Unavailable,
    /// The client's local queue is full (backpressure from this cluster).
    QueueFull,
    /// The record is over the cluster's size limit.
    TooLarge,
    /// The topic or partition does not exist on this cluster.
    UnknownTopicOrPartition,
    /// The cluster refused this record (authorization, policy, invalid record).
    Rejected,
}

impl ErrorKind {
    /// Whether the failure says the cluster is unhealthy (counts against its breaker).
    pub fn is_cluster_failure(self) -> bool {
        matches!(self, Self::Timeout | Self::Unavailable)
    }

    /// Whether another cluster of the group may take the record.
    pub fn retry_elsewhere(self) -> bool {
        matches!(
            self,
            Self::Timeout | Self::Unavailable | Self::QueueFull | Self::UnknownTopicOrPartition
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {detail}")]
pub struct ProduceError {
    pub kind: ErrorKind,
    pub detail: String,
}

impl ProduceError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

/// One record's answer and when it came.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub result: Result<Stored, ProduceError>,
    pub at: Instant,
}

/// The answers to the records of one round, by slot, filled in as the clusters answer.
///
/// Invariant: `pending` counts the reports handed out and not completed, plus one until
/// [`Deliveries::seal`]; it reaches zero exactly once, and that is when the waiter is woken.
#[derive(Debug)]
pub struct Deliveries {
    slots: Mutex<Vec<Option<Delivery>>>,
    pending: AtomicUsize,
    done: Notify,
}

impl Deliveries {
    /// Room for `capacity` records; hand out reports with [`Deliveries::report`], then
    /// [`Deliveries::seal`].
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: Mutex::new(vec![None; capacity]),
            pending: AtomicUsize::new(1),
            done: Notify::new(),
        })
    }

    /// The report of slot `index` (`index` < capacity).
    pub fn report(self: &Arc<Self>, index: usize) -> Report {
        self.pending.fetch_add(1, Ordering::AcqRel);
        Report {
            deliveries: Some(self.clone()),
            index,
        }
    }

    /// No more reports will be handed out.
    pub fn seal(&self) {
        self.release();
    }

    fn release(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }

    fn fill(&self, index: usize, result: Result<Stored, ProduceError>) {
        let at = Instant::now();
        if let Some(slot) = self.slots.lock().get_mut(index) {
            if slot.is_none() {
                *slot = Some(Delivery { result, at });
            }
        }
        self.release();
    }

    /// Waits until every report handed out was completed (true) or `deadline` passed (false).
    /// Call after [`Deliveries::seal`].
    pub async fn wait(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            if self.pending.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, self.done.notified())
                .await
                .is_err()
            {
                return self.pending.load(Ordering::Acquire) == 0;
            }
        }
    }

    /// The answers so far, by slot (`None`: not answered); later answers are dropped.
    pub fn take(&self) -> Vec<Option<Delivery>> {
        std::mem::take(&mut *self.slots.lock())
    }
}

/// Where the answer to one record goes. Dropping it unanswered answers `Unavailable`.
#[derive(Debug)]
pub struct Report {
    deliveries: Option<Arc<Deliveries>>,
    index: usize,
}

impl Report {
    /// Records the cluster's answer.
    pub fn complete(mut self, result: Result<Stored, ProduceError>) {
        if let Some(d) = self.deliveries.take() {
            d.fill(self.index, result);
        }
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if let Some(d) = self.deliveries.take() {
            d.fill(
                self.index,
                Err(ProduceError::new(
                    ErrorKind::Unavailable,
                    "the producer dropped the record unanswered",
                )),
            );
        }
    }
}

/// A long-lived producer for one cluster, shared by every request.
pub trait Producer: Send + Sync + std::fmt::Debug {
    /// Hands a record over; its answer goes to `report` (see the module documentation for the
    /// ordering contract).
    fn send(&self, record: Record<'_>, report: Report);

    /// Checks that the cluster answers a metadata request within `timeout`.
    fn probe(&self, timeout: Duration) -> BoxFuture<'static, Result<(), ProduceError>>;

    /// Waits (at most `timeout`) until every record handed over is stored or failed.
    fn flush(&self, timeout: Duration) -> BoxFuture<'static, ()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: i64) -> Result<Stored, ProduceError> {
        Ok(Stored {
            partition: 0,
            offset,
        })
    }

    #[tokio::test]
    async fn a_round_completes_when_the_last_report_does() {
        let d = Deliveries::new(3);
        let (a, b, c) = (d.report(0), d.report(1), d.report(2));
        d.seal();
        b.complete(at(1));
        let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
        assert!(!d.wait(deadline).await, "two reports still open");
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move {
                d.wait(tokio::time::Instant::now() + Duration::from_secs(10))
                    .await
            })
        };
        a.complete(at(0));
        drop(c); // unanswered: Unavailable
        assert!(waiter.await.unwrap());
        let slots = d.take();
        assert_eq!(slots[0].as_ref().unwrap().result, at(0));
        assert_eq!(slots[1].as_ref().unwrap().result, at(1));
        let dropped = slots[2].as_ref().unwrap().result.clone().unwrap_err();
        assert_eq!(dropped.kind, ErrorKind::Unavailable);
    }

    #[tokio::test]
    async fn answers_after_the_deadline_are_ignored() {
        let d = Deliveries::new(2);
        let (a, b) = (d.report(0), d.report(1));
        d.seal();
        a.complete(at(0));
        assert!(
            !d.wait(tokio::time::Instant::now() + Duration::from_millis(10))
                .await
        );
        let slots = d.take();
        assert!(slots[0].is_some() && slots[1].is_none());
        b.complete(at(1)); // late: nowhere to go, no panic
        assert!(d.take().is_empty());
    }

    #[tokio::test]
    async fn an_empty_round_is_done_once_sealed() {
        let d = Deliveries::new(0);
        d.seal();
        assert!(d.wait(tokio::time::Instant::now()).await);
    }
}
