//! Fetch sessions (KIP-227): the broker remembers which partitions a consumer fetches, so
//! incremental fetch requests name only what changed and responses carry only partitions with
//! news.
//!
//! - `session_id = 0, epoch = -1`: a full fetch without a session.
//! - `session_id = 0, epoch = 0`: a full fetch that opens a session (its id is in the response;
//!   0 when no session can be opened, and the client carries on without one).
//! - `session_id = S, epoch = N > 0`: an incremental fetch of session S; N must be the epoch the
//!   session expects (else INVALID_FETCH_SESSION_EPOCH). Partitions in the request are added or
//!   updated, `forgotten_topics_data` removed; the fetch covers every partition of the session.
//!   The response lists only partitions with records, an error, or a changed high watermark or
//!   log start offset.
//! - `session_id = S, epoch = -1 or 0`: closes S (then as above).
//!
//! An unknown session id is FETCH_SESSION_ID_NOT_FOUND: after a broker restart every client
//! starts a new session. Sessions live in this broker's memory only, within [`SessionLimits`]:
//! - only partitions that exist enter a session (a request naming a million made-up partitions
//!   gets its errors once and leaves nothing behind);
//! - a session holds at most `max_partitions_per_session` partitions: a full fetch naming more
//!   gets no session, and an incremental one growing past it closes the session
//!   (FETCH_SESSION_ID_NOT_FOUND, after which the client fetches in full);
//! - all sessions together hold at most `max_partitions` partitions and `max_sessions` sessions:
//!   a new session first evicts sessions idle for `idle_eviction` (Kafka's
//!   `min.incremental.fetch.session.eviction.ms`), then the least recently used one; when that is
//!   not enough, it is not opened;
//! - sessions idle for `idle_eviction` leave memory even when nobody needs their room.

use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

use indexmap::IndexMap;
use kafka_protocol::messages::FetchRequest;
use kafka_protocol::ResponseError;
use parking_lot::Mutex;
use uuid::Uuid;

/// How a fetch request addresses a topic: by name (Fetch < v13) or by id (v13+).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TopicKey {
    /// By name.
    Name(String),
    /// By id.
    Id(Uuid),
}

/// One partition a fetch covers.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// The topic.
    pub topic: TopicKey,
    /// Partition index.
    pub partition: i32,
    /// Offset to read from.
    pub fetch_offset: i64,
    /// Byte limit for this partition.
    pub max_bytes: i32,
}

/// What a fetch request asks for once its session is taken into account.
#[derive(Debug)]
pub struct Plan {
    /// Session id to return (0: none).
    pub session_id: i32,
    /// Whether the response lists only changed partitions.
    pub incremental: bool,
    /// The partitions to read, in session order.
    pub wanted: Vec<Wanted>,
}

/// What the session remembers of the last response for a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// High watermark sent.
    pub high_watermark: i64,
    /// Log start offset sent.
    pub log_start: i64,
}

#[derive(Debug)]
struct CachedPartition {
    fetch_offset: i64,
    max_bytes: i32,
    sent: Option<Sent>,
}

#[derive(Debug)]
struct Session {
    next_epoch: i32,
    partitions: IndexMap<(TopicKey, i32), CachedPartition>,
    last_used: Instant,
}

/// Bounds on the memory fetch sessions hold.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Sessions open at once.
    pub max_sessions: usize,
    /// Partitions one session may hold.
    pub max_partitions_per_session: usize,
    /// Partitions all sessions together may hold.
    pub max_partitions: usize,
    /// A session unused this long is evicted (Kafka's `min.incremental.fetch.session.eviction.ms`).
    pub idle_eviction: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_sessions: 10_000,
            max_partitions_per_session: 50_000,
            max_partitions: 1_000_000,
            idle_eviction: Duration::from_secs(120),
        }
    }
}

/// The broker's fetch sessions.
pub struct FetchSessions {
    inner: Mutex<Inner>,
    limits: SessionLimits,
}

struct Inner {
    sessions: HashMap<i32, Session>,
    next_id: i32,
    /// Partitions held by all sessions.
    partitions: usize,
    /// When idle sessions were last swept.
    swept: Instant,
}

impl Inner {
    fn remove(&mut self, id: i32) -> Option<Session> {
        let session = self.sessions.remove(&id)?;
        self.partitions -= session.partitions.len();
        Some(session)
    }

    /// Removes sessions unused for `idle` (at most once a second, or when `force`d).
    fn sweep(&mut self, now: Instant, idle: Duration, force: bool) {
        if !force && now.duration_since(self.swept) < Duration::from_secs(1) {
            return;
        }
        self.swept = now;
        let stale: Vec<i32> = self
            .sessions
            .iter()
            .filter(|(_, s)| now.duration_since(s.last_used) >= idle)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.remove(id);
        }
    }
}

fn key(topic: &TopicKey, partition: i32) -> (TopicKey, i32) {
    (topic.clone(), partition)
}

impl FetchSessions {
    /// A session cache within `limits`.
    pub fn new(limits: SessionLimits) -> Self {
        FetchSessions {
            inner: Mutex::new(Inner {
                sessions: HashMap::new(),
                next_id: 1,
                partitions: 0,
                swept: Instant::now(),
            }),
            limits,
        }
    }

