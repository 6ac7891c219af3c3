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
use fjord_coordinator::{PartitionOffsets, TopicMeta, TopicPartition};
use fjord_storage::batch::{materialize, truncate_batches};
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
use crate::Broker;

/// Longest a fetch long-polls, whatever it asks for: a response slot of the connection is held
/// meanwhile, and clients treat an early empty answer like any other.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Object reads one partition of a fetch has in flight at once.
const PARALLEL_READS: usize = 16;

/// Partitions one fetch reads at once.
const PARALLEL_PARTITIONS: usize = 8;

/// Answers a Fetch request.
pub async fn handle(
    broker: Arc<Broker>,
    request: FetchRequest,
    version: i16,
    client: Client,
) -> FetchResponse {
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
    let plan = match broker.fetch_sessions.plan(&request, by_id) {
        Ok(plan) => plan,
        Err(code) => {
            return FetchResponse::default()
                .with_error_code(code.code())
                .with_session_id(0)
        }
    };
    // Resolve each topic once; a topic deleted meanwhile shows up as an error next time.
    let mut topics: HashMap<TopicKey, Result<TopicMeta, ResponseError>> = HashMap::new();
    for w in &plan.wanted {
        if !topics.contains_key(&w.topic) {
            let meta = resolve(&broker, &w.topic).await;
            topics.insert(w.topic.clone(), meta);
        }
    }
    let max_wait = Duration::from_millis(request.max_wait_ms.max(0) as u64).min(MAX_WAIT);
    let deadline = Instant::now() + max_wait;
    let min_bytes = request.min_bytes.max(0) as usize;
    let max_bytes = if request.max_bytes <= 0 {
        usize::MAX
    } else {
        request.max_bytes as usize
    };
    let mut commits = broker.commits.clone();
    let data = loop {
        // Mark the current commit count as seen before reading, so a commit that lands during
        // the read wakes the wait below.
        let generation = *commits.borrow_and_update();
        let (data, bytes, errors) = read_all(
            &broker,
            &plan.wanted,
            &topics,
            max_bytes,
            &redirect,
            generation,
        )
        .await;
        if bytes >= min_bytes || errors || Instant::now() >= deadline {
            break data;
        }
        let woke = tokio::time::timeout_at(deadline, commits.changed()).await;
        if !matches!(woke, Ok(Ok(()))) {
            // Deadline reached (or the writer stopped): answer with what there is.
            let generation = *commits.borrow_and_update();
            break read_all(
                &broker,
                &plan.wanted,
                &topics,
                max_bytes,
                &redirect,
                generation,
            )
            .await
            .0;
        }
    };
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
    FetchResponse::default()
        .with_session_id(plan.session_id)
        .with_responses(responses)
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

/// Reads every wanted partition once. Returns one entry per partition, the record bytes
/// included, and whether any partition needs an answer at once (an error or a redirect).
///
/// Partitions are read concurrently (up to [`PARALLEL_PARTITIONS`]), so a fetch of cold data
/// on S3 waits about one GET, not one per partition. The response's `max_bytes` is shared in
/// partition order: partitions are read in waves whose partition limits together fit in what
/// is left of it (with usual client settings, 1 MiB per partition and 50 MiB per fetch, one
/// wave of 50 partitions), then each result is cut to whole batches within what its turn left.
async fn read_all(
    broker: &Broker,
    wanted: &[Wanted],
    topics: &HashMap<TopicKey, Result<TopicMeta, ResponseError>>,
    max_bytes: usize,
    redirect: &Redirect<'_>,
    generation: u64,
) -> (Vec<PartitionData>, usize, bool) {
    let mut total = 0usize;
    let mut errors = false;
    let mut out = Vec::with_capacity(wanted.len());
    let limit = |w: &Wanted| w.max_bytes.max(0) as usize;
    let mut start = 0;
    while start < wanted.len() {
        let left = max_bytes.saturating_sub(total);
        let mut end = start;
        let mut planned = 0usize;
        while end < wanted.len() {
            let budget = limit(&wanted[end]).min(left);
            if end > start && planned.saturating_add(budget) > left {
                break;
            }
            planned = planned.saturating_add(budget);
            end += 1;
        }
        // The first non-empty partition returns at least one batch even beyond max_bytes; while
        // nothing is read yet, any partition of the wave may be that one.
        let at_least_one = total == 0;
        let wave: Vec<(PartitionData, bool)> = futures::stream::iter(start..end)
            .map(|k| {
                let w = &wanted[k];
                let budget = limit(w).min(left);
                let budget = if at_least_one { budget.max(1) } else { budget };
                read_one(broker, w, topics, redirect, generation, budget)
            })
            .buffered(PARALLEL_PARTITIONS)
            .collect()
            .await;
        for (w, (mut data, error)) in wanted[start..end].iter().zip(wave) {
            errors |= error;
            if let Some(records) = &mut data.records {
                if total > 0 {
                    let turn = limit(w).min(max_bytes.saturating_sub(total));
                    if records.len() > turn {
                        *records = truncate_batches(records, turn);
                    }
                }
                total += records.len();
            }
            out.push(data);
        }
        start = end;
    }
    (out, total, errors)
}

/// Reads one wanted partition with `budget` bytes; returns its entry and whether it needs an
/// answer at once (an error or a redirect).
async fn read_one(
    broker: &Broker,
    w: &Wanted,
    topics: &HashMap<TopicKey, Result<TopicMeta, ResponseError>>,
    redirect: &Redirect<'_>,
    generation: u64,
    budget: usize,
) -> (PartitionData, bool) {
    let mut data = PartitionData::default()
        .with_partition_index(w.partition)
        .with_high_watermark(-1)
        .with_last_stable_offset(-1)
        .with_log_start_offset(-1)
        .with_preferred_read_replica(BrokerId(-1));
    let meta = match topics.get(&w.topic) {
        Some(Ok(meta)) if w.partition >= 0 && w.partition < meta.partitions => meta,
        Some(Err(code)) => {
            data.error_code = code.code();
            return (data, true);
        }
        _ => {
            data.error_code = ResponseError::UnknownTopicOrPartition.code();
            return (data, true);
        }
    };
    let tp = TopicPartition {
        topic_id: meta.id,
        partition: w.partition,
    };
    if let Some(target) = redirect.target(tp) {
        data.preferred_read_replica = BrokerId(target);
        match broker
            .offsets_cache
            .get(&broker.coordinator, tp, generation)
            .await
        {
            Ok(o) => {
                data.high_watermark = o.high_watermark;
                data.last_stable_offset = o.high_watermark;
                data.log_start_offset = o.log_start;
                data.records = Some(Bytes::new());
            }
            Err(code) => data.error_code = code.code(),
        }
        return (data, true);
    }
    match read_partition(broker, tp, generation, w.fetch_offset, budget).await {
        Ok((offsets, records)) => {
            data.high_watermark = offsets.high_watermark;
            data.last_stable_offset = offsets.high_watermark;
            data.log_start_offset = offsets.log_start;
            data.aborted_transactions = Some(Vec::new());
            data.records = Some(records);
            (data, false)
        }
        Err((code, offsets)) => {
            data.error_code = code.code();
            if let Some(o) = offsets {
                data.high_watermark = o.high_watermark;
                data.last_stable_offset = o.high_watermark;
                data.log_start_offset = o.log_start;
            }
            (data, true)
        }
    }
}

type PartitionError = (ResponseError, Option<PartitionOffsets>);

async fn read_partition(
    broker: &Broker,
    tp: TopicPartition,
    generation: u64,
    fetch_offset: i64,
    budget: usize,
) -> Result<(PartitionOffsets, Bytes), PartitionError> {
    let offsets = broker
        .offsets_cache
        .get(&broker.coordinator, tp, generation)
        .await
        .map_err(|code| (code, None))?;
    if fetch_offset < offsets.log_start || fetch_offset > offsets.high_watermark {
        return Err((ResponseError::OffsetOutOfRange, Some(offsets)));
    }
    if fetch_offset == offsets.high_watermark || budget == 0 {
        return Ok((offsets, Bytes::new()));
    }
    let rows = broker
        .coordinator
        .index_rows(tp, fetch_offset, budget as u64)
        .await
        .map_err(|e| (coordinator_code(&e), Some(offsets)))?;
    // The rows are read concurrently (a cold partition may span hundreds of objects) and used in
    // order; reads past the budget are skipped.
    let reader = &broker.reader;
    let mut reads = futures::stream::iter(rows.clone())
        .map(move |row| async move { reader.read_row(&row).await })
        .buffered(PARALLEL_READS);
    let mut out = bytes::BytesMut::new();
    for row in &rows {
        if out.len() >= budget {
            break;
        }
        let Some(raw) = reads.next().await else {
            break;
        };
        let raw = raw.map_err(|e| {
            tracing::warn!(error = %e, "fetch read failed");
            (read_code(&e), Some(offsets))
        })?;
        let remaining = if out.is_empty() {
            budget
        } else {
            budget - out.len()
        };
        let (bytes, _) =
            materialize(&raw, row.base_offset, fetch_offset, remaining).map_err(|e| {
                tracing::error!(error = %e, object = %row.object_key, "stored batch is unreadable");
                (ResponseError::CorruptMessage, Some(offsets))
            })?;
        // `materialize` keeps one batch even past `remaining`; only the first row may do that.
        if !out.is_empty() && out.len() + bytes.len() > budget {
            break;
        }
        out.extend_from_slice(&bytes);
    }
    Ok((offsets, out.freeze()))
}
