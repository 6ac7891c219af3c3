//! Consumer groups across coordinators and failures (issue 13, items 2, 3, 8 and 12): a
//! generation is durable before any member learns it, two brokers that both believe they
//! coordinate a group cannot both hand out its next generation, an offset commit lands only under
//! the group state it was validated against, commits during a rebalance are answered as Kafka
//! answers them, and group ids nobody uses leave nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use fjord_broker::{Broker, BrokerSettings};
use fjord_coordinator::embedded::EmbeddedCoordinator;
use fjord_coordinator::faults::{Faults, FaultyCoordinator, Op};
use fjord_coordinator::Coordinator;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use common::*;

fn gid(s: &str) -> GroupId {
    GroupId(sb(s))
}

async fn join(b: &Arc<Broker>, group: &str, member: &str) -> JoinGroupResponse {
    join_group(b, group, member).await
}

async fn sync(b: &Arc<Broker>, group: &str, joined: &JoinGroupResponse) -> SyncGroupResponse {
    sync_group(b, group, joined).await
}

/// Joins a new member alone and syncs; returns (member id, generation).
async fn join_alone(b: &Arc<Broker>, group: &str) -> (StrBytes, i32) {
    let j = join(b, group, "").await;
    assert_eq!(j.error_code, 0);
    assert_eq!(sync(b, group, &j).await.error_code, 0);
    (j.member_id, j.generation_id)
}

async fn commit(b: &Arc<Broker>, group: &str, member: &str, generation: i32, offset: i64) -> i16 {
    commit_offset(b, group, member, generation, offset).await
}

/// The committed offset of "t" partition 0.
async fn committed(b: &Arc<Broker>, group: &str) -> i64 {
    let request = OffsetFetchRequest::default()
        .with_group_id(gid(group))
        .with_topics(Some(vec![
            offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(TopicName(sb("t")))
                .with_partition_indexes(vec![0]),
        ]));
    let r = call(b, request, 7).await;
    assert_eq!(r.error_code, 0);
    r.topics[0].partitions[0].committed_offset
}

/// The generation stored for the group (the classic snapshot's `generation`).
async fn stored_generation(store: &Arc<dyn Coordinator>, group: &str) -> i64 {
    let stored = store.load_group(group).await.unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&stored.state).unwrap();
    json["generation"].as_i64().unwrap()
}

/// A broker over a fault-injecting wrapper of an embedded coordinator.
struct Faulty {
    broker: Arc<Broker>,
    store: Arc<dyn Coordinator>,
    faults: Arc<Faults>,
    _writer: fjord_storage::writer::WriterTask,
    _dir: tempfile::TempDir,
}

fn faulty() -> Faulty {
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::open(dir.path()).unwrap());
    let (store, faults) = FaultyCoordinator::new(inner);
    let store: Arc<dyn Coordinator> = store;
    let objects: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::memory::InMemory::new());
    let (broker, writer) =
        fjord_broker::testkit::broker_on(store.clone(), objects, BrokerSettings::default());
    Faulty {
        broker,
        store,
        faults,
        _writer: writer,
        _dir: dir,
    }
}