    /// Works out what `request` covers and updates the session it names. `exists` says whether
    /// a partition exists: only those enter a session (the others are fetched, and answered
    /// with their error, this once).
    pub fn plan(
        &self,
        request: &FetchRequest,
        by_id: bool,
        exists: impl Fn(&TopicKey, i32) -> bool,
    ) -> Result<Plan, ResponseError> {
        let requested: Vec<Wanted> = request
            .topics
            .iter()
            .flat_map(|t| {
                let topic = if by_id {
                    TopicKey::Id(t.topic_id)
                } else {
                    TopicKey::Name(t.topic.0.as_str().to_string())
                };
                t.partitions.iter().map(move |p| Wanted {
                    topic: topic.clone(),
                    partition: p.partition,
                    fetch_offset: p.fetch_offset,
                    max_bytes: p.partition_max_bytes,
                })
            })
            .collect();
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.sweep(now, self.limits.idle_eviction, false);
        let (id, epoch) = (request.session_id, request.session_epoch);
        if id != 0 && epoch > 0 {
            let inner = &mut *inner;
            let session = inner
                .sessions
                .get_mut(&id)
                .ok_or(ResponseError::FetchSessionIdNotFound)?;
            if session.next_epoch != epoch {
                return Err(ResponseError::InvalidFetchSessionEpoch);
            }
            session.next_epoch = if epoch == i32::MAX { 1 } else { epoch + 1 };
            session.last_used = now;
            let before = session.partitions.len();
            for forgotten in &request.forgotten_topics_data {
                let topic = if by_id {
                    TopicKey::Id(forgotten.topic_id)
                } else {
                    TopicKey::Name(forgotten.topic.0.as_str().to_string())
                };
                for p in &forgotten.partitions {
                    session.partitions.shift_remove(&key(&topic, *p));
                }
            }
            let mut once = Vec::new();
            for w in requested {
                if !exists(&w.topic, w.partition) {
                    once.push(w);
                    continue;
                }
                let entry = session
                    .partitions
                    .entry(key(&w.topic, w.partition))
                    .or_insert(CachedPartition {
                        fetch_offset: w.fetch_offset,
                        max_bytes: w.max_bytes,
                        sent: None,
                    });
                entry.fetch_offset = w.fetch_offset;
                entry.max_bytes = w.max_bytes;
            }
            let after = session.partitions.len();
            inner.partitions = inner.partitions - before + after;
            if after > self.limits.max_partitions_per_session
                || inner.partitions > self.limits.max_partitions
            {
                // Grown past its bounds: the client starts over with a full fetch, which gets
                // no session if it is still too large.
                inner.remove(id);
                return Err(ResponseError::FetchSessionIdNotFound);
            }
            let mut wanted: Vec<Wanted> = session
                .partitions
                .iter()
                .map(|((topic, partition), c)| Wanted {
                    topic: topic.clone(),
                    partition: *partition,
                    fetch_offset: c.fetch_offset,
                    max_bytes: c.max_bytes,
                })
                .collect();
            wanted.extend(once);
            return Ok(Plan {
                session_id: id,
                incremental: true,
                wanted,
            });
        }
        if id != 0 {
            inner.remove(id);
        }
        let session_id = if epoch == 0 {
            self.open(&mut inner, &requested, &exists, now)
        } else {
            0
        };
        Ok(Plan {
            session_id,
            incremental: false,
            wanted: requested,
        })
    }

