//! The work of one assigned partition: its unfinished records, where each one is in its life,
//! and the bookkeeping that decides commits, lane releases and backpressure.
//!
//! Owns, for one assignment of one partition (a *generation*): the jobs (fetched, unfinished
//! records), the offset tracker, the ordering scheduler, the pending byte count and the pause and
//! commit state. It does no I/O: the worker (`worker.rs`) acts on what it returns.
//! Invariants:
//! - every job is in the tracker's unfinished set, and vice versa;
//! - a job is finished once, and finishing it is the only way its offset stops holding back the
//!   commit point (`offsets.rs`) and its lane (`ordering.rs`);
//! - `bytes` is the sum of the sizes of the jobs;
//! - events for another generation (a revoked and re-assigned partition) are not applied: the
//!   worker checks the generation before calling in here.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::OrderingMode;
use crate::envelope::{Origin, Record};
use crate::metrics::PartitionMetrics;
use crate::offsets::OffsetTracker;
use crate::ordering::Scheduler;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Behind an unfinished record of its lane.
    Waiting,
    /// In the worker's ready queue.
    Queued,
    /// A delivery attempt is running.
    InFlight,
    /// Waiting for a backoff or its due time.
    Sleeping,
    /// Being written to the retry or dead-letter topic.
    Parking,
}

/// One fetched, unfinished record.
#[derive(Debug)]
pub struct Job {
    pub record: Arc<Record>,
    pub origin: Origin,
    /// Attempts made, including those of earlier rounds.
    pub attempts: u32,
    /// Attempts made since this fetch.
    pub round_attempts: u32,
    pub last_error: String,
    pub stage: Stage,
    /// A retry-topic record whose headers cannot be read: dead-lettered without an attempt.
    pub unreadable: Option<String>,
}

impl Job {
    pub fn new(record: Record, origin: Origin) -> Job {
        Job {
            attempts: origin.attempts,
            last_error: origin.last_error.clone(),
            record: Arc::new(record),
            origin,
            round_attempts: 0,
            stage: Stage::Waiting,
            unreadable: None,
        }
    }
}

/// What [`PartitionWork::admit`] did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// It may be delivered now (its stage is `Queued`).
    Ready,
    /// It waits for its lane (stage `Waiting`).
    Waiting,
    /// Refetched: already tracked in this generation; ignored.
    Duplicate,
}

/// Backpressure limits of one partition.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_records: usize,
    pub max_bytes: usize,
}

/// See the module docs.
pub struct PartitionWork {
    pub generation: u64,
    /// Cancelled on revocation: timers, attempts and writes of this generation stop.
    pub cancel: CancellationToken,
    pub paused: bool,
    pub last_committed: Option<i64>,
    pub metrics: PartitionMetrics,
    tracker: OffsetTracker,
    scheduler: Scheduler,
    jobs: HashMap<i64, Job>,
    bytes: usize,
}

impl PartitionWork {
    pub fn new(
        generation: u64,
        ordering: OrderingMode,
        cancel: CancellationToken,
        metrics: PartitionMetrics,
    ) -> Self {
        PartitionWork {
            generation,
            cancel,
            paused: false,
            last_committed: None,
            metrics,
            tracker: OffsetTracker::new(),
            scheduler: Scheduler::new(ordering),
            jobs: HashMap::new(),
            bytes: 0,
        }
    }

    /// Starts tracking a fetched record (records must come in offset order).
    pub fn admit(&mut self, mut job: Job) -> Admitted {
        let offset = job.record.offset;
        if self.tracker.add(offset).is_err() {
            return Admitted::Duplicate;
        }
        self.bytes += job.record.size();
        let ready = self.scheduler.admit(job.record.key.as_ref(), offset);
        job.stage = if ready { Stage::Queued } else { Stage::Waiting };
        self.jobs.insert(offset, job);
        if ready {
            Admitted::Ready
        } else {
            Admitted::Waiting
        }
    }

    pub fn job(&self, offset: i64) -> Option<&Job> {
        self.jobs.get(&offset)
    }

    pub fn job_mut(&mut self, offset: i64) -> Option<&mut Job> {
        self.jobs.get_mut(&offset)
    }

