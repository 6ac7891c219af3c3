//! Fetch: read committed batches through the index and the read cache, long-polling when empty.
//!
//! Fetch sessions (KIP-227): this broker declines to create sessions (it answers session id 0),
//! which the protocol allows and every client handles by sending full fetch requests. A request
//! naming a session this broker does not have gets FETCH_SESSION_ID_NOT_FOUND, after which the
//! client starts over without one.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fjord_coordinator::{PartitionOffsets, TopicMeta, TopicPartition};
use fjord_storage::batch::materialize;
use kafka_protocol::messages::fetch_request::FetchTopic;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::ResponseError;
use tokio::time::Instant;

use super::s;
use crate::error::{coordinator_code, read_code};
use crate::Broker;

/// Answers a Fetch request.
pub async fn handle(broker: Arc<Broker>, request: FetchRequest, version: i16) -> FetchResponse {
    if request.session_id != 0 || request.session_epoch > 0 {
        return FetchResponse::default()
            .with_error_code(ResponseError::FetchSessionIdNotFound.code())
            .with_session_id(0);
    }
    let by_id = version >= 13;
    // Resolve topics once; a topic deleted meanwhile shows up as an error on the next try.
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        topics.push(resolve(&broker, topic, by_id).await);
    }
    let max_wait = Duration::from_millis(request.max_wait_ms.max(0) as u64);
    let deadline = Instant::now() + max_wait;
    let min_bytes = request.min_bytes.max(0) as usize;
    let max_bytes = if request.max_bytes <= 0 {
        usize::MAX
    } else {
        request.max_bytes as usize
    };
    let mut commits = broker.commits.clone();
    loop {
        // Mark the current commit count as seen before reading, so a commit that lands during
        // the read wakes the wait below.
        commits.borrow_and_update();
        let (responses, bytes, errors) =
            read_all(&broker, &request.topics, &topics, max_bytes, by_id).await;
        let done = bytes >= min_bytes.max(1) || errors || Instant::now() >= deadline;
        if done || bytes >= min_bytes {
            return FetchResponse::default()
                .with_session_id(0)
                .with_responses(responses);
        }
        let woke = tokio::time::timeout_at(deadline, commits.changed()).await;
        if !matches!(woke, Ok(Ok(()))) {
            // Deadline reached (or the writer stopped): answer with what there is.
            let (responses, _, _) =
                read_all(&broker, &request.topics, &topics, max_bytes, by_id).await;
            return FetchResponse::default()
                .with_session_id(0)
                .with_responses(responses);
        }
    }
}

async fn resolve(
    broker: &Broker,
    topic: &FetchTopic,
    by_id: bool,
) -> Result<TopicMeta, ResponseError> {
    let found = if by_id {
        broker.coordinator.topic_by_id(topic.topic_id).await
    } else {
        broker.coordinator.topic(topic.topic.0.as_str()).await
    };
    match found {
        Ok(Some(meta)) => Ok(meta),
        Ok(None) if by_id => Err(ResponseError::UnknownTopicId),
        Ok(None) => Err(ResponseError::UnknownTopicOrPartition),
        Err(e) => Err(coordinator_code(&e)),
    }
}

/// Reads every requested partition once. Returns the responses, the record bytes included and
/// whether any partition failed.
async fn read_all(
    broker: &Broker,
    requested: &[FetchTopic],
    resolved: &[Result<TopicMeta, ResponseError>],
    max_bytes: usize,
    by_id: bool,
) -> (Vec<FetchableTopicResponse>, usize, bool) {
    let mut total = 0usize;
    let mut errors = false;
    let mut out = Vec::with_capacity(requested.len());
    for (topic, meta) in requested.iter().zip(resolved) {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let mut data = PartitionData::default()
                .with_partition_index(p.partition)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
                .with_preferred_read_replica(BrokerId(-1));
            let meta = match meta {
                Ok(meta) if p.partition >= 0 && p.partition < meta.partitions => meta,
                Ok(_) => {
                    data.error_code = ResponseError::UnknownTopicOrPartition.code();
                    errors = true;
                    partitions.push(data);
                    continue;
                }
                Err(code) => {
                    data.error_code = code.code();
                    errors = true;
                    partitions.push(data);
                    continue;
                }
            };
            let tp = TopicPartition {
                topic_id: meta.id,
                partition: p.partition,
            };
            let budget =
                (p.partition_max_bytes.max(0) as usize).min(max_bytes.saturating_sub(total));
            // The first non-empty partition returns at least one batch even beyond max_bytes.
            let budget = if total == 0 { budget.max(1) } else { budget };
            match read_partition(broker, tp, p.fetch_offset, budget).await {
                Ok((offsets, records)) => {
                    total += records.len();
                    data.high_watermark = offsets.high_watermark;
                    data.last_stable_offset = offsets.high_watermark;
                    data.log_start_offset = offsets.log_start;
                    data.aborted_transactions = Some(Vec::new());
                    data.records = Some(records);
                }
                Err((code, offsets)) => {
                    errors = true;
                    data.error_code = code.code();
                    if let Some(o) = offsets {
                        data.high_watermark = o.high_watermark;
                        data.last_stable_offset = o.high_watermark;
                        data.log_start_offset = o.log_start;
                    }
                }
            }
            partitions.push(data);
        }
        let mut response = FetchableTopicResponse::default().with_partitions(partitions);
        if by_id {
            response.topic_id = topic.topic_id;
        } else {
            response.topic = TopicName(s(topic.topic.0.as_str()));
        }
        out.push(response);
    }
    (out, total, errors)
}

type PartitionError = (ResponseError, Option<PartitionOffsets>);

async fn read_partition(
    broker: &Broker,
    tp: TopicPartition,
    fetch_offset: i64,
    budget: usize,
) -> Result<(PartitionOffsets, Bytes), PartitionError> {
    let offsets = broker
        .coordinator
        .partition_offsets(tp)
        .await
        .map_err(|e| (coordinator_code(&e), None))?;
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
    let mut out = bytes::BytesMut::new();
    for row in rows {
        if out.len() >= budget {
            break;
        }
        let raw = broker.reader.read_row(&row).await.map_err(|e| {
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
