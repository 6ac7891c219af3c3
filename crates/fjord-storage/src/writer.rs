//! The write path: one shared write buffer per broker, flushed as one object, committed in order.
//!
//! Produce handlers [`Writer::append`] validated batches and get a receiver for their outcomes.
//! A single task (the *buffer task*) owns the open buffer. It seals the buffer when it holds
//! `flush_bytes`, when `flush_interval` has passed since its first batch, or (with
//! `seal_when_idle`) at once when no other flush is in flight and the store is fast — provided
//! fewer than `max_inflight_flushes` flushes are in flight; otherwise it keeps filling (group
//! commit) up to `max_buffer_bytes`, after which appends wait (backpressure reaches the sockets).
//!
//! "The store is fast" means recent flushes took (seal to answer, a moving average) less than
//! `flush_interval`: then waiting for the interval would be most of a request's latency, and
//! sealing an idle pipeline at once takes it out. That matters most for clients that limit
//! requests in flight per connection (librdkafka's idempotent producer: five, each carrying one
//! partition), whose latency multiplies the broker's answer time. With a slow store (S3: tens of
//! milliseconds per PUT) the rule stays off, so small idle-time objects do not multiply the PUTs
//! and the ordered commits of many small flushes do not queue behind each other's PUT tails.
//!
//! A sealed buffer becomes one object ([`crate::object`]), uploaded by its own task. The
//! *commit task* takes sealed flushes strictly in seal order: it waits for the next flush's
//! upload, then commits it, together with the flushes after it whose uploads have already
//! finished, in one coordinator call ([`Coordinator::commit_many`]: one journal sync or one
//! transaction), then answers their waiters. So flush N is committed before flush N+1 even if
//! N+1's upload finishes first, and per-partition arrival order survives. Only after the commit
//! are produce requests answered.
//!
//! An upload still running after `upload_hedge_after` gets a second, identical PUT of the same
//! key (a hedged request): whichever succeeds first wins. Object-store latency has a long tail,
//! and because commits are in seal order one slow PUT delays every flush behind it; hedging cuts
//! that tail for a few percent more PUTs. Identical content under one key makes the duplicate
//! harmless. Hedges share a budget ([`crate::hedge::HedgeBudget`]): at most a fifth of uploads
//! are hedged, so a store slow from overload does not get twice the PUTs.
//!
//! Uploads and commits are retried with backoff until `retry_deadline`; a flush that still
//! fails answers its waiters with an error (clients retry; idempotent producers are
//! de-duplicated by the coordinator, and a commit is idempotent per object key). An uploaded
//! object whose commit failed is never referenced and is garbage-collected later.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fjord_coordinator::clock::Clock;
use fjord_coordinator::{
    BatchOutcome, CommitBatch, Coordinator, CoordinatorError, FlushCommit, ProducerBatchInfo,
    TopicPartition,
};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::batch::set_log_append_time;
use crate::hedge::Hedger;
use crate::object::ObjectBuilder;
use crate::reader::ReadCache;
use crate::writer_metrics::{observe, WriterMetrics};

/// Hedged PUTs allowed, as a fraction of uploads (after a burst of one per upload slot).
const UPLOAD_HEDGE_FRACTION: f64 = 0.2;

/// Tunables of the write path.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// Seal the buffer once it holds this many bytes.
    pub flush_bytes: usize,
    /// Seal the buffer this long after its first batch arrived.
    pub flush_interval: Duration,
    /// Flushes uploading or committing at once.
    pub max_inflight_flushes: usize,
    /// Seal at once, without waiting for `flush_interval`, when no flush is in flight and recent
    /// flushes took less than `flush_interval`.
    pub seal_when_idle: bool,
    /// Appends wait once the open buffer holds this many bytes.
    pub max_buffer_bytes: usize,
    /// How long uploads and commits are retried before a flush fails.
    pub retry_deadline: Duration,
    /// Start a second, identical PUT when an upload has not finished after this long.
    pub upload_hedge_after: Option<Duration>,
    /// Written into object footers.
    pub broker_id: i32,
}

impl Default for WriterSettings {
    fn default() -> Self {
        WriterSettings {
            flush_bytes: 4 << 20,
            flush_interval: Duration::from_millis(5),
            max_inflight_flushes: 4,
            seal_when_idle: true,
            max_buffer_bytes: 32 << 20,
            retry_deadline: Duration::from_secs(20),
            upload_hedge_after: None,
            broker_id: 0,
        }
    }
}