    /// Finishes a record. Returns its size, and the next record of its lane, which is now
    /// `Queued`, if any. `None` if the record was not unfinished.
    pub fn finish(&mut self, offset: i64) -> Option<(usize, Option<i64>)> {
        let job = self.jobs.remove(&offset)?;
        self.tracker.finish(offset);
        let size = job.record.size();
        self.bytes -= size;
        let next = self.scheduler.finish(job.record.key.as_ref(), offset);
        if let Some(n) = next {
            if let Some(j) = self.jobs.get_mut(&n) {
                j.stage = Stage::Queued;
            }
        }
        Some((size, next))
    }

    /// The commit point if it moved past the last commit.
    pub fn commit_due(&self) -> Option<i64> {
        let point = self.tracker.commit_point()?;
        (Some(point) > self.last_committed).then_some(point)
    }

    /// The commit point, moved or not.
    pub fn commit_point(&self) -> Option<i64> {
        self.tracker.commit_point()
    }

    pub fn commit_lag(&self) -> i64 {
        self.tracker.commit_lag()
    }

    /// Unfinished records.
    pub fn pending(&self) -> usize {
        self.jobs.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// At or over a limit: fetching should pause.
    pub fn is_full(&self, limits: Limits) -> bool {
        self.jobs.len() >= limits.max_records || self.bytes >= limits.max_bytes
    }

    /// Below half of both limits: fetching may resume (the gap avoids flapping).
    pub fn has_room(&self, limits: Limits) -> bool {
        self.jobs.len() <= limits.max_records / 2 && self.bytes <= limits.max_bytes / 2
    }

    /// Jobs in a stage (for shutdown and tests).
    pub fn count(&self, stage: Stage) -> usize {
        self.jobs.values().filter(|j| j.stage == stage).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, PartitionLabels};
    use bytes::Bytes;

    fn work(mode: OrderingMode) -> PartitionWork {
        let m = Metrics::new();
        let labels = PartitionLabels {
            subscription: "s".into(),
            cluster: "a".into(),
            topic: "t".into(),
            partition: 0,
        };
        PartitionWork::new(1, mode, CancellationToken::new(), m.partition(labels))
    }

    fn job(offset: i64, key: &str, size: usize) -> Job {
        let record = Record {
            topic: "t".into(),
            partition: 0,
            offset,
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
            value: Some(Bytes::from(vec![0u8; size])),
            headers: vec![],
            timestamp_ms: 0,
        };
        let origin = Origin::source(&record, "a");
        Job::new(record, origin)
    }

    #[test]
    fn lanes_commits_and_bytes_follow_finishes() {
        let mut w = work(OrderingMode::Key);
        assert_eq!(w.admit(job(0, "a", 10)), Admitted::Ready);
        assert_eq!(w.admit(job(1, "a", 10)), Admitted::Waiting);
        assert_eq!(w.admit(job(2, "b", 10)), Admitted::Ready);
        assert_eq!(w.admit(job(1, "a", 10)), Admitted::Duplicate);
        assert_eq!(
            w.bytes(),
            33,
            "1-byte key + 10-byte value, three times (the duplicate not counted)"
        );
        assert_eq!(w.commit_due(), Some(0));
        assert_eq!(w.finish(2), Some((11, None)));
        assert_eq!(w.commit_due(), Some(0), "0 and 1 unfinished");
        assert_eq!(w.finish(0), Some((11, Some(1))));
        assert_eq!(w.job(1).unwrap().stage, Stage::Queued);
        assert_eq!(w.finish(0), None, "finished twice");
        w.last_committed = Some(1);
        assert_eq!(w.commit_due(), None, "1 unfinished: nothing new to commit");
        w.finish(1);
        assert_eq!(w.commit_due(), Some(3));
        assert_eq!((w.pending(), w.bytes()), (0, 0));
    }

    #[test]
    fn limits_pause_and_resume_with_hysteresis() {
        let mut w = work(OrderingMode::None);
        let limits = Limits {
            max_records: 4,
            max_bytes: 1_000,
        };
        for o in 0..4 {
            w.admit(job(o, "k", 1));
        }
        assert!(w.is_full(limits));
        w.finish(0);
        assert!(!w.is_full(limits) && !w.has_room(limits));
        w.finish(1);
        assert!(w.has_room(limits));
        w.admit(job(4, "k", 2_000));
        assert!(w.is_full(limits), "bytes over the limit");
    }
}
