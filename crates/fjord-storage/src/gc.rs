//! Object garbage collection.
//!
//! An object may be deleted only when no index row references it and a delay has passed. Two
//! kinds of garbage exist:
//! - *dead* objects: once committed, now unreferenced (retention or DeleteRecords moved their
//!   partitions' log starts past every row they held, or their topics were deleted). The
//!   coordinator's ledger ([`ObjectLedger`]) knows them and when they died; a pass asks it for
//!   for those dead for longer than the delete delay (Kafka's `file.delete.delay.ms`: readers that
//!   looked an object up just before its last row went still finish), oldest first and a bounded
//!   number at a time, deletes them, then forgets them. No listing is involved.
//! - *orphans*: uploaded but never committed (the broker crashed, or the commit failed). The
//!   ledger has never heard of them; only a listing of the bucket shows them. The orphan sweep
//!   is rare (every [`GcSettings::sweep_interval_ms`]) and incremental: object keys start with
//!   the hour they were made (`objects/2026-12-07T11/<uuidv7>.fjd`), and a sweep lists one hour
//!   prefix at a time, only hours wholly below the commit watermark, each once per process, at
//!   most [`GcSettings::max_listed_per_sweep`] keys per pass. Keys without an hour prefix
//!   (written by earlier versions) are looked at in every sweep until they are gone.
//!
//! The invariant for orphans: *an object the sweep deletes can never become referenced*. A
//! sweep first raises the coordinator's commit watermark to `now - grace`
//! ([`fjord_coordinator::ObjectLedger::raise_commit_watermark`]); from then on the coordinator refuses to commit any
//! object made before the watermark (the time is in the object's key, a UUIDv7), in the same
//! serialization order as commits. Only then does it ask which listed keys the ledger knows,
//! and it deletes an unknown object only when its key time is below the watermark. A commit of
//! such an object either completed before the raise, and the ledger knows it, or comes after
//! it, and is refused, however long the commit was delayed (a stalled database, a long network
//! partition). Keys without a time are never collected as orphans.
//!
//! The grace period must exceed the longest time between making an object and committing it
//! (uploads and commits are retried for seconds), so that the watermark refuses no healthy
//! commit, and the clock skew between brokers.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fjord_coordinator::state::object_key_time_ms;
use fjord_coordinator::{Coordinator, LedgerSize};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectStore;

/// Where objects live in the store.
pub const OBJECTS_PREFIX: &str = "objects";

/// How long an hour prefix spans (ms).
const HOUR_MS: i64 = 3_600_000;

/// Dead objects asked for, deleted and forgotten at a time.
const DEAD_BATCH: usize = 1_000;

/// Keys asked about at a time in the orphan sweep.
const KNOWN_BATCH: usize = 1_000;

/// The key of a new object made at `now_ms`: its hour, then a UUIDv7 of that time (its time
/// orders keys, and garbage collection reads it back).
pub fn object_key(now_ms: i64) -> String {
    let ms = u64::try_from(now_ms).unwrap_or(0);
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        ms / 1000,
        u32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    );
    format!(
        "{}/{}/{}.fjd",
        OBJECTS_PREFIX,
        hour_prefix(now_ms),
        uuid::Uuid::new_v7(ts)
    )
}

/// The hour of `ms` as a key segment: `2026-12-07T11` (UTC; sorts by time).
fn hour_prefix(ms: i64) -> String {
    let secs = u64::try_from(ms.div_euclid(1000)).unwrap_or(0);
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    let text = humantime::format_rfc3339_seconds(time).to_string();
    text.get(..13).unwrap_or(&text).to_string()
}

/// When the hour a prefix segment (`2026-12-07T11`) names starts (ms), if it is one.
fn hour_start_ms(segment: &str) -> Option<i64> {
    if segment.len() != 13 {
        return None;
    }
    let time = humantime::parse_rfc3339(&format!("{segment}:00:00Z")).ok()?;
    let secs = time.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs).ok()?.checked_mul(1000)
}

/// How garbage collection paces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcSettings {
    /// Never-committed objects younger than this (ms, by their key) are left alone; the commit
    /// watermark is raised to `now - grace_ms` before a sweep.
    pub grace_ms: i64,
    /// Dead objects are deleted this long (ms) after their last reference went (the broker's
    /// `log.segment.delete.delay.ms`; a topic's `file.delete.delay.ms` can lengthen it).
    pub delete_delay_ms: i64,
    /// An orphan sweep runs at most this often (ms); 0: every pass.
    pub sweep_interval_ms: i64,
    /// Most dead objects one pass deletes.
    pub max_deletes_per_pass: usize,
    /// Most keys one sweep pass lists.
    pub max_listed_per_sweep: usize,
}

