use std::collections::BTreeSet;

use bytes::Bytes;
use fjord_coordinator::embedded::EmbeddedCoordinator;

use super::group::{JoinRequest, Reply};
use super::*;
use crate::cluster::{self, Member};

fn coordinator(dir: &std::path::Path) -> Arc<GroupCoordinator> {
    let store = Arc::new(EmbeddedCoordinator::open(dir).unwrap());
    let settings = GroupSettings {
        initial_rebalance_delay: Duration::from_millis(50),
        idle_eviction: Duration::from_secs(60),
        ..GroupSettings::default()
    };
    let me = Member {
        node_id: 1,
        host: "localhost".into(),
        port: 9092,
        rack: None,
        listeners: Vec::new(),
    };
    GroupCoordinator::start(store, settings, cluster::fixed(ClusterView::single(me)))
}

fn join_request(session: Duration) -> JoinRequest {
    JoinRequest {
        member_id: String::new(),
        instance_id: None,
        client_id: "c".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout: session,
        rebalance_timeout: session,
        protocol_type: "consumer".into(),
        protocols: vec![("range".into(), Bytes::from_static(b"m"))],
        require_known_member_id: false,
    }
}

/// One member joins `slot`'s group; returns its id once the first rebalance completed.
async fn join(slot: &Slot, session: Duration) -> String {
    let reply = slot
        .group
        .lock()
        .join(join_request(session), Instant::now())
        .0;
    let Reply::Later(rx) = reply else {
        panic!("a first join waits for the initial delay");
    };
    let joined = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(joined.error, None);
    joined.member_id
}

fn in_memory(groups: &GroupCoordinator) -> BTreeSet<String> {
    groups.groups.lock().keys().cloned().collect()
}

#[tokio::test(start_paused = true)]
async fn idle_groups_leave_memory_and_load_again_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let groups = coordinator(dir.path());

    // A group used and left: Empty, its last generation in the store.
    let used = groups.slot("used").await.unwrap();
    let member = join(&used, Duration::from_secs(10)).await;
    let (_, changed) = used.group.lock().leave(&[(member, None)], Instant::now());
    assert!(changed);
    groups.make_durable(&used, used.seen()).await.unwrap();
    let generation = used.group.lock().generation;
    assert!(generation > 0);
    drop(used);
    // A group with a member whose session outlasts the idle time.
    let busy = groups.slot("busy").await.unwrap();
    join(&busy, Duration::from_secs(1800)).await;
    drop(busy);
    // A group created and never used (a JoinGroup that went no further).
    drop(groups.slot("named").await.unwrap());
    // An idle group that a request still holds.
    let held = groups.slot("held").await.unwrap();
    // An idle group named again before its idle time ran out.
    drop(groups.slot("renamed").await.unwrap());
    tokio::time::sleep(Duration::from_secs(40)).await;
    drop(groups.slot("renamed").await.unwrap());

    tokio::time::sleep(Duration::from_secs(30)).await;
    let expected: BTreeSet<String> = ["busy", "held", "renamed"].map(String::from).into();
    assert_eq!(in_memory(&groups), expected);
    drop(held);
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_eq!(in_memory(&groups), ["busy"].map(String::from).into());

    // Named again, the used group comes back from the store as it was.
    let used = groups.slot("used").await.unwrap();
    let g = used.group.lock();
    assert_eq!((g.state, g.generation), (GroupState::Empty, generation));
}

/// A group whose durable state offset expiry deleted is no longer listed, here or (after
/// `forget_idle`) in memory; a slot in use stays until its next save is fenced.
#[tokio::test(start_paused = true)]
async fn groups_deleted_from_the_store_are_not_listed() {
    let dir = tempfile::tempdir().unwrap();
    let groups = coordinator(dir.path());
    let left = groups.slot("left").await.unwrap();
    let member = join(&left, Duration::from_secs(10)).await;
    left.group.lock().leave(&[(member, None)], Instant::now());
    groups.make_durable(&left, left.seen()).await.unwrap();
    let version = left.store_version();
    let listed = |l: Vec<Listed>| l.into_iter().map(|g| g.id).collect::<Vec<_>>();
    assert_eq!(listed(groups.list().await.unwrap()), vec!["left"]);

    // Deleted by expiry (on any broker): not listed, although still in this broker's memory.
    assert!(groups
        .store()
        .delete_group("left", Some(version))
        .await
        .unwrap());
    assert!(listed(groups.list().await.unwrap()).is_empty());
    // Held by a request: stays in memory.
    groups.forget_idle("left");
    assert_eq!(in_memory(&groups), ["left"].map(String::from).into());
    drop(left);
    groups.forget_idle("left");
    assert!(in_memory(&groups).is_empty());
}