/// One validated batch to append.
#[derive(Debug, Clone)]
pub struct AppendBatch {
    /// Its partition.
    pub tp: TopicPartition,
    /// The batch bytes, as the producer sent them.
    pub bytes: Bytes,
    /// Offsets it spans.
    pub offset_count: i64,
    /// Its max timestamp (ignored when `log_append_time`).
    pub max_timestamp: i64,
    /// Idempotent-producer fields.
    pub producer: Option<ProducerBatchInfo>,
    /// Stamp the batch with the log-append time.
    pub log_append_time: bool,
}

/// Why an append failed as a whole.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The object could not be uploaded in time.
    #[error("object upload failed: {0}")]
    Upload(String),
    /// The coordinator commit failed.
    #[error("commit failed: {0}")]
    Commit(String),
    /// The writer is shutting down.
    #[error("the broker is shutting down")]
    ShuttingDown,
}

/// What the commit of an append decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// One outcome per batch, in the order given.
    pub outcomes: Vec<BatchOutcome>,
    /// The log-append time of the flush (ms), stamped into `LogAppendTime` batches.
    pub log_append_time_ms: i64,
}

/// The commit of an append, or why none was decided.
pub type AppendResult = Result<Committed, WriteError>;

enum Command {
    Append {
        batches: Vec<AppendBatch>,
        reply: oneshot::Sender<AppendResult>,
    },
    Close(oneshot::Sender<()>),
}

/// Handle for appending; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Command>,
    metrics: Arc<WriterMetrics>,
}

/// Owns the writer's tasks; [`WriterTask::close`] drains them.
pub struct WriterTask {
    tx: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

impl Writer {
    /// Starts the write path on the system clock.
    pub fn start(
        settings: WriterSettings,
        store: Arc<dyn ObjectStore>,
        coordinator: Arc<dyn Coordinator>,
        cache: Arc<ReadCache>,
        commits: Arc<watch::Sender<u64>>,
    ) -> (Writer, WriterTask) {
        Self::start_with_clock(
            settings,
            fjord_coordinator::clock::system(),
            store,
            coordinator,
            cache,
            commits,
        )
    }

    /// Starts the write path; `clock` stamps flushes (log-append time) and names objects.
    pub fn start_with_clock(
        settings: WriterSettings,
        clock: Arc<dyn Clock>,
        store: Arc<dyn ObjectStore>,
        coordinator: Arc<dyn Coordinator>,
        cache: Arc<ReadCache>,
        commits: Arc<watch::Sender<u64>>,
    ) -> (Writer, WriterTask) {
        let (tx, rx) = mpsc::channel(1024);
        let (sealed_tx, sealed_rx) = mpsc::unbounded_channel();
        let metrics = Arc::new(WriterMetrics::default());
        let pace = Arc::new(FlushPace::default());
        let committer = tokio::spawn(commit_loop(
            sealed_rx,
            coordinator,
            cache,
            commits,
            settings.retry_deadline,
            metrics.clone(),
            pace.clone(),
        ));
        let sealer = Sealer {
            settings,
            store,
            clock,
            metrics: metrics.clone(),
            pace,
        };
        let task = tokio::spawn(buffer_loop(sealer, rx, sealed_tx, committer));
        (
            Writer {
                tx: tx.clone(),
                metrics,
            },
            WriterTask { tx, task },
        )
    }

    /// Where the write path spends its time (see [`crate::writer_metrics`]).
    pub fn metrics(&self) -> Arc<WriterMetrics> {
        self.metrics.clone()
    }

    /// Queues batches for the next flush. The receiver yields their outcomes once committed.
    /// Batches of one call land in the same flush, in the order given.
    pub async fn append(
        &self,
        batches: Vec<AppendBatch>,
    ) -> Result<oneshot::Receiver<AppendResult>, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Append { batches, reply })
            .await
            .map_err(|_| WriteError::ShuttingDown)?;
        Ok(rx)
    }
}

impl WriterTask {
    /// Flushes and commits everything buffered, then stops. Later appends fail with
    /// [`WriteError::ShuttingDown`].
    pub async fn close(self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
        let _ = self.task.await;
    }
}

/// A moving average of recent flush times (seal to answer), written by the commit task and read
/// by the buffer task.
#[derive(Default)]
struct FlushPace {
    micros: std::sync::atomic::AtomicU64,
}

