//! Which cluster a message goes to: the topic -> group table, and the choice of a cluster within
//! a group.
//!
//! - Keyed messages: weighted rendezvous hashing (highest random weight). Each cluster gets the
//!   score `-weight / ln(u)` with `u` a hash of (key, cluster name) mapped into (0, 1); the
//!   highest score wins. So a key maps to the same cluster as long as that cluster is a
//!   candidate, and when one cluster drops out only its keys move (spread over the rest by
//!   weight). The hash is fixed (FNV-1a plus a 64-bit finalizer), so every gateway, build and
//!   restart maps a key the same way.
//! - Unkeyed messages: a weighted pick driven by a per-message number, spread by weight.
//!
//! Candidates (healthy clusters with a weight above zero, not tried yet for this message) are
//! the caller's business; this module is pure and does no I/O.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::GatewayConfig;

/// A group's member with its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub cluster: Arc<str>,
    pub weight: f64,
}

/// The clusters of a group, in name order.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: Arc<str>,
    pub members: Vec<Member>,
}

/// Topic -> group, with an optional default.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteTable {
    topics: BTreeMap<String, Arc<Group>>,
    default: Option<Arc<Group>>,
}

impl RouteTable {
    /// Builds the table of a validated configuration.
    pub fn from_config(config: &GatewayConfig) -> Self {
        let groups: BTreeMap<&str, Arc<Group>> = config
            .groups
            .iter()
            .map(|(name, g)| {
                let members = g
                    .clusters
                    .iter()
                    .map(|(c, w)| Member {
                        cluster: Arc::from(c.as_str()),
                        weight: *w,
                    })
                    .collect();
                let group = Group {
                    name: Arc::from(name.as_str()),
                    members,
                };
                (name.as_str(), Arc::new(group))
            })
            .collect();
        let topics = config
            .routes
            .topics
            .iter()
            .filter_map(|(t, g)| Some((t.clone(), groups.get(g.as_str())?.clone())))
            .collect();
        let default = config
            .routes
            .default
            .as_deref()
            .and_then(|g| groups.get(g).cloned());
        Self { topics, default }
    }

    /// The group serving `topic`, if any.
    pub fn group_for(&self, topic: &str) -> Option<&Arc<Group>> {
        self.topics.get(topic).or(self.default.as_ref())
    }
}

/// FNV-1a over the parts (with a separator so ("ab","c") != ("a","bc")), then the splitmix64
/// finalizer for well-mixed bits.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    mix64(h)
}

/// The splitmix64 finalizer.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Maps a hash into the open interval (0, 1).
fn unit(h: u64) -> f64 {
    ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// The cluster a key goes to among `candidates` (weight > 0), by weighted rendezvous hashing.
pub fn rendezvous<'a>(key: &[u8], candidates: &[&'a Member]) -> Option<&'a Member> {
    candidates
        .iter()
        .filter(|m| m.weight > 0.0)
        .map(|m| {
            let u = unit(stable_hash(&[key, m.cluster.as_bytes()]));
            (-m.weight / u.ln(), *m)
        })
        .max_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then_with(|| b.1.cluster.cmp(&a.1.cluster))
        })
        .map(|(_, m)| m)
}

