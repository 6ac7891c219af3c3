use super::*;

fn settings() -> GroupSettings {
    GroupSettings {
        initial_rebalance_delay: Duration::from_millis(100),
        ..GroupSettings::default()
    }
}

fn join_req(member_id: &str, instance: Option<&str>) -> JoinRequest {
    JoinRequest {
        member_id: member_id.into(),
        instance_id: instance.map(String::from),
        client_id: "c".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout: Duration::from_secs(10),
        rebalance_timeout: Duration::from_secs(30),
        protocol_type: "consumer".into(),
        protocols: vec![("range".into(), Bytes::from_static(b"m"))],
        require_known_member_id: false,
    }
}

fn later<T>(reply: Reply<T>) -> oneshot::Receiver<T> {
    match reply {
        Reply::Later(rx) => rx,
        Reply::Now(_) => panic!("expected to wait"),
    }
}

fn now_result<T>(reply: Reply<T>) -> T {
    match reply {
        Reply::Now(v) => v,
        Reply::Later(_) => panic!("expected an answer now"),
    }
}

/// Two members through a full first rebalance; returns (group, leader id, follower id, t).
fn stable_pair() -> (Group, String, String, Instant) {
    let t0 = Instant::now();
    let mut g = Group::new("g", settings());
    let mut a = later(g.join(join_req("", None), t0).0);
    let mut b = later(g.join(join_req("", None), t0).0);
    assert!(
        a.try_recv().is_err(),
        "the initial delay holds the first join"
    );
    let t1 = t0 + Duration::from_millis(150);
    g.tick(t1);
    let ra = a.try_recv().unwrap();
    let rb = b.try_recv().unwrap();
    assert_eq!((ra.generation, rb.generation), (1, 1));
    assert_eq!(ra.leader, ra.member_id);
    assert_eq!(ra.members.len(), 2);
    assert!(rb.members.is_empty());
    assert_eq!(ra.protocol_name.as_deref(), Some("range"));
    assert_eq!(g.state, GroupState::CompletingRebalance);

    let mut sb = later(g.sync(&rb.member_id, None, 1, vec![]).0);
    assert!(sb.try_recv().is_err(), "followers wait for the leader");
    let (reply, changed) = g.sync(
        &ra.member_id,
        None,
        1,
        vec![
            (ra.member_id.clone(), Bytes::from_static(b"A")),
            (rb.member_id.clone(), Bytes::from_static(b"B")),
        ],
    );
    assert!(changed);
    assert_eq!(
        later(reply).try_recv().unwrap().assignment,
        Bytes::from_static(b"A")
    );
    assert_eq!(sb.try_recv().unwrap().assignment, Bytes::from_static(b"B"));
    assert_eq!(g.state, GroupState::Stable);
    (g, ra.member_id, rb.member_id, t1)
}

#[test]
fn first_rebalance_and_sync() {
    let (mut g, a, b, t) = stable_pair();
    assert_eq!(g.heartbeat(&a, None, 1, t), None);
    assert_eq!(
        g.heartbeat(&b, None, 0, t),
        Some(ResponseError::IllegalGeneration)
    );
    assert_eq!(
        g.heartbeat("nobody", None, 1, t),
        Some(ResponseError::UnknownMemberId)
    );
    // In Stable, sync answers from the stored assignment.
    let r = now_result(g.sync(&b, None, 1, vec![]).0);
    assert_eq!(r.assignment, Bytes::from_static(b"B"));
    assert_eq!(g.check_commit(&a, None, 1), None);
    assert_eq!(
        g.check_commit(&a, None, 0),
        Some(ResponseError::IllegalGeneration)
    );
    assert_eq!(
        g.check_commit("", None, -1),
        Some(ResponseError::UnknownMemberId)
    );
}

#[test]
fn member_id_required_then_join() {
    let t = Instant::now();
    let mut g = Group::new("g", settings());
    let mut req = join_req("", None);
    req.require_known_member_id = true;
    let r = now_result(g.join(req.clone(), t).0);
    assert_eq!(r.error, Some(ResponseError::MemberIdRequired));
    assert!(!r.member_id.is_empty());
    req.member_id = r.member_id.clone();
    let mut rx = later(g.join(req, t).0);
    g.tick(t + Duration::from_millis(200));
    assert_eq!(rx.try_recv().unwrap().member_id, r.member_id);
    // An id never handed out is refused.
    let r = now_result(g.join(join_req("made-up", None), t).0);
    assert_eq!(r.error, Some(ResponseError::UnknownMemberId));
}

