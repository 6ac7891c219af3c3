use std::collections::BTreeMap;

use fjord_coordinator::clock::{Clock, ManualClock};
use fjord_coordinator::embedded::EmbeddedCoordinator;
use fjord_coordinator::{CommitBatch, FlushCommit, TopicSpec};
use uuid::Uuid;

use super::*;
use crate::batch::materialize;
use crate::batch::tests::sample_batch;
use crate::reader::{ReadCache, Reader};

const MIN: i64 = 60_000;
/// 2026-12-07T12:00:00Z.
const T0: i64 = 1_796_644_800_000;

fn settings() -> CompactionSettings {
    CompactionSettings {
        target_object_bytes: 1000,
        max_row_bytes: 300,
        settled_row_bytes: 200,
        min_age_ms: 10 * MIN,
        min_rows: 4,
        ..CompactionSettings::default()
    }
}

/// A row of `length` bytes spanning `base..=last`, in an object made at `made_ms`.
fn row(base: i64, last: i64, length: u64, made_ms: i64) -> IndexRow {
    IndexRow {
        base_offset: base,
        last_offset: last,
        object_key: crate::gc::object_key(made_ms),
        position: 4,
        length,
        max_timestamp: made_ms,
    }
}

/// Rows of `lengths`, 10 offsets each, made one second apart from `T0`.
fn rows(lengths: &[u64]) -> Vec<IndexRow> {
    lengths
        .iter()
        .enumerate()
        .map(|(i, len)| row(i as i64 * 10, i as i64 * 10 + 9, *len, T0 + i as i64 * 1000))
        .collect()
}

fn bases(plan: &Plan) -> Vec<Vec<i64>> {
    plan.merges
        .iter()
        .map(|m| m.rows.iter().map(|r| r.base_offset).collect())
        .collect()
}

#[test]
fn plan_merges_old_small_rows_and_cuts_at_the_target() {
    let s = settings();
    let now = T0 + 60 * MIN;
    // Twelve rows of 100 bytes: runs of ten (1000 bytes), then an open run of two.
    let plan = plan(&rows(&[100; 12]), now, &s);
    assert_eq!(
        bases(&plan),
        vec![(0..10).map(|i| i * 10).collect::<Vec<_>>()]
    );
    // The open run of two (below min_rows) is where the next scan starts.
    assert_eq!(plan.resume_from, Some(100));

    // An open run with enough rows is merged; the scan resumes at it (its new tail may merge
    // with later rows).
    let plan = super::plan(&rows(&[100; 5]), now, &s);
    assert_eq!(bases(&plan), vec![vec![0, 10, 20, 30, 40]]);
    assert_eq!(plan.resume_from, Some(0));
}

#[test]
fn plan_leaves_the_hot_tail_and_settled_rows_alone() {
    let s = settings();
    // Rows made at T0, T0+1s, ...: with the clock at T0 + 10 min + 2.5 s, rows 0..=2 are old.
    let now = T0 + 10 * MIN + 2_500;
    let plan = plan(&rows(&[100, 100, 100, 100, 100, 100]), now, &s);
    assert!(plan.merges.is_empty(), "three old rows are below min_rows");
    assert_eq!(plan.resume_from, Some(0));
    for merge in super::plan(&rows(&[100; 40]), now, &s).merges {
        for r in merge.rows {
            assert!(object_key_time_ms(&r.object_key).unwrap() <= now - s.min_age_ms);
        }
    }

    // Settled rows split runs; a bounded run of two is merged, a lone row is not, and neither
    // holds the scan back.
    let now = T0 + 60 * MIN;
    let plan = super::plan(
        &rows(&[100, 100, 250, 100, 250, 100, 100, 100, 100]),
        now,
        &s,
    );
    assert_eq!(bases(&plan), vec![vec![0, 10], vec![50, 60, 70, 80]]);
    assert_eq!(plan.resume_from, Some(50));
    let plan = super::plan(&rows(&[250, 100, 250, 250]), now, &s);
    assert!(plan.merges.is_empty());
    assert_eq!(
        plan.resume_from,
        Some(40),
        "all settled: resume after the scan"
    );

    // A gap in offsets (rows below a log start, never in practice) splits runs too.
    let mut gappy = rows(&[100; 8]);
    for r in gappy.iter_mut().skip(4) {
        r.base_offset += 5;
        r.last_offset += 5;
    }
    let plan = super::plan(&gappy, now, &s);
    assert_eq!(
        bases(&plan),
        vec![vec![0, 10, 20, 30], vec![45, 55, 65, 75]]
    );
    assert!(super::plan(&[], now, &s).resume_from.is_none());
}

