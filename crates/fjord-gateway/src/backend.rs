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
//!
//! The same answers decide each cluster's [`Verdict`] for its circuit breaker, as they arrive and
//! independently of the waiter: a caller that stops waiting (its deadline passed, it cancelled,
//! its request was dropped) does not hide from the breaker how the cluster answered, or that it
//! did not answer within the attempt timeout ([`Deliveries::expire_at`]).

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

    /// Whether another cluster of the group may take the record. A full client queue is not:
    /// the cluster is healthy and busy, and moving the record would split its key across
    /// healthy clusters; the caller is asked to back off instead.
    pub fn retry_elsewhere(self) -> bool {
        matches!(
            self,
            Self::Timeout | Self::Unavailable | Self::UnknownTopicOrPartition
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {detail}")]
pub struct ProduceError {
    pub kind: ErrorKind,
    pub detail: String,
    /// The cluster may have stored the record anyway (its outcome is unknown): it timed out,
    /// or was lost in flight. False when the record is known not to be stored.
    pub maybe_stored: bool,
}

impl ProduceError {
    /// An error of `kind`; its outcome counts as unknown for timeouts only (see
    /// [`ProduceError::maybe_stored`] to say otherwise).
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            maybe_stored: kind == ErrorKind::Timeout,
        }
    }

    /// Says whether the cluster may have stored the record anyway.
    pub fn maybe_stored(mut self, maybe: bool) -> Self {
        self.maybe_stored = maybe;
        self
    }
}

/// One record's answer and when it came.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub result: Result<Stored, ProduceError>,
    pub at: Instant,
}

/// How one cluster's share of a round went, for its circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every record was answered, and the cluster stored or knowingly refused them; the
    /// slowest stored record took `slowest`.
    Success { slowest: Duration },
    /// A record failed with a cluster failure, or was still unanswered when the round expired
    /// (the attempt timeout passed): the cluster is sick or hung.
    Failure,
    /// Nothing that says how the cluster is: no records, or only a full client queue.
    Nothing,
}

/// Told once how a cluster's share of a round went (the breaker admission of that cluster).
/// Dropping it untold is allowed (the admission is then given back).
pub trait Settle: Send {
    fn settle(self: Box<Self>, verdict: Verdict);
}

/// A cluster's share of a round: its records' answers so far, and whom to tell the verdict.
#[derive(Default)]
struct Share {
    /// Reports of this cluster not yet answered, plus one until [`Deliveries::seal`].
    pending: AtomicUsize,
    tally: Mutex<Tally>,
}

#[derive(Default)]
struct Tally {
    alive: bool,
    failed: bool,
    slowest: Duration,
    /// `None` once settled.
    sink: Option<Box<dyn Settle>>,
}

impl Tally {
    fn verdict(&self) -> Verdict {
        if self.failed {
            Verdict::Failure
        } else if self.alive {
            Verdict::Success {
                slowest: self.slowest,
            }
        } else {
            Verdict::Nothing
        }
    }
}

/// The answers to the records of one round, by slot, filled in as the clusters answer.
///
/// Invariants: `pending` counts the reports handed out and not completed, plus one until
/// [`Deliveries::seal`]; it reaches zero exactly once, and that is when the waiter is woken.
/// Each cluster's share is settled exactly once (its [`Settle`] told the verdict): when its
/// last record is answered, whether or not anyone still waits for the round (a caller that
/// went away does not make the cluster's answers unknown to its breaker), or when the round
/// expires ([`Deliveries::expire_at`]) with records still unanswered, which is a failure. A
/// share dropped unsettled (the round and every report gone) drops its sink, which gives the
/// admission back. Whatever `hold` holds (the request's in-flight bytes) is released when the
/// last report and the round are gone, i.e. when the clusters no longer hold the records.
pub struct Deliveries {
    slots: Mutex<Vec<Option<Delivery>>>,
    pending: AtomicUsize,
    done: Notify,
    started: Instant,
    shares: Vec<Share>,
    /// Shares not settled yet.
    unsettled: AtomicUsize,
    _hold: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliveries")
            .field("pending", &self.pending)
            .field("unsettled", &self.unsettled)
            .finish_non_exhaustive()
    }
}

