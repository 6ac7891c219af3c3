//! One consumer group's membership state machine (the classic protocol, as Kafka's
//! GroupCoordinator runs it): Empty → PreparingRebalance → CompletingRebalance → Stable.
//!
//! Pure and synchronous: every call takes `now` and returns at once, either with an answer or with
//! a receiver that a later call (another member's request, or [`Group::tick`]) fulfils. No I/O
//! happens here; the caller persists [`Group::snapshot`] when a call reports the group changed.
//!
//! Invariants:
//! - The generation only grows; a member's requests carry the generation they joined and are
//!   fenced with ILLEGAL_GENERATION otherwise.
//! - A rebalance completes when every member has rejoined, or when its deadline passes; members
//!   that did not rejoin are removed.
//! - A static member (group.instance.id) restarted within its session timeout takes its old place
//!   and assignment without a rebalance; the member id it had before is fenced.

use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

use bytes::Bytes;
use indexmap::IndexMap;
use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// Group states, named as Kafka's DescribeGroups and ListGroups report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members (may still have committed offsets).
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Waiting for the leader's assignment.
    CompletingRebalance,
    /// Members have their assignments.
    Stable,
    /// Deleted.
    Dead,
}

impl GroupState {
    /// The name Kafka uses.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// Timing settings shared by all groups.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    /// How long a new group waits for more members before its first rebalance completes.
    pub initial_rebalance_delay: Duration,
    /// Smallest accepted session timeout.
    pub min_session_timeout: Duration,
    /// Largest accepted session timeout.
    pub max_session_timeout: Duration,
    /// Session timeout of consumer-protocol (KIP-848) members, set by the broker
    /// (`group.consumer.session.timeout.ms`).
    pub consumer_session_timeout: Duration,
    /// Heartbeat interval told to consumer-protocol members
    /// (`group.consumer.heartbeat.interval.ms`).
    pub consumer_heartbeat_interval: Duration,
    /// How long a group without members stays in memory after its last request. Its durable
    /// state stays in the store, and the next request loads it again.
    pub idle_eviction: Duration,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            initial_rebalance_delay: Duration::from_secs(3),
            min_session_timeout: Duration::from_secs(6),
            max_session_timeout: Duration::from_secs(1800),
            consumer_session_timeout: Duration::from_secs(45),
            consumer_heartbeat_interval: Duration::from_secs(5),
            idle_eviction: Duration::from_secs(600),
        }
    }
}

/// A JoinGroup request.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Member id ("" for a new member).
    pub member_id: String,
    /// Static membership id.
    pub instance_id: Option<String>,
    /// Client id and host, for DescribeGroups.
    pub client_id: String,
    /// Client host.
    pub client_host: String,
    /// Session timeout.
    pub session_timeout: Duration,
    /// Rebalance timeout.
    pub rebalance_timeout: Duration,
    /// Protocol type ("consumer" for consumers).
    pub protocol_type: String,
    /// Supported protocols in preference order, with their metadata.
    pub protocols: Vec<(String, Bytes)>,
    /// Whether the client understands MEMBER_ID_REQUIRED (JoinGroup v4+).
    pub require_known_member_id: bool,
}

