//! The cluster as this broker sees it, and the placement rules every broker applies to it.
//!
//! Brokers hold no data, so any broker can serve any partition and any group; "placement" only
//! decides which broker clients are *sent* to, so that work spreads evenly and each object is
//! read from object storage about once per zone. [`ClusterView`] is a snapshot of the live
//! brokers (from the coordinator's registry, kept fresh by [`membership`]); the placement
//! functions are pure, so brokers with the same view place everything the same way:
//!
//! - A partition's *owner in a zone* is found by going round the zone's brokers (sorted by node
//!   id) from a start point given by a hash of the topic id: partitions of one topic spread
//!   evenly, and different topics start at different brokers.
//! - The *leader* told to a client is the owner in the client's zone (from `client.rack` in
//!   Fetch, or a zone hint in `client.id`: `zone=`, `ws_az=`, `warpstream_az=`,
//!   `diskless_az=`), or, for clients without a known zone, the owner over all brokers.
//!   Replicas are the leader and the owner in every zone, so a KIP-392 preferred read replica
//!   is always one of them.
//! - A group's coordinator is chosen by rendezvous hashing of the group id over all live
//!   brokers: when a broker joins or leaves, only the groups it gains or loses move.
//!
//! Invariants: a view is never empty (it always contains this broker, which is alive by
//! definition even when the coordinator's registry is unreachable or its lease lapsed); the hash
//! functions are fixed (FNV-1a and SplitMix64, not `std`'s randomized or unspecified hashers), so
//! brokers of different builds agree during a rolling upgrade.

pub mod membership;
pub mod reachability;

use std::collections::BTreeMap;
use std::sync::Arc;

use fjord_coordinator::ListenerEndpoint;
use tokio::sync::watch;
use uuid::Uuid;

/// One live broker, as clients are told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node id.
    pub node_id: i32,
    /// Host clients connect to.
    pub host: String,
    /// Port clients connect to.
    pub port: i32,
    /// Zone (rack), if the broker declared one.
    pub rack: Option<String>,
    /// Where clients of each listener reach it (empty: at `host`:`port` on every listener).
    pub listeners: Vec<ListenerEndpoint>,
}

impl Member {
    /// Where clients connected to listener `name` reach this broker; `None` if it does not
    /// serve that listener (Kafka leaves such brokers out of the answer).
    pub fn endpoint(&self, name: &str) -> Option<(&str, i32)> {
        if self.listeners.is_empty() {
            return Some((&self.host, self.port));
        }
        self.listeners
            .iter()
            .find(|l| l.name == name)
            .map(|l| (l.host.as_str(), l.port))
    }
}

/// A snapshot of the live brokers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// This broker's node id.
    self_id: i32,
    /// Live brokers sorted by node id; contains `self_id`.
    members: Vec<Member>,
    /// Indexes into `members` per zone (brokers without a zone form the `None` zone).
    zones: BTreeMap<Option<String>, Vec<usize>>,
}

impl ClusterView {
    /// A view of `members` plus `me` (which replaces any entry with its node id).
    pub fn new(me: Member, members: impl IntoIterator<Item = Member>) -> ClusterView {
        let mut by_id: BTreeMap<i32, Member> = members
            .into_iter()
            .filter(|m| m.node_id != me.node_id)
            .map(|m| (m.node_id, m))
            .collect();
        let self_id = me.node_id;
        by_id.insert(me.node_id, me);
        let members: Vec<Member> = by_id.into_values().collect();
        let mut zones: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
        for (i, m) in members.iter().enumerate() {
            zones.entry(m.rack.clone()).or_default().push(i);
        }
        ClusterView {
            self_id,
            members,
            zones,
        }
    }

    /// A view holding only this broker.
    pub fn single(me: Member) -> ClusterView {
        ClusterView::new(me, [])
    }

    /// This view without the brokers `gone` (this broker always stays).
    pub fn without(&self, gone: &std::collections::HashSet<i32>) -> ClusterView {
        let me = self
            .member(self.self_id)
            .cloned()
            .unwrap_or_else(|| Member {
                node_id: self.self_id,
                host: String::new(),
                port: 0,
                rack: None,
                listeners: Vec::new(),
            });
        ClusterView::new(
            me,
            self.members
                .iter()
                .filter(|m| !gone.contains(&m.node_id))
                .cloned(),
        )
    }

