//! Idempotent-producer rules: InitProducerId decisions, sequence checks of appended batches
//! (the last [`PRODUCER_BATCH_MEMORY`] batches per producer and partition), and the expiry of
//! producer memory.

use super::*;

/// What an InitProducerId call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProducerDecision {
    /// Hand out a new producer id at epoch 0.
    Fresh,
    /// Keep the id, with this bumped epoch.
    Bump(ProducerIdentity),
    /// A retry of the bump that produced this (current) identity, whose answer was lost: answer
    /// it again and change nothing (KIP-360).
    Again(ProducerIdentity),
}

/// The producer id whose current epoch [`producer_decision`] needs, if any.
pub fn bump_target(request: InitProducer) -> Option<i64> {
    request.existing.map(|(id, _)| id).filter(|id| *id >= 0)
}

/// Decides an InitProducerId call, given the stored epoch of [`bump_target`]'s producer (`None`
/// when there is no target or it is unknown).
pub fn producer_decision(
    request: InitProducer,
    current_epoch: Option<i16>,
) -> Result<ProducerDecision> {
    let Some((id, epoch)) = request.existing.filter(|(id, _)| *id >= 0) else {
        return Ok(ProducerDecision::Fresh);
    };
    match current_epoch {
        // Epoch exhausted: a fresh id, as Kafka does.
        Some(current) if current == epoch && epoch >= i16::MAX - 1 => Ok(ProducerDecision::Fresh),
        Some(current) if current == epoch => Ok(ProducerDecision::Bump(ProducerIdentity {
            producer_id: id,
            producer_epoch: epoch + 1,
        })),
        // The bump from `epoch` already happened: its answer was lost and the client retries.
        // Bumps are always by one, so this is exactly Kafka's "the request names the last
        // epoch" check.
        Some(current) if epoch >= 0 && i32::from(current) == i32::from(epoch) + 1 => {
            Ok(ProducerDecision::Again(ProducerIdentity {
                producer_id: id,
                producer_epoch: current,
            }))
        }
        // An unknown id (e.g. from before a topic deletion): start over.
        None => Ok(ProducerDecision::Fresh),
        Some(current) => Err(CoordinatorError::ProducerFenced(format!(
            "producer {id} has epoch {current}, the request names {epoch}"
        ))),
    }
}

/// Checks an idempotent batch against a producer's state on one partition.
/// `Ok(Some(offset))`: a duplicate of a batch appended at `offset`; `Ok(None)`: append it.
pub(super) fn check_sequence(
    state: &ProducerPartitionState,
    known: bool,
    info: ProducerBatchInfo,
    offset_count: i64,
) -> std::result::Result<Option<i64>, BatchRejection> {
    if known && info.producer_epoch < state.epoch {
        return Err(BatchRejection::ProducerFenced);
    }
    if !known || info.producer_epoch > state.epoch {
        // A new producer, or a new epoch: its sequence starts over.
        return if info.base_sequence == 0 {
            Ok(None)
        } else if known {
            Err(BatchRejection::OutOfOrderSequence)
        } else {
            Err(BatchRejection::UnknownProducerId)
        };
    }
    let last_sequence = last_sequence(info.base_sequence, offset_count);
    if let Some((_, _, offset)) = state
        .batches
        .iter()
        .find(|(first, last, _)| *first == info.base_sequence && *last == last_sequence)
    {
        return Ok(Some(*offset));
    }
    let expected = match state.batches.back() {
        Some((_, last, _)) => next_sequence(*last),
        None => 0,
    };
    if info.base_sequence == expected {
        Ok(None)
    } else {
        Err(BatchRejection::OutOfOrderSequence)
    }
}

pub(super) fn remember_batch(
    state: &mut ProducerPartitionState,
    info: ProducerBatchInfo,
    offset_count: i64,
    base_offset: i64,
) {
    if state.epoch != info.producer_epoch {
        state.epoch = info.producer_epoch;
        state.batches.clear();
    }
    state.batches.push_back((
        info.base_sequence,
        last_sequence(info.base_sequence, offset_count),
        base_offset,
    ));
    while state.batches.len() > PRODUCER_BATCH_MEMORY {
        state.batches.pop_front();
    }
}