impl Deliveries {
    /// Room for `capacity` records sent to the clusters of `sinks` (one per cluster, told its
    /// verdict); `hold` lives as long as the round or one of its reports. Hand out reports
    /// with [`Deliveries::report`], then [`Deliveries::seal`].
    pub fn new(
        capacity: usize,
        sinks: Vec<Box<dyn Settle>>,
        hold: Option<Arc<dyn std::any::Any + Send + Sync>>,
    ) -> Arc<Self> {
        let shares: Vec<Share> = sinks
            .into_iter()
            .map(|sink| Share {
                pending: AtomicUsize::new(1),
                tally: Mutex::new(Tally {
                    sink: Some(sink),
                    ..Tally::default()
                }),
            })
            .collect();
        Arc::new(Self {
            slots: Mutex::new(vec![None; capacity]),
            pending: AtomicUsize::new(1),
            done: Notify::new(),
            started: Instant::now(),
            unsettled: AtomicUsize::new(shares.len()),
            shares,
            _hold: hold,
        })
    }

    /// The report of slot `index` (< capacity), a record sent to cluster `share` (< the
    /// number of sinks).
    pub fn report(self: &Arc<Self>, index: usize, share: usize) -> Report {
        self.pending.fetch_add(1, Ordering::AcqRel);
        if let Some(s) = self.shares.get(share) {
            s.pending.fetch_add(1, Ordering::AcqRel);
        }
        Report {
            deliveries: Some(self.clone()),
            index,
            share,
        }
    }

    /// No more reports will be handed out.
    pub fn seal(&self) {
        for share in 0..self.shares.len() {
            self.share_answered(share);
        }
        self.release();
    }

    fn release(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }

    /// One record (or the seal) of `share` is done; settles the share after its last.
    fn share_answered(&self, share: usize) {
        let Some(s) = self.shares.get(share) else {
            return;
        };
        if s.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settle(s, false);
        }
    }

    /// Tells the share's sink its verdict (once); `expired`: unanswered records failed.
    fn settle(&self, share: &Share, expired: bool) {
        let (sink, verdict) = {
            let mut tally = share.tally.lock();
            if expired && share.pending.load(Ordering::Acquire) > 0 {
                tally.failed = true;
            }
            (tally.sink.take(), tally.verdict())
        };
        if let Some(sink) = sink {
            self.unsettled.fetch_sub(1, Ordering::AcqRel);
            sink.settle(verdict);
        }
    }

    fn fill(&self, index: usize, share: usize, result: Result<Stored, ProduceError>) {
        let at = Instant::now();
        if let Some(s) = self.shares.get(share) {
            let mut tally = s.tally.lock();
            match &result {
                Ok(_) => {
                    tally.alive = true;
                    tally.slowest = tally
                        .slowest
                        .max(at.saturating_duration_since(self.started));
                }
                Err(e) if e.kind.is_cluster_failure() => tally.failed = true,
                // A full client queue says nothing about the cluster.
                Err(e) if e.kind == ErrorKind::QueueFull => {}
                // The cluster answered: it is alive.
                Err(_) => tally.alive = true,
            }
        }
        // The breaker hears of the answer before the waiter wakes.
        self.share_answered(share);
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

    /// The answers so far, by slot (`None`: not answered); later answers are dropped from the
    /// slots (they still reach the clusters' verdicts).
    pub fn take(&self) -> Vec<Option<Delivery>> {
        std::mem::take(&mut *self.slots.lock())
    }

    /// Settles now every share with records still unanswered: a failure (the cluster held
    /// them past the attempt timeout).
    pub fn expire(&self) {
        for share in &self.shares {
            self.settle(share, true);
        }
    }

    /// Expires the round at `at` (now, if `at` has passed) unless every share has settled by
    /// then. The timer does not keep the round alive: if the round and all of its reports are
    /// gone before `at`, nothing is left to expire.
    pub fn expire_at(self: &Arc<Self>, at: Instant) {
        if self.unsettled.load(Ordering::Acquire) == 0 {
            return;
        }
        if Instant::now() >= at {
            return self.expire();
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let round = Arc::downgrade(self);
                runtime.spawn(async move {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                    if let Some(round) = round.upgrade() {
                        round.expire();
                    }
                });
            }
            // No timer without a runtime: expire now rather than never.
            Err(_) => self.expire(),
        }
    }
}

/// Where the answer to one record goes. Dropping it unanswered answers `Unavailable` (its
/// outcome unknown: the record may have been sent).
#[derive(Debug)]
pub struct Report {
    deliveries: Option<Arc<Deliveries>>,
    index: usize,
    share: usize,
}

