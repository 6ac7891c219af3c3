//! Fetch: read committed batches through the index and the read cache, long-polling when empty.
//!
//! Fetch sessions (KIP-227) are kept by [`crate::fetch_session`]; this module reads.
//!
//! Zone affinity (KIP-392): when a Fetch (v11+) comes from a client in a zone that has live
//! brokers (its `client.rack`, else a zone hint in its `client.id`), partitions served in that
//! zone by another broker are answered at once with no records and that broker as the preferred
//! read replica, so that each object is read from object storage about once per zone. Any broker
//! can serve any partition, so a fetch is never refused for being sent to the "wrong" broker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fjord_coordinator::{IndexRow, PartitionOffsets, TopicMeta, TopicPartition};
use fjord_storage::batch::{materialize, peek_header};
use futures::StreamExt;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::ResponseError;
use tokio::time::Instant;

use super::s;
use crate::cluster::{zone_hint, ClusterView};
use crate::dispatch::Client;
use crate::error::{coordinator_code, read_code};
use crate::fetch_session::{Sent, TopicKey, Wanted};
use crate::memory::Reservation;
use crate::Broker;

/// Longest a fetch long-polls, whatever it asks for: a response slot of the connection is held
/// meanwhile, and clients treat an early empty answer like any other.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Object reads one partition of a fetch has in flight at once.
const PARALLEL_READS: usize = 16;

/// Partitions one fetch reads at once.
const PARALLEL_PARTITIONS: usize = 8;

/// Answers a Fetch request. The reservation covers the response's record bytes in the broker's
/// fetch memory budget; it must live until the response has been written.
pub async fn handle(
    broker: Arc<Broker>,
    request: FetchRequest,
    version: i16,
    client: Client,
) -> (FetchResponse, Reservation) {
    let by_id = version >= 13;
    let view = broker.view();
    let zone = if version >= 11 && !request.rack_id.is_empty() {
        Some(request.rack_id.as_str())
    } else {
        zone_hint(&client.client_id)
    };
    // Only clients that understand preferred read replicas (v11+) are redirected.
    let redirect = Redirect {
        view: &view,
        zone: zone.filter(|z| version >= 11 && view.has_zone(z)),
    };
    // Resolve each topic once; a topic deleted meanwhile shows up as an error next time. The
    // request's topics first, so that only partitions that exist enter the session.
    let named = request.topics.iter().map(|t| {
        if by_id {
            TopicKey::Id(t.topic_id)
        } else {
            TopicKey::Name(t.topic.0.as_str().to_string())
        }
    });
    let mut topics = resolve_all(&broker, named.collect()).await;
    authorize_reads(&broker, &client, &mut topics);
    let exists = |topic: &TopicKey, partition: i32| matches!(topics.get(topic), Some(Ok(meta)) if (0..meta.partitions).contains(&partition));
    let plan = match broker.fetch_sessions.plan(&request, by_id, exists) {
        Ok(plan) => plan,
        Err(code) => {
            let response = FetchResponse::default()
                .with_error_code(code.code())
                .with_session_id(0);
            return (response, Reservation::none());
        }
    };
    // Then the session's other topics.
    let others: Vec<TopicKey> = plan
        .wanted
        .iter()
        .filter(|w| !topics.contains_key(&w.topic))
        .map(|w| w.topic.clone())
        .collect();
    if !others.is_empty() {
        let mut more = resolve_all(&broker, others).await;
        authorize_reads(&broker, &client, &mut more);
        topics.extend(more);
    }
    let max_wait = Duration::from_millis(request.max_wait_ms.max(0) as u64).min(MAX_WAIT);
    let deadline = Instant::now() + max_wait;
    let min_bytes = request.min_bytes.max(0) as usize;
    let max_bytes = response_limit(request.max_bytes, broker.settings.fetch_max_bytes);
    let ctx = ReadCtx {
        broker: &broker,
        wanted: &plan.wanted,
        topics: &topics,
        max_bytes,
        redirect: &redirect,
    };
    let mut commits = broker.commits.clone();
    let read = loop {
        // Mark the current commit count as seen before reading, so a commit that lands during
        // the read wakes the wait below.
        let generation = *commits.borrow_and_update();
        let read = read_all(&ctx, generation).await;
        if read.bytes >= min_bytes || read.urgent || Instant::now() >= deadline {
            break read;
        }
        drop(read);
        let woke = tokio::time::timeout_at(deadline, commits.changed()).await;
        if !matches!(woke, Ok(Ok(()))) {
            // Deadline reached (or the writer stopped): answer with what there is.
            let generation = *commits.borrow_and_update();
            break read_all(&ctx, generation).await;
        }
    };
    let Read {
        data, reservation, ..
    } = read;
    let sent: Vec<(Sent, bool)> = data
        .iter()
        .map(|d| {
            let news = d.error_code != 0
                || d.preferred_read_replica.0 >= 0
                || d.records.as_ref().is_some_and(|r| !r.is_empty());
            (
                Sent {
                    high_watermark: d.high_watermark,
                    log_start: d.log_start_offset,
                },
                news,
            )
        })
        .collect();
    let include = broker.fetch_sessions.record(&plan, &sent);
    let mut responses: Vec<FetchableTopicResponse> = Vec::new();
    for ((w, d), include) in plan.wanted.iter().zip(data).zip(include) {
        if !include {
            continue;
        }
        let same_topic = responses.last().is_some_and(|r| match &w.topic {
            TopicKey::Id(id) => r.topic_id == *id,
            TopicKey::Name(name) => r.topic.0.as_str() == name,
        });
        if !same_topic {
            let mut r = FetchableTopicResponse::default();
            match &w.topic {
                TopicKey::Id(id) => r.topic_id = *id,
                TopicKey::Name(name) => r.topic = TopicName(s(name.as_str())),
            }
            responses.push(r);
        }
        if let Some(r) = responses.last_mut() {
            r.partitions.push(d);
        }
    }
    let response = FetchResponse::default()
        .with_session_id(plan.session_id)
        .with_responses(responses);
    (response, reservation)
}

