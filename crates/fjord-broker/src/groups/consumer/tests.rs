#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

const T: Uuid = Uuid::from_u128(0x1111);
const U: Uuid = Uuid::from_u128(0x2222);

fn settings() -> GroupSettings {
    GroupSettings {
        consumer_session_timeout: Duration::from_secs(45),
        consumer_heartbeat_interval: Duration::from_secs(5),
        ..GroupSettings::default()
    }
}

fn lookup(topics: &[(&str, Uuid, i32)]) -> TopicLookup {
    topics
        .iter()
        .map(|(n, id, p)| (n.to_string(), Some((*id, *p))))
        .collect()
}

fn parts(topic: Uuid, p: &[i32]) -> Assignment {
    normalize([(topic, p.iter().copied().collect())].into_iter().collect())
}

fn join_req(id: &str, topics: &[&str]) -> HeartbeatRequest {
    HeartbeatRequest {
        member_id: id.to_string(),
        member_epoch: 0,
        rebalance_timeout_ms: 30_000,
        subscribed: Some(topics.iter().map(|t| t.to_string()).collect()),
        owned: Some(Assignment::new()),
        client_id: "c".into(),
        ..Default::default()
    }
}

fn hb_req(id: &str, epoch: i32, owned: Option<Assignment>) -> HeartbeatRequest {
    HeartbeatRequest {
        member_id: id.to_string(),
        member_epoch: epoch,
        rebalance_timeout_ms: -1,
        owned,
        ..Default::default()
    }
}

fn ok(r: (HeartbeatResult, bool)) -> HeartbeatResult {
    assert_eq!(r.0.error, None, "{:?}", r.0.message);
    r.0
}

fn all(a: &[&Assignment]) -> Assignment {
    let mut out = Assignment::new();
    for x in a {
        add(&mut out, x);
    }
    out
}

#[test]
fn first_member_joins_and_gets_every_partition() {
    let now = Instant::now();
    let mut g = ConsumerGroup::new("g", settings());
    let meta = lookup(&[("t", T, 4)]);
    let r = ok(g.heartbeat(join_req("a", &["t"]), &meta, now));
    assert_eq!(r.member_id, "a");
    assert_eq!(r.member_epoch, 1);
    assert_eq!(r.heartbeat_interval_ms, 5000);
    assert_eq!(r.assignment, Some(parts(T, &[0, 1, 2, 3])));
    assert_eq!(g.group_epoch, 1);
    assert_eq!(g.assignment_epoch, 1);
    assert_eq!(g.state(), ConsumerGroupState::Stable);
    // A plain heartbeat: nothing changed, no assignment in the answer.
    let r = ok(g.heartbeat(hb_req("a", 1, None), &meta, now));
    assert_eq!((r.member_epoch, r.assignment), (1, None));
}

#[test]
fn v0_member_id_is_generated() {
    let mut g = ConsumerGroup::new("g", settings());
    let r = ok(g.heartbeat(
        join_req("", &["t"]),
        &lookup(&[("t", T, 1)]),
        Instant::now(),
    ));
    assert!(Uuid::parse_str(&r.member_id).is_ok());
    assert!(g.members.contains_key(&r.member_id));
}