impl Default for GcSettings {
    fn default() -> Self {
        GcSettings {
            grace_ms: 600_000,
            delete_delay_ms: 60_000,
            sweep_interval_ms: HOUR_MS,
            max_deletes_per_pass: 100_000,
            max_listed_per_sweep: 100_000,
        }
    }
}

/// What one collection pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Keys listed by the orphan sweep (0 when no sweep ran).
    pub listed: usize,
    /// Dead objects deleted.
    pub deleted_dead: usize,
    /// Never-committed objects deleted.
    pub deleted_orphans: usize,
    /// Whether an orphan sweep ran in this pass.
    pub swept: bool,
    /// What the index held at the end of the pass.
    pub ledger: LedgerSize,
}

/// Counts of collection passes, for metrics.
#[derive(Debug, Default)]
pub struct GcStats {
    /// Passes run.
    pub passes: AtomicU64,
    /// Passes that failed (logged; the next pass retries).
    pub errors: AtomicU64,
    /// Dead objects deleted.
    pub deleted_dead: AtomicU64,
    /// Never-committed objects deleted.
    pub deleted_orphans: AtomicU64,
    /// Keys listed by orphan sweeps.
    pub listed: AtomicU64,
    /// Index rows at the end of the last successful pass (a gauge).
    pub index_rows: AtomicU64,
    /// Objects in the ledger at the end of the last successful pass (a gauge).
    pub ledger_objects: AtomicU64,
}