/// The most record bytes a response may carry: what the client asks for, never more than the
/// broker's `fetch.max.bytes` (a client's 0 or negative limit means the broker's). Only the first
/// batch of the first non-empty partition may go beyond it, so that no consumer gets stuck
/// behind a batch larger than its limits (as in Kafka).
fn response_limit(requested: i32, broker_max: i32) -> usize {
    let broker_max = usize::try_from(broker_max).unwrap_or(0);
    match usize::try_from(requested) {
        Ok(requested) if requested > 0 => requested.min(broker_max),
        _ => broker_max,
    }
}

/// Distinct topics a fetch resolves one by one; beyond this, the topic list is read once (a
/// request naming many made-up topics costs one coordinator query, not one per name).
const RESOLVE_ONE_BY_ONE: usize = 16;

/// Each distinct topic of `keys`, resolved.
/// Topics the client may not READ answer TOPIC_AUTHORIZATION_FAILED (and enter no session).
fn authorize_reads(
    broker: &Broker,
    client: &Client,
    topics: &mut HashMap<TopicKey, Result<TopicMeta, ResponseError>>,
) {
    for meta in topics.values_mut() {
        if let Ok(m) = meta {
            if !broker.authorizer.topic(
                &client.session,
                fjord_coordinator::security::AclOperation::Read,
                &m.name,
            ) {
                *meta = Err(ResponseError::TopicAuthorizationFailed);
            }
        }
    }
}