#[test]
fn partition_moves_only_after_previous_owner_revoked_it() {
    let now = Instant::now();
    let mut g = ConsumerGroup::new("g", settings());
    let meta = lookup(&[("t", T, 4)]);
    let a = ok(g.heartbeat(join_req("a", &["t"]), &meta, now));
    let a_all = a.assignment.unwrap();

    // b joins: the target splits 2/2 but a still holds everything, so b gets nothing yet.
    let b = ok(g.heartbeat(join_req("b", &["t"]), &meta, now));
    assert_eq!(g.group_epoch, 2);
    assert_eq!(b.member_epoch, 2);
    assert_eq!(b.assignment, Some(Assignment::new()));
    assert_eq!(g.members["b"].state, MemberState::UnreleasedPartitions);
    assert_eq!(g.state(), ConsumerGroupState::Reconciling);

    // a is told to keep half; its epoch stays until it has revoked the rest.
    let r = ok(g.heartbeat(hb_req("a", 1, Some(a_all.clone())), &meta, now));
    assert_eq!(r.member_epoch, 1);
    let a_keep = r.assignment.unwrap();
    assert_eq!(a_keep.values().map(BTreeSet::len).sum::<usize>(), 2);
    assert_eq!(g.members["a"].state, MemberState::UnrevokedPartitions);

    // b still waits: a has not reported the revocation.
    let r = ok(g.heartbeat(hb_req("b", 2, None), &meta, now));
    assert_eq!(r.assignment, None);
    // a heartbeats again still owning everything: still waiting.
    let r = ok(g.heartbeat(hb_req("a", 1, Some(a_all.clone())), &meta, now));
    assert_eq!(r.member_epoch, 1);
    let r = ok(g.heartbeat(hb_req("b", 2, None), &meta, now));
    assert_eq!(r.assignment, None);

    // a reports it revoked them: it reaches epoch 2, and b gets the released partitions.
    let r = ok(g.heartbeat(hb_req("a", 1, Some(a_keep.clone())), &meta, now));
    assert_eq!(r.member_epoch, 2);
    assert_eq!(r.assignment, None);
    let r = ok(g.heartbeat(hb_req("b", 2, None), &meta, now));
    let b_got = r.assignment.unwrap();
    assert_eq!(b_got, minus(&a_all, &a_keep));
    assert_eq!(all(&[&a_keep, &b_got]), a_all);
    assert_eq!(g.state(), ConsumerGroupState::Stable);
}

#[test]
fn range_assignor_gives_contiguous_ranges() {
    let now = Instant::now();
    let mut g = ConsumerGroup::new("g", settings());
    let meta = lookup(&[("t", T, 5)]);
    let mut ja = join_req("a", &["t"]);
    ja.server_assignor = Some("range".into());
    let mut jb = join_req("b", &["t"]);
    jb.server_assignor = Some("range".into());
    ok(g.heartbeat(ja, &meta, now));
    ok(g.heartbeat(jb, &meta, now));
    assert_eq!(g.assignor, "range");
    assert_eq!(g.target["a"], parts(T, &[0, 1, 2]));
    assert_eq!(g.target["b"], parts(T, &[3, 4]));

    let members = vec![
        ("x".to_string(), ["t", "u"].map(String::from).into()),
        ("y".to_string(), ["t"].map(String::from).into()),
    ];
    let topics = [("t".to_string(), (T, 3)), ("u".to_string(), (U, 2))].into();
    let out = range(&members, &topics);
    assert_eq!(out["x"], all(&[&parts(T, &[0, 1]), &parts(U, &[0, 1])]));
    assert_eq!(out["y"], parts(T, &[2]));
}

#[test]
fn uniform_assignor_balances_and_sticks() {
    let topics: BTreeMap<String, (Uuid, i32)> =
        [("t".to_string(), (T, 6)), ("u".to_string(), (U, 3))].into();
    let sub =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|s| s.to_string()).collect() };
    let members = vec![
        ("a".to_string(), sub(&["t", "u"])),
        ("b".to_string(), sub(&["t", "u"])),
        ("c".to_string(), sub(&["t", "u"])),
    ];
    let first = uniform(&members, &topics, &BTreeMap::new());
    let counts: Vec<usize> = first
        .values()
        .map(|a| a.values().map(BTreeSet::len).sum())
        .collect();
    assert_eq!(counts, vec![3, 3, 3]);
    // c leaves: a and b keep what they had and share c's.
    let second = uniform(&members[..2], &topics, &first);
    for m in ["a", "b"] {
        assert!(
            minus(&first[m], &second[m]).is_empty(),
            "{m} lost partitions"
        );
    }
    let counts: Vec<usize> = second
        .values()
        .map(|a| a.values().map(BTreeSet::len).sum())
        .collect();
    assert!(counts == vec![5, 4] || counts == vec![4, 5], "{counts:?}");
    // Heterogeneous: only a subscribes to u.
    let members = vec![
        ("a".to_string(), sub(&["t", "u"])),
        ("b".to_string(), sub(&["t"])),
    ];
    let out = uniform(&members, &topics, &BTreeMap::new());
    assert_eq!(out["b"].get(&U), None);
    let total: usize = out
        .values()
        .flat_map(|a| a.values())
        .map(BTreeSet::len)
        .sum();
    assert_eq!(total, 9);
    let b: usize = out["b"].values().map(BTreeSet::len).sum();
    assert!((4..=5).contains(&b), "{out:?}");
}

