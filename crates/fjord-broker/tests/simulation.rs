//! A seeded, deterministic simulation of two brokers sharing one coordinator and one bucket: the
//! write path, garbage collection and the group coordinators, driven through the dispatcher as
//! clients drive them, with faults injected at chosen moments.
//!
//! Everything runs in one Tokio current-thread runtime with a paused clock, over the embedded
//! coordinator in memory (writes inline, no thread) and an in-memory object store, both behind
//! fault-injecting decorators, with wall-clock time from a manual clock. A seed picks a sequence
//! of steps: produce through either broker, fail the next commit or upload, stall a commit while
//! garbage collection runs with the clock far ahead, run garbage collection, advance the wall
//! clock, join the group through either broker (both believe they coordinate it), commit offsets.
//! After each seed the invariants of issue 13 are checked:
//! - every acknowledged produce is readable: its index rows exist and their objects are in the
//!   store (garbage collection never deleted an object a commit then referenced);
//! - every partition's offsets are dense from 0 to its high watermark;
//! - no generation of the group was handed out by both brokers;
//! - no member learned a generation the store does not hold (or a newer one).
//!
//! A failing seed replays exactly: `FJORD_SIM_SEED=<n> cargo test --test simulation`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fjord_broker::{Broker, BrokerSettings};
use fjord_coordinator::clock::{Clock, ManualClock};
use fjord_coordinator::embedded::EmbeddedCoordinator;
use fjord_coordinator::faults::{Faults, FaultyCoordinator, Op};
use fjord_coordinator::{Coordinator, TopicPartition};
use fjord_storage::faults::{FaultyStore, StoreFaults, StoreOp};
use fjord_storage::reader::{ReadCache, Reader};
use object_store::ObjectStore;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;

use common::*;

const SEEDS: u64 = 24;
const STEPS: usize = 120;
const PARTITIONS: i32 = 3;
const GRACE_MS: i64 = 600_000;

/// What a finished client task observed.
enum Event {
    Produced {
        partition: i32,
        base_offset: i64,
        records: usize,
    },
    Joined {
        broker: usize,
        member: String,
        generation: i32,
    },
    Nothing,
}

struct World {
    clock: Arc<ManualClock>,
    store: Arc<dyn ObjectStore>,
    coordinator: Arc<dyn Coordinator>,
    coordinator_faults: Arc<Faults>,
    store_faults: Arc<StoreFaults>,
    brokers: Vec<Arc<Broker>>,
    _writers: Vec<fjord_storage::writer::WriterTask>,
}

fn world() -> World {
    let clock = ManualClock::new(1_800_000_000_000);
    let inner: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::in_memory(clock.clone()));
    let (coordinator, coordinator_faults) = FaultyCoordinator::new(inner);
    let coordinator: Arc<dyn Coordinator> = coordinator;
    let (store, store_faults) = FaultyStore::new(Arc::new(object_store::memory::InMemory::new()));
    let store: Arc<dyn ObjectStore> = store;
    let (brokers, writers) = (0..2)
        .map(|node_id| {
            fjord_broker::testkit::broker_with_clock(
                coordinator.clone(),
                store.clone(),
                BrokerSettings {
                    node_id,
                    advertised_port: 9092 + node_id,
                    ..BrokerSettings::default()
                },
                clock.clone(),
            )
        })
        .unzip();
    World {
        clock,
        store,
        coordinator,
        coordinator_faults,
        store_faults,
        brokers,
        _writers: writers,
    }
}

async fn produce(b: Arc<Broker>, partition: i32, records: usize) -> Event {
    let r = call(&b, produce_request("t", partition, records_of(records)), 9).await;
    let p = &r.responses[0].partition_responses[0];
    if p.error_code == 0 {
        Event::Produced {
            partition,
            base_offset: p.base_offset,
            records,
        }
    } else {
        Event::Nothing
    }
}

fn records_of(n: usize) -> Bytes {
    common::records(n, 0)
}

async fn join(b: Arc<Broker>, broker: usize, member: String) -> Event {
    let r = join_group(&b, "g", &member).await;
    if r.error_code != 0 {
        return Event::Nothing;
    }
    // The leader completes the rebalance; followers wait for it.
    sync_group(&b, "g", &r).await;
    Event::Joined {
        broker,
        member: r.member_id.to_string(),
        generation: r.generation_id,
    }
}

async fn commit(b: Arc<Broker>, member: String, generation: i32, offset: i64) -> Event {
    commit_offset(&b, "g", &member, generation, offset).await;
    Event::Nothing
}

