//! Produce: validate batches, queue them in the shared write buffer, answer after the commit.
//!
//! [`start`] runs in request order on the connection: it validates every partition's record
//! set and queues all accepted batches of the request in one call to the writer, so batches of
//! one connection keep their order. The returned future waits for the flush that carries them
//! to be uploaded and committed, then builds the response from the assigned offsets.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use fjord_coordinator::{BatchOutcome, ProducerBatchInfo, TopicMeta, TopicPartition};
use fjord_storage::batch::split_produced;
use fjord_storage::records::{records_without_key, MAX_SCANNED_BYTES};
use fjord_storage::writer::{AppendBatch, Committed};
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::ResponseError;

use fjord_coordinator::security::AclOperation;

use super::s;
use crate::dispatch::Client;
use crate::error::{batch_code, rejection_code, write_code};
use crate::Broker;

/// The rest of a produce request, after its batches were queued.
pub type PendingProduce = Pin<Box<dyn Future<Output = ProduceResponse> + Send>>;

/// Where one partition's answer comes from.
enum Slot {
    /// Refused before queueing.
    Failed(ResponseError, Option<String>),
    /// Refused for some of its records (KIP-467): INVALID_RECORD with per-record errors.
    RecordErrors(String, Vec<BatchIndexAndErrorMessage>),
    /// Queued: these indices of the writer call's batches.
    Queued {
        first: usize,
        count: usize,
        log_append_time: bool,
    },
}

struct PartitionSlot {
    index: i32,
    slot: Slot,
}

struct TopicSlot {
    name: TopicName,
    topic_id: uuid::Uuid,
    partitions: Vec<PartitionSlot>,
}

/// Validates and queues a produce request. `None` when the client wants no answer (acks=0).
pub async fn start(
    broker: &Arc<Broker>,
    request: ProduceRequest,
    version: i16,
    client: &Client,
) -> Option<PendingProduce> {
    let acks = request.acks;
    let mut batches: Vec<AppendBatch> = Vec::new();
    let mut topics = Vec::with_capacity(request.topic_data.len());
    if request.transactional_id.is_some() {
        // Transactions are not served; say so on every partition.
        for topic in request.topic_data {
            topics.push(TopicSlot {
                name: topic.name,
                topic_id: topic.topic_id,
                partitions: topic
                    .partition_data
                    .into_iter()
                    .map(|p| PartitionSlot {
                        index: p.index,
                        slot: Slot::Failed(
                            ResponseError::TransactionalIdAuthorizationFailed,
                            Some("transactions are not supported by this broker yet".into()),
                        ),
                    })
                    .collect(),
            });
        }
    } else {
        for topic in request.topic_data {
            let name = topic.name.0.as_str();
            // Refused before anything is stored, and before a topic is auto-created.
            let meta = if broker
                .authorizer
                .topic(&client.session, AclOperation::Write, name)
            {
                let create = broker.authorizer.may_create_topic(&client.session, name);
                broker.resolve_topic(name, create).await
            } else {
                Err(ResponseError::TopicAuthorizationFailed)
            };
            let mut partitions = Vec::with_capacity(topic.partition_data.len());
            for p in topic.partition_data {
                let slot = match &meta {
                    Err(e) => Slot::Failed(*e, None),
                    Ok(meta) => queue_partition(broker, meta, p.index, p.records, &mut batches),
                };
                partitions.push(PartitionSlot {
                    index: p.index,
                    slot,
                });
            }
            topics.push(TopicSlot {
                name: topic.name,
                topic_id: meta.as_ref().map(|m| m.id).unwrap_or(topic.topic_id),
                partitions,
            });
        }
    }

    let outcomes = if batches.is_empty() {
        None
    } else {
        Some(broker.writer.append(batches).await)
    };
    if acks == 0 {
        return None;
    }
    let broker = broker.clone();
    Some(Box::pin(async move {
        let outcomes = match outcomes {
            None => Ok(Committed {
                outcomes: Vec::new(),
                log_append_time_ms: -1,
            }),
            Some(Err(e)) => Err(write_code(&e)),
            Some(Ok(rx)) => match rx.await {
                Ok(Ok(committed)) => Ok(committed),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "produce failed");
                    Err(write_code(&e))
                }
                Err(_) => Err(ResponseError::NotLeaderOrFollower),
            },
        };
        respond(&broker, topics, outcomes, version).await
    }))
}

