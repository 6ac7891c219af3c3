//! The embedded coordinator: one process, state in memory, durability through a journal file.
//!
//! One writer thread owns the [`Journal`] and is the only code that changes the [`State`]. A
//! change is decided against the state, appended to the journal and fsynced, and only then
//! applied, so no reader ever sees an effect that a crash could undo. Readers take a short read
//! lock and never wait for disk I/O.
//!
//! Snapshots never stop the writer: once the journal's current segment passes
//! [`SNAPSHOT_AFTER_BYTES`], the writer starts a new segment and hands an O(1) clone of the state
//! (its maps are persistent, see [`State`]) to a snapshot thread, which serializes it and then
//! deletes the segments the snapshot covers; commits go on meanwhile. One snapshot at a time: while
//! one is being written, the current segment just grows.
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

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::RwLock;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

pub use journal::Journal;

use crate::clock::Clock;
use crate::model::*;
use crate::security::{
    AclBinding, AclFilter, AclSnapshot, ScramCredential, ScramMechanism, ScramUser,
};
use crate::state::{check_group_id, expiry_changes, expiry_step, Entry, State};
use crate::{
    AclStore, BrokerRegistry, Coordinator, CoordinatorError, CredentialStore, GroupStore,
    LogLifecycle, MetadataExpiry, ObjectLedger, Result,
};

/// Size of the journal's current segment after which the writer starts a snapshot.
const SNAPSHOT_AFTER_BYTES: u64 = 64 << 20;

type Job = Box<dyn FnOnce(&mut Writer) + Send>;

/// How an [`EmbeddedCoordinator`] on disk snapshots (tests and benchmarks change it).
#[derive(Clone)]
pub(crate) struct Options {
    /// Size of the current journal segment after which a snapshot starts.
    pub snapshot_after_bytes: u64,
    /// Called on the snapshot thread before it writes a snapshot (a test can hold it there).
    pub before_snapshot: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            snapshot_after_bytes: SNAPSHOT_AFTER_BYTES,
            before_snapshot: None,
        }
    }
}

/// A snapshot to write: the state after entry `seq`, and the journal segments it makes obsolete.
struct SnapshotJob {
    dir: PathBuf,
    seq: u64,
    state: State,
    obsolete: Vec<PathBuf>,
}

/// The background thread that writes snapshots, one at a time.
struct Snapshotter {
    jobs: std::sync::mpsc::Sender<SnapshotJob>,
    /// Set while a job is queued or being written.
    busy: Arc<AtomicBool>,
    after_bytes: u64,
}

impl Snapshotter {
    fn start(options: Options) -> Result<Snapshotter> {
        let (jobs, rx) = std::sync::mpsc::channel::<SnapshotJob>();
        let busy = Arc::new(AtomicBool::new(false));
        let done = busy.clone();
        std::thread::Builder::new()
            .name("fjord-snapshot".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    if let Some(hook) = &options.before_snapshot {
                        hook();
                    }
                    let started = std::time::Instant::now();
                    let written = journal::write_snapshot(&job.dir, job.seq, &job.state)
                        .and_then(|()| journal::remove_segments(&job.dir, &job.obsolete));
                    match written {
                        Ok(()) => tracing::info!(
                            seq = job.seq,
                            ms = started.elapsed().as_millis() as u64,
                            "coordinator snapshot written"
                        ),
                        // The segments still hold everything; only compaction was lost, and the
                        // next snapshot retries it.
                        Err(e) => tracing::warn!("snapshot failed, journal keeps growing: {e}"),
                    }
                    drop(job);
                    done.store(false, Ordering::Release);
                }
            })
            .map_err(|e| CoordinatorError::Storage(format!("starting the snapshot thread: {e}")))?;
        Ok(Snapshotter {
            jobs,
            busy,
            after_bytes: options.snapshot_after_bytes,
        })
    }
}