/// A cluster for an unkeyed message among `candidates` (weight > 0), chosen by weight with
/// `draw` (any well-spread number, e.g. a mixed counter).
pub fn weighted_pick<'a>(draw: u64, candidates: &[&'a Member]) -> Option<&'a Member> {
    let total: f64 = candidates
        .iter()
        .filter(|m| m.weight > 0.0)
        .map(|m| m.weight)
        .sum();
    if total <= 0.0 {
        return None;
    }
    let mut point = unit(draw) * total;
    let mut last = None;
    for m in candidates.iter().filter(|m| m.weight > 0.0) {
        if point < m.weight {
            return Some(m);
        }
        point -= m.weight;
        last = Some(*m);
    }
    last // rounding at the top end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(spec: &[(&str, f64)]) -> Vec<Member> {
        spec.iter()
            .map(|(c, w)| Member {
                cluster: Arc::from(*c),
                weight: *w,
            })
            .collect()
    }

    fn share(counts: &BTreeMap<String, usize>, c: &str, n: usize) -> f64 {
        counts.get(c).copied().unwrap_or(0) as f64 / n as f64
    }

    #[test]
    fn the_hash_is_fixed() {
        // Gateways of different builds must agree: pin a few values.
        assert_eq!(stable_hash(&[b"key", b"a"]), 0xc530_3564_4352_f698);
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
        assert_eq!(stable_hash(&[]), mix64(0xcbf2_9ce4_8422_2325));
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
    }

    #[test]
    fn keys_spread_by_weight() {
        let m = members(&[("a", 1.0), ("b", 3.0)]);
        let all: Vec<&Member> = m.iter().collect();
        let n = 40_000;
        let mut counts = BTreeMap::new();
        for i in 0..n {
            let c = rendezvous(format!("key-{i}").as_bytes(), &all).unwrap();
            *counts.entry(c.cluster.to_string()).or_insert(0) += 1;
        }
        let b = share(&counts, "b", n);
        assert!((0.73..0.77).contains(&b), "share of b: {b}");
    }

    #[test]
    fn removing_a_cluster_moves_only_its_keys() {
        let m = members(&[("a", 1.0), ("b", 1.0), ("c", 1.0)]);
        let all: Vec<&Member> = m.iter().collect();
        let without_b: Vec<&Member> = m.iter().filter(|m| &*m.cluster != "b").collect();
        let mut moved_from_b = 0;
        for i in 0..10_000 {
            let key = format!("k{i}");
            let before = rendezvous(key.as_bytes(), &all).unwrap();
            let after = rendezvous(key.as_bytes(), &without_b).unwrap();
            if &*before.cluster == "b" {
                moved_from_b += 1;
                assert_ne!(&*after.cluster, "b");
            } else {
                assert_eq!(before.cluster, after.cluster, "key {key} moved needlessly");
            }
        }
        assert!((3_000..3_700).contains(&moved_from_b), "{moved_from_b}");
    }

    #[test]
    fn zero_weight_gets_nothing_and_no_weight_no_cluster() {
        let m = members(&[("a", 0.0), ("b", 2.0)]);
        let all: Vec<&Member> = m.iter().collect();
        for i in 0..1_000u64 {
            assert_eq!(&*rendezvous(&i.to_be_bytes(), &all).unwrap().cluster, "b");
            assert_eq!(&*weighted_pick(mix64(i), &all).unwrap().cluster, "b");
        }
        let none = members(&[("a", 0.0)]);
        let none: Vec<&Member> = none.iter().collect();
        assert!(rendezvous(b"k", &none).is_none());
        assert!(weighted_pick(1, &none).is_none());
        assert!(weighted_pick(1, &[]).is_none());
    }

    #[test]
    fn unkeyed_spread_by_weight() {
        let m = members(&[("a", 1.0), ("b", 1.0), ("c", 2.0)]);
        let all: Vec<&Member> = m.iter().collect();
        let n = 40_000;
        let mut counts = BTreeMap::new();
        for i in 0..n as u64 {
            let c = weighted_pick(mix64(i), &all).unwrap();
            *counts.entry(c.cluster.to_string()).or_insert(0) += 1;
        }
        let c = share(&counts, "c", n);
        let a = share(&counts, "a", n);
        assert!((0.48..0.52).contains(&c), "{counts:?}");
        assert!((0.23..0.27).contains(&a), "{counts:?}");
    }

    #[test]
    fn routes_and_default() {
        let config: GatewayConfig = toml::from_str(
            r#"
            [clusters.a]
            bootstrap_servers = "x:1"
            [groups.g1]
            clusters = { a = 1 }
            [groups.g2]
            clusters = { a = 2 }
            [routes]
            topics = { orders = "g2" }
            "#,
        )
        .unwrap();
        let table = RouteTable::from_config(&config);
        assert_eq!(&*table.group_for("orders").unwrap().name, "g2");
        assert!(table.group_for("other").is_none());
        let mut with_default = config.clone();
        with_default.routes.default = Some("g1".into());
        let table = RouteTable::from_config(&with_default);
        assert_eq!(&*table.group_for("other").unwrap().name, "g1");
        assert_eq!(table.group_for("orders").unwrap().members[0].weight, 2.0);
    }
}