impl FlushPace {
    fn record(&self, took: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let old = self.micros.load(Relaxed);
        // Weight 1/8 per flush: a few slow flushes turn idle sealing off, a few fast ones on.
        self.micros.store(old - old / 8 + sample / 8, Relaxed);
    }

    fn recent(&self) -> Duration {
        Duration::from_micros(self.micros.load(std::sync::atomic::Ordering::Relaxed))
    }
}

struct Waiter {
    reply: oneshot::Sender<AppendResult>,
    /// Indices into the buffer's batch list.
    first: usize,
    count: usize,
}

#[derive(Default)]
struct Buffer {
    batches: Vec<AppendBatch>,
    waiters: Vec<Waiter>,
    bytes: usize,
    opened: Option<Instant>,
}

struct Sealed {
    object_key: String,
    object: Bytes,
    commit: FlushCommit,
    /// For each batch of the buffer (arrival order), its index in `commit.batches`.
    placement: Vec<usize>,
    waiters: Vec<Waiter>,
    /// Yields when the upload finished.
    upload: JoinHandle<Result<Instant, WriteError>>,
    /// When the flush's first batch arrived.
    opened: Instant,
    /// When it was sealed.
    sealed_at: Instant,
    _permit: OwnedSemaphorePermit,
}

/// What the buffer task needs to seal buffers into objects.
struct Sealer {
    settings: WriterSettings,
    store: Arc<dyn ObjectStore>,
    clock: Arc<dyn Clock>,
    metrics: Arc<WriterMetrics>,
    pace: Arc<FlushPace>,
}