#[test]
fn build_cuts_rows_at_the_row_size_and_at_gaps() {
    let tp = TopicPartition {
        topic_id: Uuid::new_v4(),
        partition: 3,
    };
    let batch = sample_batch(3, -1, -1, 7);
    let len = batch.len() as u64;
    let placed = |base: i64| PlacedBatch {
        base_offset: base,
        bytes: batch.clone(),
    };
    // Rows of at most two batches; a gap at 9 starts a new row.
    let batches = vec![placed(0), placed(3), placed(6), placed(10), placed(13)];
    let built = build_partition_object(tp, &batches, 2 * len, 1, T0).unwrap();
    let spans: Vec<(i64, i64, u64)> = built
        .rows
        .iter()
        .map(|r| (r.base_offset, r.last_offset, r.length))
        .collect();
    assert_eq!(spans, vec![(0, 5, 2 * len), (6, 8, len), (10, 15, 2 * len)]);
    let footer = crate::object::read_footer(&built.object).unwrap();
    assert_eq!(footer.chunks.len(), 1);
    assert_eq!(footer.chunks[0].partition, 3);
    assert_eq!(footer.chunks[0].batches, 5);
    for r in &built.rows {
        let bytes = &built.object[r.position as usize..(r.position + r.length) as usize];
        let (out, end) = materialize(bytes, r.base_offset, 0, usize::MAX).unwrap();
        assert_eq!(end, r.last_offset + 1);
        assert_eq!(out.len() as u64, r.length);
    }
    // A batch larger than the row size is a row of its own.
    let built = build_partition_object(tp, &batches[..2], len / 2, 1, T0).unwrap();
    assert_eq!(built.rows.len(), 2);
}

/// A coordinator and store holding `flushes` flush objects, each with `per_flush` batches for
/// each of partitions 0 and 1 of topic "t", made a second apart from `T0`.
struct Fixture {
    clock: Arc<ManualClock>,
    coordinator: Arc<dyn Coordinator>,
    store: Arc<dyn ObjectStore>,
    stats: Arc<crate::instrumented::StoreStats>,
    topic: Uuid,
}

impl Fixture {
    async fn new(flushes: usize, per_flush: usize) -> Fixture {
        let clock = ManualClock::new(T0);
        let coordinator: Arc<dyn Coordinator> =
            Arc::new(EmbeddedCoordinator::in_memory(clock.clone()));
        let instrumented = crate::instrumented::InstrumentedStore::new(
            Arc::new(object_store::memory::InMemory::new()),
            None,
        );
        let stats = instrumented.stats();
        let store: Arc<dyn ObjectStore> = Arc::new(instrumented);
        let topic = coordinator
            .create_topic(TopicSpec {
                name: "t".into(),
                partitions: 2,
                configs: BTreeMap::new(),
            })
            .await
            .unwrap()
            .id;
        let f = Fixture {
            clock,
            coordinator,
            store,
            stats,
            topic,
        };
        for n in 0..flushes {
            f.flush(n, per_flush).await;
            f.clock.advance(1000);
        }
        f
    }

    fn tp(&self, partition: i32) -> TopicPartition {
        TopicPartition {
            topic_id: self.topic,
            partition,
        }
    }

    async fn flush(&self, n: usize, per_flush: usize) {
        let mut builder = ObjectBuilder::with_capacity(0);
        let mut batches = Vec::new();
        for partition in 0..2 {
            for k in 0..per_flush {
                let count = 1 + ((n + k) % 3) as i32;
                let ts = self.clock.now_ms() + k as i64;
                let batch = sample_batch(count, -1, -1, ts);
                let (position, _) =
                    builder.push(self.topic, partition, &batch, i64::from(count), ts);
                batches.push(CommitBatch {
                    tp: self.tp(partition),
                    position,
                    length: batch.len() as u64,
                    offset_count: i64::from(count),
                    max_timestamp: ts,
                    producer: None,
                    append: 0,
                });
            }
        }
        let object = builder.finish(0, self.clock.now_ms());
        let key = crate::gc::object_key(self.clock.now_ms());
        self.store
            .put(&Path::from(key.as_str()), object.clone().into())
            .await
            .unwrap();
        self.coordinator
            .commit(FlushCommit {
                object_key: key,
                object_size: object.len() as u64,
                timestamp_ms: self.clock.now_ms(),
                batches,
            })
            .await
            .unwrap();
    }

    async fn rows(&self, partition: i32) -> Vec<IndexRow> {
        self.coordinator
            .index_rows(self.tp(partition), 0, u64::MAX)
            .await
            .unwrap()
    }

    /// Everything a consumer reads from `from`, as materialized batches, row by row through
    /// the reader.
    async fn read_from(&self, partition: i32, from: i64) -> Vec<u8> {
        let reader = Reader::new(self.store.clone(), Arc::new(ReadCache::new(0)));
        let mut out = Vec::new();
        for r in self
            .coordinator
            .index_rows(self.tp(partition), from, u64::MAX)
            .await
            .unwrap()
        {
            let raw = reader.read_row(&r).await.unwrap();
            let (bytes, _) = materialize(&raw, r.base_offset, from, usize::MAX).unwrap();
            out.extend_from_slice(&bytes);
        }
        out
    }

