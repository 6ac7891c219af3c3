//! Delivering one validated batch: stamp, route, hand over, await, retry elsewhere, answer.
//!
//! [`Dispatcher::start`] does the ordering-relevant work synchronously: it reserves the batch's
//! HLC stamps and hands every message of the first round to its cluster's producer, in request
//! order, before it returns. Batches started one after another (the messages of one request, the
//! batches of one stream) therefore reach each cluster in that order, and the producers keep it
//! per partition. The returned future awaits the outcomes and runs the retry rounds.
//!
//! Each round: admit the group's clusters through their breakers (one admission per cluster per
//! round); pick a cluster for every pending message among the admitted ones it has not tried
//! (rendezvous hashing on the key, or a weighted pick); hand the messages over; await them until
//! the deadline. Messages that failed in a way another cluster may fix go to the next round, up
//! to `max_attempts` clusters per message and never past the deadline. A message keeps its HLC
//! stamp across attempts.
//!
//! Invariants:
//! - each admission is recorded with the verdict of that cluster's answers in the round (see
//!   [`crate::backend::Deliveries`]): when its last record is answered, or as a failure if
//!   records are still unanswered at the attempt timeout, whether or not the request is still
//!   waiting. A request dropped mid-way (cancelled, timed out) therefore neither leaks a
//!   half-open admission nor hides a hung cluster from its breaker;
//! - the request's in-flight bytes (`hold`) are held until every cluster it handed a record to
//!   has answered it (or dropped it), not only until the caller got its answer;
//! - a failure answer never hides that a cluster may have stored the message: if any attempt's
//!   outcome is unknown, the failure is `Deadline`, a `Timeout`, or [`FailureKind::OutcomeUnknown`];
//! - a full client queue (`QueueFull`) is answered to the caller as backpressure: the message is
//!   not moved to another cluster (its key would be split across healthy clusters) and the
//!   cluster's breaker does not count it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use smallvec::SmallVec;

use crate::backend::{Deliveries, Delivery, ErrorKind, ProduceError, Record, Settle, Stored};
use crate::cluster::Cluster;
use crate::gateway::Snapshot;
use crate::hlc::Hlc;
use crate::metrics::{ErrorLabels, Metrics};
use crate::pb;
use crate::routing::{mix64, rendezvous, weighted_pick, Group, Member};

/// Header carrying the hybrid logical clock stamp (decimal ASCII).
pub const HLC_HEADER: &str = "fjord-hlc";
/// Header carrying the id of the gateway that stored the message.
pub const GATEWAY_HEADER: &str = "fjord-gateway";

/// A header as handed to a producer: key and (nullable) value.
type RecordHeader<'a> = (&'a str, Option<&'a [u8]>);

/// Why a message was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No cluster of the group could be tried (breakers open, zero weights).
    NoHealthyCluster,
    /// The deadline passed while a cluster still had the message (outcome unknown).
    Deadline,
    /// The last cluster tried failed like this.
    Backend(ErrorKind),
    /// An attempt's outcome is unknown (a cluster timed out or lost the message in flight, so
    /// it may have stored it), and no later attempt stored it.
    OutcomeUnknown,
}

/// What happened to one message.
#[derive(Debug, Clone, PartialEq)]
pub enum MessageOutcome {
    Delivered {
        cluster: Arc<str>,
        stored: Stored,
        attempts: u32,
        hlc: u64,
    },
    Failed {
        kind: FailureKind,
        detail: String,
        tried: Vec<Arc<str>>,
    },
}

/// A batch that passed validation.
#[derive(Debug)]
pub struct Batch {
    pub topic: String,
    pub messages: Vec<pb::Message>,
}

/// Shared by every request of a gateway.
#[derive(Debug)]
pub struct Dispatcher {
    hlc: Hlc,
    gateway_id: String,
    metrics: Arc<Metrics>,
    draws: AtomicU64,
}

#[derive(Debug, Default)]
struct MessageState {
    /// Inline up to the default `max_attempts`: no allocation per message on the hot path.
    tried: SmallVec<[Arc<str>; 3]>,
    last_error: Option<ProduceError>,
    /// The first cluster that may have stored the message without saying so.
    unknown_on: Option<Arc<str>>,
    outcome: Option<MessageOutcome>,
}

