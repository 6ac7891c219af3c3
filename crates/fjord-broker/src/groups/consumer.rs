//! One consumer group of the next-generation consumer protocol (KIP-848,
//! ConsumerGroupHeartbeat): membership, server-side assignment (`uniform`, `range`) and the
//! incremental reconciliation of every member towards its target assignment.
//!
//! Pure and synchronous like [`super::group`]: every call takes `now` and returns at once; the
//! caller persists the group (it is its own durable form, see [`ConsumerGroup`]'s serde fields)
//! when a call reports a change, and looks topic metadata up beforehand ([`TopicLookup`]).
//!
//! Epochs:
//! - The *group epoch* grows whenever membership, a subscription, a preferred assignor or the
//!   metadata of a subscribed topic changes.
//! - The *assignment epoch* is the group epoch the current *target assignment* was computed at;
//!   here the target is recomputed within the same call, so between calls the two are equal.
//! - A member's *member epoch* reaches the assignment epoch once it has revoked every partition
//!   the target took away from it; it is the generation that fences its requests (heartbeats,
//!   OffsetCommit v9+).
//!
//! Invariants:
//! - A partition is in at most one member's `assigned ∪ pending_revocation`. A partition the
//!   target moves from A to B is handed to B only after A's heartbeat reported owned partitions
//!   (`topic_partitions`) without it, or after A left / expired / was fenced.
//! - A member with partitions pending revocation keeps its old member epoch; it must revoke them
//!   within its rebalance timeout or it is removed from the group.
//! - A member that does not heartbeat within the session timeout
//!   (`group.consumer.session.timeout.ms`) is removed and its partitions are free.
//! - Member epoch -1 leaves; -2 is a static member's temporary leave: it keeps its assignment for
//!   the session timeout, and a new member with the same `instance_id` joining with epoch 0 takes
//!   its place and assignment.
//!
//! Regular-expression subscriptions (`subscribed_topic_regex`, v1) are refused with
//! INVALID_REQUEST.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use tokio::time::Instant;

use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::group::GroupSettings;

/// Partitions by topic id. Never holds an empty set.
pub type Assignment = BTreeMap<Uuid, BTreeSet<i32>>;

/// Topic metadata looked up for a call: name → (id, partition count); `None` if the topic does
/// not exist. Topics absent from the map were not looked up and keep their last known metadata.
pub type TopicLookup = BTreeMap<String, Option<(Uuid, i32)>>;

/// The server-side assignors served.
pub const ASSIGNORS: &[&str] = &["uniform", "range"];

/// The assignor used when no member asks for one.
pub const DEFAULT_ASSIGNOR: &str = "uniform";

/// Where a member is in its reconciliation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum MemberState {
    /// It has its whole target assignment, at the assignment epoch.
    #[default]
    Stable,
    /// It must revoke partitions (`pending_revocation`) before it moves on.
    UnrevokedPartitions,
    /// It waits for partitions still held by other members.
    UnreleasedPartitions,
}

/// Group states, named as ConsumerGroupDescribe and ListGroups report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerGroupState {
    /// No members.
    Empty,
    /// A new target assignment is being computed.
    Assigning,
    /// Members are moving towards the target assignment.
    Reconciling,
    /// Every member has its target assignment.
    Stable,
}

impl ConsumerGroupState {
    /// The name Kafka uses.
    pub fn name(self) -> &'static str {
        match self {
            ConsumerGroupState::Empty => "Empty",
            ConsumerGroupState::Assigning => "Assigning",
            ConsumerGroupState::Reconciling => "Reconciling",
            ConsumerGroupState::Stable => "Stable",
        }
    }
}