    fn compactor(&self, settings: CompactionSettings) -> Compactor {
        Compactor::new(
            self.store.clone(),
            self.coordinator.clone(),
            self.clock.clone(),
            settings,
        )
    }
}

fn small_settings() -> CompactionSettings {
    CompactionSettings {
        target_object_bytes: 4096,
        max_row_bytes: 1024,
        settled_row_bytes: 512,
        min_age_ms: 10 * MIN,
        min_rows: 4,
        ..CompactionSettings::default()
    }
}

#[tokio::test]
async fn compaction_keeps_every_record_and_replaces_many_rows_by_few() {
    let f = Fixture::new(60, 3).await;
    let hw = f
        .coordinator
        .partition_offsets(f.tp(0))
        .await
        .unwrap()
        .high_watermark;
    let before: Vec<Vec<u8>> =
        futures::future::join_all((0..hw).step_by(7).map(|from| f.read_from(0, from))).await;
    let other = f.read_from(1, 0).await;
    assert_eq!(f.rows(0).await.len(), 60);

    // Half the flushes are old enough.
    f.clock.set(T0 + 10 * MIN + 30_000);
    let compactor = f.compactor(small_settings());
    let report = compactor
        .compact_partition(f.tp(0), 0, u64::MAX, None)
        .await
        .unwrap();
    assert!(report.swaps >= 2, "{report:?}");
    assert_eq!(report.lost, 0);
    let rows = f.rows(0).await;
    let cutoff = T0 + 30_000;
    for r in &rows {
        assert!(r.length <= 1024 + 200, "row of {} bytes", r.length);
    }
    // Rows newer than the minimum age are the same rows as before.
    let young: Vec<&IndexRow> = rows
        .iter()
        .filter(|r| object_key_time_ms(&r.object_key).unwrap() > cutoff)
        .collect();
    assert!(young.len() >= 29, "{}", young.len());
    assert!(rows.len() < 60 - 15, "{} rows", rows.len());
    // Every record reads back identically, from any offset.
    let after: Vec<Vec<u8>> =
        futures::future::join_all((0..hw).step_by(7).map(|from| f.read_from(0, from))).await;
    assert_eq!(before, after);
    assert_eq!(f.read_from(1, 0).await, other, "other partitions unchanged");
    // The replaced flush objects still hold partition 1's rows: none is dead yet.
    assert!(f
        .coordinator
        .dead_objects(i64::MAX, 100)
        .await
        .unwrap()
        .is_empty());

    // Once everything is old, partition 1 too; then its flush objects die.
    f.clock.set(T0 + 60 * MIN);
    let r0 = compactor
        .compact_partition(f.tp(0), 0, u64::MAX, None)
        .await
        .unwrap();
    let r1 = compactor
        .compact_partition(f.tp(1), 0, u64::MAX, None)
        .await
        .unwrap();
    assert!(r0.swaps >= 1 && r1.swaps >= 1);
    assert_eq!(f.read_from(1, 0).await, other);
    let after: Vec<Vec<u8>> =
        futures::future::join_all((0..hw).step_by(7).map(|from| f.read_from(0, from))).await;
    assert_eq!(before, after);
    let dead = f.coordinator.dead_objects(i64::MAX, 1000).await.unwrap();
    assert!(dead.len() >= 50, "{} dead flush objects", dead.len());
}