impl MessageState {
    /// The message's final failure; says "outcome unknown" if any attempt's outcome was.
    fn failed(&self, kind: FailureKind, detail: String) -> MessageOutcome {
        let tried = self.tried.to_vec();
        let known_kind = match kind {
            FailureKind::Deadline | FailureKind::Backend(ErrorKind::Timeout) => None,
            FailureKind::OutcomeUnknown => None,
            other => Some(other),
        };
        match (&self.unknown_on, known_kind) {
            (Some(cluster), Some(_)) => MessageOutcome::Failed {
                kind: FailureKind::OutcomeUnknown,
                detail: format!(
                    "{detail}; the outcome on cluster {cluster} is unknown: it may have stored \
                     the message"
                ),
                tried,
            },
            _ => MessageOutcome::Failed {
                kind,
                detail,
                tried,
            },
        }
    }
}

/// An admitted cluster of a round.
struct Admitted<'a> {
    member: &'a Member,
    cluster: Arc<Cluster>,
}

/// What a request holds while its records are with the clusters (its in-flight bytes).
pub type Hold = Arc<dyn std::any::Any + Send + Sync>;

impl Dispatcher {
    pub fn new(hlc: Hlc, gateway_id: String, metrics: Arc<Metrics>) -> Self {
        Self {
            hlc,
            gateway_id,
            metrics,
            draws: AtomicU64::new(0),
        }
    }

    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    /// Hands the batch's first round over now and returns the future of its outcomes (one per
    /// message, in order). See the module documentation.
    pub fn start(
        self: &Arc<Self>,
        snapshot: Arc<Snapshot>,
        group: Arc<Group>,
        batch: Batch,
        deadline: Instant,
        hold: Hold,
    ) -> impl Future<Output = Vec<MessageOutcome>> + Send + 'static {
        let n = batch.messages.len();
        let first_hlc = self.hlc.reserve(n as u64);
        let mut states: Vec<MessageState> = (0..n).map(|_| MessageState::default()).collect();
        let pending: Vec<usize> = (0..n).collect();
        let first = self.send_round(
            &snapshot,
            &group,
            &batch,
            first_hlc,
            &pending,
            &mut states,
            &hold,
        );
        let this = self.clone();
        async move {
            let mut round = first;
            loop {
                let retry = this
                    .await_round(round, &batch, first_hlc, deadline, &snapshot, &mut states)
                    .await;
                if retry.is_empty() {
                    break;
                }
                round = this.send_round(
                    &snapshot,
                    &group,
                    &batch,
                    first_hlc,
                    &retry,
                    &mut states,
                    &hold,
                );
            }
            drop(hold);
            states
                .into_iter()
                .map(|mut s| match s.outcome.take() {
                    Some(outcome) => outcome,
                    None => s.failed(FailureKind::NoHealthyCluster, "no cluster was tried".into()),
                })
                .collect()
        }
    }

    /// Picks a cluster for each message of `indices` and hands it over.
    #[allow(clippy::too_many_arguments)]
    fn send_round(
        &self,
        snapshot: &Snapshot,
        group: &Group,
        batch: &Batch,
        first_hlc: u64,
        indices: &[usize],
        states: &mut [MessageState],
        hold: &Hold,
    ) -> Round {
        let started = Instant::now();
        let expires = started + snapshot.delivery.attempt_timeout();
        let mut sinks: Vec<Box<dyn Settle>> = Vec::with_capacity(group.members.len());
        let admitted: Vec<Admitted<'_>> = group
            .members
            .iter()
            .filter(|m| m.weight > 0.0)
            .filter_map(|member| {
                let cluster = snapshot.clusters.get(&member.cluster)?.clone();
                let admission = cluster.health.try_admit(expires)?;
                sinks.push(Box::new(admission));
                Some(Admitted { member, cluster })
            })
            .collect();
        let mut used = vec![false; admitted.len()];
        // Per report slot of `deliveries`: (message index, admitted cluster).
        let mut placement = Vec::with_capacity(indices.len());
        let deliveries = Deliveries::new(indices.len(), sinks, Some(hold.clone()));
        let mut hlc = itoa::Buffer::new();
        let mut candidates: Vec<&Member> = Vec::with_capacity(admitted.len());
        for &i in indices {
            let message = &batch.messages[i];
            let state = &mut states[i];
            candidates.clear();
            candidates.extend(
                admitted
                    .iter()
                    .filter(|a| !state.tried.contains(&a.member.cluster))
                    .map(|a| a.member),
            );
            let chosen = match &message.key {
                Some(key) => rendezvous(key, &candidates),
                None => weighted_pick(
                    mix64(self.draws.fetch_add(1, Ordering::Relaxed)),
                    &candidates,
                ),
            };
            let Some(chosen) = chosen else {
                state.outcome = Some(no_cluster_left(state, cluster_problems(snapshot, group)));
                continue;
            };
            let Some(slot) = admitted
                .iter()
                .position(|a| a.member.cluster == chosen.cluster)
            else {
                continue; // chosen comes from `admitted`
            };
            let cluster = &admitted[slot].cluster;
            used[slot] = true;
            state.tried.push(cluster.name.clone());
            let hlc = hlc.format(first_hlc + i as u64);
            // Inline for up to two caller headers: no allocation per message.
            let mut headers: SmallVec<[RecordHeader<'_>; 4]> =
                SmallVec::with_capacity(message.headers.len() + 2);
            headers.extend(
                message
                    .headers
                    .iter()
                    .map(|h| (h.key.as_str(), h.value.as_deref())),
            );
            headers.push((HLC_HEADER, Some(hlc.as_bytes())));
            headers.push((GATEWAY_HEADER, Some(self.gateway_id.as_bytes())));
            let report = deliveries.report(placement.len(), slot);
            placement.push((i, slot));
            cluster.producer.send(
                Record {
                    topic: &batch.topic,
                    key: message.key.as_deref(),
                    value: &message.value,
                    headers: &headers,
                    timestamp_ms: message.timestamp_ms,
                    partition: message.partition,
                },
                report,
            );
        }
        // Clusters without records are told `Nothing` here: their admissions go back now.
        deliveries.seal();
        let clusters = admitted
            .into_iter()
            .zip(used)
            .map(|(a, used)| used.then_some(a.cluster))
            .collect();
        Round {
            clusters,
            placement,
            deliveries,
            started,
            expires,
        }
    }

    /// Awaits a round; records outcomes; returns the messages to try again elsewhere.
    async fn await_round(
        &self,
        round: Round,
        batch: &Batch,
        first_hlc: u64,
        deadline: Instant,
        snapshot: &Snapshot,
        states: &mut [MessageState],
    ) -> Vec<usize> {
        round
            .deliveries
            .wait(tokio::time::Instant::from_std(deadline))
            .await;
        let results = round.deliveries.take();
        let started = round.started;
        // Looked up once per round, not per message.
        let histograms: Vec<_> = round
            .clusters
            .iter()
            .map(|c| {
                c.as_ref().map(|cluster| {
                    self.metrics
                        .produce_seconds
                        .get_or_create(&cluster.labels)
                        .clone()
                })
            })
            .collect();
        // Per admitted cluster: (messages, bytes) stored, counted once per round.
        let mut delivered: Vec<(u64, u64)> = vec![(0, 0); round.clusters.len()];
        let mut retry = Vec::new();
        let max_attempts = snapshot.delivery.max_attempts as usize;
        for (&(index, slot), answer) in round.placement.iter().zip(results) {
            let Some(cluster) = &round.clusters[slot] else {
                continue;
            };
            let state = &mut states[index];
            // Unanswered by the deadline: `None`.
            let (result, latency) = match answer {
                Some(Delivery { result, at }) => {
                    (Some(result), at.saturating_duration_since(started))
                }
                None => (None, started.elapsed()),
            };
            if let Some(h) = &histograms[slot] {
                h.observe(latency.as_secs_f64());
            }
            match result {
                Some(Ok(stored)) => {
                    delivered[slot].0 += 1;
                    delivered[slot].1 += message_bytes(&batch.messages[index]) as u64;
                    state.outcome = Some(MessageOutcome::Delivered {
                        cluster: cluster.name.clone(),
                        stored,
                        attempts: state.tried.len() as u32,
                        hlc: first_hlc + index as u64,
                    });
                }
                Some(Err(error)) => {
                    if error.maybe_stored && state.unknown_on.is_none() {
                        state.unknown_on = Some(cluster.name.clone());
                    }
                    let again = error.kind.retry_elsewhere()
                        && state.tried.len() < max_attempts
                        && Instant::now() < deadline;
                    tracing::debug!(cluster = %cluster.name, error = %error, again,
                        "produce attempt failed");
                    if again {
                        self.metrics.retries.get_or_create(&cluster.labels).inc();
                        retry.push(index);
                        state.last_error = Some(error);
                    } else {
                        let detail = format!("cluster {}: {}", cluster.name, error.detail);
                        state.outcome =
                            Some(state.failed(FailureKind::Backend(error.kind), detail));
                    }
                }
                None => {
                    state.outcome = Some(state.failed(
                        FailureKind::Deadline,
                        format!(
                            "the deadline passed while cluster {} had the message; it may \
                             still be stored there",
                            cluster.name
                        ),
                    ));
                }
            }
        }
        for (slot, cluster) in round.clusters.iter().enumerate() {
            let (Some(cluster), (messages, bytes)) = (cluster, delivered[slot]) else {
                continue;
            };
            if messages > 0 {
                self.metrics
                    .messages_delivered
                    .get_or_create(&cluster.labels)
                    .inc_by(messages);
                self.metrics
                    .bytes_delivered
                    .get_or_create(&cluster.labels)
                    .inc_by(bytes);
            }
        }
        // Messages with no cluster left end here, with what the last cluster said.
        retry.retain(|&i| {
            if Instant::now() < deadline {
                return true;
            }
            let state = &mut states[i];
            state.outcome = Some(no_cluster_left(state, None));
            false
        });
        retry
    }
}