async fn resolve_all(
    broker: &Broker,
    keys: Vec<TopicKey>,
) -> HashMap<TopicKey, Result<TopicMeta, ResponseError>> {
    let keys: std::collections::HashSet<TopicKey> = keys.into_iter().collect();
    let mut out = HashMap::with_capacity(keys.len());
    if keys.len() <= RESOLVE_ONE_BY_ONE {
        for key in keys {
            let meta = resolve(broker, &key).await;
            out.insert(key, meta);
        }
        return out;
    }
    let all = match broker.coordinator.list_topics().await {
        Ok(all) => all,
        Err(e) => {
            let code = coordinator_code(&e);
            return keys.into_iter().map(|k| (k, Err(code))).collect();
        }
    };
    let by_name: HashMap<&str, &TopicMeta> = all.iter().map(|t| (t.name.as_str(), t)).collect();
    let by_id: HashMap<uuid::Uuid, &TopicMeta> = all.iter().map(|t| (t.id, t)).collect();
    for key in keys {
        let meta = match &key {
            TopicKey::Id(id) => by_id
                .get(id)
                .map(|m| (*m).clone())
                .ok_or(ResponseError::UnknownTopicId),
            TopicKey::Name(name) => by_name
                .get(name.as_str())
                .map(|m| (*m).clone())
                .ok_or(ResponseError::UnknownTopicOrPartition),
        };
        out.insert(key, meta);
    }
    out
}

async fn resolve(broker: &Broker, topic: &TopicKey) -> Result<TopicMeta, ResponseError> {
    let found = match topic {
        TopicKey::Id(id) => broker.coordinator.topic_by_id(*id).await,
        TopicKey::Name(name) => broker.coordinator.topic(name).await,
    };
    match found {
        Ok(Some(meta)) => Ok(meta),
        Ok(None) if matches!(topic, TopicKey::Id(_)) => Err(ResponseError::UnknownTopicId),
        Ok(None) => Err(ResponseError::UnknownTopicOrPartition),
        Err(e) => Err(coordinator_code(&e)),
    }
}

/// Which partitions a client is sent elsewhere for.
struct Redirect<'a> {
    view: &'a ClusterView,
    /// The client's zone, when it has live brokers and the client understands redirects.
    zone: Option<&'a str>,
}

impl Redirect<'_> {
    /// The broker this client should fetch `tp` from, if not this one.
    fn target(&self, tp: TopicPartition) -> Option<i32> {
        let owner = self
            .view
            .partition_owner(tp.topic_id, tp.partition, Some(self.zone?));
        (owner != self.view.self_id()).then_some(owner)
    }
}

/// What one read of a fetch's partitions needs.
struct ReadCtx<'a> {
    broker: &'a Broker,
    wanted: &'a [Wanted],
    topics: &'a HashMap<TopicKey, Result<TopicMeta, ResponseError>>,
    /// The response's limit ([`response_limit`]).
    max_bytes: usize,
    redirect: &'a Redirect<'a>,
}

impl ReadCtx<'_> {
    /// A partition's own limit, within the response's.
    fn limit(&self, w: &Wanted) -> usize {
        usize::try_from(w.max_bytes)
            .unwrap_or(0)
            .min(self.max_bytes)
    }
}

/// One read of every wanted partition.
struct Read {
    /// One entry per wanted partition, in order, with its records.
    data: Vec<PartitionData>,
    /// Record bytes in `data`.
    bytes: usize,
    /// Whether some partition needs an answer at once (an error or a redirect).
    urgent: bool,
    /// The part of the fetch memory budget holding `data`'s records.
    reservation: Reservation,
}

/// A partition after looking up what to read.
enum Planned {
    /// Answered without reading (an error, a redirect, nothing new).
    Done(PartitionData, bool),
    /// These index rows hold its next records.
    Rows {
        data: PartitionData,
        fetch_offset: i64,
        rows: Vec<IndexRow>,
    },
}