#[test]
fn leaving_frees_partitions_at_once() {
    let now = Instant::now();
    let mut g = ConsumerGroup::new("g", settings());
    let meta = lookup(&[("t", T, 4)]);
    ok(g.heartbeat(join_req("a", &["t"]), &meta, now));
    ok(g.heartbeat(join_req("b", &["t"]), &meta, now));
    let a = ok(g.heartbeat(hb_req("a", 1, Some(parts(T, &[0, 1, 2, 3]))), &meta, now));
    ok(g.heartbeat(hb_req("a", 1, a.assignment.clone()), &meta, now));
    let b = ok(g.heartbeat(hb_req("b", 2, None), &meta, now));
    assert!(b.assignment.is_some());

    let r = ok(g.heartbeat(hb_req("a", -1, None), &meta, now));
    assert_eq!(r.member_epoch, -1);
    assert!(!g.members.contains_key("a"));
    assert_eq!(g.group_epoch, 3);
    let r = ok(g.heartbeat(hb_req("b", 2, None), &meta, now));
    assert_eq!(r.member_epoch, 3);
    assert_eq!(r.assignment, Some(parts(T, &[0, 1, 2, 3])));
    // Leaving twice: unknown.
    let (r, _) = g.heartbeat(hb_req("a", -1, None), &meta, now);
    assert_eq!(r.error, Some(ResponseError::UnknownMemberId));
}

#[test]
fn silent_member_expires_after_session_timeout() {
    let now = Instant::now();
    let mut g = ConsumerGroup::new("g", settings());
    let meta = lookup(&[("t", T, 2)]);
    ok(g.heartbeat(join_req("a", &["t"]), &meta, now));
    ok(g.heartbeat(join_req("b", &["t"]), &meta, now));
    assert!(!g.tick(now + Duration::from_secs(30)));
    ok(g.heartbeat(hb_req("b", 2, None), &meta, now + Duration::from_secs(30)));
    assert!(g.tick(now + Duration::from_secs(46)));
    assert!(!g.members.contains_key("a"));
    assert!(g.members.contains_key("b"));
    let r = ok(g.heartbeat(hb_req("b", 2, None), &meta, now + Duration::from_secs(47)));
    assert_eq!(r.assignment, Some(parts(T, &[0, 1])));
    assert!(g.tick(now + Duration::from_secs(100)));
    assert_eq!(g.state(), ConsumerGroupState::Empty);
    assert!(g.is_active());
}

#[test]
fn member_that_does_not_revoke_in_time_is_removed() {
    let now = Instant::now();
    let mut g = ConsumerGroup::new("g", settings());
    let meta = lookup(&[("t", T, 2)]);
    ok(g.heartbeat(join_req("a", &["t"]), &meta, now));
    ok(g.heartbeat(join_req("b", &["t"]), &meta, now));
    ok(g.heartbeat(hb_req("a", 1, Some(parts(T, &[0, 1]))), &meta, now));
    assert_eq!(g.members["a"].state, MemberState::UnrevokedPartitions);
    // a keeps heartbeating but never revokes: removed after its rebalance timeout (30 s).
    let later = now + Duration::from_secs(20);
    ok(g.heartbeat(hb_req("a", 1, None), &meta, later));
    assert!(!g.tick(later));
    assert!(g.tick(now + Duration::from_secs(31)));
    assert!(!g.members.contains_key("a"));
}

