use std::collections::{BTreeMap, BTreeSet};

use super::*;

fn member(id: i32, rack: Option<&str>) -> Member {
    Member {
        node_id: id,
        host: format!("b{id}"),
        port: 9092,
        rack: rack.map(str::to_string),
        listeners: Vec::new(),
    }
}

fn view(me: i32, members: &[(i32, Option<&str>)]) -> ClusterView {
    let all: Vec<Member> = members.iter().map(|(id, r)| member(*id, *r)).collect();
    let me = all
        .iter()
        .find(|m| m.node_id == me)
        .cloned()
        .unwrap_or_else(|| member(me, None));
    ClusterView::new(me, all)
}

#[test]
fn a_view_always_contains_this_broker() {
    let v = ClusterView::new(member(7, None), [member(1, None), member(7, Some("old"))]);
    assert_eq!(v.members().len(), 2);
    assert_eq!(v.member(7), Some(&member(7, None)));
    assert_eq!(v.self_id(), 7);
    let single = ClusterView::single(member(3, None));
    assert_eq!(single.partition_owner(Uuid::new_v4(), 5, Some("z")), 3);
    assert_eq!(single.group_coordinator("g"), 3);
    assert!(single.runs_background_duties());
}

#[test]
fn partitions_of_a_topic_spread_evenly() {
    let v = view(0, &[(0, None), (1, None), (2, None)]);
    for _ in 0..20 {
        let topic = Uuid::new_v4();
        let mut count: BTreeMap<i32, usize> = BTreeMap::new();
        for p in 0..12 {
            *count.entry(v.partition_owner(topic, p, None)).or_default() += 1;
        }
        assert_eq!(count.values().copied().collect::<Vec<_>>(), vec![4, 4, 4]);
    }
}

#[test]
fn topics_start_at_different_brokers() {
    let v = view(0, &[(0, None), (1, None), (2, None)]);
    let starts: BTreeSet<i32> = (0..50)
        .map(|_| v.partition_owner(Uuid::new_v4(), 0, None))
        .collect();
    assert_eq!(starts.len(), 3);
}

#[test]
fn zone_clients_stay_in_their_zone() {
    let v = view(
        0,
        &[
            (0, Some("a")),
            (1, Some("a")),
            (2, Some("b")),
            (3, Some("b")),
        ],
    );
    let topic = Uuid::new_v4();
    for p in 0..16 {
        let a = v.partition_owner(topic, p, Some("a"));
        let b = v.partition_owner(topic, p, Some("b"));
        assert!([0, 1].contains(&a));
        assert!([2, 3].contains(&b));
        // Unknown zones fall back to all brokers.
        let any = v.partition_owner(topic, p, Some("c"));
        assert_eq!(any, v.partition_owner(topic, p, None));
        // Replicas hold the leader and one owner per zone.
        let replicas = v.replicas(topic, p, any);
        assert_eq!(replicas.first(), Some(&any));
        assert!(replicas.contains(&a) && replicas.contains(&b));
        assert!(replicas.len() <= 3);
    }
}

#[test]
fn same_view_same_placement_on_every_broker() {
    let members = [(0, Some("a")), (4, Some("b")), (9, None)];
    let views: Vec<ClusterView> = [0, 4, 9].iter().map(|me| view(*me, &members)).collect();
    let topic = Uuid::new_v4();
    for p in 0..8 {
        let owners: BTreeSet<i32> = views
            .iter()
            .map(|v| v.partition_owner(topic, p, Some("b")))
            .collect();
        assert_eq!(owners.len(), 1);
    }
    for g in ["g1", "orders", "x"] {
        let owners: BTreeSet<i32> = views.iter().map(|v| v.group_coordinator(g)).collect();
        assert_eq!(owners.len(), 1);
        assert_eq!(views.iter().filter(|v| v.coordinates(g)).count(), 1);
    }
    assert_eq!(
        views
            .iter()
            .filter(|v| v.runs_background_duties())
            .map(ClusterView::self_id)
            .collect::<Vec<_>>(),
        vec![0]
    );
}

#[test]
fn groups_spread_and_move_only_when_their_broker_leaves() {
    let three = view(0, &[(0, None), (1, None), (2, None)]);
    let two = view(0, &[(0, None), (1, None)]);
    let mut count: BTreeMap<i32, usize> = BTreeMap::new();
    for i in 0..3000 {
        let g = format!("group-{i}");
        let before = three.group_coordinator(&g);
        *count.entry(before).or_default() += 1;
        let after = two.group_coordinator(&g);
        if before != 2 {
            assert_eq!(before, after, "{g} moved though its broker stayed");
        }
    }
    for n in count.values() {
        assert!((800..1200).contains(n), "uneven: {count:?}");
    }
}

#[test]
fn zone_hints_in_client_id() {
    assert_eq!(zone_hint("app,zone=eu-1a"), Some("eu-1a"));
    assert_eq!(zone_hint("zone=eu-1a"), Some("eu-1a"));
    assert_eq!(zone_hint("svc;ws_az=us-east-1b;x=y"), Some("us-east-1b"));
    assert_eq!(zone_hint("svc warpstream_az=z1"), Some("z1"));
    assert_eq!(zone_hint("svc,diskless_az=az2&k=v"), Some("az2"));
    assert_eq!(zone_hint("myzone=a"), None);
    assert_eq!(zone_hint("my_zone=a"), None);
    assert_eq!(zone_hint("zone="), None);
    assert_eq!(zone_hint("rdkafka"), None);
    assert_eq!(zone_hint("é,zone=ü"), Some("ü"));
}

fn with_listeners(id: i32, names: &[&str]) -> Member {
    Member {
        listeners: names
            .iter()
            .enumerate()
            .map(|(i, name)| ListenerEndpoint {
                name: name.to_string(),
                host: format!("{name}.b{id}"),
                port: 9092 + i as i32,
                security_protocol: "PLAINTEXT".into(),
            })
            .collect(),
        ..member(id, None)
    }
}

#[test]
fn members_are_reached_at_their_address_on_the_clients_listener() {
    let m = with_listeners(1, &["INTERNAL", "EXTERNAL"]);
    assert_eq!(m.endpoint("EXTERNAL"), Some(("EXTERNAL.b1", 9093)));
    assert_eq!(m.endpoint("INTERNAL"), Some(("INTERNAL.b1", 9092)));
    assert_eq!(m.endpoint("OTHER"), None);
    // Registered before listeners: host and port on every listener.
    assert_eq!(member(2, None).endpoint("ANY"), Some(("b2", 9092)));
}

#[test]
fn a_view_serving_a_listener_leaves_out_brokers_without_it() {
    let me = with_listeners(1, &["INTERNAL", "EXTERNAL"]);
    let v = ClusterView::new(
        me.clone(),
        [
            with_listeners(2, &["INTERNAL", "EXTERNAL"]),
            with_listeners(3, &["INTERNAL"]),
        ],
    );
    assert!(matches!(
        v.serving("INTERNAL"),
        std::borrow::Cow::Borrowed(_)
    ));
    let external = v.serving("EXTERNAL");
    let ids: Vec<i32> = external.members().iter().map(|m| m.node_id).collect();
    assert_eq!(ids, [1, 2]);
    // This broker stays even on a listener it does not publish (the client reached it).
    let none = v.serving("NOPE");
    let ids: Vec<i32> = none.members().iter().map(|m| m.node_id).collect();
    assert_eq!(ids, [1]);
}