/// One member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerMember {
    /// Member id.
    pub id: String,
    /// Static membership id.
    pub instance_id: Option<String>,
    /// Rack.
    pub rack_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client host.
    pub client_host: String,
    /// Subscribed topic names, sorted and unique.
    pub subscribed: Vec<String>,
    /// The assignor it asked for.
    pub server_assignor: Option<String>,
    /// Rebalance timeout (ms): how long it may take to revoke partitions.
    pub rebalance_timeout_ms: i32,
    /// Member epoch.
    pub member_epoch: i32,
    /// The epoch before the last bump (a heartbeat carrying it is still accepted if its response
    /// was lost).
    pub previous_epoch: i32,
    /// Reconciliation state.
    pub state: MemberState,
    /// Partitions it may consume.
    pub assigned: Assignment,
    /// Partitions it was told to give up and has not yet reported given up.
    pub pending_revocation: Assignment,
    /// What it last reported owning.
    pub owned: Option<Assignment>,
    /// A static member that left with epoch -2 and may come back.
    pub left: bool,
}

/// A ConsumerGroupHeartbeat, decoded.
#[derive(Debug, Clone, Default)]
pub struct HeartbeatRequest {
    /// Member id ("" for a new member of a v0 client: the group generates it).
    pub member_id: String,
    /// Member epoch: 0 joins, -1 leaves, -2 leaves temporarily (static), > 0 heartbeats.
    pub member_epoch: i32,
    /// Static membership id.
    pub instance_id: Option<String>,
    /// Rack.
    pub rack_id: Option<String>,
    /// Rebalance timeout (ms), -1 if unchanged.
    pub rebalance_timeout_ms: i32,
    /// Subscribed topic names, `None` if unchanged.
    pub subscribed: Option<Vec<String>>,
    /// Subscribed regular expression (refused).
    pub subscribed_regex: Option<String>,
    /// Preferred assignor, `None` if unchanged.
    pub server_assignor: Option<String>,
    /// Owned partitions, `None` if unchanged.
    pub owned: Option<Assignment>,
    /// Client id.
    pub client_id: String,
    /// Client host.
    pub client_host: String,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatResult {
    /// Error, if any.
    pub error: Option<ResponseError>,
    /// Why, for the client's logs.
    pub message: Option<String>,
    /// The member's id.
    pub member_id: String,
    /// The member's epoch.
    pub member_epoch: i32,
    /// How often to heartbeat (ms).
    pub heartbeat_interval_ms: i32,
    /// The member's assignment, when it changed or the request was a full one.
    pub assignment: Option<Assignment>,
}

/// One consumer-protocol group. The serialized fields are its durable form.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConsumerGroup {
    /// Group id.
    pub id: String,
    /// Group epoch.
    pub group_epoch: i32,
    /// The group epoch the target assignment was computed at.
    pub assignment_epoch: i32,
    /// The assignor that computed the target assignment.
    pub assignor: String,
    /// Members by id.
    pub members: BTreeMap<String, ConsumerMember>,
    /// Target assignment by member id.
    pub target: BTreeMap<String, Assignment>,
    /// Metadata of the subscribed topics the target was computed from: name → (id, partitions).
    pub topics: BTreeMap<String, (Uuid, i32)>,
    #[serde(skip)]
    sessions: HashMap<String, Instant>,
    #[serde(skip)]
    revocation_deadlines: HashMap<String, Instant>,
    #[serde(skip)]
    settings: GroupSettings,
    /// Grows with every change to the durable state (never stored: the coordinator compares it
    /// with what it has saved, see [`crate::groups::Slot`]).
    #[serde(skip)]
    pub version: u64,
}

fn add(to: &mut Assignment, from: &Assignment) {
    for (t, parts) in from {
        to.entry(*t).or_default().extend(parts.iter().copied());
    }
}

fn minus(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (t, parts) in a {
        let rest: BTreeSet<i32> = match b.get(t) {
            Some(other) => parts.difference(other).copied().collect(),
            None => parts.clone(),
        };
        if !rest.is_empty() {
            out.insert(*t, rest);
        }
    }
    out
}

fn intersect(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (t, parts) in a {
        if let Some(other) = b.get(t) {
            let both: BTreeSet<i32> = parts.intersection(other).copied().collect();
            if !both.is_empty() {
                out.insert(*t, both);
            }
        }
    }
    out
}

/// Drops empty partition sets.
pub fn normalize(mut a: Assignment) -> Assignment {
    a.retain(|_, parts| !parts.is_empty());
    a
}