async fn simulate(seed: u64) {
    let w = world();
    let mut rng = StdRng::seed_from_u64(seed);
    let topic = create(&w.brokers[0], "t", PARTITIONS).await;
    let mut tasks: JoinSet<Event> = JoinSet::new();
    let mut acked: Vec<(i32, i64, usize)> = Vec::new();
    let mut handed_out: BTreeMap<i32, BTreeSet<usize>> = BTreeMap::new();
    let mut members: Vec<(usize, String, i32)> = Vec::new();
    let mut next_offset = 0i64;
    let mut record = |event: Event, members: &mut Vec<(usize, String, i32)>| match event {
        Event::Produced {
            partition,
            base_offset,
            records,
        } => acked.push((partition, base_offset, records)),
        Event::Joined {
            broker,
            member,
            generation,
        } => {
            handed_out.entry(generation).or_default().insert(broker);
            members.push((broker, member, generation));
        }
        Event::Nothing => {}
    };
    for _ in 0..STEPS {
        let pick = rng.gen_range(0..100);
        let broker = rng.gen_range(0..w.brokers.len());
        let b = w.brokers[broker].clone();
        match pick {
            0..=39 => {
                let partition = rng.gen_range(0..PARTITIONS);
                let n = rng.gen_range(1..6);
                tasks.spawn(produce(b, partition, n));
            }
            40..=44 => w.coordinator_faults.fail(Op::Commit, 1),
            45..=49 => w.store_faults.fail(StoreOp::Put, 1),
            50..=56 => {
                // A commit stalls (a stuck database); meanwhile garbage collection runs with the
                // clock anywhere from now to long past the grace period.
                let hold = w.coordinator_faults.hold(Op::Commit);
                tasks.spawn(produce(b, rng.gen_range(0..PARTITIONS), 1));
                let reached = tokio::time::timeout(Duration::from_secs(60), hold.reached()).await;
                w.clock.advance(rng.gen_range(0..2 * GRACE_MS));
                // An armed DELETE failure fails the pass; the next one retries.
                let pass = fjord_storage::gc::collect(
                    &w.store,
                    &w.coordinator,
                    w.clock.now_ms(),
                    GRACE_MS,
                )
                .await;
                assert!(
                    pass.is_ok()
                        || !matches!(pass, Err(fjord_storage::gc::GcError::Coordinator(_))),
                    "seed {seed}: {pass:?}"
                );
                hold.release();
                let _ = reached;
            }
            57..=64 => {
                w.clock.advance(rng.gen_range(0..GRACE_MS));
                // A failed listing or deletion only fails the pass.
                let _ = fjord_storage::gc::collect(
                    &w.store,
                    &w.coordinator,
                    w.clock.now_ms(),
                    GRACE_MS,
                )
                .await;
            }
            65..=69 => w.store_faults.fail(StoreOp::Delete, 1),
            70..=84 => {
                // A new member, or a known one rejoining, through either broker.
                let member = if members.is_empty() || rng.gen_bool(0.5) {
                    String::new()
                } else {
                    members[rng.gen_range(0..members.len())].1.clone()
                };
                tasks.spawn(join(b, broker, member));
            }
            _ => {
                if let Some((at, member, generation)) = members.last().cloned() {
                    next_offset += 1;
                    let b = w.brokers[if rng.gen_bool(0.8) { at } else { 1 - at }].clone();
                    tasks.spawn(commit(b, member, generation, next_offset));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..300))).await;
        while let Some(done) = tasks.try_join_next() {
            record(done.unwrap(), &mut members);
        }
    }
    while let Some(done) = tasks.join_next().await {
        record(done.unwrap(), &mut members);
    }

    eprintln!(
        "seed {seed}: {} produces acknowledged, generations {:?}, {} joins",
        acked.len(),
        handed_out,
        members.len()
    );
    // Every acknowledged produce is readable, and offsets are dense.
    let reader = Reader::new(w.store.clone(), Arc::new(ReadCache::new(0)));
    for partition in 0..PARTITIONS {
        let tp = TopicPartition {
            topic_id: topic,
            partition,
        };
        let hw = w
            .coordinator
            .partition_offsets(tp)
            .await
            .unwrap()
            .high_watermark;
        let rows = w.coordinator.index_rows(tp, 0, u64::MAX).await.unwrap();
        let mut next = 0;
        for row in &rows {
            assert_eq!(
                row.base_offset, next,
                "seed {seed}: a gap in partition {partition}"
            );
            let raw = reader.read_row(row).await.unwrap_or_else(|e| {
                panic!("seed {seed}: an index row's object is unreadable: {e}")
            });
            let (_, end) =
                fjord_storage::batch::materialize(&raw, row.base_offset, 0, usize::MAX).unwrap();
            assert_eq!(end, row.last_offset + 1, "seed {seed}");
            next = end;
        }
        assert_eq!(next, hw, "seed {seed}: rows end at the high watermark");
        for (p, base, n) in &acked {
            if *p == partition {
                assert!(
                    base + *n as i64 <= hw,
                    "seed {seed}: acknowledged {n} records at {base} of partition {p} beyond {hw}"
                );
            }
        }
    }
    // No generation handed out by both brokers, and none the store does not hold.
    for (generation, brokers) in &handed_out {
        assert_eq!(
            brokers.len(),
            1,
            "seed {seed}: generation {generation} handed out by brokers {brokers:?}"
        );
    }
    if let Some(stored) = w.coordinator.load_group("g").await.unwrap() {
        let json: serde_json::Value = serde_json::from_slice(&stored.state).unwrap();
        let durable = json["generation"].as_i64().unwrap_or(0);
        if let Some(max) = handed_out.keys().max() {
            assert!(
                i64::from(*max) <= durable,
                "seed {seed}: generation {max} told while the store holds {durable}"
            );
        }
    }
}

#[test]
fn seeded_simulation_of_two_brokers_with_faults() {
    let seeds: Vec<u64> = match std::env::var("FJORD_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("FJORD_SIM_SEED is a number")],
        Err(_) => (0..SEEDS).collect(),
    };
    for seed in seeds {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(simulate(seed));
    }
}