/// Sequence numbers wrap from `i32::MAX` to 0.
fn last_sequence(base: i32, offset_count: i64) -> i32 {
    let last = i64::from(base) + offset_count - 1;
    (last % (i64::from(i32::MAX) + 1)) as i32
}

fn next_sequence(last: i32) -> i32 {
    if last == i32::MAX {
        0
    } else {
        last + 1
    }
}

/// Whether idempotent-producer memory last touched at `last_ms` is expired at `now_ms` under
/// Kafka's `producer.id.expiration.ms` (`expiration_ms`): `now - last >= expiration`, as Kafka's
/// `isProducerExpired`. A time of 0 or less is unknown (memory from before times were recorded)
/// and never expired: [`State::decide_expire_producers`] stamps it instead.
pub fn producer_expired(last_ms: i64, now_ms: i64, expiration_ms: i64) -> bool {
    last_ms > 0 && now_ms.saturating_sub(last_ms) >= expiration_ms
}

/// How many changes a [`Entry::ExpireProducers`] makes (0 for any other entry), and what it
/// reports.
pub fn expiry_changes(entry: &Entry) -> usize {
    match entry {
        Entry::ExpireProducers {
            states,
            ids,
            stamped_states,
            stamped_ids,
            ..
        } => states.len() + ids.len() + stamped_states.len() + stamped_ids.len(),
        _ => 0,
    }
}

/// What an expiry entry (or none) did, as [`crate::MetadataExpiry::expire_producers`] reports
/// it; `more` when the decision used its whole budget.
pub fn expiry_step(entry: Option<&Entry>, more: bool) -> ProducerExpiryStep {
    match entry {
        Some(Entry::ExpireProducers { states, ids, .. }) => ProducerExpiryStep {
            states_expired: states.len() as u64,
            ids_expired: ids.len() as u64,
            more,
        },
        _ => ProducerExpiryStep {
            more,
            ..ProducerExpiryStep::default()
        },
    }
}

impl State {
    /// Decides an InitProducerId: the identity to answer, and the entry to write (`None` when a
    /// retried bump is answered again and nothing changes).
    pub fn decide_producer(
        &self,
        request: InitProducer,
        at_ms: i64,
    ) -> Result<(ProducerIdentity, Option<Entry>)> {
        let current = bump_target(request).and_then(|id| self.producer_epochs.get(&id).copied());
        Ok(match producer_decision(request, current)? {
            ProducerDecision::Again(identity) => (identity, None),
            ProducerDecision::Bump(identity) => (
                identity,
                Some(Entry::Producer {
                    identity,
                    next_producer_id: self.next_producer_id,
                    at_ms,
                }),
            ),
            ProducerDecision::Fresh => {
                let identity = ProducerIdentity {
                    producer_id: self.next_producer_id,
                    producer_epoch: 0,
                };
                (
                    identity,
                    Some(Entry::Producer {
                        identity,
                        next_producer_id: self.next_producer_id + 1,
                        at_ms,
                    }),
                )
            }
        })
    }