/// The answer to a JoinGroup.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinResult {
    /// Error, if any.
    pub error: Option<ResponseError>,
    /// Generation joined.
    pub generation: i32,
    /// Protocol type.
    pub protocol_type: Option<String>,
    /// Protocol chosen.
    pub protocol_name: Option<String>,
    /// Leader's member id.
    pub leader: String,
    /// The member's id.
    pub member_id: String,
    /// For the leader: every member with its metadata for the chosen protocol.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinResult {
    fn error(error: ResponseError, member_id: &str) -> Self {
        JoinResult {
            error: Some(error),
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

/// The answer to a SyncGroup.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncResult {
    /// Error, if any.
    pub error: Option<ResponseError>,
    /// Protocol type.
    pub protocol_type: Option<String>,
    /// Protocol name.
    pub protocol_name: Option<String>,
    /// The member's assignment.
    pub assignment: Bytes,
}

impl SyncResult {
    fn error(error: ResponseError) -> Self {
        SyncResult {
            error: Some(error),
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

/// An answer now, or later.
pub enum Reply<T> {
    /// Answered.
    Now(T),
    /// Answered when the rebalance progresses.
    Later(oneshot::Receiver<T>),
}

/// One member.
#[derive(Debug)]
pub struct Member {
    /// Member id.
    pub id: String,
    /// Static membership id.
    pub instance_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client host.
    pub client_host: String,
    /// Session timeout.
    pub session_timeout: Duration,
    /// Rebalance timeout.
    pub rebalance_timeout: Duration,
    /// Protocols with metadata.
    pub protocols: Vec<(String, Bytes)>,
    /// Current assignment.
    pub assignment: Bytes,
    last_heartbeat: Instant,
    awaiting_join: Option<oneshot::Sender<JoinResult>>,
    awaiting_sync: Option<oneshot::Sender<SyncResult>>,
}

impl Member {
    /// Metadata for one protocol.
    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

/// Durable form of a group (saved in the coordinator store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Generation.
    pub generation: i32,
    /// Protocol type.
    pub protocol_type: Option<String>,
    /// Chosen protocol.
    pub protocol_name: Option<String>,
    /// Leader.
    pub leader: Option<String>,
    /// Members of a Stable group.
    pub members: Vec<SnapshotMember>,
}

/// Durable form of a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMember {
    /// Member id.
    pub id: String,
    /// Static membership id.
    pub instance_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client host.
    pub client_host: String,
    /// Session timeout (ms).
    pub session_timeout_ms: u64,
    /// Rebalance timeout (ms).
    pub rebalance_timeout_ms: u64,
    /// Protocols with metadata.
    pub protocols: Vec<(String, Vec<u8>)>,
    /// Assignment.
    pub assignment: Vec<u8>,
}

/// One consumer group.
#[derive(Debug)]
pub struct Group {
    /// Group id.
    pub id: String,
    /// State.
    pub state: GroupState,
    /// Generation.
    pub generation: i32,
    /// Protocol type.
    pub protocol_type: Option<String>,
    /// Protocol chosen in the current generation.
    pub protocol_name: Option<String>,
    /// Leader's member id.
    pub leader: Option<String>,
    /// Members in join order.
    pub members: IndexMap<String, Member>,
    static_members: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not yet joined, with their expiry.
    pending: HashMap<String, Instant>,
    rebalance_deadline: Option<Instant>,
    /// Whether the current rebalance started from an empty group (waits the initial delay).
    initial: bool,
    settings: GroupSettings,
    /// Grows with every change to what [`Group::snapshot`] holds, before any member is told of
    /// it (never stored: the coordinator compares it with what it has saved, see
    /// [`crate::groups::Slot`]).
    pub version: u64,
}

fn new_member_id(client_id: &str) -> String {
    let prefix = if client_id.is_empty() {
        "member"
    } else {
        client_id
    };
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

impl Group {
    /// A new, empty group.
    pub fn new(id: &str, settings: GroupSettings) -> Self {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: IndexMap::new(),
            static_members: HashMap::new(),
            pending: HashMap::new(),
            rebalance_deadline: None,
            initial: false,
            settings,
            version: 0,
        }
    }

    /// A group restored from its snapshot: Stable with its members if it had any, whose
    /// sessions start now.
    pub fn restore(id: &str, snapshot: Snapshot, settings: GroupSettings, now: Instant) -> Self {
        let mut group = Group::new(id, settings);
        group.generation = snapshot.generation;
        group.protocol_type = snapshot.protocol_type;
        group.protocol_name = snapshot.protocol_name;
        group.leader = snapshot.leader;
        for m in snapshot.members {
            if let Some(instance) = &m.instance_id {
                group.static_members.insert(instance.clone(), m.id.clone());
            }
            group.members.insert(
                m.id.clone(),
                Member {
                    id: m.id,
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout: Duration::from_millis(m.session_timeout_ms),
                    rebalance_timeout: Duration::from_millis(m.rebalance_timeout_ms),
                    protocols: m
                        .protocols
                        .into_iter()
                        .map(|(n, b)| (n, Bytes::from(b)))
                        .collect(),
                    assignment: Bytes::from(m.assignment),
                    last_heartbeat: now,
                    awaiting_join: None,
                    awaiting_sync: None,
                },
            );
        }
        group.state = if group.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        group
    }

    /// The durable form. Only a Stable group's members are kept: anything in between is redone
    /// by the clients after a coordinator change.
    pub fn snapshot(&self) -> Snapshot {
        let members = if self.state == GroupState::Stable {
            self.members
                .values()
                .map(|m| SnapshotMember {
                    id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout.as_millis() as u64,
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis() as u64,
                    protocols: m
                        .protocols
                        .iter()
                        .map(|(n, b)| (n.clone(), b.to_vec()))
                        .collect(),
                    assignment: m.assignment.to_vec(),
                })
                .collect()
        } else {
            Vec::new()
        };
        Snapshot {
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: if members.is_empty() {
                None
            } else {
                self.leader.clone()
            },
            members,
        }
    }

    /// Marks a change to the durable state.
    fn touch(&mut self) {
        self.version += 1;
    }

    fn fenced(&self, member_id: &str, instance_id: Option<&str>) -> Option<ResponseError> {
        let instance = instance_id?;
        match self.static_members.get(instance) {
            Some(current) if current != member_id => Some(ResponseError::FencedInstanceId),
            _ => None,
        }
    }

    /// Handles a JoinGroup. The bool says whether the durable state changed.
    pub fn join(&mut self, req: JoinRequest, now: Instant) -> (Reply<JoinResult>, bool) {
        let reject = |e| (Reply::Now(JoinResult::error(e, &req.member_id)), false);
        if self.state == GroupState::Dead {
            return reject(ResponseError::CoordinatorNotAvailable);
        }
        if req.session_timeout < self.settings.min_session_timeout
            || req.session_timeout > self.settings.max_session_timeout
        {
            return reject(ResponseError::InvalidSessionTimeout);
        }
        if req.protocols.is_empty() || req.protocol_type.is_empty() || !self.compatible(&req) {
            return reject(ResponseError::InconsistentGroupProtocol);
        }
        if let Some(e) = self.fenced(&req.member_id, req.instance_id.as_deref()) {
            if !req.member_id.is_empty() {
                return reject(e);
            }
        }

        if req.member_id.is_empty() {
            if let Some(instance) = &req.instance_id {
                if let Some(old_id) = self.static_members.get(instance).cloned() {
                    return self.rejoin_static(req, old_id, now);
                }
            } else if req.require_known_member_id {
                // KIP-394: hand out the id first; the member joins with it.
                let id = new_member_id(&req.client_id);
                self.pending.insert(id.clone(), now + req.session_timeout);
                let mut r = JoinResult::error(ResponseError::MemberIdRequired, &id);
                r.member_id = id;
                return (Reply::Now(r), false);
            }
            let id = new_member_id(&req.client_id);
            return (self.add_member(id, req, now), false);
        }

        let id = req.member_id.clone();
        if !self.members.contains_key(&id) {
            if self.pending.remove(&id).is_some() {
                return (self.add_member(id, req, now), false);
            }
            return reject(ResponseError::UnknownMemberId);
        }
        // A known member rejoining.
        let unchanged = self
            .members
            .get(&id)
            .is_some_and(|m| m.protocols == req.protocols);
        let is_leader = self.leader.as_deref() == Some(id.as_str());
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance if unchanged && !is_leader => {
                if let Some(m) = self.members.get_mut(&id) {
                    m.last_heartbeat = now;
                }
                (Reply::Now(self.current_join_result(&id)), false)
            }
            _ => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = self.members.get_mut(&id) {
                    m.protocols = req.protocols;
                    m.session_timeout = req.session_timeout;
                    m.rebalance_timeout = req.rebalance_timeout;
                    m.last_heartbeat = now;
                    m.awaiting_join = Some(tx);
                }
                if self.state != GroupState::PreparingRebalance {
                    self.prepare_rebalance(now);
                }
                self.maybe_complete_join(now);
                (Reply::Later(rx), false)
            }
        }
    }

    fn compatible(&self, req: &JoinRequest) -> bool {
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(req.protocol_type.as_str()) {
            return false;
        }
        req.protocols.iter().any(|(name, _)| {
            self.members
                .values()
                .filter(|m| m.id != req.member_id)
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    fn add_member(&mut self, id: String, req: JoinRequest, now: Instant) -> Reply<JoinResult> {
        let (tx, rx) = oneshot::channel();
        if let Some(instance) = &req.instance_id {
            self.static_members.insert(instance.clone(), id.clone());
        }
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        self.members.insert(
            id.clone(),
            Member {
                id,
                instance_id: req.instance_id,
                client_id: req.client_id,
                client_host: req.client_host,
                session_timeout: req.session_timeout,
                rebalance_timeout: req.rebalance_timeout,
                protocols: req.protocols,
                assignment: Bytes::new(),
                last_heartbeat: now,
                awaiting_join: Some(tx),
                awaiting_sync: None,
            },
        );
        if self.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(now);
        }
        self.maybe_complete_join(now);
        Reply::Later(rx)
    }

    /// A static member restarted: it takes over its old entry under a new member id.
    fn rejoin_static(
        &mut self,
        req: JoinRequest,
        old_id: String,
        now: Instant,
    ) -> (Reply<JoinResult>, bool) {
        let Some(mut old) = self.members.shift_remove(&old_id) else {
            self.static_members
                .remove(req.instance_id.as_deref().unwrap_or_default());
            let id = new_member_id(&req.client_id);
            return (self.add_member(id, req, now), false);
        };
        self.touch();
        let new_id = new_member_id(&req.client_id);
        let unchanged = old.protocols == req.protocols;
        // The old incarnation's pending requests are fenced.
        if let Some(tx) = old.awaiting_join.take() {
            let _ = tx.send(JoinResult::error(ResponseError::FencedInstanceId, &old_id));
        }
        if let Some(tx) = old.awaiting_sync.take() {
            let _ = tx.send(SyncResult::error(ResponseError::FencedInstanceId));
        }
        old.id = new_id.clone();
        old.client_id = req.client_id.clone();
        old.client_host = req.client_host.clone();
        old.session_timeout = req.session_timeout;
        old.rebalance_timeout = req.rebalance_timeout;
        old.last_heartbeat = now;
        if let Some(instance) = &req.instance_id {
            self.static_members.insert(instance.clone(), new_id.clone());
        }
        let was_leader = self.leader.as_deref() == Some(old_id.as_str());
        if was_leader {
            self.leader = Some(new_id.clone());
        }
        if self.state == GroupState::Stable && unchanged {
            self.members.insert(new_id.clone(), old);
            // Same place, same assignment, no rebalance (KIP-345).
            return (Reply::Now(self.current_join_result(&new_id)), true);
        }
        let (tx, rx) = oneshot::channel();
        old.protocols = req.protocols;
        old.awaiting_join = Some(tx);
        self.members.insert(new_id, old);
        if self.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(now);
        }
        self.maybe_complete_join(now);
        (Reply::Later(rx), true)
    }

    fn current_join_result(&self, member_id: &str) -> JoinResult {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let is_leader = self.leader.as_deref() == Some(member_id);
        JoinResult {
            error: None,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: if is_leader {
                self.members
                    .values()
                    .map(|m| (m.id.clone(), m.instance_id.clone(), m.metadata(&protocol)))
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    fn prepare_rebalance(&mut self, now: Instant) {
        self.touch();
        // Members waiting for an assignment must rejoin.
        for m in self.members.values_mut() {
            if let Some(tx) = m.awaiting_sync.take() {
                let _ = tx.send(SyncResult::error(ResponseError::RebalanceInProgress));
            }
        }
        self.initial = self.state == GroupState::Empty;
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        let wait = if self.initial {
            self.settings.initial_rebalance_delay.min(timeout)
        } else {
            timeout
        };
        self.rebalance_deadline = Some(now + wait);
        self.state = GroupState::PreparingRebalance;
    }

    fn maybe_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let all_joined = self.members.values().all(|m| m.awaiting_join.is_some());
        let due = self.rebalance_deadline.is_some_and(|d| now >= d);
        // A new group waits out its initial delay so that members starting together share one
        // generation.
        if due || (all_joined && !self.initial) {
            self.complete_join();
        }
    }

    fn complete_join(&mut self) {
        // The new generation is a change to the durable state before anyone is told of it.
        self.touch();
        // Members that did not rejoin in time are out.
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            self.remove_member(&id);
        }
        self.generation += 1;
        self.rebalance_deadline = None;
        self.initial = false;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol_name = None;
            self.leader = None;
            return;
        }
        self.protocol_name = self.select_protocol();
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = GroupState::CompletingRebalance;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let result = self.current_join_result(&id);
            if let Some(tx) = self
                .members
                .get_mut(&id)
                .and_then(|m| m.awaiting_join.take())
            {
                let _ = tx.send(result);
            }
        }
    }

    /// The protocol every member supports that most members prefer.
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(p, _)| p == *n))
            })
            .collect();
        let mut votes: HashMap<&String, usize> = HashMap::new();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(p, _)| candidates.contains(&p)) {
                *votes.entry(name).or_default() += 1;
            }
        }
        candidates
            .iter()
            .max_by_key(|c| {
                (
                    votes.get(*c).copied().unwrap_or(0),
                    std::cmp::Reverse(candidates.iter().position(|x| x == *c)),
                )
            })
            .map(|c| (*c).clone())
    }

    fn remove_member(&mut self, id: &str) {
        if let Some(mut m) = self.members.shift_remove(id) {
            self.touch();
            if let Some(tx) = m.awaiting_join.take() {
                let _ = tx.send(JoinResult::error(ResponseError::UnknownMemberId, id));
            }
            if let Some(tx) = m.awaiting_sync.take() {
                let _ = tx.send(SyncResult::error(ResponseError::UnknownMemberId));
            }
            if let Some(instance) = m.instance_id {
                if self.static_members.get(&instance).map(String::as_str) == Some(id) {
                    self.static_members.remove(&instance);
                }
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
    }

    /// Handles a SyncGroup. The bool says whether the durable state changed.
    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> (Reply<SyncResult>, bool) {
        let reject = |e| (Reply::Now(SyncResult::error(e)), false);
        if let Some(e) = self.fenced(member_id, instance_id) {
            return reject(e);
        }
        if !self.members.contains_key(member_id) {
            return reject(ResponseError::UnknownMemberId);
        }
        if generation != self.generation {
            return reject(ResponseError::IllegalGeneration);
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => reject(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => reject(ResponseError::RebalanceInProgress),
            GroupState::Stable => {
                let assignment = self
                    .members
                    .get(member_id)
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default();
                (Reply::Now(self.sync_result(assignment)), false)
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = self.members.get_mut(member_id) {
                    m.awaiting_sync = Some(tx);
                }
                if self.leader.as_deref() != Some(member_id) {
                    return (Reply::Later(rx), false);
                }
                let mut assignments: HashMap<String, Bytes> = assignments.into_iter().collect();
                self.touch();
                self.state = GroupState::Stable;
                let ids: Vec<String> = self.members.keys().cloned().collect();
                for id in ids {
                    let assignment = assignments.remove(&id).unwrap_or_default();
                    let result = self.sync_result(assignment.clone());
                    if let Some(m) = self.members.get_mut(&id) {
                        m.assignment = assignment;
                        if let Some(tx) = m.awaiting_sync.take() {
                            let _ = tx.send(result);
                        }
                    }
                }
                (Reply::Later(rx), true)
            }
        }
    }

    fn sync_result(&self, assignment: Bytes) -> SyncResult {
        SyncResult {
            error: None,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment,
        }
    }

    /// Handles a Heartbeat.
    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> Option<ResponseError> {
        if let Some(e) = self.fenced(member_id, instance_id) {
            return Some(e);
        }
        if matches!(self.state, GroupState::Empty | GroupState::Dead) {
            return Some(ResponseError::UnknownMemberId);
        }
        let Some(m) = self.members.get_mut(member_id) else {
            return Some(ResponseError::UnknownMemberId);
        };
        if generation != self.generation {
            return Some(ResponseError::IllegalGeneration);
        }
        m.last_heartbeat = now;
        match self.state {
            GroupState::PreparingRebalance => Some(ResponseError::RebalanceInProgress),
            _ => None,
        }
    }

    /// Removes members that leave. Returns one result per member and whether the durable state
    /// changed.
    pub fn leave(
        &mut self,
        members: &[(String, Option<String>)],
        now: Instant,
    ) -> (Vec<Option<ResponseError>>, bool) {
        let mut results = Vec::with_capacity(members.len());
        let mut changed = false;
        for (member_id, instance_id) in members {
            // A static member may leave by instance id alone.
            let id = match (member_id.is_empty(), instance_id) {
                (true, Some(instance)) => self.static_members.get(instance).cloned(),
                _ => Some(member_id.clone()),
            };
            let Some(id) = id.filter(|id| self.members.contains_key(id)) else {
                results.push(Some(ResponseError::UnknownMemberId));
                continue;
            };
            if let Some(e) = self.fenced(&id, instance_id.as_deref()) {
                results.push(Some(e));
                continue;
            }
            self.remove_member(&id);
            changed = true;
            results.push(None);
        }
        if changed {
            self.after_removal(now);
        }
        (results, changed)
    }

    fn after_removal(&mut self, now: Instant) {
        match self.state {
            GroupState::PreparingRebalance => self.maybe_complete_join(now),
            GroupState::Dead => {}
            _ if self.members.is_empty() => {
                self.touch();
                self.generation += 1;
                self.state = GroupState::Empty;
                self.protocol_name = None;
                self.leader = None;
            }
            _ => {
                self.prepare_rebalance(now);
                self.maybe_complete_join(now);
            }
        }
    }

    /// Expires sessions and completes due rebalances. Returns whether the durable state changed.
    pub fn tick(&mut self, now: Instant) -> bool {
        self.pending.retain(|_, expiry| *expiry > now);
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                m.awaiting_join.is_none()
                    && now.duration_since(m.last_heartbeat) > m.session_timeout
            })
            .map(|m| m.id.clone())
            .collect();
        let mut changed = false;
        if !expired.is_empty() {
            for id in &expired {
                tracing::info!(group = %self.id, member = %id, "member session expired");
                self.remove_member(id);
            }
            self.after_removal(now);
            changed = true;
        }
        let before = self.state;
        self.maybe_complete_join(now);
        changed || (before != self.state && self.state == GroupState::Empty)
    }

    /// Whether the group has nothing in memory that the store lacks or that a tick would act on:
    /// Empty (or Dead), without members and without member ids handed out for a first join.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, GroupState::Empty | GroupState::Dead)
            && self.members.is_empty()
            && self.pending.is_empty()
    }

    /// Whether OffsetCommit from this member and generation is accepted, as Kafka's classic
    /// coordinator decides it: a commit from outside the group (generation < 0, no member id) only
    /// while the group is Empty; a member's commit with the current generation while the group is
    /// Stable or *preparing* a rebalance (members keep committing what they still own, KIP-429),
    /// but REBALANCE_IN_PROGRESS while the rebalance completes (the new generation's assignment is
    /// not known yet); ILLEGAL_GENERATION for any other generation.
    pub fn check_commit(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Option<ResponseError> {
        if self.state == GroupState::Dead {
            return Some(ResponseError::CoordinatorNotAvailable);
        }
        if generation < 0 && self.state == GroupState::Empty {
            return None;
        }
        if generation >= 0 || !member_id.is_empty() || instance_id.is_some() {
            if let Some(e) = self.fenced(member_id, instance_id) {
                return Some(e);
            }
            if !self.members.contains_key(member_id) {
                return Some(ResponseError::UnknownMemberId);
            }
            if generation != self.generation {
                return Some(ResponseError::IllegalGeneration);
            }
        } else {
            return Some(ResponseError::UnknownMemberId);
        }
        if self.state == GroupState::CompletingRebalance {
            return Some(ResponseError::RebalanceInProgress);
        }
        None
    }

    /// Marks the group deleted; pending requests are told to find the coordinator again.
    pub fn kill(&mut self) {
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            self.remove_member(&id);
        }
        self.touch();
        self.state = GroupState::Dead;
    }

    /// Takes the group out of service because another broker coordinates it now: members
    /// waiting for a join or sync are told NOT_COORDINATOR (they find the coordinator again) and
    /// every later call is refused. Nothing durable changes.
    pub fn retire(&mut self) {
        for m in self.members.values_mut() {
            if let Some(tx) = m.awaiting_join.take() {
                let _ = tx.send(JoinResult::error(ResponseError::NotCoordinator, &m.id));
            }
            if let Some(tx) = m.awaiting_sync.take() {
                let _ = tx.send(SyncResult::error(ResponseError::NotCoordinator));
            }
        }
        self.state = GroupState::Dead;
    }
}

#[cfg(test)]
mod tests;