/// Reads every wanted partition once, in three steps, so that memory is reserved before it is
/// allocated and never while any is held:
/// 1. *plan*, concurrently (up to [`PARALLEL_PARTITIONS`]): offsets and the index rows holding
///    each partition's next records, up to its limit;
/// 2. *reserve* in the broker's fetch memory budget the bytes of the rows that will be read,
///    sharing the response's limit in partition order (the first partition with records gets at
///    least one batch);
/// 3. *read* those rows, concurrently, and cut the result to Kafka's rule: only the first batch
///    of the first non-empty partition may go beyond the response's or its partition's limit;
///    after it, only whole batches that fit.
async fn read_all(ctx: &ReadCtx<'_>, generation: u64) -> Read {
    // (Streams over indices: a closure taking a reference would make the future not `Send`.)
    let planned: Vec<Planned> = futures::stream::iter(0..ctx.wanted.len())
        .map(|k| plan_one(ctx, &ctx.wanted[k], generation))
        .buffered(PARALLEL_PARTITIONS)
        .collect()
        .await;

    // Which rows to read for each partition, and how many bytes that takes.
    let mut left = ctx.max_bytes;
    let mut first = true;
    let mut need = 0usize;
    let mut budgets = Vec::with_capacity(planned.len());
    for (w, p) in ctx.wanted.iter().zip(&planned) {
        let Planned::Rows { rows, .. } = p else {
            budgets.push((0, 0));
            continue;
        };
        let mut budget = ctx.limit(w).min(left);
        if first {
            budget = budget.max(1);
        }
        let mut take = 0;
        let mut bytes = 0usize;
        for row in rows {
            if bytes >= budget {
                break;
            }
            bytes = bytes.saturating_add(usize::try_from(row.length).unwrap_or(usize::MAX));
            take += 1;
        }
        if take > 0 {
            first = false;
            need = need.saturating_add(bytes);
            left = left.saturating_sub(bytes.min(budget));
        }
        budgets.push((budget, take));
    }
    let mut reservation = ctx.broker.fetch_memory.reserve(need).await;

    let results: Vec<(PartitionData, bool)> =
        futures::stream::iter(planned.into_iter().zip(budgets))
            .map(|(p, (budget, take))| finish_one(ctx.broker, p, budget, take))
            .buffered(PARALLEL_PARTITIONS)
            .collect()
            .await;

    let mut total = 0usize;
    let mut urgent = false;
    let mut data = Vec::with_capacity(results.len());
    for (w, (mut d, u)) in ctx.wanted.iter().zip(results) {
        urgent |= u;
        if let Some(records) = &mut d.records {
            if total > 0 {
                let turn = ctx.limit(w).min(ctx.max_bytes.saturating_sub(total));
                if records.len() > turn {
                    *records = whole_batches_within(records, turn);
                }
            }
            total += records.len();
        }
        data.push(d);
    }
    reservation.shrink_to(total);
    Read {
        data,
        bytes: total,
        urgent,
        reservation,
    }
}

/// Reads the first `take` rows of a planned partition within `budget`; its entry, and whether
/// it needs an answer at once (an error).
async fn finish_one(
    broker: &Broker,
    planned: Planned,
    budget: usize,
    take: usize,
) -> (PartitionData, bool) {
    match planned {
        Planned::Done(data, urgent) => (data, urgent),
        Planned::Rows {
            mut data,
            fetch_offset,
            rows,
        } => {
            let rows = rows.get(..take).unwrap_or(&rows);
            match read_rows(broker, rows, fetch_offset, budget).await {
                Ok(records) => {
                    data.records = Some(records);
                    (data, false)
                }
                Err(code) => {
                    data.error_code = code.code();
                    (data, true)
                }
            }
        }
    }
}

/// The leading whole batches of `records` that fit in `max_bytes` (possibly none).
fn whole_batches_within(records: &Bytes, max_bytes: usize) -> Bytes {
    let mut end = 0;
    while end < records.len() {
        match peek_header(&records[end..]) {
            Ok(header) if end + header.size <= max_bytes => end += header.size,
            _ => break,
        }
    }
    records.slice(..end)
}