/// A round in flight. Dropped (awaited to the end, or with its request), it leaves its clusters'
/// verdicts to their answers, and expires them at the attempt timeout.
struct Round {
    /// Indexed like the round's admitted clusters; `None` for those not used.
    clusters: Vec<Option<Arc<Cluster>>>,
    /// Per slot of `deliveries`: (message index, index into `clusters`).
    placement: Vec<(usize, usize)>,
    deliveries: Arc<Deliveries>,
    started: Instant,
    /// The attempt timeout of the round's records.
    expires: Instant,
}

impl Drop for Round {
    fn drop(&mut self) {
        self.deliveries.expire_at(self.expires);
    }
}

/// What the clients of `group`'s clusters last reported as keeping them from the cluster
/// (failed authentication, failed TLS), e.g. `cluster b: SASL authentication failed: ...`.
fn cluster_problems(snapshot: &Snapshot, group: &Group) -> Option<String> {
    let problems: Vec<String> = group
        .members
        .iter()
        .filter_map(|m| snapshot.clusters.get(&m.cluster))
        .filter_map(|c| Some(format!("cluster {}: {}", c.name, c.health.problem()?)))
        .collect();
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// The outcome of a message that has no cluster left to try; `problems`: see
/// [`cluster_problems`] (named when no cluster was tried).
fn no_cluster_left(state: &MessageState, problems: Option<String>) -> MessageOutcome {
    match &state.last_error {
        Some(e) => state.failed(
            FailureKind::Backend(e.kind),
            format!(
                "{} (no other healthy cluster to try)",
                state
                    .tried
                    .last()
                    .map(|c| format!("cluster {c}: {}", e.detail))
                    .unwrap_or_else(|| e.detail.clone())
            ),
        ),
        None => state.failed(
            FailureKind::NoHealthyCluster,
            match problems {
                Some(p) => format!(
                    "no healthy cluster with a weight above zero in the topic's group ({p})"
                ),
                None => "no healthy cluster with a weight above zero in the topic's group".into(),
            },
        ),
    }
}

/// Bytes of a message's key, value and headers (what the size limits count).
pub fn message_bytes(m: &pb::Message) -> usize {
    m.key.as_ref().map_or(0, |k| k.len())
        + m.value.len()
        + m.headers
            .iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, |v| v.len()))
            .sum::<usize>()
}

/// Counts per-message failures by code (one place, so every path is counted once).
pub fn count_failures(metrics: &Metrics, outcomes: &[MessageOutcome]) {
    let mut by_code: BTreeMap<&'static str, u64> = BTreeMap::new();
    for o in outcomes {
        if let MessageOutcome::Failed { kind, .. } = o {
            *by_code
                .entry(crate::status::failure_label(*kind))
                .or_default() += 1;
        }
    }
    for (code, n) in by_code {
        metrics
            .message_errors
            .get_or_create(&ErrorLabels { code })
            .inc_by(n);
    }
}