impl Report {
    /// Records the cluster's answer.
    pub fn complete(mut self, result: Result<Stored, ProduceError>) {
        if let Some(d) = self.deliveries.take() {
            d.fill(self.index, self.share, result);
        }
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if let Some(d) = self.deliveries.take() {
            d.fill(
                self.index,
                self.share,
                Err(ProduceError::new(
                    ErrorKind::Unavailable,
                    "the producer dropped the record unanswered",
                )
                .maybe_stored(true)),
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

    /// A sink that keeps what it was told.
    struct Told(Arc<Mutex<Vec<Verdict>>>);

    impl Settle for Told {
        fn settle(self: Box<Self>, verdict: Verdict) {
            self.0.lock().push(verdict);
        }
    }

    type Heard = Arc<Mutex<Vec<Verdict>>>;

    fn sinks(n: usize) -> (Vec<Box<dyn Settle>>, Vec<Heard>) {
        let told: Vec<_> = (0..n).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
        let sinks = told
            .iter()
            .map(|t| Box::new(Told(t.clone())) as Box<dyn Settle>)
            .collect();
        (sinks, told)
    }

    #[tokio::test]
    async fn a_round_completes_when_the_last_report_does() {
        let d = Deliveries::new(3, sinks(1).0, None);
        let (a, b, c) = (d.report(0, 0), d.report(1, 0), d.report(2, 0));
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
        assert!(dropped.maybe_stored);
    }

    #[tokio::test]
    async fn answers_after_the_deadline_are_ignored() {
        let d = Deliveries::new(2, sinks(1).0, None);
        let (a, b) = (d.report(0, 0), d.report(1, 0));
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
        let (s, told) = sinks(1);
        let d = Deliveries::new(0, s, None);
        d.seal();
        assert!(d.wait(tokio::time::Instant::now()).await);
        assert_eq!(*told[0].lock(), vec![Verdict::Nothing]);
    }

    #[tokio::test]
    async fn each_cluster_is_settled_once_by_its_answers_even_after_the_waiter_left() {
        let (s, told) = sinks(3);
        let d = Deliveries::new(4, s, None);
        let reports = [
            d.report(0, 0),
            d.report(1, 1),
            d.report(2, 1),
            d.report(3, 2),
        ];
        d.seal();
        let [r0, r1, r2, r3] = reports;
        r0.complete(at(0));
        assert_eq!(told[0].lock().len(), 1, "settled by its only answer");
        assert!(matches!(told[0].lock()[0], Verdict::Success { .. }));
        // The waiter gives up; the answers still reach the verdicts.
        drop(d.take());
        r1.complete(at(1));
        assert!(
            told[1].lock().is_empty(),
            "one record of cluster 1 still out"
        );
        r2.complete(Err(ProduceError::new(ErrorKind::Timeout, "t")));
        assert_eq!(*told[1].lock(), vec![Verdict::Failure]);
        // A full queue is neither success nor failure.
        r3.complete(Err(ProduceError::new(ErrorKind::QueueFull, "full")));
        assert_eq!(*told[2].lock(), vec![Verdict::Nothing]);
        d.expire();
        assert_eq!(told.iter().map(|t| t.lock().len()).sum::<usize>(), 3);
    }

    #[tokio::test]
    async fn records_still_unanswered_when_the_round_expires_are_a_failure() {
        let (s, told) = sinks(2);
        let d = Deliveries::new(2, s, None);
        let hung = d.report(0, 0);
        let fine = d.report(1, 1);
        d.seal();
        fine.complete(at(0));
        d.expire_at(Instant::now() + Duration::from_millis(20));
        assert!(told[0].lock().is_empty());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(*told[0].lock(), vec![Verdict::Failure]);
        assert!(matches!(told[1].lock()[..], [Verdict::Success { .. }]));
        hung.complete(at(1)); // too late: settled already
        assert_eq!(told[0].lock().len(), 1);
    }

    #[tokio::test]
    async fn what_a_round_holds_is_released_with_its_last_report() {
        let hold: Arc<dyn std::any::Any + Send + Sync> = Arc::new(7u8);
        let weak = Arc::downgrade(&hold);
        let d = Deliveries::new(1, sinks(1).0, Some(hold));
        let r = d.report(0, 0);
        d.seal();
        drop(d);
        assert!(weak.upgrade().is_some(), "a report still holds it");
        r.complete(at(0));
        assert!(weak.upgrade().is_none());
    }
}
