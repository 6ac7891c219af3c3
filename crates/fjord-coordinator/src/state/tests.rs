use super::*;

fn tp(partition: i32) -> TopicPartition {
    TopicPartition {
        topic_id: Uuid::nil(),
        partition,
    }
}

fn batch(partition: i32, position: u64, offset_count: i64) -> CommitBatch {
    CommitBatch {
        tp: tp(partition),
        position,
        length: 10,
        offset_count,
        max_timestamp: position as i64,
        producer: None,
        append: position as u32,
    }
}

/// A view of partitions 0 and 1 at high watermarks 100 and 0.
struct TwoPartitions;

impl CommitView for TwoPartitions {
    fn high_watermark(&self, tp: TopicPartition) -> Option<i64> {
        match tp.partition {
            0 => Some(100),
            1 => Some(0),
            _ => None,
        }
    }

    fn producer(&self, _: TopicPartition, _: i64) -> Option<&ProducerPartitionState> {
        None
    }
}

#[test]
fn only_runs_adjacent_in_object_and_offsets_share_a_row() {
    let flush = FlushCommit {
        object_key: "o".into(),
        object_size: 50,
        timestamp_ms: 0,
        batches: vec![
            batch(0, 0, 2),
            batch(0, 10, 3), // adjacent: merged
            batch(1, 20, 1),
            batch(0, 30, 1), // a gap in the object: a new row
            batch(9, 40, 1), // unknown partition: rejected, no row
        ],
    };
    let outcomes = decide_commit(&TwoPartitions, &flush);
    assert_eq!(
        outcomes,
        vec![
            BatchOutcome::Appended { base_offset: 100 },
            BatchOutcome::Appended { base_offset: 102 },
            BatchOutcome::Appended { base_offset: 0 },
            BatchOutcome::Appended { base_offset: 105 },
            BatchOutcome::Rejected(BatchRejection::UnknownTopicOrPartition),
        ]
    );
    let effects = commit_effects(&TwoPartitions, &flush, &outcomes);
    let rows: Vec<_> = effects
        .rows
        .iter()
        .map(|(tp, r)| {
            (
                tp.partition,
                r.base_offset,
                r.last_offset,
                r.position,
                r.length,
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (0, 100, 104, 0, 20),
            (1, 0, 0, 20, 10),
            (0, 105, 105, 30, 10)
        ]
    );
    assert_eq!(effects.high_watermarks[&tp(0)], 106);
    assert_eq!(effects.high_watermarks[&tp(1)], 1);
    assert!(effects.producers.is_empty());
}

#[test]
fn retention_passes_whole_rows_by_time_or_size() {
    let row = |last_offset, max_timestamp| RetainedRow {
        last_offset,
        length: 100,
        max_timestamp,
    };
    let offsets = PartitionOffsets {
        log_start: 5,
        high_watermark: 40,
    };
    let rows = [row(9, 10), row(19, 20), row(29, -1), row(39, 5)];
    let time = |before| RetentionLimits {
        expire_before_ms: Some(before),
        max_bytes: None,
    };
    assert_eq!(retention_decision(offsets, &rows, 400, &time(10)), (5, 0));
    assert_eq!(retention_decision(offsets, &rows, 400, &time(11)), (10, 1));
    // The row without timestamps stops time retention; the older row behind it waits.
    assert_eq!(
        retention_decision(offsets, &rows, 400, &time(i64::MAX)),
        (20, 2)
    );
    let size = |max| RetentionLimits {
        expire_before_ms: None,
        max_bytes: Some(max),
    };
    // Drop rows while at least the limit remains: 200 bytes do, 100 would not.
    assert_eq!(retention_decision(offsets, &rows, 400, &size(150)), (20, 2));
    assert_eq!(retention_decision(offsets, &rows, 400, &size(100)), (30, 3));
    assert_eq!(retention_decision(offsets, &rows, 400, &size(0)), (40, 4));
    assert_eq!(retention_decision(offsets, &rows, 400, &size(401)), (5, 0));
    // Never beyond the high watermark, never below the current start.
    let short = PartitionOffsets {
        log_start: 5,
        high_watermark: 35,
    };
    assert_eq!(retention_decision(short, &rows, 400, &size(0)), (35, 4));
    assert_eq!(retention_decision(offsets, &[], 0, &size(0)), (5, 0));
}

#[test]
fn delete_records_targets() {
    let offsets = PartitionOffsets {
        log_start: 5,
        high_watermark: 40,
    };
    assert_eq!(delete_records_target(offsets, -1).unwrap(), 40);
    assert_eq!(delete_records_target(offsets, 3).unwrap(), 5);
    assert_eq!(delete_records_target(offsets, 40).unwrap(), 40);
    assert!(matches!(
        delete_records_target(offsets, 41),
        Err(CoordinatorError::OffsetOutOfRange(_))
    ));
    assert!(matches!(
        delete_records_target(offsets, -2),
        Err(CoordinatorError::OffsetOutOfRange(_))
    ));
}

#[test]
fn hex_round_trips_every_byte() {
    let bytes: Vec<u8> = (0..=255u8).chain([0, 255]).collect();
    let text = hex_bytes::encode(&bytes);
    assert_eq!(text.len(), bytes.len() * 2);
    assert!(text.starts_with("000102") && text.ends_with("ff00ff"));
    assert_eq!(hex_bytes::decode(&text).unwrap(), bytes);
    assert_eq!(hex_bytes::decode("0aFf").unwrap(), vec![0x0a, 0xff]);
    assert!(hex_bytes::decode("abc").is_err());
    assert!(hex_bytes::decode("zz").is_err());
}

fn committed(topic: &str, partition: i32, offset: i64) -> CommittedOffset {
    CommittedOffset {
        topic: topic.into(),
        partition,
        offset,
        leader_epoch: -1,
        metadata: Some(format!("m{offset}")),
        commit_timestamp_ms: offset,
    }
}

/// Groups go through JSON (snapshots, journal entries) unchanged; blobs are hex strings.
#[test]
fn groups_survive_json() {
    let mut state = State::default();
    let entries = [
        Entry::CommitOffsets {
            group: "g\0é".into(),
            offsets: vec![committed("a", -1, 1), committed("a", 10, 2)],
        },
        Entry::SaveGroup {
            group: "g\0é".into(),
            state: vec![0, 255, 16],
            at_ms: 5,
        },
        Entry::SaveGroup {
            group: "blob".into(),
            state: vec![],
            at_ms: 0,
        },
        Entry::CommitOffsets {
            group: "gone".into(),
            offsets: vec![committed("b", 0, 3)],
        },
        Entry::DeleteOffsets {
            group: "gone".into(),
            partitions: vec![("b".into(), 0)],
        },
    ];
    for entry in &entries {
        let json = serde_json::to_string(entry).unwrap();
        assert_eq!(&serde_json::from_str::<Entry>(&json).unwrap(), entry);
        state.apply(entry);
    }
    assert!(serde_json::to_string(&entries[1])
        .unwrap()
        .contains(r#""state":"00ff10""#));
    assert_eq!(
        state.groups.keys().collect::<Vec<_>>(),
        vec!["blob", "g\0é"]
    );
    let json = serde_json::to_string(&state).unwrap();
    let back: State = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
    assert_eq!(
        back.groups["g\0é"].committed_offsets(),
        vec![committed("a", -1, 1), committed("a", 10, 2)]
    );
    assert_eq!(back.groups["blob"].state, Some(vec![]));
}

/// The expiry rule: `now - last >= expiration`; an unknown time (0) never expires.
#[test]
fn producer_expiry_rule() {
    assert!(!producer_expired(1_000, 1_999, 1_000));
    assert!(producer_expired(1_000, 2_000, 1_000));
    assert!(!producer_expired(0, i64::MAX, 1_000));
    assert!(!producer_expired(5, i64::MIN, 1));
}

/// Producer memory from before times were recorded (an old snapshot: no `last_append_ms`, no
/// `producer_init_ms`) loads, is stamped by the first expiry step instead of expired, and
/// expires one expiration after the stamp; the step survives JSON (the journal).
#[test]
fn old_producer_memory_is_stamped_then_expires() {
    let p = tp(0);
    let mut state = State::default();
    state.partitions.insert(p, PartitionState::default());
    let json = serde_json::json!({"epoch": 0, "batches": [[0, 4, 0]]});
    let old: ProducerPartitionState = serde_json::from_value(json).unwrap();
    assert_eq!(old.last_append_ms, 0);
    state
        .partitions
        .get_mut(&p)
        .unwrap()
        .producers
        .insert(7, old);
    state.producer_epochs.insert(7, 0);
    state.producer_epochs.insert(8, 2);
    let entry = state.decide_expire_producers(1_000_000, 100, 10).unwrap();
    let step = expiry_step(Some(&entry), false);
    assert_eq!((step.states_expired, step.ids_expired), (0, 0));
    assert_eq!(expiry_changes(&entry), 3); // state 7, ids 7 and 8
    let json = serde_json::to_string(&entry).unwrap();
    assert_eq!(serde_json::from_str::<Entry>(&json).unwrap(), entry);
    state.apply(&entry);
    assert_eq!(state.partitions[&p].producers[&7].last_append_ms, 1_000_000);
    assert_eq!(state.producer_init_ms[&8], 1_000_000);
    // Nothing more to stamp, nothing expired yet.
    assert_eq!(state.decide_expire_producers(1_000_099, 100, 10), None);
    // One expiration later the state goes, and with it id 7; id 8 too (no state).
    let entry = state.decide_expire_producers(1_000_100, 100, 10).unwrap();
    let step = expiry_step(Some(&entry), false);
    assert_eq!((step.states_expired, step.ids_expired), (1, 2));
    // Rechecked after an append refreshed the state: the state stays; the ids still go.
    let mut appended = state.clone();
    appended
        .partitions
        .get_mut(&p)
        .unwrap()
        .producers
        .get_mut(&7)
        .unwrap()
        .last_append_ms = 1_000_050;
    let rechecked = appended
        .recheck_expire_producers(entry.clone(), 100)
        .unwrap();
    let step = expiry_step(Some(&rechecked), false);
    assert_eq!((step.states_expired, step.ids_expired), (0, 2));
    assert_eq!(
        state.recheck_expire_producers(entry.clone(), 100),
        Some(entry.clone())
    );
    state.apply(&entry);
    assert!(state.partitions[&p].producers.is_empty());
    assert!(state.producer_epochs.is_empty() && state.producer_init_ms.is_empty());
    // A limit of one change: `more`.
    state.producer_epochs.insert(9, 0);
    state.producer_epochs.insert(10, 0);
    let entry = state.decide_expire_producers(1, 100, 1).unwrap();
    assert_eq!(expiry_changes(&entry), 1);
}

/// Commits stamp the producer state with the flush's time.
#[test]
fn commits_stamp_producer_memory() {
    let mut state = State::default();
    state.partitions.insert(tp(0), PartitionState::default());
    let mut b = batch(0, 0, 2);
    b.producer = Some(ProducerBatchInfo {
        producer_id: 3,
        producer_epoch: 0,
        base_sequence: 0,
    });
    let flush = FlushCommit {
        object_key: "o".into(),
        object_size: 10,
        timestamp_ms: 4_242,
        batches: vec![b],
    };
    let outcomes = state.decide_commit(&flush);
    state.apply(&Entry::Commit { flush, outcomes });
    assert_eq!(state.partitions[&tp(0)].producers[&3].last_append_ms, 4_242);
}

/// A snapshot written before consumer groups existed still loads.
#[test]
fn state_without_groups_loads() {
    let mut old = serde_json::to_value(State::default()).unwrap();
    old.as_object_mut().unwrap().remove("groups");
    let state: State = serde_json::from_value(old).unwrap();
    assert!(state.groups.is_empty());
}

/// The time index kept up to date by commits and log start moves is the one rebuilt from
/// scratch (as after loading a snapshot), whatever the order of timestamps.
#[test]
fn time_index_maintained_equals_rebuilt() {
    let meta = TopicMeta {
        name: "t".into(),
        id: Uuid::nil(),
        partitions: 1,
        configs: Default::default(),
    };
    let mut state = State::default();
    state.apply(&Entry::CreateTopic(meta));
    let mut seed = 7u64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    for i in 0..2000u64 {
        if next() % 5 == 0 {
            let hw = state.partitions[&tp(0)].high_watermark;
            let log_start = state.partitions[&tp(0)].log_start;
            let step = (next() % 40) as i64;
            state.apply(&Entry::LogStart {
                tp: tp(0),
                log_start: (log_start + step).min(hw),
                at_ms: 0,
            });
        } else {
            let ts = (next() % 1000) as i64 + i as i64 / 4 - 1;
            let flush = FlushCommit {
                object_key: format!("o{i}"),
                object_size: 10,
                timestamp_ms: 0,
                batches: vec![CommitBatch {
                    max_timestamp: ts,
                    ..batch(0, 0, 1 + (next() % 5) as i64)
                }],
            };
            let outcomes = decide_commit(&state, &flush);
            state.apply(&Entry::Commit { flush, outcomes });
        }
        let mut rebuilt = state.clone();
        rebuilt.rebuild_time_indexes();
        assert_eq!(
            state.partitions[&tp(0)].time_index,
            rebuilt.partitions[&tp(0)].time_index,
            "after step {i}"
        );
        let p = &state.partitions[&tp(0)];
        for target in [-1, 0, 250, 500, 999, 1500] {
            let scanned = p
                .rows
                .range(retained_from(p)..)
                .map(|(_, row)| row)
                .find(|row| row.max_timestamp >= target)
                .cloned();
            assert_eq!(state.row_for_timestamp(tp(0), target).unwrap(), scanned);
        }
    }
}
