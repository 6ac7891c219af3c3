//! ListOffsets: earliest, latest, max timestamp, and the first offset at or after a timestamp.
//!
//! Timestamp lookups find the index row through the coordinator (rows carry their max
//! timestamp), then decode that row's batches with `kafka-protocol`'s record decoder to find the
//! exact record.

use std::sync::Arc;

use fjord_coordinator::{IndexRow, TopicPartition};
use fjord_storage::batch::materialize;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::records::RecordBatchDecoder;
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
) -> ListOffsetsResponse {
    // Leader epochs exist from v4 on; earlier versions must keep the default.
    let leader_epoch = if version >= 4 { 0 } else { -1 };
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let meta = broker.coordinator.topic(topic.name.0.as_str()).await;
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let mut r = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1)
                .with_leader_epoch(leader_epoch);
            let tp = match &meta {
                Ok(Some(m)) if p.partition_index >= 0 && p.partition_index < m.partitions => {
                    TopicPartition {
                        topic_id: m.id,
                        partition: p.partition_index,
                    }
                }
                Ok(_) => {
                    r.error_code = ResponseError::UnknownTopicOrPartition.code();
                    partitions.push(r);
                    continue;
                }
                Err(e) => {
                    r.error_code = coordinator_code(e).code();
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
                    let records = decode_row(broker, &row).await?;
                    // The first record carrying the largest timestamp.
                    let mut best: Option<(i64, i64)> = None;
                    for (offset, ts) in records {
                        if best.is_none_or(|(_, b)| ts > b) {
                            best = Some((offset, ts));
                        }
                    }
                    Ok(best.unwrap_or((-1, -1)))
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
                    let records = decode_row(broker, &row).await?;
                    Ok(records
                        .into_iter()
                        .find(|(_, ts)| *ts >= t)
                        .unwrap_or((-1, -1)))
                }
            }
        }
        _ => Err(ResponseError::InvalidRequest),
    }
}

/// (offset, timestamp) of every record of a row.
async fn decode_row(broker: &Broker, row: &IndexRow) -> Result<Vec<(i64, i64)>, ResponseError> {
    let raw = broker
        .reader
        .read_row(row)
        .await
        .map_err(|e| read_code(&e))?;
    let (bytes, _) = materialize(&raw, row.base_offset, row.base_offset, usize::MAX)
        .map_err(|_| ResponseError::CorruptMessage)?;
    let mut buf = bytes;
    let sets = RecordBatchDecoder::decode_all(&mut buf).map_err(|e| {
        tracing::error!(error = %e, object = %row.object_key, "stored batch does not decode");
        ResponseError::CorruptMessage
    })?;
    Ok(sets
        .into_iter()
        .flat_map(|set| set.records.into_iter().map(|r| (r.offset, r.timestamp)))
        .collect())
}