#[tokio::test]
async fn a_swap_loses_to_retention_delete_records_and_topic_deletion() {
    let f = Fixture::new(20, 2).await;
    f.clock.set(T0 + 60 * MIN);
    let compactor = f.compactor(small_settings());
    let before = f.read_from(0, 0).await;

    // DeleteRecords between the plan and the swap.
    let plan0 = plan(&f.rows(0).await, f.clock.now_ms(), compactor.settings());
    let merge = plan0.merges.first().unwrap().clone();
    let cut = merge.rows[1].base_offset;
    f.coordinator.delete_records(f.tp(0), cut).await.unwrap();
    let puts = f.stats.snapshot().puts;
    let (outcome, _, _) = compactor.merge(f.tp(0), &merge).await.unwrap();
    assert_eq!(outcome, SwapOutcome::Lost);
    assert_eq!(f.stats.snapshot().puts, puts + 1);
    // Nothing changed: the rows from the new log start read as before.
    let skip = before.len() - f.read_from(0, cut).await.len();
    assert_eq!(f.read_from(0, cut).await, before[skip..]);
    // The lost merge's object is dead, so garbage collection deletes it.
    let dead = f.coordinator.dead_objects(i64::MAX, 1000).await.unwrap();
    let new_keys: Vec<String> = dead
        .iter()
        .map(|d| d.key.clone())
        .filter(|k| object_key_time_ms(k) == Some(T0 + 60 * MIN))
        .collect();
    assert_eq!(new_keys.len(), 1, "{dead:?}");

    // Retention between the plan and the swap.
    let plan1 = plan(&f.rows(1).await, f.clock.now_ms(), compactor.settings());
    let merge = plan1.merges.first().unwrap().clone();
    let limits = fjord_coordinator::RetentionLimits {
        expire_before_ms: Some(T0 + 2_500),
        max_bytes: None,
    };
    let step = f
        .coordinator
        .apply_retention(f.tp(1), limits, 100)
        .await
        .unwrap();
    assert!(step.rows_expired > 0);
    let kept = f.read_from(1, step.offsets.log_start).await;
    let (outcome, _, _) = compactor.merge(f.tp(1), &merge).await.unwrap();
    assert_eq!(outcome, SwapOutcome::Lost);
    assert_eq!(f.read_from(1, step.offsets.log_start).await, kept);

    // A later pass compacts what is left, from the new log start.
    let report = compactor
        .compact_partition(f.tp(1), 0, u64::MAX, None)
        .await
        .unwrap();
    assert!(report.swaps >= 1, "{report:?}");
    assert_eq!(f.read_from(1, step.offsets.log_start).await, kept);

    // Topic deletion between the plan and the swap.
    let plan0 = plan(&f.rows(0).await, f.clock.now_ms(), compactor.settings());
    let merge = plan0.merges.first().unwrap().clone();
    f.coordinator.delete_topic("t").await.unwrap();
    let (outcome, _, _) = compactor.merge(f.tp(0), &merge).await.unwrap();
    assert_eq!(outcome, SwapOutcome::Lost);
    // Nothing is live any more: garbage collection (dead objects, then the orphan sweep for
    // the merge that lost to the deletion) empties the store.
    f.clock.set(T0 + 3 * 60 * MIN);
    let report = crate::gc::collect(&f.store, &f.coordinator, f.clock.now_ms(), MIN)
        .await
        .unwrap();
    assert!(report.deleted_dead >= 20, "{report:?}");
    let listed: Vec<String> = f
        .store
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    assert!(listed.is_empty(), "{listed:?}");
}

#[tokio::test]
async fn a_cold_read_of_a_compacted_partition_uses_one_get_per_row() {
    let f = Fixture::new(200, 4).await;
    f.clock.set(T0 + 60 * MIN);
    let compactor = f.compactor(small_settings());
    while compactor
        .compact_partition(f.tp(0), 0, u64::MAX, None)
        .await
        .unwrap()
        .swaps
        > 0
    {}
    let rows = f.rows(0).await;
    let bytes: u64 = rows.iter().map(|r| r.length).sum();
    let gets = f.stats.snapshot().gets;
    let reader = Reader::new(f.store.clone(), Arc::new(ReadCache::new(1 << 20)));
    for r in &rows {
        reader.read_row(r).await.unwrap();
    }
    let cold_gets = f.stats.snapshot().gets - gets;
    assert_eq!(cold_gets, rows.len() as u64);
    // Rows are full except at most the last of each object.
    let objects: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r.object_key.as_str()).collect();
    assert!(
        cold_gets <= bytes / 900 + objects.len() as u64,
        "{cold_gets} GETs for {bytes} bytes in {} objects",
        objects.len()
    );
}

#[tokio::test]
async fn rows_that_retention_deletes_soon_are_not_merged() {
    let f = Fixture::new(60, 3).await;
    let before = f.rows(0).await;
    // Flushes 0-29 are old enough to merge; retention deletes 0-19 soon.
    f.clock.set(T0 + 10 * MIN + 30_000);
    let compactor = f.compactor(small_settings());
    let report = compactor
        .compact_partition(f.tp(0), 0, u64::MAX, Some(T0 + 20_000))
        .await
        .unwrap();
    assert_eq!(report.rows_expiring, 20, "{report:?}");
    assert!(
        report.swaps >= 1,
        "the rows after them still merge: {report:?}"
    );
    let after = f.rows(0).await;
    assert_eq!(after[..20], before[..20], "the expiring rows are untouched");
    assert!(after.len() < before.len());

    // When everything old enough expires soon, nothing is merged at all.
    let f = Fixture::new(60, 3).await;
    f.clock.set(T0 + 10 * MIN + 30_000);
    let report = f
        .compactor(small_settings())
        .compact_partition(f.tp(0), 0, u64::MAX, Some(T0 + 40_000))
        .await
        .unwrap();
    assert_eq!((report.swaps, report.lost, report.bytes_written), (0, 0, 0));
    assert_eq!(f.rows(0).await.len(), 60);
}