async fn buffer_loop(
    sealer: Sealer,
    mut rx: mpsc::Receiver<Command>,
    sealed_tx: mpsc::UnboundedSender<Sealed>,
    committer: JoinHandle<()>,
) {
    let Sealer {
        settings,
        metrics,
        pace,
        ..
    } = &sealer;
    let slots = settings.max_inflight_flushes.max(1);
    let permits = Arc::new(Semaphore::new(slots));
    // Uploads share one hedge budget: when the store is slow because it is overloaded, every PUT
    // is slow, and hedging them all would double its load.
    let hedger = Hedger::new(
        settings.upload_hedge_after,
        UPLOAD_HEDGE_FRACTION,
        u32::try_from(slots).unwrap_or(u32::MAX),
        metrics.hedged_uploads.clone(),
    );
    let all_slots = u32::try_from(slots).unwrap_or(u32::MAX);
    let mut buffer = Buffer::default();
    let mut due = false;
    let mut closing: Option<oneshot::Sender<()>> = None;
    loop {
        let full = buffer.bytes >= settings.flush_bytes;
        let deadline = buffer.opened.map(|t| t + settings.flush_interval);
        let want_seal = !buffer.batches.is_empty() && (due || full || closing.is_some());
        let seal_if_idle = settings.seal_when_idle
            && !buffer.batches.is_empty()
            && !want_seal
            && pace.recent() < settings.flush_interval;
        if closing.is_some() && buffer.batches.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            permit = permits.clone().acquire_owned(), if want_seal => {
                let Ok(permit) = permit else { break };
                let sealed = seal(std::mem::take(&mut buffer), &sealer, &hedger, permit);
                due = false;
                if sealed_tx.send(sealed).is_err() {
                    break;
                }
            }
            // Every slot free: nothing is in flight, so waiting would only add latency.
            idle = permits.clone().acquire_many_owned(all_slots), if seal_if_idle => {
                drop(idle);
                due = true;
            }
            () = sleep_until_opt(deadline), if deadline.is_some() && !due => due = true,
            command = rx.recv(), if closing.is_none() && buffer.bytes < settings.max_buffer_bytes => {
                match command {
                    Some(Command::Append { batches, reply }) => {
                        if batches.is_empty() {
                            let _ = reply.send(Ok(Committed {
                                outcomes: Vec::new(),
                                log_append_time_ms: sealer.clock.now_ms(),
                            }));
                            continue;
                        }
                        if buffer.opened.is_none() {
                            buffer.opened = Some(Instant::now());
                        }
                        buffer.waiters.push(Waiter {
                            reply,
                            first: buffer.batches.len(),
                            count: batches.len(),
                        });
                        for b in batches {
                            buffer.bytes += b.bytes.len();
                            buffer.batches.push(b);
                        }
                    }
                    Some(Command::Close(done)) => closing = Some(done),
                    None => closing = Some(oneshot::channel().0),
                }
            }
        }
    }
    // Wait for every flush in flight to be committed and answered.
    drop(sealed_tx);
    let _ = committer.await;
    rx.close();
    while let Ok(command) = rx.try_recv() {
        if let Command::Append { reply, .. } = command {
            let _ = reply.send(Err(WriteError::ShuttingDown));
        }
    }
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn seal(buffer: Buffer, sealer: &Sealer, hedger: &Hedger, permit: OwnedSemaphorePermit) -> Sealed {
    let Sealer {
        settings,
        store,
        clock,
        metrics,
        ..
    } = sealer;
    let now = clock.now_ms();
    let opened = buffer.opened.unwrap_or_else(Instant::now);
    observe(&metrics.buffered, opened.elapsed());
    // Which append (waiter) each batch came from: a partition's batches of one append are
    // committed as a unit.
    let mut append_of = vec![0u32; buffer.batches.len()];
    for (n, waiter) in buffer.waiters.iter().enumerate() {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        for slot in append_of.iter_mut().skip(waiter.first).take(waiter.count) {
            *slot = n;
        }
    }
    // Group batches by partition, keeping arrival order within each (a stable sort).
    let mut order: Vec<usize> = (0..buffer.batches.len()).collect();
    order.sort_by_key(|&i| buffer.batches[i].tp);
    let mut placement = vec![0; buffer.batches.len()];
    let mut builder = ObjectBuilder::with_capacity(buffer.bytes);
    let mut commit_batches = Vec::with_capacity(order.len());
    for (object_index, &i) in order.iter().enumerate() {
        let b = &buffer.batches[i];
        let max_timestamp = if b.log_append_time {
            now
        } else {
            b.max_timestamp
        };
        let (position, bytes) = builder.push(
            b.tp.topic_id,
            b.tp.partition,
            &b.bytes,
            b.offset_count,
            max_timestamp,
        );
        if b.log_append_time {
            set_log_append_time(bytes, now);
        }
        commit_batches.push(CommitBatch {
            tp: b.tp,
            position,
            length: b.bytes.len() as u64,
            offset_count: b.offset_count,
            max_timestamp,
            producer: b.producer,
            append: append_of[i],
        });
        placement[i] = object_index;
    }
    let object = builder.finish(settings.broker_id, now);
    metrics.flush_bytes.observe(object.len() as f64);
    let object_key = crate::gc::object_key(now);
    let upload = tokio::spawn(upload(
        store.clone(),
        object_key.clone(),
        object.clone(),
        settings.retry_deadline,
        hedger.clone(),
        metrics.clone(),
    ));
    Sealed {
        commit: FlushCommit {
            object_key: object_key.clone(),
            object_size: object.len() as u64,
            timestamp_ms: now,
            batches: commit_batches,
        },
        object_key,
        object,
        placement,
        waiters: buffer.waiters,
        upload,
        opened,
        sealed_at: Instant::now(),
        _permit: permit,
    }
}

/// Exponential backoff from 20 ms to 2 s until `deadline`.
struct Backoff {
    delay: Duration,
    deadline: Instant,
}

impl Backoff {
    fn new(limit: Duration) -> Self {
        Backoff {
            delay: Duration::from_millis(20),
            deadline: Instant::now() + limit,
        }
    }

    /// Time left until the deadline.
    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Sleeps before the next attempt; `false` when the deadline has passed.
    async fn wait(&mut self) -> bool {
        if Instant::now() + self.delay > self.deadline {
            return false;
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(2));
        true
    }
}

async fn upload(
    store: Arc<dyn ObjectStore>,
    key: String,
    object: Bytes,
    limit: Duration,
    hedger: Hedger,
    metrics: Arc<WriterMetrics>,
) -> Result<Instant, WriteError> {
    let location = Path::from(key.as_str());
    let mut backoff = Backoff::new(limit);
    let started = Instant::now();
    loop {
        match hedger
            .run(&location, || store.put(&location, object.clone().into()))
            .await
        {
            Ok(_) => {
                observe(&metrics.upload, started.elapsed());
                return Ok(Instant::now());
            }
            Err(e) => {
                tracing::warn!(object = %key, error = %e, "object upload failed");
                if !backoff.wait().await {
                    return Err(WriteError::Upload(e.to_string()));
                }
            }
        }
    }
}

