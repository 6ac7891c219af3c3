//! The embedded coordinator: one process, state in memory, durability through a journal file.
//!
//! One writer thread owns the [`Journal`] and is the only code that changes the [`State`]. A
//! change is decided against the state, appended to the journal and fsynced, and only then
//! applied, so no reader ever sees an effect that a crash could undo. Readers take a short read
//! lock and never wait for disk I/O.
//!
//! If a journal write fails, the state on disk is unknown, so the coordinator refuses every
//! further write ([`CoordinatorError::Unavailable`]); a restart recovers from the journal. (An
//! entry the journal refuses before writing, as too large, fails only its own call.)
//!
//! The live-broker registry is the exception: it is kept in memory only and never journaled (see
//! the `brokers` module). The one broker an embedded coordinator serves lives in the same process,
//! so its registration cannot outlive a restart anyway, and journaling each lease renewal would
//! grow the journal by an fsynced entry per broker every few seconds for no gain.

mod brokers;
mod journal;
mod overlay;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::RwLock;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

pub use journal::Journal;

use crate::clock::Clock;
use crate::model::*;
use crate::state::{check_group_id, expiry_changes, expiry_step, Entry, State};
use crate::{
    BrokerRegistry, Coordinator, CoordinatorError, GroupStore, LogLifecycle, MetadataExpiry, Result,
};

/// Journal size after which the writer folds it into a new snapshot.
const SNAPSHOT_AFTER_BYTES: u64 = 64 << 20;

type Job = Box<dyn FnOnce(&mut Writer) + Send>;

struct Writer {
    /// `None` for a coordinator that keeps its state in memory only ([`EmbeddedCoordinator::in_memory`]).
    journal: Option<Journal>,
    state: Arc<RwLock<State>>,
    failed: Option<String>,
}

impl Writer {
    /// Makes `entry` durable, then applies it.
    fn write(&mut self, entry: Entry) -> Result<()> {
        self.write_all(vec![entry])
    }

    /// Makes `entries` durable with one journal sync, then applies them in order.
    fn write_all(&mut self, entries: Vec<Entry>) -> Result<()> {
        if let Some(reason) = &self.failed {
            return Err(CoordinatorError::Unavailable(reason.clone()));
        }
        let appended = match &mut self.journal {
            Some(journal) => journal.append_all(&entries),
            None => Ok(()),
        };
        if let Err(e) = appended {
            if matches!(e, CoordinatorError::Invalid(_)) {
                // Refused before anything was written (an entry too large to replay).
                return Err(e);
            }
            let reason = format!("journal write failed, restart to recover: {e}");
            tracing::error!("{reason}");
            self.failed = Some(reason);
            return Err(e);
        }
        {
            let mut state = self.state.write();
            for entry in &entries {
                state.apply(entry);
            }
        }
        if let Some(journal) = &mut self.journal {
            if journal.size_bytes() > SNAPSHOT_AFTER_BYTES {
                let state = self.state.read();
                if let Err(e) = journal.snapshot(&state) {
                    // The journal still holds everything; only compaction was lost.
                    tracing::warn!("snapshot failed, journal keeps growing: {e}");
                }
            }
        }
        Ok(())
    }

    fn decide_and_write(&mut self, decide: impl FnOnce(&State) -> Result<Entry>) -> Result<Entry> {
        let entry = decide(&self.state.read())?;
        self.write(entry.clone())?;
        Ok(entry)
    }