#[test]
fn expired_member_triggers_rebalance() {
    let (mut g, a, b, t) = stable_pair();
    // Only a heartbeats; b's session runs out.
    let t2 = t + Duration::from_secs(8);
    assert_eq!(g.heartbeat(&a, None, 1, t2), None);
    assert!(!g.tick(t2));
    let t3 = t + Duration::from_secs(11);
    g.tick(t3);
    assert!(!g.members.contains_key(&b));
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert_eq!(
        g.heartbeat(&a, None, 1, t3),
        Some(ResponseError::RebalanceInProgress)
    );
    // As in Kafka, a member keeps committing with the current generation while the group
    // prepares a rebalance (it still owns its partitions, KIP-429).
    assert_eq!(g.check_commit(&a, None, 1), None);
    // a rejoins: it is the only member left, so the rebalance completes at once.
    let mut rx = later(g.join(join_req(&a, None), t3).0);
    let r = rx.try_recv().unwrap();
    assert_eq!(r.generation, 2);
    assert_eq!(r.members.len(), 1);
    // Completing the rebalance: the new generation is told to wait, the old one is stale.
    assert_eq!(
        g.check_commit(&a, None, 2),
        Some(ResponseError::RebalanceInProgress)
    );
    assert_eq!(
        g.check_commit(&a, None, 1),
        Some(ResponseError::IllegalGeneration)
    );
}

#[test]
fn members_that_do_not_rejoin_are_dropped_at_the_deadline() {
    let (mut g, a, b, t) = stable_pair();
    // b leaves and comes back as a new member: a must rejoin within the rebalance timeout.
    g.leave(&[(b.clone(), None)], t);
    assert_eq!(g.state, GroupState::PreparingRebalance);
    let mut c = later(g.join(join_req("", None), t).0);
    g.tick(t + Duration::from_secs(31));
    let r = c.try_recv().unwrap();
    assert_eq!(r.generation, 2);
    assert_eq!(r.members.len(), 1, "a never rejoined");
    assert!(!g.members.contains_key(&a));
}

#[test]
fn static_member_restart_keeps_assignment_without_rebalance() {
    let t0 = Instant::now();
    let mut g = Group::new("g", settings());
    let mut a = later(g.join(join_req("", Some("i-a")), t0).0);
    let mut b = later(g.join(join_req("", Some("i-b")), t0).0);
    let t1 = t0 + Duration::from_millis(150);
    g.tick(t1);
    let ra = a.try_recv().unwrap();
    let rb = b.try_recv().unwrap();
    g.sync(&rb.member_id, Some("i-b"), 1, vec![]);
    g.sync(
        &ra.member_id,
        Some("i-a"),
        1,
        vec![
            (ra.member_id.clone(), Bytes::from_static(b"A")),
            (rb.member_id.clone(), Bytes::from_static(b"B")),
        ],
    );
    assert_eq!(g.state, GroupState::Stable);

    // b restarts (no LeaveGroup, as static members do) and rejoins with an empty member id.
    let (reply, changed) = g.join(join_req("", Some("i-b")), t1 + Duration::from_secs(2));
    assert!(changed);
    let r = now_result(reply);
    assert_eq!(r.error, None);
    assert_eq!(r.generation, 1, "no rebalance");
    assert_ne!(r.member_id, rb.member_id);
    assert_eq!(g.state, GroupState::Stable);
    let s = now_result(g.sync(&r.member_id, Some("i-b"), 1, vec![]).0);
    assert_eq!(s.assignment, Bytes::from_static(b"B"));
    // The old incarnation is fenced.
    assert_eq!(
        g.heartbeat(&rb.member_id, Some("i-b"), 1, t1),
        Some(ResponseError::FencedInstanceId)
    );
}

#[test]
fn last_member_leaving_empties_the_group() {
    let (mut g, a, b, t) = stable_pair();
    let (results, _) = g.leave(
        &[(a.clone(), None), (b.clone(), None), ("x".into(), None)],
        t,
    );
    assert_eq!(
        results,
        vec![None, None, Some(ResponseError::UnknownMemberId)]
    );
    assert_eq!(g.state, GroupState::Empty);
    assert!(g.generation >= 2);
    assert_eq!(g.check_commit("", None, -1), None);
}

#[test]
fn snapshot_restores_a_stable_group() {
    let (g, a, b, _) = stable_pair();
    let snapshot = g.snapshot();
    let json = serde_json::to_vec(&snapshot).unwrap();
    let restored: Snapshot = serde_json::from_slice(&json).unwrap();
    let t = Instant::now();
    let mut r = Group::restore("g", restored, settings(), t);
    assert_eq!(r.state, GroupState::Stable);
    assert_eq!(r.generation, 1);
    assert_eq!(r.heartbeat(&a, None, 1, t), None);
    let s = now_result(r.sync(&b, None, 1, vec![]).0);
    assert_eq!(s.assignment, Bytes::from_static(b"B"));
}

#[test]
fn inconsistent_protocols_are_refused() {
    let (mut g, _, _, t) = stable_pair();
    let mut req = join_req("", None);
    req.protocols = vec![("roundrobin".into(), Bytes::new())];
    let r = now_result(g.join(req, t).0);
    assert_eq!(r.error, Some(ResponseError::InconsistentGroupProtocol));
    let mut req = join_req("", None);
    req.session_timeout = Duration::from_millis(10);
    let r = now_result(g.join(req, t).0);
    assert_eq!(r.error, Some(ResponseError::InvalidSessionTimeout));
}