/// Commits `flushes` in one coordinator call, retrying storage errors until `limit`. If the
/// coordinator refuses the group for another reason, its flushes are committed one by one, so
/// that one flush it refuses does not fail the others.
async fn commit_with_retry(
    coordinator: &Arc<dyn Coordinator>,
    flushes: &[&FlushCommit],
    limit: Duration,
) -> Vec<Result<Vec<BatchOutcome>, WriteError>> {
    match commit_group(coordinator, flushes, limit).await {
        Ok(outcomes) if outcomes.len() == flushes.len() => outcomes.into_iter().map(Ok).collect(),
        Ok(_) => {
            let e =
                WriteError::Commit("the coordinator answered a different number of flushes".into());
            flushes.iter().map(|_| Err(e.clone())).collect()
        }
        Err(Failed { error, refused }) if !refused || flushes.len() == 1 => {
            flushes.iter().map(|_| Err(error.clone())).collect()
        }
        Err(_) => {
            let mut results = Vec::with_capacity(flushes.len());
            for flush in flushes {
                results.push(
                    commit_group(coordinator, std::slice::from_ref(flush), limit)
                        .await
                        .map_err(|f| f.error)
                        .and_then(|mut o| {
                            o.pop().ok_or_else(|| {
                                WriteError::Commit("the coordinator answered no flush".into())
                            })
                        }),
                );
            }
            results
        }
    }
}

/// Why a group commit failed.
struct Failed {
    error: WriteError,
    /// The coordinator refused it (not a storage error that outlasted the retries).
    refused: bool,
}

async fn commit_group(
    coordinator: &Arc<dyn Coordinator>,
    flushes: &[&FlushCommit],
    limit: Duration,
) -> Result<Vec<Vec<BatchOutcome>>, Failed> {
    let mut backoff = Backoff::new(limit);
    loop {
        // The coordinator takes the flushes by value: one copy per attempt.
        let attempt = flushes.iter().map(|f| (*f).clone()).collect();
        // An attempt never outlives the deadline (a database stuck on a lock, a partition): the
        // flush fails and its producers retry. A commit that lands anyway is answered with its
        // recorded outcomes when retried, and garbage collection cannot have deleted its
        // object meanwhile (the coordinator's commit watermark, see `crate::gc`).
        let result = tokio::time::timeout(
            backoff.remaining().max(Duration::from_millis(1)),
            coordinator.commit_many(attempt),
        )
        .await
        .unwrap_or_else(|_| {
            Err(CoordinatorError::Storage(
                "commit attempt did not finish before the retry deadline".into(),
            ))
        });
        match result {
            Ok(outcomes) => return Ok(outcomes),
            Err(e) => {
                let first = flushes.first().map(|f| f.object_key.as_str()).unwrap_or("");
                tracing::warn!(object = %first, flushes = flushes.len(), error = %e, "commit failed");
                let retriable = matches!(e, CoordinatorError::Storage(_));
                if !retriable || !backoff.wait().await {
                    return Err(Failed {
                        error: WriteError::Commit(e.to_string()),
                        refused: !retriable,
                    });
                }
            }
        }
    }
}

/// Waits for a sealed flush's upload.
async fn uploaded(sealed: &mut Sealed) -> Result<Instant, WriteError> {
    match (&mut sealed.upload).await {
        Ok(result) => result,
        Err(e) => Err(WriteError::Upload(format!("upload task failed: {e}"))),
    }
}

