//! ListOffsets: earliest, latest, max timestamp, and the first offset at or after a timestamp.
//!
//! Timestamp lookups find the index row through the coordinator (rows carry their max
//! timestamp), then the batch within the row from batch headers, and open a batch only when its
//! headers cannot tell: then its records are scanned with bounded decompression
//! ([`fjord_storage::records`]), so that a small batch claiming gigabytes (a decompression bomb)
//! costs a capped amount of work and a few buffers of memory.

use std::sync::Arc;

use bytes::Bytes;
use fjord_coordinator::{IndexRow, TopicPartition};
use fjord_storage::batch::{peek_header, BatchHeader};
use fjord_storage::records::{scan_records, MAX_SCANNED_BYTES};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;

use crate::error::{coordinator_code, read_code};
use crate::Broker;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;

/// Answers a ListOffsets request.
pub async fn handle(
    broker: Arc<Broker>,
    request: ListOffsetsRequest,
    version: i16,
    client: crate::dispatch::Client,
) -> ListOffsetsResponse {
    // Leader epochs exist from v4 on; earlier versions must keep the default.
    let leader_epoch = if version >= 4 { 0 } else { -1 };
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let allowed = broker.authorizer.topic(
            &client.session,
            fjord_coordinator::security::AclOperation::Describe,
            topic.name.0.as_str(),
        );
        let meta = if allowed {
            broker.coordinator.topic(topic.name.0.as_str()).await
        } else {
            Ok(None)
        };
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let mut r = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1)
                .with_leader_epoch(leader_epoch);
            if !allowed {
                r.error_code = ResponseError::TopicAuthorizationFailed.code();
                partitions.push(r);
                continue;
            }
            let tp = match super::partition_of(&meta, p.partition_index) {
                Ok(tp) => tp,
                Err(code) => {
                    r.error_code = code.code();
                    partitions.push(r);
                    continue;
                }
            };
            match lookup(&broker, tp, p.timestamp).await {
                Ok((offset, timestamp)) => {
                    r.offset = offset;
                    r.timestamp = timestamp;
                }
                Err(code) => r.error_code = code.code(),
            }
            partitions.push(r);
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// (offset, timestamp) for one partition and target timestamp.
async fn lookup(
    broker: &Broker,
    tp: TopicPartition,
    target: i64,
) -> Result<(i64, i64), ResponseError> {
    let offsets = broker
        .coordinator
        .partition_offsets(tp)
        .await
        .map_err(|e| coordinator_code(&e))?;
    match target {
        LATEST => Ok((offsets.high_watermark, -1)),
        EARLIEST | EARLIEST_LOCAL => Ok((offsets.log_start, -1)),
        MAX_TIMESTAMP => {
            let row = broker
                .coordinator
                .row_with_max_timestamp(tp)
                .await
                .map_err(|e| coordinator_code(&e))?;
            match row {
                None => Ok((-1, -1)),
                Some(row) => {
                    let raw = read(broker, &row).await?;
                    Ok(at_or_after_start(
                        record_with_max_timestamp(&raw, &row),
                        offsets.log_start,
                    ))
                }
            }
        }
        t if t >= 0 => {
            let row = broker
                .coordinator
                .row_for_timestamp(tp, t)
                .await
                .map_err(|e| coordinator_code(&e))?;
            match row {
                None => Ok((-1, -1)),
                Some(row) => {
                    let raw = read(broker, &row).await?;
                    Ok(at_or_after_start(
                        first_record_at_or_after(&raw, &row, t),
                        offsets.log_start,
                    ))
                }
            }
        }
        _ => Err(ResponseError::InvalidRequest),
    }
}

/// A found (offset, timestamp), or (-1, -1) when none; an offset below the log start (in the
/// part of a row that DeleteRecords removed) becomes the log start, the first offset a consumer
/// can read.
fn at_or_after_start(found: Option<(i64, i64)>, log_start: i64) -> (i64, i64) {
    match found {
        Some((offset, timestamp)) => (offset.max(log_start), timestamp),
        None => (-1, -1),
    }
}

async fn read(broker: &Broker, row: &IndexRow) -> Result<Bytes, ResponseError> {
    broker.reader.read_row(row).await.map_err(|e| read_code(&e))
}

/// The batches of a row as stored: each with its header and its real base offset.
fn batches<'a>(
    raw: &'a [u8],
    row: &'a IndexRow,
) -> impl Iterator<Item = (i64, BatchHeader, &'a [u8])> + 'a {
    let mut pos = 0usize;
    let mut offset = row.base_offset;
    std::iter::from_fn(move || {
        let rest = raw.get(pos..)?;
        let header = match peek_header(rest) {
            Ok(h) => h,
            Err(e) => {
                if !rest.is_empty() {
                    tracing::error!(error = %e, object = %row.object_key, "stored batch is unreadable");
                }
                return None;
            }
        };
        let item = (offset, header, &rest[..header.size]);
        pos += header.size;
        offset += header.offset_count();
        Some(item)
    })
}

/// The first record of the first batch in `batch` (based at `offset`) whose timestamp
/// satisfies `wanted`, scanning its records within the decompression cap. A batch that cannot be
/// scanned (a decompression bomb, a malformed one) answers with its base offset and max
/// timestamp: a consumer seeking there reads a few records more, never fewer.
fn scan_for(
    batch: &[u8],
    offset: i64,
    header: &BatchHeader,
    object: &str,
    mut wanted: impl FnMut(i64) -> bool,
) -> Option<(i64, i64)> {
    let mut found = None;
    let scanned = scan_records(batch, MAX_SCANNED_BYTES, |r| {
        if wanted(r.timestamp) {
            found = Some((offset + r.offset_delta, r.timestamp));
            return false;
        }
        true
    });
    match scanned {
        Ok(()) => found,
        Err(e) => {
            tracing::warn!(error = %e, object, "cannot scan a stored batch's records; answering with the batch's first offset");
            Some((offset, header.max_timestamp))
        }
    }
}

/// (offset, timestamp) of the first record at or after `target` in a row. Batch headers answer
/// without decompressing whenever they can: a batch whose max timestamp is earlier is skipped,
/// a `LogAppendTime` batch's records all carry its max timestamp, and a batch whose first
/// record is late enough starts with the answer. Only a batch whose first record is early and
/// whose max is late is opened.
fn first_record_at_or_after(raw: &[u8], row: &IndexRow, target: i64) -> Option<(i64, i64)> {
    for (offset, header, batch) in batches(raw, row) {
        if header.max_timestamp < target {
            continue;
        }
        if header.is_log_append_time() {
            return Some((offset, header.max_timestamp));
        }
        if header.base_timestamp >= target {
            return Some((offset, header.base_timestamp));
        }
        if let Some(found) = scan_for(batch, offset, &header, &row.object_key, |ts| ts >= target) {
            return Some(found);
        }
    }
    None
}

/// (offset, timestamp) of the first record holding the row's largest timestamp.
fn record_with_max_timestamp(raw: &[u8], row: &IndexRow) -> Option<(i64, i64)> {
    let mut best: Option<(i64, BatchHeader, &[u8])> = None;
    for (offset, header, batch) in batches(raw, row) {
        if best.is_none_or(|(_, b, _)| header.max_timestamp > b.max_timestamp) {
            best = Some((offset, header, batch));
        }
    }
    let (offset, header, batch) = best?;
    if header.is_log_append_time() {
        return Some((offset, header.max_timestamp));
    }
    let max = header.max_timestamp;
    scan_for(batch, offset, &header, &row.object_key, |ts| ts == max).or(Some((offset, max)))
}