/// Item 3: a member learns a generation only once it is durable. When the store cannot save it,
/// the join is answered with a retriable error; the store never holds a generation older than
/// one a member was told, so a coordinator that takes over cannot hand that number out again.
#[tokio::test]
async fn a_generation_is_durable_before_any_member_learns_it() {
    let f = faulty();
    let b = &f.broker;
    create(b, "t", 1).await;
    let (m1, g1) = join_alone(b, "g").await;
    assert_eq!(stored_generation(&f.store, "g").await, i64::from(g1));

    // Every save fails from now on: a new member and the rebalance it starts.
    f.faults.fail(Op::SaveGroup, 1000);
    let newcomer = {
        let b = b.clone();
        tokio::spawn(async move { join(&b, "g", "").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rejoined = join(b, "g", m1.as_str()).await;
    let newcomer = newcomer.await.unwrap();
    let stored = stored_generation(&f.store, "g").await;
    for r in [&rejoined, &newcomer] {
        if r.error_code == 0 {
            assert!(
                i64::from(r.generation_id) <= stored,
                "a member learned generation {} while the store holds {stored}",
                r.generation_id
            );
        } else {
            assert!(
                [
                    ResponseError::CoordinatorNotAvailable.code(),
                    ResponseError::NotCoordinator.code()
                ]
                .contains(&r.error_code),
                "a retriable error: {}",
                r.error_code
            );
        }
    }
}

/// Item 2: two brokers that both believe they coordinate a group (a view change in progress)
/// cannot both hand out its next generation: the second to save it is fenced and its members are
/// sent to find the coordinator again.
#[tokio::test]
async fn two_coordinators_never_hand_out_one_generation_twice() {
    let c = cluster(2);
    let (a, b) = (&c.brokers[0], &c.brokers[1]);
    create(a, "t", 1).await;
    let (m1, g1) = join_alone(a, "g").await;
    // A newcomer joins through b: b waits for m1 to rejoin there, which it never does.
    let via_b = {
        let b = b.clone();
        tokio::spawn(async move { join(&b, "g", "").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Meanwhile a newcomer joins through a, and m1 rejoins there: a completes at once.
    let via_a = {
        let a = a.clone();
        tokio::spawn(async move { join(&a, "g", "").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m1_again = join(a, "g", m1.as_str()).await;
    let via_a = via_a.await.unwrap();
    let via_b = via_b.await.unwrap();
    let learned: Vec<(&str, i16, i32)> = [("a", &m1_again), ("a", &via_a), ("b", &via_b)]
        .into_iter()
        .map(|(at, r)| (at, r.error_code, r.generation_id))
        .collect();
    let next = g1 + 1;
    let winners: std::collections::BTreeSet<&str> = learned
        .iter()
        .filter(|(_, e, g)| *e == 0 && *g == next)
        .map(|(at, _, _)| *at)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "generation {next} was handed out by both coordinators: {learned:?}"
    );
    assert!(
        via_b.error_code == ResponseError::NotCoordinator.code() || via_b.generation_id > next,
        "the fenced coordinator's member is sent away: {learned:?}"
    );
}

/// Item 2: a broker with a stale view of a group (another broker moved it to a newer generation)
/// cannot commit offsets under the old generation: committed offsets never go backwards.
#[tokio::test]
async fn a_stale_coordinator_cannot_move_committed_offsets_backwards() {
    let c = cluster(2);
    let (a, b) = (&c.brokers[0], &c.brokers[1]);
    create(a, "t", 1).await;
    let (m1, g1) = join_alone(a, "g").await;
    assert_eq!(commit(a, "g", m1.as_str(), g1, 10).await, 0);
    // Through b, a newcomer takes the group over (m1 does not rejoin there in time).
    let j = join(b, "g", "").await;
    assert_eq!(j.error_code, 0);
    assert!(j.generation_id > g1);
    assert_eq!(sync(b, "g", &j).await.error_code, 0);
    assert_eq!(
        commit(b, "g", j.member_id.as_str(), j.generation_id, 50).await,
        0
    );
    // a still believes m1 owns the partition in g1; its late commit must not land.
    let late = commit(a, "g", m1.as_str(), g1, 20).await;
    assert_ne!(
        late, 0,
        "a commit under a superseded generation was accepted"
    );
    assert_eq!(committed(a, "g").await, 50);
    assert_eq!(committed(b, "g").await, 50);
}

/// Item 2, on one broker: an OffsetCommit validated under generation N whose write is slow must
/// not land after generation N+1 was handed out and a new owner committed.
#[tokio::test]
async fn a_commit_validated_under_an_old_generation_does_not_land_after_a_newer_one() {
    let f = faulty();
    let b = &f.broker;
    create(b, "t", 1).await;
    let (m1, g1) = join_alone(b, "g").await;
    // m1's commit is validated under g1, then stalls on its way to the store.
    let hold = f.faults.hold(Op::CommitOffsets);
    let stalled = {
        let (b, m1) = (b.clone(), m1.clone());
        tokio::spawn(async move { commit(&b, "g", m1.as_str(), g1, 10).await })
    };
    hold.reached().await;
    // Meanwhile a rebalance: a newcomer joins, m1 rejoins, generation g1 + 1.
    let newcomer = {
        let b = b.clone();
        tokio::spawn(async move { join(&b, "g", "").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m1_again = join(b, "g", m1.as_str()).await;
    let newcomer = newcomer.await.unwrap();
    assert_eq!((m1_again.error_code, newcomer.error_code), (0, 0));
    assert_eq!(m1_again.generation_id, g1 + 1);
    let leader = if m1_again.leader == m1_again.member_id {
        &m1_again
    } else {
        &newcomer
    };
    let follower = if leader.member_id == newcomer.member_id {
        &m1_again
    } else {
        &newcomer
    };
    let follower_sync = {
        let (b, f) = (b.clone(), follower.clone());
        tokio::spawn(async move { sync(&b, "g", &f).await })
    };
    assert_eq!(sync(b, "g", leader).await.error_code, 0);
    assert_eq!(follower_sync.await.unwrap().error_code, 0);
    // The newcomer, now owning the partition, commits 50.
    assert_eq!(
        commit(
            b,
            "g",
            newcomer.member_id.as_str(),
            newcomer.generation_id,
            50
        )
        .await,
        0
    );
    hold.release();
    assert_eq!(
        stalled.await.unwrap(),
        ResponseError::IllegalGeneration.code(),
        "the stalled commit was validated under a superseded generation"
    );
    assert_eq!(committed(b, "g").await, 50);
}

/// The end of the view-change race in tests/e2e/test_cluster.py (test_group_view_change_race):
/// the broker a member of generation N commits through dies, and the member moves to the other
/// broker, which was preparing a rebalance meanwhile. There its generation-N commits are accepted
/// in the order they arrive, as Kafka's classic coordinator accepts them while a group prepares a
/// rebalance, with no check that an offset only grows. So a commit the client sends again with
/// older offsets (librdkafka retries one whose answer was lost with the broker, or defers it until
/// a coordinator is found, and meanwhile commits newer offsets on revoking its partitions) lands
/// after the newer one: the committed offset goes back within the generation, and the member
/// resumes from it in the next (at-least-once redelivery). What holds is the handover: once
/// generation N + 1 is stored, no generation-N commit lands through either broker, so the
/// partition never goes below where it stood then.
#[tokio::test]
async fn a_late_commit_lands_within_its_generation_but_never_after_the_next() {
    let c = cluster(2);
    let (a, b) = (&c.brokers[0], &c.brokers[1]);
    create(a, "t", 1).await;
    let (m1, g1) = join_alone(a, "g").await;
    assert_eq!(commit(a, "g", m1.as_str(), g1, 655).await, 0);
    // A newcomer joins through b, which loads the group and prepares a rebalance; m1 goes on
    // committing through a.
    let newcomer = {
        let b = b.clone();
        tokio::spawn(async move { join(&b, "g", "").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(commit(a, "g", m1.as_str(), g1, 670).await, 0);
    // a dies with the answer to that commit; m1 finds b. Its commit on revoking its partitions,
    // then the one it sends again: both of generation g1, both accepted, in arrival order.
    assert_eq!(commit(b, "g", m1.as_str(), g1, 685).await, 0);
    assert_eq!(commit(b, "g", m1.as_str(), g1, 670).await, 0);
    assert_eq!(committed(b, "g").await, 670);
    // m1 rejoins through b: generation g1 + 1 is stored.
    let m1_again = join(b, "g", m1.as_str()).await;
    let newcomer = newcomer.await.unwrap();
    assert_eq!((m1_again.error_code, newcomer.error_code), (0, 0));
    assert_eq!(m1_again.generation_id, g1 + 1);
    // From now on no commit of generation g1 lands, through either broker.
    assert_eq!(
        commit(b, "g", m1.as_str(), g1, 660).await,
        ResponseError::IllegalGeneration.code()
    );
    assert_ne!(
        commit(a, "g", m1.as_str(), g1, 660).await,
        0,
        "the stale coordinator accepted a commit of a superseded generation"
    );
    assert_eq!(committed(a, "g").await, 670);
}

/// Item 8: Kafka's classic coordinator accepts commits with the current generation while the
/// group prepares a rebalance (members keep committing what they own, KIP-429), answers
/// REBALANCE_IN_PROGRESS only while the rebalance completes, and ILLEGAL_GENERATION for a stale
/// generation.
#[tokio::test]
async fn commits_are_answered_state_by_state_during_a_rebalance() {
    let c = cluster(1);
    let b = &c.brokers[0];
    create(b, "t", 1).await;
    let (m1, g1) = join_alone(b, "g").await;
    // A newcomer: the group prepares a rebalance and waits for m1 to rejoin.
    let newcomer = {
        let b = b.clone();
        tokio::spawn(async move { join(&b, "g", "").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        commit(b, "g", m1.as_str(), g1, 7).await,
        0,
        "PreparingRebalance accepts the current generation"
    );
    assert_eq!(committed(b, "g").await, 7);
    let m1_again = join(b, "g", m1.as_str()).await;
    let newcomer = newcomer.await.unwrap();
    assert_eq!(m1_again.generation_id, g1 + 1);
    // CompletingRebalance: the new generation is answered REBALANCE_IN_PROGRESS, the old one
    // ILLEGAL_GENERATION.
    assert_eq!(
        commit(b, "g", m1.as_str(), g1 + 1, 8).await,
        ResponseError::RebalanceInProgress.code()
    );
    assert_eq!(
        commit(b, "g", m1.as_str(), g1, 8).await,
        ResponseError::IllegalGeneration.code()
    );
    // Stable again: accepted.
    let (leader, follower) = if m1_again.leader == m1_again.member_id {
        (m1_again, newcomer)
    } else {
        (newcomer, m1_again)
    };
    let follower_sync = {
        let (b, f) = (b.clone(), follower.clone());
        tokio::spawn(async move { sync(&b, "g", &f).await })
    };
    assert_eq!(sync(b, "g", &leader).await.error_code, 0);
    assert_eq!(follower_sync.await.unwrap().error_code, 0);
    assert_eq!(commit(b, "g", m1.as_str(), g1 + 1, 9).await, 0);
    assert_eq!(committed(b, "g").await, 9);
}

/// Item 12: requests naming group ids nobody uses (Heartbeat, SyncGroup, LeaveGroup,
/// DescribeGroups, OffsetFetch, DeleteGroups) are answered without keeping anything in memory.
#[tokio::test]
async fn unknown_group_ids_leave_nothing_in_memory() {
    let c = cluster(1);
    let b = &c.brokers[0];
    for i in 0..200 {
        let group = format!("nobody-{i}");
        let hb = call(
            b,
            HeartbeatRequest::default()
                .with_group_id(gid(&group))
                .with_generation_id(1)
                .with_member_id(sb("m")),
            4,
        )
        .await;
        assert_eq!(hb.error_code, ResponseError::UnknownMemberId.code());
        let s = call(
            b,
            SyncGroupRequest::default()
                .with_group_id(gid(&group))
                .with_generation_id(1)
                .with_member_id(sb("m")),
            3,
        )
        .await;
        assert_eq!(s.error_code, ResponseError::UnknownMemberId.code());
        let d = call(
            b,
            DescribeGroupsRequest::default().with_groups(vec![gid(&group)]),
            5,
        )
        .await;
        assert_eq!(d.groups[0].group_state.as_str(), "Dead");
        let f = call(
            b,
            OffsetFetchRequest::default()
                .with_group_id(gid(&group))
                .with_topics(None),
            7,
        )
        .await;
        assert_eq!(f.error_code, 0);
        let del = call(
            b,
            DeleteGroupsRequest::default().with_groups_names(vec![gid(&group)]),
            2,
        )
        .await;
        assert_eq!(
            del.results[0].error_code,
            ResponseError::GroupIdNotFound.code()
        );
    }
    assert_eq!(b.groups.in_memory(), 0, "group slots kept for unused ids");
}
