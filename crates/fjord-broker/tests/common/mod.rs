//! Helpers shared by the broker's integration tests: requests are encoded and responses decoded
//! with `kafka-protocol`, as a client would, and go through the dispatcher as in-memory bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fjord_broker::dispatch;
use fjord_broker::{Broker, BrokerSettings};
use fjord_storage::writer::WriterTask;
use indexmap::IndexMap;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

pub fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// A request frame (without the length prefix) as a client sends it.
pub fn frame<R: Request>(request: &R, version: i16) -> Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(42)
        .with_client_id(Some(sb("test")));
    let mut buf = BytesMut::new();
    header.encode(&mut buf, R::header_version(version)).unwrap();
    request.encode(&mut buf, version).unwrap();
    buf.freeze()
}

/// Sends `request` to `broker` and decodes its response, checking the framing on the way.
pub async fn call<R: Request>(broker: &Arc<Broker>, request: R, version: i16) -> R::Response {
    let session = Arc::new(fjord_broker::session::Session::plaintext(None));
    call_as(broker, &session, request, version).await
}

/// [`call`] on a connection that authenticated as `session`.
pub async fn call_as<R: Request>(
    broker: &Arc<Broker>,
    session: &Arc<fjord_broker::session::Session>,
    request: R,
    version: i16,
) -> R::Response {
    let started = dispatch::start_from(broker, frame(&request, version), session)
        .await
        .unwrap_or_else(|e| panic!("key {} v{version}: {e}", R::KEY));
    let mut bytes = started.reply.await.unwrap().unwrap();
    let len = i32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    assert_eq!(len, bytes.len() - 4);
    let _ = bytes.split_to(4);
    let header = ResponseHeader::decode(
        &mut bytes,
        <R::Response as HeaderVersion>::header_version(version),
    )
    .unwrap();
    assert_eq!(header.correlation_id, 42);
    let response = R::Response::decode(&mut bytes, version).unwrap();
    assert!(
        bytes.is_empty(),
        "key {} v{version}: {} trailing bytes",
        R::KEY,
        bytes.len()
    );
    response
}

/// One uncompressed batch of `n` records (keys `k<i>`, values `v<i>`, timestamps from `ts`).
pub fn records(n: usize, ts: i64) -> Bytes {
    batch_of(n, ts, -1, -1, -1, Compression::None)
}

/// One batch of `n` records from producer `producer_id` at `epoch`, sequences from `sequence`.
pub fn batch_of(
    n: usize,
    ts: i64,
    producer_id: i64,
    epoch: i16,
    sequence: i32,
    compression: Compression,
) -> Bytes {
    let records = (0..n).map(|i| Record {
        producer_id,
        producer_epoch: epoch,
        sequence: if sequence < 0 {
            i as i32
        } else {
            sequence + i as i32
        },
        ..record(
            i,
            Some(Bytes::from(format!("k{i}"))),
            Some(Bytes::from(format!("v{i}"))),
            ts + i as i64,
        )
    });
    encode(records, compression)
}

/// Record `i` of a batch (offset delta and sequence `i`), of no producer, with a create time.
pub fn record(i: usize, key: Option<Bytes>, value: Option<Bytes>, ts: i64) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: i as i64,
        sequence: i as i32,
        timestamp: ts,
        key,
        value,
        headers: IndexMap::new(),
    }
}

/// One v2 record batch of `records`, compressed as asked.
pub fn encode(records: impl IntoIterator<Item = Record>, compression: Compression) -> Bytes {
    let records: Vec<Record> = records.into_iter().collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    buf.freeze()
}

/// Creates a topic; returns its id.
pub async fn create(broker: &Arc<Broker>, name: &str, partitions: i32) -> uuid::Uuid {
    let r = call(
        broker,
        CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(sb(name)))
            .with_num_partitions(partitions)
            .with_replication_factor(-1)]),
        7,
    )
    .await;
    assert_eq!(r.topics[0].error_code, 0);
    r.topics[0].topic_id
}

/// A Produce request (acks=all) of one record set to one partition.
pub fn produce_request(name: &str, partition: i32, data: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(TopicName(sb(name)))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(data)),
            ])])
}

/// A sessionless Fetch of `partitions` (index, offset) of topic `name`, 1 MiB per partition.
pub fn fetch_request(name: &str, partitions: &[(i32, i64)], max_bytes: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(10)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_session_epoch(-1)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(TopicName(sb(name)))
            .with_partitions(
                partitions
                    .iter()
                    .map(|(p, offset)| {
                        fetch_request::FetchPartition::default()
                            .with_partition(*p)
                            .with_fetch_offset(*offset)
                            .with_partition_max_bytes(1 << 20)
                    })
                    .collect(),
            )])
}

/// ListOffsets of one partition at `timestamp` (-1 latest, -2 earliest); (error, offset).
pub async fn list_offset(
    broker: &Arc<Broker>,
    name: &str,
    partition: i32,
    timestamp: i64,
) -> (i16, i64) {
    let r = call(
        broker,
        ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                .with_name(TopicName(sb(name)))
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(partition)
                        .with_timestamp(timestamp),
                ])]),
        7,
    )
    .await;
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.offset)
}

/// Brokers sharing one coordinator and one bucket (see `testkit::in_memory_cluster`): each
/// believes it coordinates every group.
pub struct Cluster {
    pub brokers: Vec<Arc<Broker>>,
    _writers: Vec<WriterTask>,
    _dir: tempfile::TempDir,
}

pub fn cluster(n: i32) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let (brokers, writers) =
        fjord_broker::testkit::in_memory_cluster(dir.path(), n, BrokerSettings::default())
            .unwrap()
            .into_iter()
            .unzip();
    Cluster {
        brokers,
        _writers: writers,
        _dir: dir,
    }
}

/// JoinGroup v3 (no KIP-394 round trip) of group `group` with a 1 s rebalance timeout: a new
/// member when `member` is empty.
pub async fn join_group(b: &Arc<Broker>, group: &str, member: &str) -> JoinGroupResponse {
    let request = JoinGroupRequest::default()
        .with_group_id(GroupId(sb(group)))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(1_000)
        .with_member_id(sb(member))
        .with_protocol_type(sb("consumer"))
        .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
        )
        .with_name(sb("range"))
        .with_metadata(Bytes::from_static(b"meta"))]);
    call(b, request, 3).await
}

/// SyncGroup v3 after `joined`; the leader gives every member the assignment `member id`.
pub async fn sync_group(
    b: &Arc<Broker>,
    group: &str,
    joined: &JoinGroupResponse,
) -> SyncGroupResponse {
    let assignments = joined
        .members
        .iter()
        .map(|m| {
            sync_group_request::SyncGroupRequestAssignment::default()
                .with_member_id(m.member_id.clone())
                .with_assignment(Bytes::copy_from_slice(m.member_id.as_bytes()))
        })
        .collect();
    let request = SyncGroupRequest::default()
        .with_group_id(GroupId(sb(group)))
        .with_generation_id(joined.generation_id)
        .with_member_id(joined.member_id.clone())
        .with_assignments(assignments);
    call(b, request, 3).await
}

/// OffsetCommit v7 of one offset of topic "t" partition 0; the partition's error code.
pub async fn commit_offset(
    b: &Arc<Broker>,
    group: &str,
    member: &str,
    generation: i32,
    offset: i64,
) -> i16 {
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(sb(group)))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(sb(member))
        .with_topics(vec![
            offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(TopicName(sb("t")))
                .with_partitions(vec![
                    offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(offset),
                ]),
        ]);
    let r = call(b, request, 7).await;
    r.topics[0].partitions[0].error_code
}