fn queue_partition(
    broker: &Broker,
    meta: &TopicMeta,
    index: i32,
    records: Option<bytes::Bytes>,
    batches: &mut Vec<AppendBatch>,
) -> Slot {
    if index < 0 || index >= meta.partitions {
        return Slot::Failed(ResponseError::UnknownTopicOrPartition, None);
    }
    let Some(records) = records else {
        return Slot::Failed(ResponseError::CorruptMessage, Some("no records".into()));
    };
    let split = match split_produced(&records) {
        Ok(split) => split,
        Err(e) => return Slot::Failed(batch_code(&e), Some(e.to_string())),
    };
    let max = broker.max_message_bytes(meta);
    if let Some((b, _)) = split.iter().find(|(b, _)| b.len() > max) {
        return Slot::Failed(
            ResponseError::MessageTooLarge,
            Some(format!(
                "record batch of {} bytes exceeds max.message.bytes {max}",
                b.len()
            )),
        );
    }
    if split.iter().any(|(_, h)| h.is_transactional()) {
        return Slot::Failed(
            ResponseError::InvalidRecord,
            Some("transactional batches are not supported by this broker yet".into()),
        );
    }
    if is_compacted(meta) {
        if let Some(slot) = refuse_keyless(meta, index, &split) {
            return slot;
        }
    }
    let log_append_time = meta
        .configs
        .get("message.timestamp.type")
        .is_some_and(|v| v == "LogAppendTime");
    let tp = TopicPartition {
        topic_id: meta.id,
        partition: index,
    };
    let first = batches.len();
    let count = split.len();
    for (bytes, header) in split {
        batches.push(AppendBatch {
            tp,
            offset_count: header.offset_count(),
            max_timestamp: header.max_timestamp,
            producer: (header.producer_id >= 0).then_some(ProducerBatchInfo {
                producer_id: header.producer_id,
                producer_epoch: header.producer_epoch,
                base_sequence: header.base_sequence,
            }),
            log_append_time,
            bytes,
        });
    }
    Slot::Queued {
        first,
        count,
        log_append_time,
    }
}

/// Whether the topic's `cleanup.policy` includes `compact`.
fn is_compacted(meta: &TopicMeta) -> bool {
    meta.configs
        .get("cleanup.policy")
        .is_some_and(|p| p.split(',').any(|v| v.trim() == "compact"))
}

/// A compacted topic keeps the latest record per key, so a record without a key has no place in
/// it: Kafka refuses the partition's records with INVALID_RECORD and says which records lacked a
/// key (`record_errors`, indices counted over the partition's record set). `None` when every
/// record has a key.
fn refuse_keyless(
    meta: &TopicMeta,
    index: i32,
    split: &[(bytes::Bytes, fjord_storage::batch::BatchHeader)],
) -> Option<Slot> {
    let mut errors = Vec::new();
    let mut first = 0usize;
    for (bytes, header) in split {
        match records_without_key(bytes, MAX_SCANNED_BYTES) {
            Ok(keyless) => {
                for i in keyless {
                    errors.push(
                        BatchIndexAndErrorMessage::default()
                            .with_batch_index(i32::try_from(first + i).unwrap_or(i32::MAX))
                            .with_batch_index_error_message(Some(s(format!(
                                "Compacted topic cannot accept message without key in topic \
                                 partition {}-{index}.",
                                meta.name
                            )))),
                    );
                }
            }
            Err(e) => {
                return Some(Slot::Failed(
                    ResponseError::CorruptMessage,
                    Some(format!("records of a compacted topic do not decode: {e}")),
                ))
            }
        }
        first += usize::try_from(header.record_count).unwrap_or(0);
    }
    if errors.is_empty() {
        return None;
    }
    let message = format!(
        "One or more records have been rejected due to {} record errors in total: records \
         without a key cannot be written to compacted topic {} (first at record index {})",
        errors.len(),
        meta.name,
        errors[0].batch_index
    );
    Some(Slot::RecordErrors(message, errors))
}

async fn respond(
    broker: &Broker,
    topics: Vec<TopicSlot>,
    committed: Result<Committed, ResponseError>,
    version: i16,
) -> ProduceResponse {
    let mut responses = Vec::with_capacity(topics.len());
    for topic in topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let mut r = PartitionProduceResponse::default()
                .with_index(p.index)
                .with_base_offset(-1)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(-1);
            match p.slot {
                Slot::Failed(code, message) => {
                    r.error_code = code.code();
                    if version >= 8 {
                        r.error_message = message.map(s);
                    }
                }
                Slot::RecordErrors(message, errors) => {
                    r.error_code = ResponseError::InvalidRecord.code();
                    if version >= 8 {
                        r.error_message = Some(s(message));
                        r.record_errors = errors;
                    }
                }
                Slot::Queued {
                    first,
                    count,
                    log_append_time,
                } => match &committed {
                    Err(code) => r.error_code = code.code(),
                    Ok(committed) => {
                        if log_append_time {
                            r.log_append_time_ms = committed.log_append_time_ms;
                        }
                        let mine = committed.outcomes.get(first..first + count).unwrap_or(&[]);
                        let rejected = mine.iter().find_map(|o| match o {
                            BatchOutcome::Rejected(r) => Some(*r),
                            _ => None,
                        });
                        match (rejected, mine.first()) {
                            (Some(rejection), _) => r.error_code = rejection_code(rejection).code(),
                            (None, Some(BatchOutcome::Appended { base_offset }))
                            | (None, Some(BatchOutcome::Duplicate { base_offset })) => {
                                r.base_offset = *base_offset;
                                r.log_start_offset =
                                    log_start(broker, topic.topic_id, p.index).await;
                            }
                            _ => r.error_code = ResponseError::UnknownServerError.code(),
                        }
                    }
                },
            }
            partitions.push(r);
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(topic.name)
                .with_topic_id(topic.topic_id)
                .with_partition_responses(partitions),
        );
    }
    ProduceResponse::default().with_responses(responses)
}

async fn log_start(broker: &Broker, topic_id: uuid::Uuid, partition: i32) -> i64 {
    broker
        .coordinator
        .partition_offsets(TopicPartition {
            topic_id,
            partition,
        })
        .await
        .map(|o| o.log_start)
        .unwrap_or(-1)
}