fn invalid(message: &str) -> Result<(), (ResponseError, String)> {
    Err((ResponseError::InvalidRequest, message.to_string()))
}

fn validate(req: &HeartbeatRequest) -> Result<(), (ResponseError, String)> {
    if req.instance_id.as_deref() == Some("") {
        return invalid("InstanceId can't be empty.");
    }
    if req.rack_id.as_deref() == Some("") {
        return invalid("RackId can't be empty.");
    }
    if req.subscribed_regex.is_some() {
        return invalid("Regular expression subscriptions are not supported by this broker.");
    }
    if let Some(a) = &req.server_assignor {
        if !ASSIGNORS.contains(&a.as_str()) {
            return Err((
                ResponseError::UnsupportedAssignor,
                format!("Assignor {a} is not supported. Supported assignors: uniform, range."),
            ));
        }
    }
    match req.member_epoch {
        0 => {
            if req.rebalance_timeout_ms == -1 {
                return invalid("RebalanceTimeoutMs must be provided in first request.");
            }
            if req
                .owned
                .as_ref()
                .is_none_or(|o| !normalize(o.clone()).is_empty())
            {
                return invalid("TopicPartitions must be empty when (re-)joining.");
            }
            if req.subscribed.is_none() {
                return invalid("SubscribedTopicNames must be set in first request.");
            }
        }
        -2 => {
            if req.member_id.is_empty() {
                return invalid("MemberId can't be empty.");
            }
            if req.instance_id.is_none() {
                return invalid("InstanceId can't be null when MemberEpoch is -2.");
            }
        }
        e if e > 0 || e == -1 => {
            if req.member_id.is_empty() {
                return invalid("MemberId can't be empty.");
            }
        }
        _ => return invalid("MemberEpoch is invalid."),
    }
    Ok(())
}

impl ConsumerGroup {
    /// A new, empty group.
    pub fn new(id: &str, settings: GroupSettings) -> Self {
        ConsumerGroup {
            id: id.to_string(),
            group_epoch: 0,
            assignment_epoch: 0,
            assignor: DEFAULT_ASSIGNOR.to_string(),
            members: BTreeMap::new(),
            target: BTreeMap::new(),
            topics: BTreeMap::new(),
            sessions: HashMap::new(),
            revocation_deadlines: HashMap::new(),
            settings,
            version: 0,
        }
    }

    /// Takes a group read back from the store into service: its members' sessions start now.
    pub fn restored(mut self, settings: GroupSettings, now: Instant) -> Self {
        self.settings = settings;
        let deadline = now + self.settings.consumer_session_timeout;
        self.sessions = self
            .members
            .keys()
            .map(|id| (id.clone(), deadline))
            .collect();
        self.revocation_deadlines = self
            .members
            .values()
            .filter(|m| !m.pending_revocation.is_empty())
            .map(|m| (m.id.clone(), now + rebalance_timeout(m)))
            .collect();
        self
    }

    /// Whether this group id is in use by the consumer protocol.
    pub fn is_active(&self) -> bool {
        self.group_epoch > 0 || !self.members.is_empty()
    }

    /// The group's state.
    pub fn state(&self) -> ConsumerGroupState {
        if self.members.is_empty() {
            ConsumerGroupState::Empty
        } else if self.group_epoch > self.assignment_epoch {
            ConsumerGroupState::Assigning
        } else if self
            .members
            .values()
            .any(|m| m.member_epoch != self.assignment_epoch || m.state != MemberState::Stable)
        {
            ConsumerGroupState::Reconciling
        } else {
            ConsumerGroupState::Stable
        }
    }