/// Looks up what to read for one wanted partition.
async fn plan_one(ctx: &ReadCtx<'_>, w: &Wanted, generation: u64) -> Planned {
    let broker = ctx.broker;
    let mut data = PartitionData::default()
        .with_partition_index(w.partition)
        .with_high_watermark(-1)
        .with_last_stable_offset(-1)
        .with_log_start_offset(-1)
        .with_preferred_read_replica(BrokerId(-1));
    let meta = match ctx.topics.get(&w.topic) {
        Some(Ok(meta)) if w.partition >= 0 && w.partition < meta.partitions => meta,
        Some(Err(code)) => {
            data.error_code = code.code();
            return Planned::Done(data, true);
        }
        _ => {
            data.error_code = ResponseError::UnknownTopicOrPartition.code();
            return Planned::Done(data, true);
        }
    };
    let tp = TopicPartition {
        topic_id: meta.id,
        partition: w.partition,
    };
    let set_offsets = |data: &mut PartitionData, o: PartitionOffsets| {
        data.high_watermark = o.high_watermark;
        data.last_stable_offset = o.high_watermark;
        data.log_start_offset = o.log_start;
    };
    if let Some(target) = ctx.redirect.target(tp) {
        data.preferred_read_replica = BrokerId(target);
        match broker
            .offsets_cache
            .get(&broker.coordinator, tp, generation)
            .await
        {
            Ok(o) => {
                set_offsets(&mut data, o);
                data.records = Some(Bytes::new());
            }
            Err(code) => data.error_code = code.code(),
        }
        return Planned::Done(data, true);
    }
    let offsets = match partition_offsets(broker, tp, generation, w.fetch_offset).await {
        Ok(o) => o,
        Err(code) => {
            data.error_code = code.code();
            return Planned::Done(data, true);
        }
    };
    set_offsets(&mut data, offsets);
    if w.fetch_offset < offsets.log_start || w.fetch_offset > offsets.high_watermark {
        data.error_code = ResponseError::OffsetOutOfRange.code();
        return Planned::Done(data, true);
    }
    data.aborted_transactions = Some(Vec::new());
    data.records = Some(Bytes::new());
    if w.fetch_offset == offsets.high_watermark {
        return Planned::Done(data, false);
    }
    let limit = ctx.limit(w).max(1) as u64;
    match broker
        .coordinator
        .index_rows(tp, w.fetch_offset, limit)
        .await
    {
        Ok(rows) if rows.is_empty() => Planned::Done(data, false),
        Ok(rows) => Planned::Rows {
            data,
            fetch_offset: w.fetch_offset,
            rows,
        },
        Err(e) => {
            data.error_code = coordinator_code(&e).code();
            data.records = None;
            Planned::Done(data, true)
        }
    }
}

/// A partition's offsets for a fetch at `fetch_offset`: from the cache, or from the store when
/// the cache says the offset is beyond the end.
async fn partition_offsets(
    broker: &Broker,
    tp: TopicPartition,
    generation: u64,
    fetch_offset: i64,
) -> Result<PartitionOffsets, ResponseError> {
    let offsets = broker
        .offsets_cache
        .get(&broker.coordinator, tp, generation)
        .await?;
    if fetch_offset <= offsets.high_watermark {
        return Ok(offsets);
    }
    // The cache may lag the store: commits by other brokers arrive as notifications, which stop
    // while the notification connection reconnects. OFFSET_OUT_OF_RANGE makes clients reset
    // (skip data or replay all of it), so it is only answered on the store's word.
    broker
        .coordinator
        .partition_offsets(tp)
        .await
        .map_err(|e| coordinator_code(&e))
}

/// Reads `rows` of one partition (concurrently, used in order) and materializes their batches
/// from `fetch_offset` on, within `budget` bytes (the first batch even beyond it).
async fn read_rows(
    broker: &Broker,
    rows: &[IndexRow],
    fetch_offset: i64,
    budget: usize,
) -> Result<Bytes, ResponseError> {
    let reader = &broker.reader;
    let mut reads = futures::stream::iter(0..rows.len())
        .map(move |k| reader.read_row(&rows[k]))
        .buffered(PARALLEL_READS);
    let mut out = bytes::BytesMut::new();
    for row in rows {
        if out.len() >= budget {
            break;
        }
        let Some(raw) = reads.next().await else {
            break;
        };
        let raw = raw.map_err(|e| {
            tracing::warn!(error = %e, "fetch read failed");
            read_code(&e)
        })?;
        let remaining = budget - out.len();
        let (bytes, _) =
            materialize(&raw, row.base_offset, fetch_offset, remaining).map_err(|e| {
                tracing::error!(error = %e, object = %row.object_key, "stored batch is unreadable");
                ResponseError::CorruptMessage
            })?;
        // `materialize` keeps one batch even past `remaining`; only the first row may do that.
        if !out.is_empty() && out.len() + bytes.len() > budget {
            break;
        }
        out.extend_from_slice(&bytes);
    }
    Ok(out.freeze())
}