    /// Like [`decide_and_write`](Self::decide_and_write) for changes that may turn out to be
    /// no-ops (`None`: nothing is written). Returns whether an entry was written.
    fn decide_and_maybe_write(
        &mut self,
        decide: impl FnOnce(&State) -> Result<Option<Entry>>,
    ) -> Result<bool> {
        let entry = decide(&self.state.read())?;
        match entry {
            Some(entry) => {
                self.write(entry)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Where writes run: the writer thread (a journal on disk), or inline in the caller (in memory).
#[derive(Clone)]
enum Jobs {
    Thread(mpsc::UnboundedSender<Job>),
    Inline(Arc<parking_lot::Mutex<Writer>>),
}

/// The embedded coordinator. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedCoordinator {
    state: Arc<RwLock<State>>,
    jobs: Jobs,
    /// Live brokers; in memory only (clones share it).
    brokers: Arc<brokers::Registry>,
    /// Times topic deletions and broker leases.
    clock: Arc<dyn Clock>,
}

impl EmbeddedCoordinator {
    /// Opens (or creates) the coordinator whose files live in `dir`.
    pub fn open(dir: &Path) -> Result<EmbeddedCoordinator> {
        Self::open_with_clock(dir, crate::clock::system())
    }

    /// [`open`](Self::open) with the clock that times topic deletions and broker leases.
    pub fn open_with_clock(dir: &Path, clock: Arc<dyn Clock>) -> Result<EmbeddedCoordinator> {
        let (journal, state) = Journal::open(dir)?;
        let state = Arc::new(RwLock::new(state));
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        let mut writer = Writer {
            journal: Some(journal),
            state: state.clone(),
            failed: None,
        };
        std::thread::Builder::new()
            .name("fjord-coordinator".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    job(&mut writer);
                }
            })
            .map_err(|e| CoordinatorError::Storage(format!("starting the writer thread: {e}")))?;
        Ok(EmbeddedCoordinator {
            state,
            jobs: Jobs::Thread(jobs),
            brokers: Arc::default(),
            clock,
        })
    }

    /// A coordinator whose state lives in memory only, lost with it, and whose writes run
    /// inline in the calling task rather than on a thread: with Tokio's current-thread runtime
    /// and a paused clock, everything a test or simulation does happens in one deterministic
    /// order.
    pub fn in_memory(clock: Arc<dyn Clock>) -> EmbeddedCoordinator {
        let state = Arc::new(RwLock::new(State::default()));
        let writer = Writer {
            journal: None,
            state: state.clone(),
            failed: None,
        };
        EmbeddedCoordinator {
            state,
            jobs: Jobs::Inline(Arc::new(parking_lot::Mutex::new(writer))),
            brokers: Arc::default(),
            clock,
        }
    }

    /// Runs `job` on the writer thread and waits for its answer.
    async fn on_writer<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Writer) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let jobs = match &self.jobs {
            Jobs::Thread(jobs) => jobs,
            // No I/O: the job is a few microseconds of deciding and applying.
            Jobs::Inline(writer) => return job(&mut writer.lock()),
        };
        let (tx, rx) = oneshot::channel();
        jobs.send(Box::new(move |w: &mut Writer| {
            let _ = tx.send(job(w));
        }))
        .map_err(|_| CoordinatorError::Unavailable("coordinator writer stopped".into()))?;
        rx.await
            .map_err(|_| CoordinatorError::Unavailable("coordinator writer stopped".into()))?
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.read())
    }

    fn topic_meta(&self, name: &str) -> Result<TopicMeta> {
        self.read(|s| s.topics.get(name).cloned())
            .ok_or_else(|| CoordinatorError::UnknownTopic(name.to_string()))
    }
}

#[async_trait]
impl Coordinator for EmbeddedCoordinator {
    async fn create_topic(&self, spec: TopicSpec) -> Result<TopicMeta> {
        let entry = self
            .on_writer(move |w| w.decide_and_write(|s| s.decide_create_topic(spec, Uuid::new_v4())))
            .await?;
        match entry {
            Entry::CreateTopic(meta) => Ok(meta),
            other => Err(CoordinatorError::Corrupt(format!(
                "unexpected entry {other:?}"
            ))),
        }
    }

    async fn delete_topic(&self, name: &str) -> Result<TopicMeta> {
        let name = name.to_string();
        let at_ms = self.clock.now_ms();
        self.on_writer(move |w| {
            let meta = w
                .state
                .read()
                .topics
                .get(&name)
                .cloned()
                .ok_or_else(|| CoordinatorError::UnknownTopic(name.clone()))?;
            w.write(Entry::DeleteTopic { name, at_ms })?;
            Ok(meta)
        })
        .await
    }

    async fn create_partitions(&self, name: &str, new_total: i32) -> Result<TopicMeta> {
        let owned = name.to_string();
        self.on_writer(move |w| w.decide_and_write(|s| s.decide_partitions(&owned, new_total)))
            .await?;
        self.topic_meta(name)
    }

    async fn alter_topic_configs(
        &self,
        name: &str,
        changes: Vec<(String, Option<String>)>,
    ) -> Result<TopicMeta> {
        let owned = name.to_string();
        self.on_writer(move |w| w.decide_and_write(|s| s.decide_configs(&owned, changes)))
            .await?;
        self.topic_meta(name)
    }

    async fn list_topics(&self) -> Result<Vec<TopicMeta>> {
        Ok(self.read(|s| s.topics.values().cloned().collect()))
    }

    async fn topic(&self, name: &str) -> Result<Option<TopicMeta>> {
        Ok(self.read(|s| s.topics.get(name).cloned()))
    }