    /// Every topic some member subscribes to.
    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        self.members
            .values()
            .flat_map(|m| m.subscribed.iter().cloned())
            .collect()
    }

    /// The name of a topic of the target assignment's metadata.
    pub fn topic_name(&self, id: &Uuid) -> Option<&str> {
        self.topics
            .iter()
            .find(|(_, (tid, _))| tid == id)
            .map(|(name, _)| name.as_str())
    }

    fn interval_ms(&self) -> i32 {
        self.settings.consumer_heartbeat_interval.as_millis() as i32
    }

    fn failure(&self, member_id: &str, error: ResponseError, message: String) -> HeartbeatResult {
        HeartbeatResult {
            error: Some(error),
            message: Some(message),
            member_id: member_id.to_string(),
            member_epoch: 0,
            heartbeat_interval_ms: 0,
            assignment: None,
        }
    }

    /// Handles a ConsumerGroupHeartbeat. The bool says whether the durable state changed (then
    /// [`version`](Self::version) grew).
    pub fn heartbeat(
        &mut self,
        req: HeartbeatRequest,
        lookup: &TopicLookup,
        now: Instant,
    ) -> (HeartbeatResult, bool) {
        let (result, changed) = self.handle_heartbeat(req, lookup, now);
        if changed {
            self.version += 1;
        }
        (result, changed)
    }

    fn handle_heartbeat(
        &mut self,
        req: HeartbeatRequest,
        lookup: &TopicLookup,
        now: Instant,
    ) -> (HeartbeatResult, bool) {
        if let Err((e, message)) = validate(&req) {
            return (self.failure(&req.member_id, e, message), false);
        }
        match req.member_epoch {
            -1 | -2 => return self.leave(&req),
            _ => {}
        }
        let full = req.member_epoch == 0
            || (req.rebalance_timeout_ms != -1 && req.subscribed.is_some() && req.owned.is_some());
        let mut changed = false;
        let mut bump = false;
        let (id, before) = if req.member_epoch == 0 {
            match self.join(&req) {
                Ok((id, is_new)) => {
                    bump |= is_new;
                    changed = true;
                    (id, None)
                }
                Err((e, message)) => return (self.failure(&req.member_id, e, message), false),
            }
        } else {
            let Some(m) = self.members.get(&req.member_id) else {
                let message = format!("Member {} is not a member of the group.", req.member_id);
                return (
                    self.failure(&req.member_id, ResponseError::UnknownMemberId, message),
                    false,
                );
            };
            if req.instance_id.is_some() && req.instance_id != m.instance_id {
                let message = "Instance id does not match the member's.".to_string();
                return (
                    self.failure(&req.member_id, ResponseError::FencedInstanceId, message),
                    false,
                );
            }
            let accepted = !m.left
                && (req.member_epoch == m.member_epoch
                    || (req.member_epoch < m.member_epoch
                        && req.member_epoch == m.previous_epoch
                        && req.owned.as_ref().is_some_and(|o| {
                            minus(&normalize(o.clone()), &m.assigned).is_empty()
                        })));
            if !accepted {
                let message = format!(
                    "The member epoch {} is fenced; the current member epoch is {}.",
                    req.member_epoch, m.member_epoch
                );
                return (
                    self.failure(&req.member_id, ResponseError::FencedMemberEpoch, message),
                    false,
                );
            }
            (req.member_id.clone(), Some(m.assigned.clone()))
        };

        // Update the member from the request.
        self.sessions
            .insert(id.clone(), now + self.settings.consumer_session_timeout);
        if let Some(m) = self.members.get_mut(&id) {
            if !req.client_id.is_empty() && m.client_id != req.client_id {
                m.client_id = req.client_id.clone();
            }
            if !req.client_host.is_empty() && m.client_host != req.client_host {
                m.client_host = req.client_host.clone();
            }
            if req.rack_id.is_some() && m.rack_id != req.rack_id {
                m.rack_id = req.rack_id.clone();
                changed = true;
            }
            if req.rebalance_timeout_ms >= 0 && m.rebalance_timeout_ms != req.rebalance_timeout_ms {
                m.rebalance_timeout_ms = req.rebalance_timeout_ms;
                changed = true;
            }
            if let Some(topics) = &req.subscribed {
                let topics: Vec<String> = topics
                    .iter()
                    .cloned()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                if topics != m.subscribed {
                    m.subscribed = topics;
                    bump = true;
                }
            }
            if req.server_assignor.is_some() && req.server_assignor != m.server_assignor {
                m.server_assignor = req.server_assignor.clone();
                bump = true;
            }
            if let Some(owned) = &req.owned {
                let owned = normalize(owned.clone());
                if m.owned.as_ref() != Some(&owned) {
                    m.owned = Some(owned);
                    changed = true;
                }
            }
        }

        bump |= self.refresh_topics(lookup);
        if bump {
            self.group_epoch += 1;
            changed = true;
        }
        if self.group_epoch > self.assignment_epoch {
            self.compute_target();
        }
        changed |= self.reconcile(&id, now);

        let Some(m) = self.members.get(&id) else {
            let message = "member vanished".to_string();
            return (
                self.failure(&id, ResponseError::UnknownServerError, message),
                changed,
            );
        };
        let assignment = if full || before.as_ref() != Some(&m.assigned) {
            Some(m.assigned.clone())
        } else {
            None
        };
        (
            HeartbeatResult {
                error: None,
                message: None,
                member_id: id.clone(),
                member_epoch: m.member_epoch,
                heartbeat_interval_ms: self.interval_ms(),
                assignment,
            },
            changed,
        )
    }

    /// A join (epoch 0): a new member, a member rejoining after it was fenced, or a static member
    /// replacing its previous incarnation. Returns its id and whether it is new to the group.
    fn join(&mut self, req: &HeartbeatRequest) -> Result<(String, bool), (ResponseError, String)> {
        if let Some(instance) = &req.instance_id {
            let previous = self
                .members
                .values()
                .find(|m| m.instance_id.as_deref() == Some(instance.as_str()))
                .map(|m| (m.id.clone(), m.left));
            if let Some((old_id, left)) = previous {
                if old_id == req.member_id {
                    self.reset(&old_id);
                    return Ok((old_id, false));
                }
                if !left {
                    return Err((
                        ResponseError::UnreleasedInstanceId,
                        format!("Static member {instance} is still in use by another member."),
                    ));
                }
                // The new incarnation takes the old one's place and assignment.
                let id = self.new_id(&req.member_id);
                if let Some(mut m) = self.members.remove(&old_id) {
                    m.id = id.clone();
                    m.left = false;
                    m.owned = Some(Assignment::new());
                    self.sessions.remove(&old_id);
                    if let Some(d) = self.revocation_deadlines.remove(&old_id) {
                        self.revocation_deadlines.insert(id.clone(), d);
                    }
                    if let Some(t) = self.target.remove(&old_id) {
                        self.target.insert(id.clone(), t);
                    }
                    self.members.insert(id.clone(), m);
                }
                return Ok((id, false));
            }
        }
        if !req.member_id.is_empty() && self.members.contains_key(&req.member_id) {
            self.reset(&req.member_id);
            return Ok((req.member_id.clone(), false));
        }
        let id = self.new_id(&req.member_id);
        self.members.insert(
            id.clone(),
            ConsumerMember {
                id: id.clone(),
                instance_id: req.instance_id.clone(),
                rack_id: req.rack_id.clone(),
                client_id: req.client_id.clone(),
                client_host: req.client_host.clone(),
                subscribed: Vec::new(),
                server_assignor: None,
                rebalance_timeout_ms: req.rebalance_timeout_ms,
                member_epoch: 0,
                previous_epoch: 0,
                state: MemberState::Stable,
                assigned: Assignment::new(),
                pending_revocation: Assignment::new(),
                owned: Some(Assignment::new()),
                left: false,
            },
        );
        Ok((id, true))
    }

    fn new_id(&self, requested: &str) -> String {
        if requested.is_empty() {
            Uuid::new_v4().to_string()
        } else {
            requested.to_string()
        }
    }

    /// A known member rejoining with epoch 0 has given up everything it had.
    fn reset(&mut self, id: &str) {
        self.revocation_deadlines.remove(id);
        if let Some(m) = self.members.get_mut(id) {
            m.assigned.clear();
            m.pending_revocation.clear();
            m.owned = Some(Assignment::new());
            m.member_epoch = 0;
            m.previous_epoch = 0;
            m.state = MemberState::Stable;
            m.left = false;
        }
    }

    /// Leaves with epoch -1 (for good) or -2 (a static member, temporarily).
    fn leave(&mut self, req: &HeartbeatRequest) -> (HeartbeatResult, bool) {
        let found = self
            .members
            .get(&req.member_id)
            .map(|m| m.instance_id.clone());
        let Some(instance) = found else {
            let message = format!("Member {} is not a member of the group.", req.member_id);
            return (
                self.failure(&req.member_id, ResponseError::UnknownMemberId, message),
                false,
            );
        };
        if req.instance_id.is_some() && req.instance_id != instance {
            let message = "Instance id does not match the member's.".to_string();
            return (
                self.failure(&req.member_id, ResponseError::FencedInstanceId, message),
                false,
            );
        }
        if req.member_epoch == -2 {
            if let Some(m) = self.members.get_mut(&req.member_id) {
                m.left = true;
            }
        } else {
            self.remove_member(&req.member_id);
        }
        (
            HeartbeatResult {
                error: None,
                message: None,
                member_id: req.member_id.clone(),
                member_epoch: req.member_epoch,
                heartbeat_interval_ms: self.interval_ms(),
                assignment: None,
            },
            true,
        )
    }

    /// Removes a member: its partitions are free at once, and the target is recomputed.
    fn remove_member(&mut self, id: &str) {
        self.members.remove(id);
        self.target.remove(id);
        self.sessions.remove(id);
        self.revocation_deadlines.remove(id);
        self.group_epoch += 1;
        self.compute_target();
    }

    /// Refreshes the metadata of the subscribed topics; true if it changed.
    fn refresh_topics(&mut self, lookup: &TopicLookup) -> bool {
        let mut topics = BTreeMap::new();
        for name in self.subscribed_topics() {
            let known = match lookup.get(&name) {
                Some(found) => *found,
                None => self.topics.get(&name).copied(),
            };
            if let Some(meta) = known {
                topics.insert(name, meta);
            }
        }
        if topics == self.topics {
            return false;
        }
        self.topics = topics;
        true
    }

    /// The assignor most members ask for (the default if none asks).
    fn choose_assignor(&self) -> String {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(a) = &m.server_assignor {
                *votes.entry(a.as_str()).or_default() += 1;
            }
        }
        votes
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
            .map_or_else(|| DEFAULT_ASSIGNOR.to_string(), |(a, _)| a.to_string())
    }

    fn compute_target(&mut self) {
        let assignor = self.choose_assignor();
        let members: Vec<(String, BTreeSet<String>)> = self
            .members
            .values()
            .map(|m| (m.id.clone(), m.subscribed.iter().cloned().collect()))
            .collect();
        self.target = if assignor == "range" {
            range(&members, &self.topics)
        } else {
            uniform(&members, &self.topics, &self.target)
        };
        self.assignor = assignor;
        self.assignment_epoch = self.group_epoch;
    }

    /// Moves one member towards its target assignment. True if it changed.
    fn reconcile(&mut self, id: &str, now: Instant) -> bool {
        let target = self.target.get(id).cloned().unwrap_or_default();
        let mut held = Assignment::new();
        for (other_id, other) in &self.members {
            if other_id != id {
                add(&mut held, &other.assigned);
                add(&mut held, &other.pending_revocation);
            }
        }
        let assignment_epoch = self.assignment_epoch;
        let Some(m) = self.members.get_mut(id) else {
            return false;
        };
        let before = m.clone();
        if !m.pending_revocation.is_empty() {
            let still_owned = m
                .owned
                .as_ref()
                .is_some_and(|o| !intersect(o, &m.pending_revocation).is_empty());
            if still_owned {
                // The target may have moved on meanwhile: revoke whatever it no longer has too.
                let more = minus(&m.assigned, &target);
                if !more.is_empty() {
                    m.assigned = intersect(&m.assigned, &target);
                    add(&mut m.pending_revocation, &more);
                }
                return *m != before;
            }
            m.pending_revocation.clear();
            self.revocation_deadlines.remove(id);
        }
        let revoke = minus(&m.assigned, &target);
        if !revoke.is_empty() {
            m.assigned = intersect(&m.assigned, &target);
            m.pending_revocation = revoke;
            m.state = MemberState::UnrevokedPartitions;
            let deadline = now + rebalance_timeout(m);
            self.revocation_deadlines.insert(id.to_string(), deadline);
            return true;
        }
        if m.member_epoch != assignment_epoch {
            m.previous_epoch = m.member_epoch;
            m.member_epoch = assignment_epoch;
        }
        let wanted = minus(&target, &m.assigned);
        let free = minus(&wanted, &held);
        add(&mut m.assigned, &free);
        m.state = if m.assigned == target {
            MemberState::Stable
        } else {
            MemberState::UnreleasedPartitions
        };
        *m != before
    }

    /// Expires sessions and overdue revocations. True if the group changed.
    pub fn tick(&mut self, now: Instant) -> bool {
        let mut expired: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for (id, deadline) in &self.revocation_deadlines {
            if *deadline <= now && !expired.contains(id) {
                tracing::info!(group = %self.id, member = %id, "member did not revoke its partitions in time");
                expired.push(id.clone());
            }
        }
        for id in &expired {
            tracing::info!(group = %self.id, member = %id, "consumer group member removed");
            self.remove_member(id);
        }
        if !expired.is_empty() {
            self.version += 1;
        }
        !expired.is_empty()
    }

    /// Whether the group has no members and so nothing for a tick to expire.
    pub fn is_idle(&self) -> bool {
        self.members.is_empty() && self.sessions.is_empty() && self.revocation_deadlines.is_empty()
    }

    /// Whether OffsetCommit from this member at this epoch is accepted. A negative epoch with
    /// an empty group is a commit from outside the group (admin tools, simple consumers).
    pub fn check_commit(&self, member_id: &str, epoch: i32, version: i16) -> Option<ResponseError> {
        if epoch < 0 && self.members.is_empty() {
            return None;
        }
        let Some(m) = self.members.get(member_id) else {
            return Some(ResponseError::UnknownMemberId);
        };
        if version < 9 {
            // Members of the consumer protocol must commit with their member epoch (v9+).
            return Some(ResponseError::UnsupportedVersion);
        }
        if epoch != m.member_epoch {
            return Some(ResponseError::StaleMemberEpoch);
        }
        None
    }

    /// Whether OffsetFetch v9+ from this member at this epoch is accepted. Without a member id
    /// or with a negative epoch the fetch is from outside the group and always accepted.
    pub fn check_fetch(&self, member_id: Option<&str>, epoch: i32) -> Option<ResponseError> {
        let member_id = member_id.filter(|m| !m.is_empty())?;
        if epoch < 0 {
            return None;
        }
        let Some(m) = self.members.get(member_id) else {
            return Some(ResponseError::UnknownMemberId);
        };
        if epoch != m.member_epoch {
            return Some(ResponseError::StaleMemberEpoch);
        }
        None
    }
}

