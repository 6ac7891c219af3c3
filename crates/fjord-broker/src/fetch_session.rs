//! Fetch sessions (KIP-227): the broker remembers which partitions a consumer fetches, so
//! incremental fetch requests name only what changed and responses carry only partitions with
//! news.
//!
//! - `session_id = 0, epoch = -1`: a full fetch without a session.
//! - `session_id = 0, epoch = 0`: a full fetch that opens a session (its id is in the response;
//!   0 when the cache is full, and the client carries on without one).
//! - `session_id = S, epoch = N > 0`: an incremental fetch of session S; N must be the epoch the
//!   session expects (else INVALID_FETCH_SESSION_EPOCH). Partitions in the request are added or
//!   updated, `forgotten_topics_data` removed; the fetch covers every partition of the session.
//!   The response lists only partitions with records, an error, or a changed high watermark or
//!   log start offset.
//! - `session_id = S, epoch = -1 or 0`: closes S (then as above).
//!
//! An unknown session id is FETCH_SESSION_ID_NOT_FOUND: after a broker restart every client
//! starts a new session. Sessions live in this broker's memory only; the cache is bounded and
//! evicts the least recently used session.

use std::collections::HashMap;
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

/// The broker's fetch sessions.
pub struct FetchSessions {
    inner: Mutex<Inner>,
    capacity: usize,
}

struct Inner {
    sessions: HashMap<i32, Session>,
    next_id: i32,
}

fn key(topic: &TopicKey, partition: i32) -> (TopicKey, i32) {
    (topic.clone(), partition)
}

impl FetchSessions {
    /// A cache of at most `capacity` sessions.
    pub fn new(capacity: usize) -> Self {
        FetchSessions {
            inner: Mutex::new(Inner {
                sessions: HashMap::new(),
                next_id: 1,
            }),
            capacity,
        }
    }

    /// Works out what `request` covers and updates the session it names.
    pub fn plan(&self, request: &FetchRequest, by_id: bool) -> Result<Plan, ResponseError> {
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
        let mut inner = self.inner.lock();
        let (id, epoch) = (request.session_id, request.session_epoch);
        if id != 0 && epoch > 0 {
            let session = inner
                .sessions
                .get_mut(&id)
                .ok_or(ResponseError::FetchSessionIdNotFound)?;
            if session.next_epoch != epoch {
                return Err(ResponseError::InvalidFetchSessionEpoch);
            }
            session.next_epoch = if epoch == i32::MAX { 1 } else { epoch + 1 };
            session.last_used = Instant::now();
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
            for w in requested {
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
            let wanted = session
                .partitions
                .iter()
                .map(|((topic, partition), c)| Wanted {
                    topic: topic.clone(),
                    partition: *partition,
                    fetch_offset: c.fetch_offset,
                    max_bytes: c.max_bytes,
                })
                .collect();
            return Ok(Plan {
                session_id: id,
                incremental: true,
                wanted,
            });
        }
        if id != 0 {
            inner.sessions.remove(&id);
        }
        let session_id = if epoch == 0 {
            self.open(&mut inner, &requested)
        } else {
            0
        };
        Ok(Plan {
            session_id,
            incremental: false,
            wanted: requested,
        })
    }

    fn open(&self, inner: &mut Inner, requested: &[Wanted]) -> i32 {
        if self.capacity == 0 {
            return 0;
        }
        if inner.sessions.len() >= self.capacity {
            let oldest = inner
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                inner.sessions.remove(&id);
            }
        }
        let id = inner.next_id;
        inner.next_id = if id == i32::MAX { 1 } else { id + 1 };
        let partitions = requested
            .iter()
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
        inner.sessions.insert(
            id,
            Session {
                next_epoch: 1,
                partitions,
                last_used: Instant::now(),
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

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