    async fn topic_by_id(&self, id: Uuid) -> Result<Option<TopicMeta>> {
        Ok(self.read(|s| s.topic_by_id(id).cloned()))
    }

    async fn commit(&self, flush: FlushCommit) -> Result<Vec<BatchOutcome>> {
        let mut outcomes = self.commit_many(vec![flush]).await?;
        outcomes
            .pop()
            .ok_or_else(|| CoordinatorError::Storage("a commit decided nothing".into()))
    }

    async fn commit_many(&self, flushes: Vec<FlushCommit>) -> Result<Vec<Vec<BatchOutcome>>> {
        self.on_writer(move |w| {
            let (entries, outcomes) = {
                let state = w.state.read();
                overlay::decide_in_order(&state, flushes)?
            };
            w.write_all(entries)?;
            Ok(outcomes)
        })
        .await
    }

    async fn partition_offsets(&self, tp: TopicPartition) -> Result<PartitionOffsets> {
        self.read(|s| s.partition_offsets(tp))
    }

    async fn index_rows(
        &self,
        tp: TopicPartition,
        from_offset: i64,
        max_bytes: u64,
    ) -> Result<Vec<IndexRow>> {
        self.read(|s| s.index_rows(tp, from_offset, max_bytes))
    }

    async fn row_for_timestamp(
        &self,
        tp: TopicPartition,
        timestamp: i64,
    ) -> Result<Option<IndexRow>> {
        self.read(|s| s.row_for_timestamp(tp, timestamp))
    }

    async fn row_with_max_timestamp(&self, tp: TopicPartition) -> Result<Option<IndexRow>> {
        self.read(|s| s.row_with_max_timestamp(tp))
    }

    async fn init_producer_id(&self, request: InitProducer) -> Result<ProducerIdentity> {
        let now_ms = self.clock.now_ms();
        self.on_writer(move |w| {
            let (identity, entry) = w.state.read().decide_producer(request, now_ms)?;
            if let Some(entry) = entry {
                w.write(entry)?;
            }
            Ok(identity)
        })
        .await
    }

    async fn object_references(&self) -> Result<ObjectReferences> {
        Ok(self.read(|s| s.object_references()))
    }

    async fn forget_objects(&self, keys: Vec<String>) -> Result<()> {
        self.on_writer(move |w| w.write(Entry::ForgetObjects(keys)))
            .await
    }

    async fn raise_commit_watermark(&self, at_ms: i64) -> Result<i64> {
        self.on_writer(move |w| {
            if at_ms > w.state.read().commit_watermark_ms {
                w.write(Entry::CommitWatermark { at_ms })?;
            }
            Ok(w.state.read().commit_watermark_ms)
        })
        .await
    }
}

#[async_trait]
impl GroupStore for EmbeddedCoordinator {
    async fn commit_offsets(
        &self,
        group: &str,
        offsets: Vec<CommittedOffset>,
        fence: Option<i64>,
    ) -> Result<()> {
        let group = group.to_string();
        self.on_writer(move |w| {
            w.decide_and_maybe_write(|s| s.decide_commit_offsets(&group, offsets, fence))
        })
        .await
        .map(|_| ())
    }

    async fn fetch_offsets(&self, group: &str) -> Result<Vec<CommittedOffset>> {
        check_group_id(group)?;
        Ok(self.read(|s| {
            s.groups
                .get(group)
                .map(|g| g.committed_offsets())
                .unwrap_or_default()
        }))
    }

    async fn delete_offsets(
        &self,
        group: &str,
        partitions: Vec<(String, i32)>,
        fence: Option<i64>,
    ) -> Result<()> {
        let group = group.to_string();
        self.on_writer(move |w| {
            w.decide_and_maybe_write(|s| s.decide_delete_offsets(&group, partitions, fence))
        })
        .await
        .map(|_| ())
    }

    async fn save_group(&self, group: &str, expected: i64, state: Vec<u8>) -> Result<i64> {
        let group = group.to_string();
        let now_ms = self.clock.now_ms();
        // Not `decide_and_write`: that would copy the blob once more to return the entry.
        self.on_writer(move |w| {
            let (entry, version) = w
                .state
                .read()
                .decide_save_group(&group, expected, state, now_ms)?;
            w.write(entry)?;
            Ok(version)
        })
        .await
    }

    async fn load_group(&self, group: &str) -> Result<Option<StoredGroup>> {
        check_group_id(group)?;
        Ok(self.read(|s| {
            let g = s.groups.get(group)?;
            Some(StoredGroup {
                state: g.state.clone()?,
                version: g.version,
                saved_ms: g.saved_ms,
            })
        }))
    }