fn rebalance_timeout(m: &ConsumerMember) -> Duration {
    Duration::from_millis(m.rebalance_timeout_ms.max(0) as u64)
}

/// The partitions of the subscribed topics, with each topic's subscribers.
fn partitions_by_topic<'a>(
    members: &'a [(String, BTreeSet<String>)],
    topics: &BTreeMap<String, (Uuid, i32)>,
) -> Vec<(Uuid, i32, Vec<&'a str>)> {
    let mut out = Vec::new();
    for (name, (id, count)) in topics {
        let subscribers: Vec<&str> = members
            .iter()
            .filter(|(_, subs)| subs.contains(name))
            .map(|(m, _)| m.as_str())
            .collect();
        if subscribers.is_empty() {
            continue;
        }
        for p in 0..*count {
            out.push((*id, p, subscribers.clone()));
        }
    }
    out
}

/// The `uniform` assignor: balanced (per member, within one partition where subscriptions
/// allow) and sticky (a partition stays with its previous target owner while that keeps the
/// balance).
pub fn uniform(
    members: &[(String, BTreeSet<String>)],
    topics: &BTreeMap<String, (Uuid, i32)>,
    previous: &BTreeMap<String, Assignment>,
) -> BTreeMap<String, Assignment> {
    let partitions = partitions_by_topic(members, topics);
    let mut owner: BTreeMap<(Uuid, i32), String> = BTreeMap::new();
    let mut count: BTreeMap<&str, usize> = members.iter().map(|(m, _)| (m.as_str(), 0)).collect();
    let eligible: BTreeMap<(Uuid, i32), &Vec<&str>> =
        partitions.iter().map(|(t, p, s)| ((*t, *p), s)).collect();
    // Sticky: keep what the previous target gave, while still subscribed.
    for (m, _) in members {
        if let Some(prev) = previous.get(m) {
            for (t, parts) in prev {
                for p in parts {
                    if eligible
                        .get(&(*t, *p))
                        .is_some_and(|s| s.contains(&m.as_str()))
                        && !owner.contains_key(&(*t, *p))
                    {
                        owner.insert((*t, *p), m.clone());
                        *count.entry(m.as_str()).or_default() += 1;
                    }
                }
            }
        }
    }
    // New partitions go to the least loaded subscriber.
    for (t, p, subscribers) in &partitions {
        if owner.contains_key(&(*t, *p)) {
            continue;
        }
        if let Some(best) = subscribers
            .iter()
            .min_by_key(|m| (count.get(**m).copied().unwrap_or(0), **m))
        {
            owner.insert((*t, *p), best.to_string());
            *count.entry(best).or_default() += 1;
        }
    }
    // Balance: move partitions from a member to a subscriber with at least two fewer. Each move
    // lowers the sum of squared counts, so this ends.
    loop {
        let mut moved = false;
        let mut by_load: Vec<(&str, usize)> = count.iter().map(|(m, c)| (*m, *c)).collect();
        by_load.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        'search: for (from, load) in by_load {
            let theirs: Vec<(Uuid, i32)> = owner
                .iter()
                .filter(|(_, o)| o.as_str() == from)
                .map(|(tp, _)| *tp)
                .rev()
                .collect();
            for tp in theirs {
                let Some(subscribers) = eligible.get(&tp) else {
                    continue;
                };
                let to = subscribers
                    .iter()
                    .filter(|m| count.get(**m).copied().unwrap_or(0) + 1 < load)
                    .min_by_key(|m| (count.get(**m).copied().unwrap_or(0), **m));
                if let Some(to) = to {
                    owner.insert(tp, to.to_string());
                    *count.entry(from).or_default() -= 1;
                    *count.entry(to).or_default() += 1;
                    moved = true;
                    break 'search;
                }
            }
        }
        if !moved {
            break;
        }
    }
    let mut out: BTreeMap<String, Assignment> = members
        .iter()
        .map(|(m, _)| (m.clone(), Assignment::new()))
        .collect();
    for ((t, p), m) in owner {
        out.entry(m).or_default().entry(t).or_default().insert(p);
    }
    out
}

/// The `range` assignor: per topic, its subscribers sorted by member id each get a contiguous
/// range of partitions, the first ones one more when the count does not divide.
pub fn range(
    members: &[(String, BTreeSet<String>)],
    topics: &BTreeMap<String, (Uuid, i32)>,
) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = members
        .iter()
        .map(|(m, _)| (m.clone(), Assignment::new()))
        .collect();
    for (name, (id, count)) in topics {
        let mut subscribers: Vec<&str> = members
            .iter()
            .filter(|(_, subs)| subs.contains(name))
            .map(|(m, _)| m.as_str())
            .collect();
        if subscribers.is_empty() || *count <= 0 {
            continue;
        }
        subscribers.sort_unstable();
        let n = subscribers.len() as i32;
        let (per, extra) = (*count / n, *count % n);
        let mut start = 0;
        for (i, m) in subscribers.iter().enumerate() {
            let len = per + i32::from((i as i32) < extra);
            if len > 0 {
                out.entry(m.to_string())
                    .or_default()
                    .insert(*id, (start..start + len).collect());
            }
            start += len;
        }
    }
    out
}

#[cfg(test)]
mod tests;