    /// The brokers that serve listener `name` (this broker always stays: a client reached it
    /// there). Brokers of one cluster normally declare the same listeners, so this is usually
    /// the whole view, borrowed.
    pub fn serving(&self, name: &str) -> std::borrow::Cow<'_, ClusterView> {
        if self.members.iter().all(|m| m.endpoint(name).is_some()) {
            return std::borrow::Cow::Borrowed(self);
        }
        let gone = self
            .members
            .iter()
            .filter(|m| m.endpoint(name).is_none())
            .map(|m| m.node_id)
            .collect();
        std::borrow::Cow::Owned(self.without(&gone))
    }

    /// This broker's node id.
    pub fn self_id(&self) -> i32 {
        self.self_id
    }

    /// Live brokers, sorted by node id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The live broker with this node id.
    pub fn member(&self, node_id: i32) -> Option<&Member> {
        self.members
            .binary_search_by_key(&node_id, |m| m.node_id)
            .ok()
            .and_then(|i| self.members.get(i))
    }

    /// Whether some live broker is in `zone`.
    pub fn has_zone(&self, zone: &str) -> bool {
        self.zones.contains_key(&Some(zone.to_string()))
    }

    /// The broker that serves partition `partition` of topic `topic_id` to clients in `zone`
    /// (over all brokers when `zone` is unknown or has no live broker).
    pub fn partition_owner(&self, topic_id: Uuid, partition: i32, zone: Option<&str>) -> i32 {
        let all: Vec<usize>;
        let candidates: &[usize] = match zone.and_then(|z| self.zones.get(&Some(z.to_string()))) {
            Some(in_zone) => in_zone,
            None => {
                all = (0..self.members.len()).collect();
                &all
            }
        };
        self.round_robin(candidates, topic_id, partition)
    }

    /// Replicas reported for a partition whose leader (for this client) is `leader`: the leader
    /// first, then the owner in each zone.
    pub fn replicas(&self, topic_id: Uuid, partition: i32, leader: i32) -> Vec<i32> {
        let mut out = vec![leader];
        for in_zone in self.zones.values() {
            let owner = self.round_robin(in_zone, topic_id, partition);
            if !out.contains(&owner) {
                out.push(owner);
            }
        }
        out
    }

    /// The broker coordinating group (or transaction) `key`: highest rendezvous weight.
    pub fn group_coordinator(&self, key: &str) -> i32 {
        let key_hash = fnv1a(key.as_bytes());
        self.members
            .iter()
            .max_by_key(|m| (mix(key_hash ^ mix(m.node_id as u32 as u64)), m.node_id))
            .map_or(self.self_id, |m| m.node_id)
    }

    /// Whether this broker coordinates group `key`.
    pub fn coordinates(&self, key: &str) -> bool {
        self.group_coordinator(key) == self.self_id
    }

    /// Whether this broker runs the cluster's background duties (object GC): the live broker with
    /// the lowest node id.
    pub fn runs_background_duties(&self) -> bool {
        self.members.first().map(|m| m.node_id) == Some(self.self_id)
    }

    fn round_robin(&self, candidates: &[usize], topic_id: Uuid, partition: i32) -> i32 {
        if candidates.is_empty() {
            return self.self_id;
        }
        let start = mix(fnv1a(topic_id.as_bytes()));
        let n = candidates.len() as u64;
        let slot = (start % n + u64::from(partition.unsigned_abs()) % n) % n;
        candidates
            .get(slot as usize)
            .and_then(|&i| self.members.get(i))
            .map_or(self.self_id, |m| m.node_id)
    }
}

/// A view that never changes (a broker outside cluster mode, tests).
pub fn fixed(view: ClusterView) -> watch::Receiver<Arc<ClusterView>> {
    watch::channel(Arc::new(view)).1
}

/// The zone a client declares in its `client.id`: the value of the first `zone=`, `ws_az=`,
/// `warpstream_az=` or `diskless_az=` hint (a key at the start or after a non-alphanumeric
/// character; the value runs to the next `,`, `;`, `&`, space or end).
pub fn zone_hint(client_id: &str) -> Option<&str> {
    const KEYS: [&str; 4] = ["zone=", "ws_az=", "warpstream_az=", "diskless_az="];
    let bytes = client_id.as_bytes();
    for (start, _) in client_id.char_indices() {
        let at_boundary = start == 0
            || bytes
                .get(start - 1)
                .is_some_and(|b| !b.is_ascii_alphanumeric() && *b != b'_');
        if !at_boundary {
            continue;
        }
        let rest = &client_id[start..];
        for key in KEYS {
            if let Some(value) = rest.strip_prefix(key) {
                let end = value
                    .find([',', ';', '&', ' ', '\t'])
                    .unwrap_or(value.len());
                let zone = &value[..end];
                if !zone.is_empty() {
                    return Some(zone);
                }
            }
        }
    }
    None
}

/// 64-bit FNV-1a.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64's finalizer: spreads the bits of `x`.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests;