impl GcStats {
    /// Counts one pass's result.
    pub fn record(&self, result: &Result<GcReport, GcError>) {
        self.passes.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(report) => {
                self.deleted_dead
                    .fetch_add(report.deleted_dead as u64, Ordering::Relaxed);
                self.deleted_orphans
                    .fetch_add(report.deleted_orphans as u64, Ordering::Relaxed);
                self.listed
                    .fetch_add(report.listed as u64, Ordering::Relaxed);
                self.index_rows
                    .store(report.ledger.index_rows, Ordering::Relaxed);
                self.ledger_objects
                    .store(report.ledger.objects, Ordering::Relaxed);
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Errors of a collection pass (the next pass retries).
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Listing or deleting failed.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// The coordinator failed.
    #[error("coordinator: {0}")]
    Coordinator(#[from] fjord_coordinator::CoordinatorError),
}

/// The garbage collector of one broker: its settings and where its orphan sweep is.
pub struct Collector {
    store: Arc<dyn ObjectStore>,
    coordinator: Arc<dyn Coordinator>,
    settings: GcSettings,
    /// When the current (or last) sweep round started; `None`: never.
    sweep_started_ms: Option<i64>,
    /// Whether a round is under way (it continues on the next pass).
    sweeping: bool,
    /// Hour prefixes swept wholly in this process (no orphan can appear in them afterwards).
    swept: BTreeSet<String>,
}

impl Collector {
    /// A collector over `store` and `coordinator`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        coordinator: Arc<dyn Coordinator>,
        settings: GcSettings,
    ) -> Collector {
        Collector {
            store,
            coordinator,
            settings,
            sweep_started_ms: None,
            sweeping: false,
            swept: BTreeSet::new(),
        }
    }

    /// One pass at `now_ms`: deletes dead objects past their delay, then, when one is due or
    /// under way, a bounded step of the orphan sweep.
    pub async fn pass(&mut self, now_ms: i64) -> Result<GcReport, GcError> {
        let mut report = GcReport::default();
        self.delete_dead(now_ms, &mut report).await?;
        let due = self
            .sweep_started_ms
            .is_none_or(|started| now_ms - started >= self.settings.sweep_interval_ms);
        if self.sweeping || due {
            if !self.sweeping {
                self.sweep_started_ms = Some(now_ms);
                self.sweeping = true;
            }
            report.swept = true;
            self.sweeping = !self.sweep_step(now_ms, &mut report).await?;
        }
        report.ledger = self.coordinator.ledger_size().await?;
        Ok(report)
    }

    /// The delete delay in force: the broker's, or the longest `file.delete.delay.ms` of any
    /// topic (objects hold many topics' data, so the longest wins).
    async fn delete_delay_ms(&self) -> Result<i64, GcError> {
        let topics = self.coordinator.list_topics().await?;
        Ok(topics
            .iter()
            .filter_map(|t| {
                t.configs
                    .get("file.delete.delay.ms")?
                    .trim()
                    .parse::<i64>()
                    .ok()
            })
            .fold(self.settings.delete_delay_ms, i64::max)
            .max(0))
    }

    async fn delete_dead(&self, now_ms: i64, report: &mut GcReport) -> Result<(), GcError> {
        let before = now_ms.saturating_sub(self.delete_delay_ms().await?);
        while report.deleted_dead < self.settings.max_deletes_per_pass {
            let batch = DEAD_BATCH.min(self.settings.max_deletes_per_pass - report.deleted_dead);
            let dead = self.coordinator.dead_objects(before, batch).await?;
            if dead.is_empty() {
                break;
            }
            let keys: Vec<String> = dead.into_iter().map(|d| d.key).collect();
            self.delete_all(&keys).await?;
            report.deleted_dead += keys.len();
            let full = keys.len() == batch;
            self.coordinator.forget_objects(keys).await?;
            if !full {
                break;
            }
        }
        Ok(())
    }

    /// Deletes `keys` from the store (already gone is fine), in bulk where the store can.
    async fn delete_all(&self, keys: &[String]) -> Result<(), GcError> {
        let locations: Vec<object_store::Result<Path>> =
            keys.iter().map(|k| Ok(Path::from(k.as_str()))).collect();
        let mut results = self
            .store
            .delete_stream(futures::stream::iter(locations).boxed());
        while let Some(result) = results.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// One bounded step of a sweep round; returns whether the round is complete.
    async fn sweep_step(&mut self, now_ms: i64, report: &mut GcReport) -> Result<bool, GcError> {
        // First the watermark, then what the ledger knows: see the module's invariant.
        let watermark = self
            .coordinator
            .raise_commit_watermark(now_ms.saturating_sub(self.settings.grace_ms))
            .await?;
        let top = self
            .store
            .list_with_delimiter(Some(&Path::from(OBJECTS_PREFIX)))
            .await?;
        // Keys from before hour prefixes, directly under `objects/`.
        let legacy: Vec<String> = top.objects.iter().map(|m| m.location.to_string()).collect();
        report.listed += legacy.len();
        self.delete_orphans(legacy, watermark, report).await?;
        let listed: BTreeSet<String> = top.common_prefixes.iter().map(|p| p.to_string()).collect();
        // Forget prefixes that are gone (all their objects were deleted).
        self.swept.retain(|p| listed.contains(p));
        for prefix in listed {
            if self.swept.contains(&prefix) {
                continue;
            }
            let segment = prefix.rsplit('/').next().unwrap_or_default();
            let Some(start) = hour_start_ms(segment) else {
                continue; // not ours: never touched
            };
            if start + HOUR_MS > watermark {
                break; // this hour and later ones may still get commits
            }
            if report.listed >= self.settings.max_listed_per_sweep {
                return Ok(false);
            }
            let keys: Vec<String> = self
                .store
                .list(Some(&Path::from(prefix.as_str())))
                .map_ok(|m| m.location.to_string())
                .try_collect()
                .await?;
            report.listed += keys.len();
            self.delete_orphans(keys, watermark, report).await?;
            self.swept.insert(prefix);
        }
        Ok(true)
    }

    /// Deletes the keys among `keys` that the ledger does not know and that were made before
    /// `watermark`.
    async fn delete_orphans(
        &self,
        keys: Vec<String>,
        watermark: i64,
        report: &mut GcReport,
    ) -> Result<(), GcError> {
        let candidates: Vec<String> = keys
            .into_iter()
            .filter(|k| object_key_time_ms(k).is_some_and(|made| made < watermark))
            .collect();
        for chunk in candidates.chunks(KNOWN_BATCH) {
            let known = self.coordinator.known_objects(chunk.to_vec()).await?;
            let orphans: Vec<String> = chunk
                .iter()
                .filter(|k| !known.contains(*k))
                .cloned()
                .collect();
            if orphans.is_empty() {
                continue;
            }
            for key in &orphans {
                tracing::info!(object = %key, "deleting an object that was never committed");
            }
            self.delete_all(&orphans).await?;
            report.deleted_orphans += orphans.len();
        }
        Ok(())
    }
}

/// One full pass with an orphan sweep, for tests and tools: dead objects older than
/// `grace_ms`, and orphans made before `now_ms - grace_ms`.
pub async fn collect(
    store: &Arc<dyn ObjectStore>,
    coordinator: &Arc<dyn Coordinator>,
    now_ms: i64,
    grace_ms: i64,
) -> Result<GcReport, GcError> {
    let settings = GcSettings {
        grace_ms,
        delete_delay_ms: grace_ms,
        sweep_interval_ms: 0,
        max_deletes_per_pass: usize::MAX,
        max_listed_per_sweep: usize::MAX,
    };
    Collector::new(store.clone(), coordinator.clone(), settings)
        .pass(now_ms)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use fjord_coordinator::embedded::EmbeddedCoordinator;
    use fjord_coordinator::{CommitBatch, FlushCommit, TopicPartition, TopicSpec};
    use object_store::ObjectStoreExt;

    fn now_ms() -> i64 {
        use fjord_coordinator::clock::Clock;
        fjord_coordinator::clock::SystemClock.now_ms()
    }

    /// An object key as the writer makes them, at time `ms`.
    fn key_at(ms: i64) -> String {
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            (ms / 1000) as u64,
            ((ms % 1000) * 1_000_000) as u32,
        );
        format!("{OBJECTS_PREFIX}/{}.fjd", uuid::Uuid::new_v7(ts))
    }

    async fn put(store: &Arc<dyn ObjectStore>, key: &str) {
        store
            .put(&Path::from(key), Bytes::from_static(b"x").into())
            .await
            .unwrap();
    }

    async fn topic(coordinator: &Arc<dyn Coordinator>, name: &str) -> TopicPartition {
        let meta = coordinator
            .create_topic(TopicSpec {
                name: name.into(),
                partitions: 1,
                configs: Default::default(),
            })
            .await
            .unwrap();
        TopicPartition {
            topic_id: meta.id,
            partition: 0,
        }
    }

    async fn commit_one(coordinator: &Arc<dyn Coordinator>, key: &str, tp: TopicPartition) {
        coordinator
            .commit(FlushCommit {
                object_key: key.to_string(),
                object_size: 1,
                timestamp_ms: 0,
                batches: vec![CommitBatch {
                    tp,
                    position: 0,
                    length: 1,
                    offset_count: 1,
                    max_timestamp: 0,
                    producer: None,
                    append: 0,
                }],
            })
            .await
            .unwrap();
    }

    async fn keys(store: &Arc<dyn ObjectStore>) -> Vec<String> {
        let mut left: Vec<String> = store
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        left.sort();
        left
    }

    #[test]
    fn keys_start_with_their_hour() {
        let ms = 1_796_644_375_123; // 2026-12-07T11:52:55.123Z
        let key = object_key(ms);
        assert!(key.starts_with("objects/2026-12-07T11/"), "{key}");
        assert_eq!(object_key_time_ms(&key), Some(ms));
        assert_eq!(hour_start_ms("2026-12-07T11"), Some(1_796_641_200_000));
        assert_eq!(hour_start_ms("readme"), None);
        assert!(
            object_key(ms) < object_key(ms + HOUR_MS),
            "keys sort by time"
        );
    }

    #[tokio::test]
    async fn deletes_orphans_and_dead_objects_after_grace() {
        let dir = tempfile::tempdir().unwrap();
        let coordinator: Arc<dyn Coordinator> =
            Arc::new(EmbeddedCoordinator::open(dir.path()).unwrap());
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let now = now_ms();
        let (live, orphan, dead) = (object_key(now), object_key(now), object_key(now));
        // A key from before hour prefixes, never committed.
        let legacy_orphan = key_at(now);
        // Not objects the writer made: never collected as orphans.
        let foreign = format!("{OBJECTS_PREFIX}/readme.txt");
        let foreign_in_hour = format!("{OBJECTS_PREFIX}/{}/notes.txt", hour_prefix(now));
        for key in [
            &live,
            &orphan,
            &dead,
            &legacy_orphan,
            &foreign,
            &foreign_in_hour,
        ] {
            put(&store, key).await;
        }
        let keep = topic(&coordinator, "keep").await;
        let drop = topic(&coordinator, "drop").await;
        commit_one(&coordinator, &live, keep).await;
        commit_one(&coordinator, &dead, drop).await;
        coordinator.delete_topic("drop").await.unwrap();
        let now = now_ms();

        // Within the grace period nothing goes.
        let report = collect(&store, &coordinator, now, 60_000).await.unwrap();
        assert_eq!(report.deleted_dead + report.deleted_orphans, 0);
        let held = LedgerSize {
            index_rows: 1,
            objects: 2,
        };
        assert_eq!(
            report.ledger, held,
            "the live row; the live and the dead object"
        );

        // Later, the orphans and the dead object go; the live one and the foreign ones stay.
        let report = collect(&store, &coordinator, now + 2 * HOUR_MS, 60_000)
            .await
            .unwrap();
        assert_eq!((report.deleted_dead, report.deleted_orphans), (1, 2));
        let held = LedgerSize {
            index_rows: 1,
            objects: 1,
        };
        assert_eq!(report.ledger, held, "the dead object is forgotten");
        let mut expected = vec![live.clone(), foreign, foreign_in_hour];
        expected.sort();
        assert_eq!(keys(&store).await, expected);
        assert!(coordinator
            .dead_objects(i64::MAX, 10)
            .await
            .unwrap()
            .is_empty());
        assert!(coordinator
            .known_objects(vec![dead.clone()])
            .await
            .unwrap()
            .is_empty());
    }

    /// Dead objects are found in the ledger, not by listing the bucket: between sweeps a pass
    /// lists nothing, and deletes an object only once it has been dead for the delay.
    #[tokio::test]
    async fn dead_objects_go_after_the_delay_without_listing() {
        use crate::instrumented::InstrumentedStore;
        let coordinator: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::in_memory(
            fjord_coordinator::clock::system(),
        ));
        let counted = InstrumentedStore::new(Arc::new(object_store::memory::InMemory::new()), None);
        let stats = counted.stats();
        let store: Arc<dyn ObjectStore> = Arc::new(counted);
        let settings = GcSettings {
            grace_ms: 600_000,
            delete_delay_ms: 60_000,
            sweep_interval_ms: HOUR_MS,
            max_deletes_per_pass: 3,
            max_listed_per_sweep: 1_000,
        };
        let mut gc = Collector::new(store.clone(), coordinator.clone(), settings);
        let tp = topic(&coordinator, "t").await;
        let now = now_ms();
        let mut made = Vec::new();
        for _ in 0..5 {
            let key = object_key(now);
            put(&store, &key).await;
            commit_one(&coordinator, &key, tp).await;
            made.push(key);
        }
        // The first pass sweeps (once per interval); nothing is garbage yet.
        let report = gc.pass(now).await.unwrap();
        assert!(report.swept);
        assert_eq!(report.deleted_dead + report.deleted_orphans, 0);
        let lists = stats.snapshot().lists;

        coordinator.delete_records(tp, -1).await.unwrap();
        let died = now_ms();
        let report = gc.pass(died + 30_000).await.unwrap();
        assert_eq!(report.deleted_dead, 0, "within file.delete.delay.ms");
        // Past the delay: at most three per pass, oldest first, then the rest.
        let report = gc.pass(died + 61_000).await.unwrap();
        assert_eq!(report.deleted_dead, 3);
        let report = gc.pass(died + 62_000).await.unwrap();
        assert_eq!(report.deleted_dead, 2);
        assert_eq!(stats.snapshot().lists, lists, "no listing between sweeps");
        assert!(!report.swept);
        assert!(keys(&store).await.is_empty());

        // A topic's longer file.delete.delay.ms holds objects longer.
        coordinator
            .alter_topic_configs(
                "t",
                vec![("file.delete.delay.ms".into(), Some("600000".into()))],
            )
            .await
            .unwrap();
        let key = object_key(now);
        put(&store, &key).await;
        commit_one(&coordinator, &key, tp).await;
        coordinator.delete_records(tp, -1).await.unwrap();
        let died = now_ms();
        assert_eq!(gc.pass(died + 61_000).await.unwrap().deleted_dead, 0);
        assert_eq!(gc.pass(died + 601_000).await.unwrap().deleted_dead, 1);
    }

    /// The sweep lists one hour at a time, only hours wholly below the commit watermark, each
    /// once, and at most its budget per pass.
    #[tokio::test]
    async fn the_orphan_sweep_goes_hour_by_hour_within_its_budget() {
        use crate::instrumented::InstrumentedStore;
        let coordinator: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::in_memory(
            fjord_coordinator::clock::system(),
        ));
        let counted = InstrumentedStore::new(Arc::new(object_store::memory::InMemory::new()), None);
        let stats = counted.stats();
        let store: Arc<dyn ObjectStore> = Arc::new(counted);
        let tp = topic(&coordinator, "t").await;
        let base = (now_ms() / HOUR_MS - 10) * HOUR_MS;
        // Hours 0..4: two orphans and one committed object each.
        let mut live = Vec::new();
        for hour in 0..4 {
            let at = base + hour * HOUR_MS + 1_000;
            put(&store, &object_key(at)).await;
            put(&store, &object_key(at + 1)).await;
            let key = object_key(at + 2);
            put(&store, &key).await;
            commit_one(&coordinator, &key, tp).await;
            live.push(key);
        }
        let settings = GcSettings {
            grace_ms: 600_000,
            delete_delay_ms: 60_000,
            sweep_interval_ms: HOUR_MS,
            max_deletes_per_pass: 1_000,
            max_listed_per_sweep: 3,
        };
        let mut gc = Collector::new(store.clone(), coordinator.clone(), settings);
        // The watermark is inside hour 2 (minus the grace): hours 0 and 1 only, one per pass
        // (the budget).
        let now = base + 2 * HOUR_MS + 30 * 60_000;
        for pass in 0..2 {
            let report = gc.pass(now + pass).await.unwrap();
            assert!(report.swept);
            assert_eq!((report.deleted_orphans, report.listed), (2, 3));
        }
        assert!(!gc.pass(now + 2).await.unwrap().swept);
        // Later: hours 2 and 3, one per pass; hours 0 and 1 are not listed again.
        let later = base + 5 * HOUR_MS;
        let before = stats.snapshot().lists;
        let report = gc.pass(later).await.unwrap();
        assert!(report.swept);
        assert_eq!((report.deleted_orphans, report.listed), (2, 3));
        let report = gc.pass(later + 1).await.unwrap();
        assert!(
            report.swept,
            "the round goes on until every due hour is swept"
        );
        assert_eq!((report.deleted_orphans, report.listed), (2, 3));
        // One delimiter listing and one hour listing per pass.
        assert_eq!(stats.snapshot().lists - before, 4);
        let report = gc.pass(later + 2).await.unwrap();
        assert!(
            !report.swept,
            "the round is over; the next is an interval away"
        );
        live.sort();
        assert_eq!(keys(&store).await, live);
    }

