use fjord_coordinator::clock::ManualClock;
use fjord_coordinator::embedded::EmbeddedCoordinator;
use fjord_coordinator::{
    CommitBatch, FlushCommit, InitProducer, ProducerBatchInfo, TopicPartition, TopicSpec,
};

use super::*;
use crate::groups::consumer::ConsumerGroup;
use crate::groups::group::{GroupSettings, Snapshot, SnapshotMember};

const DAY: i64 = 24 * 60 * 60 * 1000;

fn snapshot(members: usize) -> Vec<u8> {
    let member = |i: usize| SnapshotMember {
        id: format!("m{i}"),
        instance_id: None,
        client_id: "c".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        protocols: vec![("range".into(), vec![])],
        assignment: vec![],
    };
    serde_json::to_vec(&Snapshot {
        generation: 3,
        protocol_type: Some("consumer".into()),
        protocol_name: Some("range".into()),
        leader: (members > 0).then(|| "m0".into()),
        members: (0..members).map(member).collect(),
    })
    .unwrap()
}

fn stored(state: Vec<u8>, saved_ms: i64) -> StoredGroup {
    StoredGroup {
        state,
        version: 7,
        saved_ms,
    }
}

fn offset(topic: &str, partition: i32, committed_at: i64) -> CommittedOffset {
    CommittedOffset {
        topic: topic.into(),
        partition,
        offset: 42,
        leader_epoch: -1,
        metadata: None,
        commit_timestamp_ms: committed_at,
    }
}

#[test]
fn blobs_tell_whether_a_group_has_members() {
    assert_eq!(has_members(&snapshot(2)), Some(true));
    assert_eq!(has_members(&snapshot(0)), Some(false));
    let consumer = ConsumerGroup::new("g", GroupSettings::default());
    let blob = serde_json::to_vec(&serde_json::json!({ "consumer": consumer })).unwrap();
    assert_eq!(has_members(&blob), Some(false));
    assert_eq!(has_members(b"not json"), None);
}

/// KIP-211: members keep offsets; an empty group's offsets go one retention after it became
/// empty (an offset committed later lives a retention after its commit); a standalone group's
/// each by its commit time; an empty group with nothing left is deleted once its blob is old.
#[test]
fn group_expiry_decisions() {
    let offsets = [offset("a", 0, 1_000), offset("a", 1, 5_000)];
    let at = |now| group_expiry(Some(&stored(snapshot(1), 2_000)), &offsets, now, DAY);
    // A group with members: never, however old.
    assert_eq!(at(i64::MAX), GroupExpiry::default());
    // Undecodable blob: never.
    assert_eq!(
        group_expiry(Some(&stored(b"?".to_vec(), 1)), &offsets, i64::MAX, DAY),
        GroupExpiry::default()
    );
    // Empty since 2 000: a:0 (committed before) goes at 2 000 + DAY, a:1 at 5 000 + DAY.
    let empty = stored(snapshot(0), 2_000);
    let at = |now| group_expiry(Some(&empty), &offsets, now, DAY);
    assert_eq!(at(2_000 + DAY - 1), GroupExpiry::default());
    assert_eq!(
        at(2_000 + DAY),
        GroupExpiry {
            offsets: vec![("a".into(), 0)],
            delete_group: false
        }
    );
    assert_eq!(
        at(5_000 + DAY),
        GroupExpiry {
            offsets: vec![("a".into(), 0), ("a".into(), 1)],
            delete_group: true
        }
    );
    // No offsets left: the empty group goes once its blob is a retention old.
    assert!(!group_expiry(Some(&empty), &[], 2_000 + DAY - 1, DAY).delete_group);
    assert!(group_expiry(Some(&empty), &[], 2_000 + DAY, DAY).delete_group);
    // Standalone (no blob): each offset by its commit time; nothing to delete as a group.
    assert_eq!(
        group_expiry(None, &offsets, 1_000 + DAY, DAY),
        GroupExpiry {
            offsets: vec![("a".into(), 0)],
            delete_group: false
        }
    );
    // A blob saved before save times were recorded (0): offsets go by their commit times.
    assert_eq!(
        group_expiry(Some(&stored(snapshot(0), 0)), &offsets, 1_000 + DAY, DAY).offsets,
        vec![("a".to_string(), 0)]
    );
}

fn settings(retention_ms: i64) -> ExpirySettings {
    ExpirySettings {
        offsets_retention_ms: retention_ms,
        producer_id_expiration_ms: retention_ms,
        ..ExpirySettings::default()
    }
}