    async fn group_exists(&self, group: &str) -> Result<bool> {
        check_group_id(group)?;
        Ok(self.read(|s| s.groups.contains_key(group)))
    }

    async fn list_groups(&self) -> Result<Vec<String>> {
        Ok(self.read(|s| s.groups.keys().cloned().collect()))
    }

    async fn delete_group(&self, group: &str, fence: Option<i64>) -> Result<bool> {
        let group = group.to_string();
        self.on_writer(move |w| w.decide_and_maybe_write(|s| s.decide_delete_group(&group, fence)))
            .await
    }
}

#[async_trait]
impl LogLifecycle for EmbeddedCoordinator {
    async fn delete_records(&self, tp: TopicPartition, before: i64) -> Result<PartitionOffsets> {
        self.on_writer(move |w| {
            let (offsets, entry) = w.state.read().decide_delete_records(tp, before)?;
            if let Some(entry) = entry {
                w.write(entry)?;
            }
            Ok(offsets)
        })
        .await
    }

    async fn apply_retention(
        &self,
        tp: TopicPartition,
        limits: RetentionLimits,
        max_rows: usize,
    ) -> Result<RetentionStep> {
        // Most calls find nothing to expire: decide under the read lock first, and queue on the
        // writer (behind commits) only to advance. There it is decided again, so nothing lands
        // between deciding and writing.
        let (step, entry) = self.read(|s| s.decide_retention(tp, &limits, max_rows))?;
        if entry.is_none() {
            return Ok(step);
        }
        self.on_writer(move |w| {
            let (step, entry) = w.state.read().decide_retention(tp, &limits, max_rows)?;
            if let Some(entry) = entry {
                w.write(entry)?;
            }
            Ok(step)
        })
        .await
    }
}

#[async_trait]
impl MetadataExpiry for EmbeddedCoordinator {
    async fn expire_producers(
        &self,
        now_ms: i64,
        expiration_ms: i64,
        max: usize,
    ) -> Result<ProducerExpiryStep> {
        // Decide under the read lock (one scan of all producer memory), and on the writer, behind
        // commits, only recheck the items decided, so commits never wait for the scan.
        let Some(entry) = self.read(|s| s.decide_expire_producers(now_ms, expiration_ms, max))
        else {
            return Ok(ProducerExpiryStep::default());
        };
        let more = max > 0 && expiry_changes(&entry) >= max;
        self.on_writer(move |w| {
            let entry = w
                .state
                .read()
                .recheck_expire_producers(entry, expiration_ms);
            if let Some(entry) = &entry {
                w.write(entry.clone())?;
            }
            Ok(expiry_step(entry.as_ref(), more))
        })
        .await
    }
}

#[async_trait]
impl BrokerRegistry for EmbeddedCoordinator {
    async fn register_broker(
        &self,
        registration: BrokerRegistration,
        lease_ms: i64,
    ) -> Result<LiveBroker> {
        self.brokers
            .register(self.clock.now_ms(), registration, lease_ms)
    }

    async fn renew_broker(
        &self,
        node_id: i32,
        incarnation: Uuid,
        lease_ms: i64,
    ) -> Result<LiveBroker> {
        self.brokers
            .renew(self.clock.now_ms(), node_id, incarnation, lease_ms)
    }

    async fn deregister_broker(&self, node_id: i32, incarnation: Uuid) -> Result<()> {
        self.brokers.deregister(node_id, incarnation);
        Ok(())
    }

    async fn live_brokers(&self) -> Result<Vec<LiveBroker>> {
        Ok(self.brokers.live(self.clock.now_ms()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let counter = std::sync::atomic::AtomicUsize::new(0);
        crate::testsuite::run_all(|| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let path = dir.path().join(format!("c{n}"));
            async move { Arc::new(EmbeddedCoordinator::open(&path).unwrap()) as Arc<dyn Coordinator> }
        })
        .await;
    }

    #[tokio::test]
    async fn conformance_in_memory() {
        crate::testsuite::run_all(|| async {
            Arc::new(EmbeddedCoordinator::in_memory(crate::clock::system())) as Arc<dyn Coordinator>
        })
        .await;
    }

    #[tokio::test]
    async fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        crate::testsuite::durability(|| async {
            Arc::new(EmbeddedCoordinator::open(dir.path()).unwrap()) as Arc<dyn Coordinator>
        })
        .await;
    }
}