    /// Item 1 of issue 13: a commit that stalls (a database stuck on a lock, a network
    /// partition) while garbage collection runs must not end with a producer acknowledged for
    /// records in an object that was deleted. Either the commit lands before the collection and
    /// the object is kept, or the collection comes first and the commit is refused.
    #[tokio::test]
    async fn an_object_whose_commit_stalls_is_never_both_deleted_and_acknowledged() {
        use crate::batch::tests::sample_batch;
        use crate::reader::ReadCache;
        use crate::writer::{AppendBatch, Writer, WriterSettings};
        use fjord_coordinator::faults::{FaultyCoordinator, Op};

        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::open(dir.path()).unwrap());
        let (faulty, faults) = FaultyCoordinator::new(inner);
        let coordinator: Arc<dyn Coordinator> = faulty;
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let topic = coordinator
            .create_topic(TopicSpec {
                name: "t".into(),
                partitions: 1,
                configs: Default::default(),
            })
            .await
            .unwrap();
        let (writer, task) = Writer::start(
            WriterSettings::default(),
            store.clone(),
            coordinator.clone(),
            Arc::new(ReadCache::new(1 << 20)),
            Arc::new(tokio::sync::watch::channel(0).0),
        );
        // The flush is uploaded, then its commit stalls.
        let hold = faults.hold(Op::Commit);
        let rx = writer
            .append(vec![AppendBatch {
                tp: TopicPartition {
                    topic_id: topic.id,
                    partition: 0,
                },
                bytes: sample_batch(1, -1, -1, 0),
                offset_count: 1,
                max_timestamp: 0,
                log_append_time: false,
                producer: None,
            }])
            .await
            .unwrap();
        hold.reached().await;
        // Much later by the collector's clock, the uncommitted object looks like an orphan.
        // (Two hours: the sweep looks only at hours wholly below the watermark.)
        let report = collect(&store, &coordinator, now_ms() + 2 * HOUR_MS, 600_000)
            .await
            .unwrap();
        assert_eq!(report.deleted_orphans, 1);
        hold.release();
        let answer = rx.await.unwrap();
        assert!(
            answer.is_err(),
            "the producer was acknowledged for an object that was deleted: {answer:?}"
        );
        let rows = coordinator
            .index_rows(
                TopicPartition {
                    topic_id: topic.id,
                    partition: 0,
                },
                0,
                u64::MAX,
            )
            .await
            .unwrap();
        assert!(rows.is_empty(), "an index row references a deleted object");
        task.close().await;
    }
}