    /// Decides one bounded step of producer expiry at `now_ms` (see
    /// [`crate::MetadataExpiry::expire_producers`]): per-partition states whose last append is
    /// expired, then producer ids with no per-partition state left whose last (re)initialisation
    /// is expired; states and ids without a time are stamped `now_ms`. At most `max` changes;
    /// `None` when there is nothing to change. One scan of all producer memory, in no particular
    /// order (the entry lists what it changes, so replaying it is deterministic).
    pub fn decide_expire_producers(
        &self,
        now_ms: i64,
        expiration_ms: i64,
        max: usize,
    ) -> Option<Entry> {
        let mut states = Vec::new();
        let mut stamped_states = Vec::new();
        let mut kept: std::collections::HashSet<i64> = std::collections::HashSet::new();
        let mut budget = max;
        for (tp, p) in &self.partitions {
            for (id, state) in &p.producers {
                if budget > 0 && state.last_append_ms <= 0 {
                    stamped_states.push((*tp, *id));
                    budget -= 1;
                } else if budget > 0
                    && producer_expired(state.last_append_ms, now_ms, expiration_ms)
                {
                    states.push((*tp, *id));
                    budget -= 1;
                    continue;
                }
                kept.insert(*id);
            }
        }
        let mut ids = Vec::new();
        let mut stamped_ids = Vec::new();
        for id in self.producer_epochs.keys() {
            if budget == 0 {
                break;
            }
            match self.producer_init_ms.get(id) {
                None => stamped_ids.push(*id),
                Some(at) if !kept.contains(id) && producer_expired(*at, now_ms, expiration_ms) => {
                    ids.push(*id)
                }
                Some(_) => continue,
            }
            budget -= 1;
        }
        let entry = Entry::ExpireProducers {
            at_ms: now_ms,
            states,
            ids,
            stamped_states,
            stamped_ids,
        };
        (expiry_changes(&entry) > 0).then_some(entry)
    }

    /// Keeps of an expiry `entry` decided earlier (against an older state, without blocking
    /// writers) what still holds now, checking only the items it lists: states still present
    /// and expired (an append meanwhile refreshed the others), ids still present and expired (a
    /// bump meanwhile refreshed the others), stamps still missing. An id that got a
    /// per-partition state meanwhile may still go: its next InitProducerId then hands out a fresh
    /// id instead of bumping the epoch, which clients accept, and its state expires on its own.
    pub fn recheck_expire_producers(&self, entry: Entry, expiration_ms: i64) -> Option<Entry> {
        let Entry::ExpireProducers {
            at_ms,
            states,
            ids,
            stamped_states,
            stamped_ids,
        } = entry
        else {
            return None;
        };
        let state = |(tp, id): &(TopicPartition, i64)| {
            self.partitions
                .get(tp)
                .and_then(|p| p.producers.get(id))
                .map(|s| s.last_append_ms)
        };
        let entry = Entry::ExpireProducers {
            at_ms,
            states: states
                .into_iter()
                .filter(|k| state(k).is_some_and(|t| producer_expired(t, at_ms, expiration_ms)))
                .collect(),
            ids: ids
                .into_iter()
                .filter(|id| {
                    self.producer_init_ms
                        .get(id)
                        .is_some_and(|t| producer_expired(*t, at_ms, expiration_ms))
                })
                .collect(),
            stamped_states: stamped_states
                .into_iter()
                .filter(|k| state(k).is_some_and(|t| t <= 0))
                .collect(),
            stamped_ids: stamped_ids
                .into_iter()
                .filter(|id| {
                    self.producer_epochs.contains_key(id) && !self.producer_init_ms.contains_key(id)
                })
                .collect(),
        };
        (expiry_changes(&entry) > 0).then_some(entry)
    }

    pub(super) fn apply_expire_producers(
        &mut self,
        at_ms: i64,
        states: &[(TopicPartition, i64)],
        ids: &[i64],
        stamped_states: &[(TopicPartition, i64)],
        stamped_ids: &[i64],
    ) {
        for (tp, id) in states {
            if let Some(p) = self.partitions.get_mut(tp) {
                p.producers.remove(id);
            }
        }
        for id in ids {
            self.producer_epochs.remove(id);
            self.producer_init_ms.remove(id);
        }
        for (tp, id) in stamped_states {
            if let Some(state) = self
                .partitions
                .get_mut(tp)
                .and_then(|p| p.producers.get_mut(id))
            {
                if state.last_append_ms <= 0 {
                    state.last_append_ms = at_ms;
                }
            }
        }
        for id in stamped_ids {
            if self.producer_epochs.contains_key(id) {
                self.producer_init_ms.entry(*id).or_insert(at_ms);
            }
        }
    }
}