async fn commit_loop(
    mut sealed_rx: mpsc::UnboundedReceiver<Sealed>,
    coordinator: Arc<dyn Coordinator>,
    cache: Arc<ReadCache>,
    commits: Arc<watch::Sender<u64>>,
    retry_deadline: Duration,
    metrics: Arc<WriterMetrics>,
    pace: Arc<FlushPace>,
) {
    // Sealed flushes in seal order whose turn has not come. At most `max_inflight_flushes` exist
    // (each holds a permit), so this stays short.
    let mut queue: std::collections::VecDeque<Sealed> = std::collections::VecDeque::new();
    loop {
        if queue.is_empty() {
            match sealed_rx.recv().await {
                Some(sealed) => queue.push_back(sealed),
                None => break,
            }
        }
        let Some(mut first) = queue.pop_front() else {
            continue;
        };
        // The next flush in order: wait for its upload; then take along the flushes after it
        // whose uploads have finished meanwhile (group commit).
        let result = uploaded(&mut first).await;
        let mut group = vec![(first, result)];
        while let Ok(sealed) = sealed_rx.try_recv() {
            queue.push_back(sealed);
        }
        while queue.front().is_some_and(|s| s.upload.is_finished()) {
            if let Some(mut next) = queue.pop_front() {
                let result = uploaded(&mut next).await;
                group.push((next, result));
            }
        }

        let mut to_commit = Vec::with_capacity(group.len());
        for (sealed, result) in &group {
            if let Ok(uploaded_at) = result {
                observe(&metrics.commit_queue, uploaded_at.elapsed());
                cache.insert_object(&sealed.object_key, sealed.object.clone());
                to_commit.push(&sealed.commit);
            }
        }
        let mut committed = if to_commit.is_empty() {
            Vec::new()
        } else {
            metrics.flushes_per_commit.observe(to_commit.len() as f64);
            let started = Instant::now();
            let results = commit_with_retry(&coordinator, &to_commit, retry_deadline).await;
            observe(&metrics.commit, started.elapsed());
            results
        }
        .into_iter();
        for (sealed, uploaded) in group {
            let result = match uploaded {
                Ok(_) => committed.next().unwrap_or_else(|| {
                    Err(WriteError::Commit("no commit result for a flush".into()))
                }),
                Err(e) => Err(e),
            };
            answer(sealed, result, &commits, &metrics, &pace);
        }
    }
}