#[test]
fn stale_and_future_epochs_are_fenced() {
    let now = Instant::now();
    let mut g = ConsumerGroup::new("g", settings());
    let meta = lookup(&[("t", T, 2)]);
    ok(g.heartbeat(join_req("a", &["t"]), &meta, now));
    let (r, _) = g.heartbeat(hb_req("a", 5, None), &meta, now);
    assert_eq!(r.error, Some(ResponseError::FencedMemberEpoch));
    let (r, _) = g.heartbeat(hb_req("nobody", 1, None), &meta, now);
    assert_eq!(r.error, Some(ResponseError::UnknownMemberId));

    // a second member bumps the group; a reaches epoch 2 after revoking.
    ok(g.heartbeat(join_req("b", &["t"]), &meta, now));
    let r = ok(g.heartbeat(hb_req("a", 1, Some(parts(T, &[0, 1]))), &meta, now));
    let keep = r.assignment.unwrap();
    let r = ok(g.heartbeat(hb_req("a", 1, Some(keep.clone())), &meta, now));
    assert_eq!(r.member_epoch, 2);
    // The response was lost: the previous epoch with a subset of the assignment is accepted.
    let r = ok(g.heartbeat(hb_req("a", 1, Some(keep.clone())), &meta, now));
    assert_eq!(r.member_epoch, 2);
    // The previous epoch without owned partitions, or an older one, is fenced.
    let (r, _) = g.heartbeat(hb_req("a", 1, None), &meta, now);
    assert_eq!(r.error, Some(ResponseError::FencedMemberEpoch));
    let (r, _) = g.heartbeat(hb_req("b", 1, Some(Assignment::new())), &meta, now);
    assert_eq!(r.error, Some(ResponseError::FencedMemberEpoch));

    // A fenced member rejoins with epoch 0 and the same id: it starts over.
    let r = ok(g.heartbeat(join_req("a", &["t"]), &meta, now));
    assert_eq!(r.member_epoch, 2);
    assert_eq!(r.assignment, Some(keep));

    // Commits are fenced by the member epoch (v9+).
    assert_eq!(g.check_commit("a", 2, 9), None);
    assert_eq!(
        g.check_commit("a", 1, 9),
        Some(ResponseError::StaleMemberEpoch)
    );
    assert_eq!(
        g.check_commit("a", 2, 8),
        Some(ResponseError::UnsupportedVersion)
    );
    assert_eq!(
        g.check_commit("x", 2, 9),
        Some(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        g.check_commit("", -1, 9),
        Some(ResponseError::UnknownMemberId)
    );
    assert_eq!(g.check_fetch(Some("a"), 2), None);
    assert_eq!(g.check_fetch(None, -1), None);
    assert_eq!(
        g.check_fetch(Some("a"), 7),
        Some(ResponseError::StaleMemberEpoch)
    );
}

#[test]
fn invalid_requests_are_refused() {
    let now = Instant::now();
    let mut g = ConsumerGroup::new("g", settings());
    let meta = lookup(&[("t", T, 2)]);
    let mut r = join_req("a", &["t"]);
    r.server_assignor = Some("sticky".into());
    assert_eq!(
        g.heartbeat(r, &meta, now).0.error,
        Some(ResponseError::UnsupportedAssignor)
    );
    let mut r = join_req("a", &["t"]);
    r.subscribed_regex = Some("t.*".into());
    assert_eq!(
        g.heartbeat(r, &meta, now).0.error,
        Some(ResponseError::InvalidRequest)
    );
    let mut r = join_req("a", &["t"]);
    r.owned = Some(parts(T, &[0]));
    assert_eq!(
        g.heartbeat(r, &meta, now).0.error,
        Some(ResponseError::InvalidRequest)
    );
    assert_eq!(
        g.heartbeat(hb_req("a", -3, None), &meta, now).0.error,
        Some(ResponseError::InvalidRequest)
    );
    assert!(g.members.is_empty());
    assert!(!g.is_active());
}

#[test]
fn static_member_comes_back_with_its_assignment() {
    let now = Instant::now();
    let mut g = ConsumerGroup::new("g", settings());
    let meta = lookup(&[("t", T, 2)]);
    let mut j = join_req("a1", &["t"]);
    j.instance_id = Some("i".into());
    ok(g.heartbeat(j, &meta, now));
    ok(g.heartbeat(join_req("b", &["t"]), &meta, now));
    let r = ok(g.heartbeat(hb_req("a1", 1, Some(parts(T, &[0, 1]))), &meta, now));
    let keep = r.assignment.unwrap();
    ok(g.heartbeat(hb_req("a1", 1, Some(keep.clone())), &meta, now));
    let epoch = g.group_epoch;

    // Another member with the same instance id while a1 is there: refused.
    let mut j = join_req("a2", &["t"]);
    j.instance_id = Some("i".into());
    assert_eq!(
        g.heartbeat(j.clone(), &meta, now).0.error,
        Some(ResponseError::UnreleasedInstanceId)
    );
    // a1 leaves temporarily (-2); a2 takes its place and partitions, without a new epoch.
    let mut leave = hb_req("a1", -2, None);
    leave.instance_id = Some("i".into());
    assert_eq!(ok(g.heartbeat(leave, &meta, now)).member_epoch, -2);
    let r = ok(g.heartbeat(j, &meta, now));
    assert_eq!(r.member_id, "a2");
    assert_eq!(r.assignment, Some(keep));
    assert_eq!(g.group_epoch, epoch);
    assert!(!g.members.contains_key("a1"));
}

#[test]
fn subscription_and_metadata_changes_bump_the_group_epoch() {
    let now = Instant::now();
    let mut g = ConsumerGroup::new("g", settings());
    ok(g.heartbeat(join_req("a", &["t"]), &lookup(&[("t", T, 2)]), now));
    assert_eq!(g.group_epoch, 1);
    // More partitions.
    let r = ok(g.heartbeat(hb_req("a", 1, None), &lookup(&[("t", T, 3)]), now));
    assert_eq!((g.group_epoch, r.member_epoch), (2, 2));
    assert_eq!(r.assignment, Some(parts(T, &[0, 1, 2])));
    // Subscribes to u as well.
    let mut r = hb_req("a", 2, None);
    r.subscribed = Some(vec!["t".into(), "u".into()]);
    let r = ok(g.heartbeat(r, &lookup(&[("t", T, 3), ("u", U, 1)]), now));
    assert_eq!(g.group_epoch, 3);
    assert_eq!(
        r.assignment,
        Some(all(&[&parts(T, &[0, 1, 2]), &parts(U, &[0])]))
    );
    // A topic not looked up keeps its metadata; a topic that is gone is unassigned.
    ok(g.heartbeat(hb_req("a", 3, None), &lookup(&[("t", T, 3)]), now));
    assert_eq!(g.group_epoch, 3);
    let mut gone = lookup(&[("t", T, 3)]);
    gone.insert("u".into(), None);
    let r = ok(g.heartbeat(hb_req("a", 3, None), &gone, now));
    assert_eq!(g.group_epoch, 4);
    assert_eq!(r.assignment, Some(parts(T, &[0, 1, 2])));
}

#[test]
fn durable_form_round_trips() {
    let now = Instant::now();
    let mut g = ConsumerGroup::new("g", settings());
    let meta = lookup(&[("t", T, 4)]);
    ok(g.heartbeat(join_req("a", &["t"]), &meta, now));
    ok(g.heartbeat(join_req("b", &["t"]), &meta, now));
    ok(g.heartbeat(hb_req("a", 1, Some(parts(T, &[0, 1, 2, 3]))), &meta, now));
    let bytes = serde_json::to_vec(&g).unwrap();
    let back: ConsumerGroup = serde_json::from_slice(&bytes).unwrap();
    let later = now + Duration::from_secs(100);
    let mut back = back.restored(settings(), later);
    assert_eq!(back.members, g.members);
    assert_eq!(back.target, g.target);
    assert_eq!((back.group_epoch, back.assignment_epoch), (2, 2));
    // Sessions restart at load time.
    assert!(!back.tick(later + Duration::from_secs(20)));
    assert!(back.tick(later + Duration::from_secs(46)));
}