struct Writer {
    /// `None` for a coordinator that keeps its state in memory only ([`EmbeddedCoordinator::in_memory`]).
    journal: Option<Journal>,
    /// `None` with no journal.
    snapshots: Option<Snapshotter>,
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
        self.maybe_snapshot();
        Ok(())
    }

    /// Starts a background snapshot if the journal's current segment is large enough and none
    /// is being written. Costs the writer a new segment and an O(1) clone of the state.
    fn maybe_snapshot(&mut self) {
        let (Some(journal), Some(snapshots)) = (&mut self.journal, &self.snapshots) else {
            return;
        };
        if journal.size_bytes() <= snapshots.after_bytes || snapshots.busy.load(Ordering::Acquire) {
            return;
        }
        let obsolete = match journal.rotate() {
            Ok(obsolete) => obsolete,
            Err(e) => {
                tracing::warn!("starting a journal segment failed, no snapshot for now: {e}");
                return;
            }
        };
        let job = SnapshotJob {
            dir: journal.dir().to_path_buf(),
            seq: journal.seq(),
            state: self.state.read().clone(),
            obsolete,
        };
        snapshots.busy.store(true, Ordering::Release);
        if snapshots.jobs.send(job).is_err() {
            snapshots.busy.store(false, Ordering::Release);
            tracing::warn!("the snapshot thread stopped, journal keeps growing");
        }
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
        Self::open_with_options(dir, clock, Options::default())
    }

    /// [`open_with_clock`](Self::open_with_clock) with snapshot options.
    pub(crate) fn open_with_options(
        dir: &Path,
        clock: Arc<dyn Clock>,
        options: Options,
    ) -> Result<EmbeddedCoordinator> {
        let (journal, mut state) = Journal::open(dir)?;
        // Stores written before index rows were deleted with the log start still hold them.
        state.prune_all_rows(clock.now_ms());
        let state = Arc::new(RwLock::new(state));
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        let mut writer = Writer {
            journal: Some(journal),
            snapshots: Some(Snapshotter::start(options)?),
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
            snapshots: None,
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
}

#[async_trait]
impl ObjectLedger for EmbeddedCoordinator {
    async fn dead_objects(&self, dead_before_ms: i64, limit: usize) -> Result<Vec<DeadObject>> {
        Ok(self.read(|s| s.dead_objects(dead_before_ms, limit)))
    }

    async fn known_objects(&self, keys: Vec<String>) -> Result<BTreeSet<String>> {
        Ok(self.read(|s| {
            keys.into_iter()
                .filter(|key| s.objects.contains_key(key))
                .collect()
        }))
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

    async fn ledger_size(&self) -> Result<LedgerSize> {
        Ok(self.read(|s| LedgerSize {
            index_rows: s.partitions.values().map(|p| p.rows.len() as u64).sum(),
            objects: s.objects.len() as u64,
        }))
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
        let at_ms = self.clock.now_ms();
        self.on_writer(move |w| {
            let (offsets, entry) = w.state.read().decide_delete_records(tp, before, at_ms)?;
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
        let at_ms = self.clock.now_ms();
        let (step, entry) = self.read(|s| s.decide_retention(tp, &limits, max_rows, at_ms))?;
        if entry.is_none() {
            return Ok(step);
        }
        self.on_writer(move |w| {
            let (step, entry) = w
                .state
                .read()
                .decide_retention(tp, &limits, max_rows, at_ms)?;
            if let Some(entry) = entry {
                w.write(entry)?;
            }
            Ok(step)
        })
        .await
    }

    async fn swap_rows(&self, swap: RowSwap) -> Result<SwapOutcome> {
        let at_ms = self.clock.now_ms();
        self.on_writer(move |w| {
            let outcome = w.state.read().decide_swap(&swap)?;
            w.write(Entry::SwapRows {
                swap,
                outcome,
                at_ms,
            })?;
            Ok(outcome)
        })
        .await
    }

    async fn cleaned_to(&self, tp: TopicPartition) -> Result<i64> {
        self.read(|s| s.cleaned_to(tp))
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

#[async_trait]
impl CredentialStore for EmbeddedCoordinator {
    async fn upsert_scram_credential(&self, user: &str, credential: ScramCredential) -> Result<()> {
        let user = user.to_string();
        self.on_writer(move |w| {
            w.decide_and_maybe_write(|s| {
                Ok(s.security
                    .decide_upsert_credential(&user, credential)?
                    .map(Entry::Security))
            })
        })
        .await
        .map(|_| ())
    }

    async fn delete_scram_credential(&self, user: &str, mechanism: ScramMechanism) -> Result<bool> {
        let user = user.to_string();
        self.on_writer(move |w| {
            w.decide_and_maybe_write(|s| {
                Ok(s.security
                    .decide_delete_credential(&user, mechanism)
                    .map(Entry::Security))
            })
        })
        .await
    }

    async fn scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Result<Option<ScramCredential>> {
        Ok(self.read(|s| s.security.credential(user, mechanism)))
    }

    async fn scram_users(&self) -> Result<Vec<ScramUser>> {
        Ok(self.read(|s| s.security.scram_users()))
    }
}

#[async_trait]
impl AclStore for EmbeddedCoordinator {
    async fn create_acls(&self, bindings: Vec<AclBinding>) -> Result<()> {
        self.on_writer(move |w| {
            w.decide_and_maybe_write(|s| {
                Ok(s.security
                    .decide_create_acls(bindings)?
                    .map(Entry::Security))
            })
        })
        .await
        .map(|_| ())
    }

    async fn delete_acls(&self, filters: Vec<AclFilter>) -> Result<Vec<Vec<AclBinding>>> {
        self.on_writer(move |w| {
            let (matched, entry) = w.state.read().security.decide_delete_acls(&filters);
            if let Some(entry) = entry {
                w.write(Entry::Security(entry))?;
            }
            Ok(matched)
        })
        .await
    }

    async fn acls(&self) -> Result<AclSnapshot> {
        Ok(self.read(|s| s.security.acl_snapshot()))
    }

    async fn acl_version(&self) -> Result<i64> {
        Ok(self.read(|s| s.security.acl_version))
    }
}

#[async_trait]
impl crate::QuotaStore for EmbeddedCoordinator {
    async fn alter_client_quotas(
        &self,
        alterations: Vec<crate::quotas::QuotaAlteration>,
    ) -> Result<()> {
        self.on_writer(move |w| {
            w.decide_and_maybe_write(|s| Ok(s.quotas.decide_alter(alterations)?.map(Entry::Quotas)))
        })
        .await
        .map(|_| ())
    }

    async fn client_quotas(&self) -> Result<crate::quotas::QuotaSnapshot> {
        Ok(self.read(|s| s.quotas.snapshot()))
    }

    async fn quota_version(&self) -> Result<i64> {
        Ok(self.read(|s| s.quotas.version))
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

    fn one_batch(tp: TopicPartition, key: &str) -> FlushCommit {
        FlushCommit {
            object_key: key.into(),
            object_size: 10,
            timestamp_ms: 1,
            batches: vec![CommitBatch {
                tp,
                position: 0,
                length: 10,
                offset_count: 1,
                max_timestamp: 1,
                producer: None,
                append: 0,
            }],
        }
    }

    /// A snapshot held on its thread (as a slow disk would) does not hold commits: they complete
    /// while it is being written, and everything is there after a reopen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_complete_while_a_snapshot_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let entered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = parking_lot::Mutex::new(held);
        let hook_entered = entered.clone();
        let options = Options {
            // Every write starts a snapshot when none is running.
            snapshot_after_bytes: 0,
            before_snapshot: Some(Arc::new(move || {
                hook_entered.fetch_add(1, Ordering::SeqCst);
                let _ = held.lock().recv_timeout(std::time::Duration::from_secs(30));
            })),
        };
        let c = EmbeddedCoordinator::open_with_options(dir.path(), crate::clock::system(), options)
            .unwrap();
        let t = c
            .create_topic(TopicSpec {
                name: "t".into(),
                partitions: 1,
                configs: Default::default(),
            })
            .await
            .unwrap();
        let tp = TopicPartition {
            topic_id: t.id,
            partition: 0,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while entered.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "no snapshot started");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        for i in 0..20 {
            let commit = c.commit(one_batch(tp, &format!("o{i}")));
            let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), commit)
                .await
                .unwrap_or_else(|_| panic!("commit {i} waited for the snapshot"))
                .unwrap();
            assert_eq!(outcome, vec![BatchOutcome::Appended { base_offset: i }]);
        }
        assert_eq!(entered.load(Ordering::SeqCst), 1, "one snapshot at a time");
        release.send(()).unwrap();
        // The snapshot finishes: it deletes the segments it covers, leaving the current one.
        while journal::segments(dir.path()).unwrap().len() > 1 {
            assert!(std::time::Instant::now() < deadline + std::time::Duration::from_secs(20));
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        drop(c);
        let reopened = EmbeddedCoordinator::open(dir.path()).unwrap();
        let offsets = reopened.partition_offsets(tp).await.unwrap();
        assert_eq!(offsets.high_watermark, 20);
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