    /// Opens a session for the existing partitions of `requested`; 0 when it cannot be.
    fn open(
        &self,
        inner: &mut Inner,
        requested: &[Wanted],
        exists: &impl Fn(&TopicKey, i32) -> bool,
        now: Instant,
    ) -> i32 {
        let partitions: IndexMap<(TopicKey, i32), CachedPartition> = requested
            .iter()
            .filter(|w| exists(&w.topic, w.partition))
            .map(|w| {
                (
                    key(&w.topic, w.partition),
                    CachedPartition {
                        fetch_offset: w.fetch_offset,
                        max_bytes: w.max_bytes,
                        sent: None,
                    },
                )
            })
            .collect();
        let size = partitions.len();
        if self.limits.max_sessions == 0
            || size > self.limits.max_partitions_per_session
            || size > self.limits.max_partitions
        {
            return 0;
        }
        let full = |inner: &Inner| {
            inner.sessions.len() >= self.limits.max_sessions
                || inner.partitions + size > self.limits.max_partitions
        };
        if full(inner) {
            inner.sweep(now, self.limits.idle_eviction, true);
        }
        while full(inner) {
            let oldest = inner
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| *id);
            match oldest {
                Some(id) => {
                    inner.remove(id);
                }
                None => return 0,
            }
        }
        let mut id = inner.next_id;
        while inner.sessions.contains_key(&id) {
            id = if id == i32::MAX { 1 } else { id + 1 };
        }
        inner.next_id = if id == i32::MAX { 1 } else { id + 1 };
        inner.partitions += size;
        inner.sessions.insert(
            id,
            Session {
                next_epoch: 1,
                partitions,
                last_used: now,
            },
        );
        id
    }

    /// Records what a response told the client, and says for each partition whether an
    /// incremental response must include it (`has_news`: records or an error).
    pub fn record(&self, plan: &Plan, sent: &[(Sent, bool)]) -> Vec<bool> {
        let mut inner = self.inner.lock();
        let Some(session) = inner.sessions.get_mut(&plan.session_id) else {
            return vec![true; sent.len()];
        };
        plan.wanted
            .iter()
            .zip(sent)
            .map(|(w, (now, has_news))| {
                let Some(cached) = session.partitions.get_mut(&key(&w.topic, w.partition)) else {
                    return true;
                };
                let changed = cached.sent != Some(*now);
                cached.sent = Some(*now);
                !plan.incremental || *has_news || changed
            })
            .collect()
    }

    /// Open sessions.
    pub fn len(&self) -> usize {
        self.inner.lock().sessions.len()
    }

    /// Partitions held by all open sessions.
    pub fn partitions(&self) -> usize {
        self.inner.lock().partitions
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::StrBytes;

    fn request(session_id: i32, epoch: i32, topic: &str, partitions: i32) -> FetchRequest {
        FetchRequest::default()
            .with_session_id(session_id)
            .with_session_epoch(epoch)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.into())))
                .with_partitions(
                    (0..partitions)
                        .map(|p| FetchPartition::default().with_partition(p))
                        .collect(),
                )])
    }

    /// Topic "real" has 4 partitions; nothing else exists.
    fn exists(topic: &TopicKey, partition: i32) -> bool {
        *topic == TopicKey::Name("real".into()) && (0..4).contains(&partition)
    }

    /// Item 11: a request naming a flood of made-up partitions gets them fetched (and refused)
    /// once, and leaves nothing in the session cache.
    #[test]
    fn only_existing_partitions_enter_a_session() {
        let sessions = FetchSessions::new(SessionLimits::default());
        let plan = sessions
            .plan(&request(0, 0, "made-up", 200_000), false, exists)
            .unwrap();
        assert_eq!(plan.wanted.len(), 200_000, "all answered this time");
        assert_eq!(sessions.partitions(), 0, "none remembered");
        let plan = sessions
            .plan(&request(0, 0, "real", 9), false, exists)
            .unwrap();
        assert_eq!(plan.wanted.len(), 9);
        assert_eq!(sessions.partitions(), 4);
        // An incremental fetch adding made-up partitions answers them once, keeps the real ones.
        let plan = sessions
            .plan(&request(plan.session_id, 1, "made-up", 1000), false, exists)
            .unwrap();
        assert_eq!(plan.wanted.len(), 1004);
        assert_eq!(sessions.partitions(), 4);
    }

    #[test]
    fn sessions_stay_within_their_partition_bounds() {
        let sessions = FetchSessions::new(SessionLimits {
            max_sessions: 100,
            max_partitions_per_session: 3,
            max_partitions: 5,
            idle_eviction: Duration::from_secs(120),
        });
        let all = |_: &TopicKey, _: i32| true;
        // Too large for one session: served without one.
        let plan = sessions.plan(&request(0, 0, "t", 4), false, all).unwrap();
        assert_eq!((plan.session_id, sessions.partitions()), (0, 0));
        let a = sessions.plan(&request(0, 0, "a", 3), false, all).unwrap();
        assert_ne!(a.session_id, 0);
        // A second session of 3 would pass the total of 5: the least recently used goes.
        let b = sessions.plan(&request(0, 0, "b", 3), false, all).unwrap();
        assert_ne!(b.session_id, 0);
        assert_eq!((sessions.len(), sessions.partitions()), (1, 3));
        assert_eq!(
            sessions
                .plan(&request(a.session_id, 1, "a", 0), false, all)
                .unwrap_err(),
            ResponseError::FetchSessionIdNotFound
        );
        // Growing a session past its bound closes it.
        assert_eq!(
            sessions
                .plan(&request(b.session_id, 1, "c", 1), false, all)
                .unwrap_err(),
            ResponseError::FetchSessionIdNotFound
        );
        assert_eq!((sessions.len(), sessions.partitions()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_sessions_are_evicted() {
        let sessions = FetchSessions::new(SessionLimits {
            idle_eviction: Duration::from_secs(120),
            ..SessionLimits::default()
        });
        let all = |_: &TopicKey, _: i32| true;
        let idle = sessions
            .plan(&request(0, 0, "idle", 2), false, all)
            .unwrap();
        let busy = sessions
            .plan(&request(0, 0, "busy", 2), false, all)
            .unwrap();
        for epoch in 1..=13 {
            tokio::time::advance(Duration::from_secs(10)).await;
            sessions
                .plan(&request(busy.session_id, epoch, "busy", 0), false, all)
                .unwrap();
        }
        assert_eq!((sessions.len(), sessions.partitions()), (1, 2));
        assert_eq!(
            sessions
                .plan(&request(idle.session_id, 1, "idle", 0), false, all)
                .unwrap_err(),
            ResponseError::FetchSessionIdNotFound
        );
    }
}