/// Answers a flush's waiters with its commit result.
fn answer(
    sealed: Sealed,
    result: Result<Vec<BatchOutcome>, WriteError>,
    commits: &watch::Sender<u64>,
    metrics: &WriterMetrics,
    pace: &FlushPace,
) {
    let log_append_time_ms = sealed.commit.timestamp_ms;
    if result.is_ok() {
        commits.send_modify(|n| *n += 1);
    } else {
        metrics.failed_flushes.inc();
    }
    for waiter in sealed.waiters {
        let answer = match &result {
            Ok(outcomes) => Ok(Committed {
                outcomes: (waiter.first..waiter.first + waiter.count)
                    .map(|i| {
                        outcomes.get(sealed.placement[i]).copied().unwrap_or(
                            BatchOutcome::Rejected(
                                fjord_coordinator::BatchRejection::UnknownTopicOrPartition,
                            ),
                        )
                    })
                    .collect(),
                log_append_time_ms,
            }),
            Err(e) => Err(e.clone()),
        };
        let _ = waiter.reply.send(answer);
    }
    observe(&metrics.flush, sealed.opened.elapsed());
    pace.record(sealed.sealed_at.elapsed());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::sample_batch;
    use crate::reader::Reader;
    use fjord_coordinator::embedded::EmbeddedCoordinator;
    use fjord_coordinator::TopicSpec;

    /// A writer over an in-memory store and an embedded coordinator with one topic.
    struct Harness {
        writer: Writer,
        task: WriterTask,
        coordinator: Arc<dyn Coordinator>,
        store: Arc<dyn ObjectStore>,
        commits: Arc<watch::Sender<u64>>,
        topic_id: uuid::Uuid,
        _dir: tempfile::TempDir,
    }

    impl Harness {
        async fn start(settings: WriterSettings, partitions: i32) -> Harness {
            let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
            Harness::start_on(settings, partitions, store).await
        }

        async fn start_on(
            settings: WriterSettings,
            partitions: i32,
            store: Arc<dyn ObjectStore>,
        ) -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let coordinator: Arc<dyn Coordinator> =
                Arc::new(EmbeddedCoordinator::open(dir.path()).unwrap());
            let topic = coordinator
                .create_topic(TopicSpec {
                    name: "t".into(),
                    partitions,
                    configs: Default::default(),
                })
                .await
                .unwrap();
            let commits = Arc::new(watch::channel(0).0);
            let (writer, task) = Writer::start(
                settings,
                store.clone(),
                coordinator.clone(),
                Arc::new(ReadCache::new(1 << 20)),
                commits.clone(),
            );
            Harness {
                writer,
                task,
                coordinator,
                store,
                commits,
                topic_id: topic.id,
                _dir: dir,
            }
        }

        fn tp(&self, partition: i32) -> TopicPartition {
            TopicPartition {
                topic_id: self.topic_id,
                partition,
            }
        }
    }

    /// Append `i` went to partition `i % 2` with `records` records: each partition's appends got
    /// consecutive offsets in append order.
    async fn assert_dense_in_order(receivers: Vec<oneshot::Receiver<AppendResult>>, records: i64) {
        let mut expected = [0i64, 0];
        for (i, rx) in receivers.into_iter().enumerate() {
            let outcomes = rx.await.unwrap().unwrap().outcomes;
            assert_eq!(
                outcomes,
                vec![BatchOutcome::Appended {
                    base_offset: expected[i % 2]
                }],
                "append {i}"
            );
            expected[i % 2] += records;
        }
    }

    #[tokio::test]
    async fn appends_are_committed_in_order_and_readable() {
        let settings = WriterSettings {
            flush_bytes: 200,
            ..Default::default()
        };
        let h = Harness::start(settings, 2).await;
        let (writer, coordinator, store, commits) = (
            h.writer.clone(),
            h.coordinator.clone(),
            h.store.clone(),
            h.commits.clone(),
        );
        let mut receivers = Vec::new();
        for i in 0..50 {
            let tp = h.tp(i % 2);
            let batch = AppendBatch {
                tp,
                bytes: sample_batch(2, -1, -1, i64::from(i)),
                offset_count: 2,
                max_timestamp: i64::from(i),
                producer: None,
                log_append_time: false,
            };
            receivers.push(writer.append(vec![batch]).await.unwrap());
        }
        assert_dense_in_order(receivers, 2).await;
        assert!(
            *commits.borrow() > 1,
            "small flush_bytes forces several flushes"
        );
        let read_tp = h.tp(1);
        h.task.close().await;
        assert!(writer.append(vec![]).await.is_err());

        // Read back through a cold cache: every offset present, in order.
        let reader = Reader::new(store, Arc::new(ReadCache::new(0)));
        let rows = coordinator.index_rows(read_tp, 0, u64::MAX).await.unwrap();
        let mut next = 0;
        for row in rows {
            let raw = reader.read_row(&row).await.unwrap();
            let (bytes, end) =
                crate::batch::materialize(&raw, row.base_offset, 0, usize::MAX).unwrap();
            assert_eq!(end, row.last_offset + 1);
            let first = i64::from_be_bytes(bytes[..8].try_into().unwrap());
            assert_eq!(first, next);
            next = end;
        }
        assert_eq!(next, 50);
    }

    /// Uploads with a long latency tail finish out of order; the flushes uploaded behind a slow
    /// one are committed together with it (group commit), still in seal order.
    #[tokio::test]
    async fn flushes_uploaded_behind_a_slow_one_commit_with_it_in_order() {
        let slow_tail = crate::instrumented::LatencyModel::parse("put=5/200").unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(crate::instrumented::InstrumentedStore::new(
            Arc::new(object_store::memory::InMemory::new()),
            Some(slow_tail),
        ));
        let settings = WriterSettings {
            flush_bytes: 1,
            seal_when_idle: false,
            ..Default::default()
        };
        let h = Harness::start_on(settings, 2, store).await;
        let mut receivers = Vec::new();
        for i in 0..120 {
            receivers.push(h.writer.append(vec![batch(h.tp(i % 2))]).await.unwrap());
            // Spread the appends over many flushes.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_dense_in_order(receivers, 1).await;
        let mut registry = prometheus_client::registry::Registry::default();
        h.writer.metrics().register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        let flushes = value("fjord_write_flushes_per_commit_sum ");
        let calls = value("fjord_write_flushes_per_commit_count ");
        assert_eq!(
            flushes,
            *h.commits.borrow() as f64,
            "every flush committed once"
        );
        assert!(
            calls < flushes,
            "some commits carried several flushes: {calls} calls for {flushes} flushes"
        );
        h.task.close().await;
    }

    /// When every PUT is slow (an overloaded store), hedging them all would double the load: a
    /// budget lets at most a fifth of uploads (after a burst of one per upload slot) be hedged.
    #[tokio::test]
    async fn upload_hedges_stay_within_their_budget_when_every_put_is_slow() {
        let slow = crate::instrumented::LatencyModel::parse("put=40/40").unwrap();
        let instrumented = Arc::new(crate::instrumented::InstrumentedStore::new(
            Arc::new(object_store::memory::InMemory::new()),
            Some(slow),
        ));
        let stats = instrumented.stats();
        let settings = WriterSettings {
            flush_bytes: 1,
            seal_when_idle: false,
            upload_hedge_after: Some(Duration::from_millis(5)),
            ..Default::default()
        };
        let slots = settings.max_inflight_flushes;
        let h = Harness::start_on(settings, 1, instrumented).await;
        let flushes = 60;
        for _ in 0..flushes {
            let rx = h.writer.append(vec![batch(h.tp(0))]).await.unwrap();
            rx.await.unwrap().unwrap();
        }
        h.task.close().await;
        let hedged = h.writer.metrics().hedged_uploads.get();
        let puts = stats.snapshot().puts;
        let allowed = (flushes as f64 * UPLOAD_HEDGE_FRACTION) as u64 + slots as u64;
        assert!(
            hedged <= allowed,
            "{hedged} of {flushes} uploads hedged, at most {allowed} allowed"
        );
        assert!(
            hedged > 0,
            "slow uploads are still hedged within the budget"
        );
        assert_eq!(
            puts,
            flushes as u64 + hedged,
            "one PUT per upload plus its hedge"
        );
    }

    /// A commit that never returns (a database stuck on a lock, a network partition with no
    /// keepalive) fails its flush at the retry deadline instead of holding every produce request
    /// of the broker behind it forever.
    #[tokio::test]
    async fn a_stalled_commit_fails_its_flush_at_the_retry_deadline() {
        use fjord_coordinator::faults::{FaultyCoordinator, Op};
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::open(dir.path()).unwrap());
        let topic = inner
            .create_topic(TopicSpec {
                name: "t".into(),
                partitions: 1,
                configs: Default::default(),
            })
            .await
            .unwrap();
        let (faulty, faults) = FaultyCoordinator::new(inner);
        let _never_released = faults.hold(Op::Commit);
        let (writer, _task) = Writer::start(
            WriterSettings {
                retry_deadline: Duration::from_millis(300),
                ..Default::default()
            },
            Arc::new(object_store::memory::InMemory::new()),
            faulty,
            Arc::new(ReadCache::new(1 << 20)),
            Arc::new(watch::channel(0).0),
        );
        let tp = TopicPartition {
            topic_id: topic.id,
            partition: 0,
        };
        let rx = writer.append(vec![batch(tp)]).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("the flush was never answered")
            .unwrap();
        assert!(matches!(answer, Err(WriteError::Commit(_))), "{answer:?}");
    }

    fn batch(tp: TopicPartition) -> AppendBatch {
        AppendBatch {
            tp,
            bytes: sample_batch(1, -1, -1, 0),
            offset_count: 1,
            max_timestamp: 0,
            producer: None,
            log_append_time: false,
        }
    }

    /// Time for one append to be answered.
    async fn answer_time(writer: &Writer, tp: TopicPartition) -> Duration {
        let started = Instant::now();
        let rx = writer.append(vec![batch(tp)]).await.unwrap();
        rx.await.unwrap().unwrap();
        started.elapsed()
    }

    #[tokio::test]
    async fn an_idle_pipeline_seals_at_once_and_a_busy_one_waits_for_the_interval() {
        let interval = Duration::from_millis(1500);
        let settings = WriterSettings {
            flush_interval: interval,
            ..Default::default()
        };
        let h = Harness::start(settings.clone(), 1).await;
        for _ in 0..3 {
            let took = answer_time(&h.writer, h.tp(0)).await;
            assert!(took < interval / 2, "idle seal took {took:?}");
        }
        h.task.close().await;

        let h = Harness::start(
            WriterSettings {
                seal_when_idle: false,
                ..settings
            },
            1,
        )
        .await;
        let took = answer_time(&h.writer, h.tp(0)).await;
        assert!(
            took >= interval,
            "without idle sealing the interval applies: {took:?}"
        );
        h.task.close().await;
    }

    #[test]
    fn slow_flushes_turn_idle_sealing_off_and_fast_ones_back_on() {
        let pace = FlushPace::default();
        assert_eq!(pace.recent(), Duration::ZERO);
        for _ in 0..20 {
            pace.record(Duration::from_millis(80));
        }
        assert!(
            pace.recent() > Duration::from_millis(50),
            "{:?}",
            pace.recent()
        );
        for _ in 0..30 {
            pace.record(Duration::from_micros(500));
        }
        assert!(
            pace.recent() < Duration::from_millis(5),
            "{:?}",
            pace.recent()
        );
    }
}