/// A group pass on the injected clock: only the empty and standalone groups lose offsets, the
/// empty group goes once nothing is left, the group with members keeps everything.
#[tokio::test]
async fn a_group_pass_expires_empty_groups_by_the_injected_clock() {
    let clock = ManualClock::new(1_000_000);
    let c: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::in_memory(clock.clone()));
    c.save_group("busy", 0, snapshot(1)).await.unwrap();
    c.save_group("left", 0, snapshot(0)).await.unwrap();
    for group in ["busy", "left", "standalone"] {
        let fence = (group == "standalone").then_some(0);
        c.commit_offsets(group, vec![offset("t", 0, clock.now_ms())], fence)
            .await
            .unwrap_or_else(|e| panic!("{group}: {e}"));
    }
    let stats = ExpiryStats::default();
    let s = settings(60_000);
    clock.advance(59_999);
    let (report, cursor) = group_pass(&c, &*clock, &s, &stats, None, None).await;
    assert_eq!((report.groups, report.offsets_expired), (3, 0));
    assert!(cursor.is_none());
    clock.advance(1);
    let (report, _) = group_pass(&c, &*clock, &s, &stats, None, None).await;
    assert_eq!((report.offsets_expired, report.groups_deleted), (2, 1));
    assert_eq!(c.list_groups().await.unwrap(), vec!["busy".to_string()]);
    assert_eq!(c.fetch_offsets("busy").await.unwrap().len(), 1);
    assert_eq!(stats.group_offsets_expired.load(Ordering::Relaxed), 2);
    assert_eq!(stats.groups_deleted.load(Ordering::Relaxed), 1);
    assert_eq!(stats.errors.load(Ordering::Relaxed), 0);
}

/// A pass looks at most at `groups_per_pass` groups; the next one resumes after the last.
#[tokio::test]
async fn a_group_pass_is_bounded_and_the_next_resumes() {
    let clock = ManualClock::new(1_000);
    let c: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::in_memory(clock.clone()));
    for i in 0..5 {
        c.commit_offsets(&format!("g{i}"), vec![offset("t", 0, 1_000)], None)
            .await
            .unwrap();
    }
    clock.advance(10_000);
    let s = ExpirySettings {
        groups_per_pass: 2,
        ..settings(1_000)
    };
    let stats = ExpiryStats::default();
    let mut cursor = None;
    let mut passes = 0;
    loop {
        let (report, next) = group_pass(&c, &*clock, &s, &stats, None, cursor).await;
        assert!(report.groups <= 2);
        passes += 1;
        cursor = next;
        if !report.incomplete {
            break;
        }
        assert!(passes < 10, "no progress");
    }
    assert_eq!(passes, 3);
    assert!(c.list_groups().await.unwrap().is_empty());
}

/// A deletion fenced by a save in between (the group's coordinator wrote it) changes nothing.
#[tokio::test]
async fn a_group_written_meanwhile_is_left_alone() {
    let clock = ManualClock::new(1_000);
    let c: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::in_memory(clock.clone()));
    let v = c.save_group("g", 0, snapshot(0)).await.unwrap();
    c.commit_offsets("g", vec![offset("t", 0, 1_000)], Some(v))
        .await
        .unwrap();
    clock.advance(10_000);
    let loaded = c.load_group("g").await.unwrap().unwrap();
    let offsets = c.fetch_offsets("g").await.unwrap();
    let decision = group_expiry(Some(&loaded), &offsets, clock.now_ms(), 1_000);
    assert!(decision.delete_group);
    // A member joins and the coordinator saves before the expiry deletes.
    c.save_group("g", v, snapshot(1)).await.unwrap();
    assert!(matches!(
        c.delete_group("g", Some(loaded.version)).await,
        Err(CoordinatorError::Fenced(_))
    ));
    assert_eq!(c.fetch_offsets("g").await.unwrap().len(), 1);
}

/// A producer pass expires idempotent-producer memory by the injected clock.
#[tokio::test]
async fn a_producer_pass_expires_by_the_injected_clock() {
    let clock = ManualClock::new(1_000_000);
    let c: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::in_memory(clock.clone()));
    let t = c
        .create_topic(TopicSpec {
            name: "t".into(),
            partitions: 1,
            configs: Default::default(),
        })
        .await
        .unwrap();
    let id = c
        .init_producer_id(InitProducer { existing: None })
        .await
        .unwrap();
    c.commit(FlushCommit {
        object_key: "o".into(),
        object_size: 10,
        timestamp_ms: clock.now_ms(),
        batches: vec![CommitBatch {
            tp: TopicPartition {
                topic_id: t.id,
                partition: 0,
            },
            position: 0,
            length: 10,
            offset_count: 1,
            max_timestamp: 1,
            producer: Some(ProducerBatchInfo {
                producer_id: id.producer_id,
                producer_epoch: 0,
                base_sequence: 0,
            }),
            append: 0,
        }],
    })
    .await
    .unwrap();
    let stats = ExpiryStats::default();
    let s = ExpirySettings {
        producers_per_step: 1,
        ..settings(DAY)
    };
    clock.advance(DAY - 1);
    let report = producer_pass(&c, &*clock, &s, &stats).await;
    assert_eq!(
        (report.producer_states_expired, report.producers_expired),
        (0, 0)
    );
    clock.advance(1);
    let report = producer_pass(&c, &*clock, &s, &stats).await;
    assert_eq!(
        (report.producer_states_expired, report.producers_expired),
        (1, 1)
    );
    assert!(!report.incomplete);
    assert_eq!(stats.producers_expired.load(Ordering::Relaxed), 1);
    assert_eq!(stats.producer_states_expired.load(Ordering::Relaxed), 1);
}
