//! Every served API at every served version, through the dispatcher with in-memory bytes:
//! requests are encoded and responses decoded with `kafka-protocol`, as a client would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kafka_protocol::messages::create_topics_request::CreatableTopic;

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use fjord_broker::dispatch;
use fjord_broker::{Broker, BrokerSettings};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Request, StrBytes};
use kafka_protocol::records::{RecordBatchDecoder, TimestampType};
use kafka_protocol::ResponseError;

struct Harness {
    broker: Arc<Broker>,
    _writer: fjord_storage::writer::WriterTask,
    _dir: tempfile::TempDir,
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let settings = BrokerSettings {
        default_partitions: 2,
        ..Default::default()
    };
    let (broker, writer) = fjord_broker::testkit::in_memory_broker(dir.path(), settings).unwrap();
    Harness {
        broker,
        _writer: writer,
        _dir: dir,
    }
}

mod common;

fn sb(s: &str) -> StrBytes {
    common::sb(s)
}

fn frame<R: Request>(request: &R, version: i16) -> Bytes {
    common::frame(request, version)
}

async fn call<R: Request>(h: &Harness, request: R, version: i16) -> R::Response {
    common::call(&h.broker, request, version).await
}

fn records(n: usize, ts: i64) -> Bytes {
    common::records(n, ts)
}

async fn create(h: &Harness, name: &str, partitions: i32) -> uuid::Uuid {
    common::create(&h.broker, name, partitions).await
}

#[tokio::test]
async fn api_versions_at_every_version() {
    let h = harness();
    for v in 0..=4 {
        let r = call(&h, ApiVersionsRequest::default(), v).await;
        assert_eq!(r.error_code, 0);
        for (key, min, max) in fjord_broker::versions::SUPPORTED {
            assert!(r.api_keys.iter().any(|k| k.api_key == *key as i16
                && k.min_version == *min
                && k.max_version == *max));
        }
    }
    // A version from the future is answered with v0 and UNSUPPORTED_VERSION (KIP-511).
    let started = dispatch::start(&h.broker, frame(&ApiVersionsRequest::default(), 3))
        .await
        .unwrap();
    assert!(started.reply.await.unwrap().is_some());
    let mut raw = frame(&ApiVersionsRequest::default(), 0).to_vec();
    raw[2..4].copy_from_slice(&77i16.to_be_bytes());
    let started = dispatch::start(&h.broker, Bytes::from(raw)).await.unwrap();
    let mut bytes = started.reply.await.unwrap().unwrap().slice(4..);
    let _ = ResponseHeader::decode(&mut bytes, 0).unwrap();
    let r = ApiVersionsResponse::decode(&mut bytes, 0).unwrap();
    assert_eq!(r.error_code, ResponseError::UnsupportedVersion.code());
    assert!(!r.api_keys.is_empty());
}

#[tokio::test]
async fn metadata_at_every_version() {
    let h = harness();
    for v in 0..=12 {
        let name = format!("auto-{v}");
        let mut request =
            MetadataRequest::default()
                .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
                )
                .with_name(Some(TopicName(sb(&name))))]));
        if v >= 4 {
            request.allow_auto_topic_creation = true;
        }
        let r = call(&h, request, v).await;
        assert_eq!(r.brokers.len(), 1, "v{v}");
        assert_eq!(r.topics.len(), 1);
        assert_eq!(r.topics[0].error_code, 0, "v{v}");
        assert_eq!(r.topics[0].partitions.len(), 2);
        // All topics.
        let all = call(
            &h,
            MetadataRequest::default().with_topics(if v == 0 { Some(vec![]) } else { None }),
            v,
        )
        .await;
        assert_eq!(all.topics.len(), v as usize + 1, "v{v}");
    }
    // v4+ without auto-creation: unknown.
    let r = call(
        &h,
        MetadataRequest::default()
            .with_allow_auto_topic_creation(false)
            .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
            )
            .with_name(Some(TopicName(sb("nope"))))])),
        9,
    )
    .await;
    assert_eq!(
        r.topics[0].error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
}

use common::produce_request;

#[tokio::test]
async fn produce_fetch_list_offsets_at_every_version() {
    let h = harness();
    let id = create(&h, "t", 2).await;
    let mut expected = 0;
    for v in 3..=11 {
        let r = call(&h, produce_request("t", 1, records(3, 1000 + expected)), v).await;
        let p = &r.responses[0].partition_responses[0];
        assert_eq!(p.error_code, 0, "produce v{v}");
        assert_eq!(p.base_offset, expected);
        expected += 3;
    }
    for v in 4..=16 {
        let mut topic = fetch_request::FetchTopic::default().with_partitions(vec![
            fetch_request::FetchPartition::default()
                .with_partition(1)
                .with_fetch_offset(4)
                .with_partition_max_bytes(1 << 20),
        ]);
        if v >= 13 {
            topic.topic_id = id;
        } else {
            topic.topic = TopicName(sb("t"));
        }
        let mut request = FetchRequest::default()
            .with_max_wait_ms(10)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![topic]);
        if v < 15 {
            request.replica_id = BrokerId(-1);
        }
        let r = call(&h, request, v).await;
        assert_eq!(r.error_code, 0);
        let p = &r.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "fetch v{v}");
        assert_eq!(p.high_watermark, expected);
        let mut bytes = p.records.clone().unwrap();
        let sets = RecordBatchDecoder::decode_all(&mut bytes).unwrap();
        let offsets: Vec<i64> = sets
            .iter()
            .flat_map(|s| s.records.iter().map(|r| r.offset))
            .collect();
        // The batch holding offset 4 starts at 3; whole batches before it are skipped.
        assert_eq!(offsets, (3..expected).collect::<Vec<_>>(), "fetch v{v}");
        let values: Vec<_> = sets
            .iter()
            .flat_map(|s| s.records.iter().map(|r| r.value.clone().unwrap()))
            .collect();
        assert_eq!(values[0], Bytes::from("v0"));
    }
    for v in 1..=8 {
        let ask = |ts: i64| {
            ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                    .with_name(TopicName(sb("t")))
                    .with_partitions(vec![
                        list_offsets_request::ListOffsetsPartition::default()
                            .with_partition_index(1)
                            .with_timestamp(ts),
                    ])])
        };
        let offset = |r: &ListOffsetsResponse| {
            let p = &r.topics[0].partitions[0];
            assert_eq!(p.error_code, 0);
            (p.offset, p.timestamp)
        };
        assert_eq!(offset(&call(&h, ask(-2), v).await).0, 0);
        assert_eq!(offset(&call(&h, ask(-1), v).await).0, expected);
        // Timestamps run 1000.. with one per offset, so timestamp 1000+n is at offset n.
        assert_eq!(offset(&call(&h, ask(1007), v).await), (7, 1007), "v{v}");
        assert_eq!(offset(&call(&h, ask(99_999), v).await).0, -1);
        if v >= 7 {
            assert_eq!(
                offset(&call(&h, ask(-3), v).await),
                (expected - 1, 1000 + expected - 1)
            );
        }
    }
}

#[tokio::test]
async fn produce_errors() {
    let h = harness();
    create(&h, "t", 1).await;
    let r = call(&h, produce_request("t", 5, records(1, 0)), 9).await;
    assert_eq!(
        r.responses[0].partition_responses[0].error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
    let mut bad = records(2, 0).to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    let r = call(&h, produce_request("t", 0, Bytes::from(bad)), 9).await;
    assert_eq!(
        r.responses[0].partition_responses[0].error_code,
        ResponseError::CorruptMessage.code()
    );
    let truncated = records(2, 0).slice(..30);
    let r = call(&h, produce_request("t", 0, truncated), 9).await;
    assert_eq!(
        r.responses[0].partition_responses[0].error_code,
        ResponseError::CorruptMessage.code()
    );
    // max.message.bytes.
    let r = call(
        &h,
        IncrementalAlterConfigsRequest::default().with_resources(vec![
            incremental_alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(sb("t"))
                .with_configs(vec![
                    incremental_alter_configs_request::AlterableConfig::default()
                        .with_name(sb("max.message.bytes"))
                        .with_value(Some(sb("100"))),
                ]),
        ]),
        1,
    )
    .await;
    assert_eq!(r.responses[0].error_code, 0);
    let r = call(&h, produce_request("t", 0, records(20, 0)), 9).await;
    assert_eq!(
        r.responses[0].partition_responses[0].error_code,
        ResponseError::MessageTooLarge.code()
    );
    // Nothing of the above was stored.
    let r = call(&h, produce_request("t", 0, records(1, 0)), 9).await;
    assert_eq!(r.responses[0].partition_responses[0].base_offset, 0);
}

#[tokio::test]
async fn admin_apis_at_every_version() {
    let h = harness();
    for v in 2..=7 {
        let name = format!("c{v}");
        let r = call(
            &h,
            CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(sb(&name)))
                .with_num_partitions(3)
                .with_replication_factor(3)
                .with_configs(vec![create_topics_request::CreatableTopicConfig::default()
                    .with_name(sb("retention.ms"))
                    .with_value(Some(sb("1000")))])]),
            v,
        )
        .await;
        assert_eq!(r.topics[0].error_code, 0, "create v{v}");
        let again = call(
            &h,
            CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(sb(&name)))
                .with_num_partitions(1)
                .with_replication_factor(1)]),
            v,
        )
        .await;
        assert_eq!(
            again.topics[0].error_code,
            ResponseError::TopicAlreadyExists.code()
        );
    }
    let bad = call(
        &h,
        CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(sb("bad name!")))
            .with_num_partitions(1)
            .with_replication_factor(1)]),
        7,
    )
    .await;
    assert_eq!(
        bad.topics[0].error_code,
        ResponseError::InvalidTopicException.code()
    );
    let bad = call(
        &h,
        CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(sb("x")))
            .with_num_partitions(1)
            .with_replication_factor(1)
            .with_configs(vec![create_topics_request::CreatableTopicConfig::default()
                .with_name(sb("no.such"))
                .with_value(Some(sb("1")))])]),
        7,
    )
    .await;
    assert_eq!(
        bad.topics[0].error_code,
        ResponseError::InvalidConfig.code()
    );

    for v in 0..=3 {
        let r = call(
            &h,
            CreatePartitionsRequest::default().with_topics(vec![
                create_partitions_request::CreatePartitionsTopic::default()
                    .with_name(TopicName(sb("c2")))
                    .with_count(4 + i32::from(v)),
            ]),
            v,
        )
        .await;
        assert_eq!(r.results[0].error_code, 0, "create partitions v{v}");
    }
    for v in 1..=4 {
        let r = call(
            &h,
            DescribeConfigsRequest::default().with_resources(vec![
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(sb("c3"))
                    .with_configuration_keys(Some(vec![sb("retention.ms"), sb("cleanup.policy")])),
            ]),
            v,
        )
        .await;
        let configs = &r.results[0].configs;
        assert_eq!(configs.len(), 2, "describe v{v}");
        let retention = configs
            .iter()
            .find(|c| c.name.as_str() == "retention.ms")
            .unwrap();
        assert_eq!(retention.value.as_ref().unwrap().as_str(), "1000");
    }
    for v in 0..=2 {
        let r = call(
            &h,
            AlterConfigsRequest::default().with_resources(vec![
                alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(sb("c4"))
                    .with_configs(vec![alter_configs_request::AlterableConfig::default()
                        .with_name(sb("cleanup.policy"))
                        .with_value(Some(sb("compact")))]),
            ]),
            v,
        )
        .await;
        assert_eq!(r.responses[0].error_code, 0, "alter v{v}");
    }
    // AlterConfigs replaced the whole set: retention.ms is back to its default.
    let r = call(
        &h,
        DescribeConfigsRequest::default().with_resources(vec![
            describe_configs_request::DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(sb("c4")),
        ]),
        4,
    )
    .await;
    let get = |name: &str| {
        r.results[0]
            .configs
            .iter()
            .find(|c| c.name.as_str() == name)
            .map(|c| {
                (
                    c.value.as_ref().unwrap().as_str().to_string(),
                    c.config_source,
                )
            })
            .unwrap()
    };
    assert_eq!(get("retention.ms"), ("604800000".to_string(), 5));
    assert_eq!(get("cleanup.policy"), ("compact".to_string(), 1));

    for v in 0..=1 {
        let r = call(&h, DescribeClusterRequest::default(), v).await;
        assert_eq!(r.brokers.len(), 1);
    }
    for v in 0..=5 {
        let mut request = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000);
        if v >= 3 {
            request.producer_id = ProducerId(-1);
            request.producer_epoch = -1;
        }
        let r = call(&h, request, v).await;
        assert_eq!(r.error_code, 0);
        assert!(r.producer_id.0 >= 0);
    }
    for v in 1..=6 {
        let name = TopicName(sb(&format!("c{}", v + 1)));
        let mut request = DeleteTopicsRequest::default().with_timeout_ms(1000);
        if v >= 6 {
            request.topics =
                vec![delete_topics_request::DeleteTopicState::default().with_name(Some(name))];
        } else {
            request.topic_names = vec![name];
        }
        let r = call(&h, request, v).await;
        assert_eq!(r.responses[0].error_code, 0, "delete v{v}");
    }
    let r = call(
        &h,
        DeleteTopicsRequest::default().with_topic_names(vec![TopicName(sb("c2"))]),
        4,
    )
    .await;
    assert_eq!(
        r.responses[0].error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
}

#[tokio::test]
async fn garbage_is_refused_without_panicking() {
    let h = harness();
    let valid = frame(&produce_request("t", 0, records(2, 0)), 9);
    for cut in 0..valid.len() {
        let _ = dispatch::start(&h.broker, valid.slice(..cut)).await;
    }
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..2000 {
        let len = (seed % 200) as usize;
        let mut buf = BytesMut::with_capacity(len);
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            buf.put_u8(seed as u8);
        }
        // Keep a valid API key and version half the time so bodies get decoded.
        if len >= 4 && seed.is_multiple_of(2) {
            buf[0..2].copy_from_slice(&3i16.to_be_bytes());
            buf[2..4].copy_from_slice(&((seed % 13) as i16).to_be_bytes());
        }
        if let Ok(started) = dispatch::start(&h.broker, buf.freeze()).await {
            let _ = tokio::time::timeout(Duration::from_secs(5), started.reply).await;
        }
    }
    assert!(matches!(
        dispatch::start(&h.broker, Bytes::from_static(&[0, 99, 0, 0, 0, 0, 0, 1])).await,
        Err(dispatch::ProtocolError::UnknownApi(99))
    ));
}

fn fetch(session_id: i32, epoch: i32, partitions: &[(i32, i64)]) -> FetchRequest {
    let mut request = common::fetch_request("s", partitions, 1 << 20)
        .with_session_id(session_id)
        .with_session_epoch(epoch);
    if partitions.is_empty() {
        request.topics.clear();
    }
    request
}

fn listed(r: &FetchResponse) -> Vec<(i32, usize)> {
    r.responses
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| (p.partition_index, p.records.as_ref().map_or(0, |b| b.len())))
        .collect()
}

#[tokio::test]
async fn incremental_fetch_sessions() {
    let h = harness();
    create(&h, "s", 2).await;
    call(&h, produce_request("s", 0, records(2, 0)), 9).await;

    // Open a session: a full response for both partitions.
    let r = call(&h, fetch(0, 0, &[(0, 0), (1, 0)]), 12).await;
    assert_eq!(r.error_code, 0);
    let id = r.session_id;
    assert_ne!(id, 0);
    let got = listed(&r);
    assert_eq!(got.len(), 2);
    assert!(got[0].1 > 0 && got[1].1 == 0);

    // Incremental, partition 0 moved on: nothing new anywhere, so nothing is listed.
    let r = call(&h, fetch(id, 1, &[(0, 2)]), 12).await;
    assert_eq!((r.error_code, r.session_id), (0, id));
    assert!(listed(&r).is_empty(), "{:?}", listed(&r));

    // New data on partition 1: only it is listed, though the request names no partition.
    call(&h, produce_request("s", 1, records(3, 0)), 9).await;
    let r = call(&h, fetch(id, 2, &[]), 12).await;
    let got = listed(&r);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, 1);
    assert!(got[0].1 > 0);

    // A wrong epoch and an unknown session are refused.
    let r = call(&h, fetch(id, 7, &[]), 12).await;
    assert_eq!(r.error_code, ResponseError::InvalidFetchSessionEpoch.code());
    let r = call(&h, fetch(id + 1000, 1, &[]), 12).await;
    assert_eq!(r.error_code, ResponseError::FetchSessionIdNotFound.code());

    // Forgetting partition 1 and closing the session.
    let mut request = fetch(id, 3, &[]);
    request.forgotten_topics_data = vec![fetch_request::ForgottenTopic::default()
        .with_topic(TopicName(sb("s")))
        .with_partitions(vec![1])];
    call(&h, request, 12).await;
    assert_eq!(h.broker.fetch_sessions.len(), 1);
    let r = call(&h, fetch(id, -1, &[(0, 0)]), 12).await;
    assert_eq!(r.session_id, 0);
    assert_eq!(h.broker.fetch_sessions.len(), 0);
    // Sessionless fetches never open one.
    call(&h, fetch(0, -1, &[(0, 0)]), 12).await;
    assert!(h.broker.fetch_sessions.is_empty());
}

#[tokio::test]
async fn log_append_time_topics_stamp_batches() {
    let h = harness();
    let r = call(
        &h,
        CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(sb("lat")))
            .with_num_partitions(1)
            .with_replication_factor(1)
            .with_configs(vec![create_topics_request::CreatableTopicConfig::default()
                .with_name(sb("message.timestamp.type"))
                .with_value(Some(sb("LogAppendTime")))])]),
        7,
    )
    .await;
    assert_eq!(r.topics[0].error_code, 0);
    let r = call(&h, produce_request("lat", 0, records(3, 5)), 9).await;
    let p = &r.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 0);
    assert!(
        p.log_append_time_ms > 1_600_000_000_000,
        "{}",
        p.log_append_time_ms
    );
    let r = call(
        &h,
        FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_bytes(1 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(TopicName(sb("lat")))
                .with_partitions(vec![fetch_request::FetchPartition::default()
                    .with_partition(0)
                    .with_partition_max_bytes(1 << 20)])]),
        11,
    )
    .await;
    let mut bytes = r.responses[0].partitions[0].records.clone().unwrap();
    let sets = RecordBatchDecoder::decode_all(&mut bytes).unwrap();
    for record in &sets[0].records {
        assert_eq!(record.timestamp_type, TimestampType::LogAppend);
    }
}

fn gid(s: &str) -> GroupId {
    GroupId(sb(s))
}

/// One member through JoinGroup (with MEMBER_ID_REQUIRED from v4), SyncGroup and Heartbeat at
/// the given versions; returns (member id, generation).
async fn join_and_sync(h: &Harness, group: &str, join_v: i16, sync_v: i16) -> (StrBytes, i32) {
    let join = |member: StrBytes| {
        let mut r = JoinGroupRequest::default()
            .with_group_id(gid(group))
            .with_session_timeout_ms(10_000)
            .with_member_id(member)
            .with_protocol_type(sb("consumer"))
            .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
            )
            .with_name(sb("range"))
            .with_metadata(Bytes::from_static(b"meta"))]);
        if join_v >= 1 {
            r.rebalance_timeout_ms = 10_000;
        }
        r
    };
    let mut r = call(h, join(sb("")), join_v).await;
    if join_v >= 4 {
        assert_eq!(
            r.error_code,
            ResponseError::MemberIdRequired.code(),
            "join v{join_v}"
        );
        r = call(h, join(r.member_id.clone()), join_v).await;
    }
    assert_eq!(r.error_code, 0, "join v{join_v}");
    assert_eq!(r.leader, r.member_id);
    assert_eq!(r.members.len(), 1);
    assert_eq!(r.members[0].metadata, Bytes::from_static(b"meta"));
    let member = r.member_id.clone();
    let mut sync = SyncGroupRequest::default()
        .with_group_id(gid(group))
        .with_generation_id(r.generation_id)
        .with_member_id(member.clone())
        .with_assignments(vec![
            sync_group_request::SyncGroupRequestAssignment::default()
                .with_member_id(member.clone())
                .with_assignment(Bytes::from_static(b"assignment")),
        ]);
    if sync_v >= 5 {
        sync.protocol_type = Some(sb("consumer"));
        sync.protocol_name = Some(sb("range"));
    }
    let s = call(h, sync, sync_v).await;
    assert_eq!(s.error_code, 0, "sync v{sync_v}");
    assert_eq!(s.assignment, Bytes::from_static(b"assignment"));
    (member, r.generation_id)
}

#[tokio::test]
async fn group_membership_apis_at_every_version() {
    let h = harness();
    for v in 0..=5 {
        let mut request = FindCoordinatorRequest::default();
        if v >= 4 {
            request.coordinator_keys = vec![sb("g")];
        } else {
            request.key = sb("g");
        }
        let r = call(&h, request, v).await;
        if v >= 4 {
            assert_eq!(r.coordinators[0].error_code, 0);
        } else {
            assert_eq!((r.error_code, r.port), (0, 9092));
        }
    }
    for join_v in 0..=9 {
        let group = format!("g-join-{join_v}");
        let sync_v = join_v.min(5);
        let (member, generation) = join_and_sync(&h, &group, join_v, sync_v).await;
        for hb_v in 0..=4 {
            let r = call(
                &h,
                HeartbeatRequest::default()
                    .with_group_id(gid(&group))
                    .with_generation_id(generation)
                    .with_member_id(member.clone()),
                hb_v,
            )
            .await;
            assert_eq!(r.error_code, 0, "heartbeat v{hb_v}");
        }
        let r = call(
            &h,
            HeartbeatRequest::default()
                .with_group_id(gid(&group))
                .with_generation_id(generation + 7)
                .with_member_id(member.clone()),
            4,
        )
        .await;
        assert_eq!(r.error_code, ResponseError::IllegalGeneration.code());
        let leave_v = join_v.min(5);
        let mut leave = LeaveGroupRequest::default().with_group_id(gid(&group));
        if leave_v >= 3 {
            leave.members =
                vec![leave_group_request::MemberIdentity::default().with_member_id(member.clone())];
        } else {
            leave.member_id = member.clone();
        }
        let r = call(&h, leave, leave_v).await;
        assert_eq!(r.error_code, 0, "leave v{leave_v}");
        if leave_v >= 3 {
            assert_eq!(r.members[0].error_code, 0);
        }
    }
    for v in 0..=5 {
        let r = call(&h, ListGroupsRequest::default(), v).await;
        assert_eq!(r.error_code, 0);
        assert!(
            r.groups.iter().any(|g| g.group_id.0.as_str() == "g-join-3"),
            "list v{v}"
        );
    }
    let (member, _) = join_and_sync(&h, "described", 9, 5).await;
    for v in 0..=5 {
        let r = call(
            &h,
            DescribeGroupsRequest::default().with_groups(vec![gid("described"), gid("nope")]),
            v,
        )
        .await;
        let d = &r.groups[0];
        assert_eq!(d.error_code, 0);
        assert_eq!(d.group_state.as_str(), "Stable", "describe v{v}");
        assert_eq!(d.protocol_data.as_str(), "range");
        assert_eq!(d.members[0].member_id, member);
        assert_eq!(
            d.members[0].member_assignment,
            Bytes::from_static(b"assignment")
        );
        assert_eq!(r.groups[1].group_state.as_str(), "Dead");
    }
    // A group with members cannot be deleted; an empty one can, once.
    let r = call(
        &h,
        DeleteGroupsRequest::default().with_groups_names(vec![gid("described")]),
        2,
    )
    .await;
    assert_eq!(r.results[0].error_code, ResponseError::NonEmptyGroup.code());
    for v in 0..=2 {
        let group = format!("g-join-{v}");
        let r = call(
            &h,
            DeleteGroupsRequest::default().with_groups_names(vec![gid(&group)]),
            v,
        )
        .await;
        assert_eq!(r.results[0].error_code, 0, "delete v{v}");
        let r = call(
            &h,
            DeleteGroupsRequest::default().with_groups_names(vec![gid(&group)]),
            v,
        )
        .await;
        assert_eq!(
            r.results[0].error_code,
            ResponseError::GroupIdNotFound.code()
        );
    }
}

#[tokio::test]
async fn offsets_at_every_version() {
    let h = harness();
    create(&h, "o", 2).await;
    for v in 2..=9 {
        let group = format!("og-{v}");
        let mut request = OffsetCommitRequest::default()
            .with_group_id(gid(&group))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![
                offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(TopicName(sb("o")))
                    .with_partitions(vec![
                        offset_commit_request::OffsetCommitRequestPartition::default()
                            .with_partition_index(1)
                            .with_committed_offset(40 + i64::from(v))
                            .with_committed_metadata(Some(sb("meta"))),
                        offset_commit_request::OffsetCommitRequestPartition::default()
                            .with_partition_index(9)
                            .with_committed_offset(1),
                    ]),
            ]);
        if (2..=4).contains(&v) {
            request.retention_time_ms = -1;
        }
        let r = call(&h, request, v).await;
        let codes: Vec<i16> = r.topics[0]
            .partitions
            .iter()
            .map(|p| p.error_code)
            .collect();
        assert_eq!(
            codes,
            vec![0, ResponseError::UnknownTopicOrPartition.code()],
            "commit v{v}"
        );
    }
    for v in 1..=9 {
        let group = format!("og-{}", v.max(2));
        let r = if v >= 8 {
            let r = call(
                &h,
                OffsetFetchRequest::default().with_groups(vec![
                    offset_fetch_request::OffsetFetchRequestGroup::default()
                        .with_group_id(gid(&group))
                        .with_topics(Some(vec![
                            offset_fetch_request::OffsetFetchRequestTopics::default()
                                .with_name(TopicName(sb("o")))
                                .with_partition_indexes(vec![0, 1]),
                        ])),
                ]),
                v,
            )
            .await;
            let p = &r.groups[0].topics[0].partitions;
            vec![
                (p[0].committed_offset, p[0].metadata.clone()),
                (p[1].committed_offset, p[1].metadata.clone()),
            ]
        } else {
            let r = call(
                &h,
                OffsetFetchRequest::default()
                    .with_group_id(gid(&group))
                    .with_topics(Some(vec![
                        offset_fetch_request::OffsetFetchRequestTopic::default()
                            .with_name(TopicName(sb("o")))
                            .with_partition_indexes(vec![0, 1]),
                    ])),
                v,
            )
            .await;
            let p = &r.topics[0].partitions;
            vec![
                (p[0].committed_offset, p[0].metadata.clone()),
                (p[1].committed_offset, p[1].metadata.clone()),
            ]
        };
        assert_eq!(r[0].0, -1, "fetch v{v}");
        assert_eq!(r[1].0, 40 + i64::from(v.max(2)), "fetch v{v}");
        assert_eq!(r[1].1.as_ref().map(|m| m.as_str()), Some("meta"));
    }
    // All topics of a group (null topics, v2+).
    let r = call(
        &h,
        OffsetFetchRequest::default()
            .with_group_id(gid("og-3"))
            .with_topics(None),
        7,
    )
    .await;
    assert_eq!(r.topics.len(), 1);
    assert_eq!(r.topics[0].partitions[0].committed_offset, 43);
    // OffsetDelete of an empty group's offsets.
    let r = call(
        &h,
        OffsetDeleteRequest::default()
            .with_group_id(gid("og-3"))
            .with_topics(vec![
                offset_delete_request::OffsetDeleteRequestTopic::default()
                    .with_name(TopicName(sb("o")))
                    .with_partitions(vec![
                        offset_delete_request::OffsetDeleteRequestPartition::default()
                            .with_partition_index(1),
                    ]),
            ]),
        0,
    )
    .await;
    assert_eq!(r.error_code, 0);
    let r = call(
        &h,
        OffsetFetchRequest::default()
            .with_group_id(gid("og-3"))
            .with_topics(None),
        7,
    )
    .await;
    assert!(r.topics.is_empty());
    // A member of a live group must name its generation.
    let (member, generation) = join_and_sync(&h, "live", 9, 5).await;
    let commit = |generation: i32| {
        OffsetCommitRequest::default()
            .with_group_id(gid("live"))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(member.clone())
            .with_topics(vec![
                offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(TopicName(sb("o")))
                    .with_partitions(vec![
                        offset_commit_request::OffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(5),
                    ]),
            ])
    };
    let r = call(&h, commit(generation), 8).await;
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    let r = call(&h, commit(generation - 1), 8).await;
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        ResponseError::IllegalGeneration.code()
    );
}

fn cg_heartbeat(
    group: &str,
    member: &str,
    epoch: i32,
    owned: Option<Vec<(uuid::Uuid, Vec<i32>)>>,
) -> ConsumerGroupHeartbeatRequest {
    ConsumerGroupHeartbeatRequest::default()
        .with_group_id(gid(group))
        .with_member_id(sb(member))
        .with_member_epoch(epoch)
        .with_rebalance_timeout_ms(-1)
        .with_topic_partitions(owned.map(|o| {
            o.into_iter()
                .map(|(t, p)| {
                    consumer_group_heartbeat_request::TopicPartitions::default()
                        .with_topic_id(t)
                        .with_partitions(p)
                })
                .collect()
        }))
}

fn cg_join(group: &str, member: &str, topic: &str) -> ConsumerGroupHeartbeatRequest {
    cg_heartbeat(group, member, 0, Some(vec![]))
        .with_rebalance_timeout_ms(30_000)
        .with_subscribed_topic_names(Some(vec![TopicName(sb(topic))]))
}

fn cg_assigned(r: &ConsumerGroupHeartbeatResponse) -> Option<Vec<(uuid::Uuid, Vec<i32>)>> {
    r.assignment.as_ref().map(|a| {
        a.topic_partitions
            .iter()
            .map(|tp| (tp.topic_id, tp.partitions.clone()))
            .collect()
    })
}

#[tokio::test]
async fn consumer_group_apis_at_every_version() {
    let h = harness();
    let topic = create(&h, "cg", 4).await;
    for v in 0..=1i16 {
        let group = format!("cg-{v}");
        // v0: the broker names new members; v1: the client does.
        let a_id = if v == 0 {
            String::new()
        } else {
            uuid::Uuid::new_v4().to_string()
        };
        let mut join = cg_join(&group, &a_id, "cg");
        if v == 1 {
            join.server_assignor = Some(sb("range"));
        }
        let r = call(&h, join, v).await;
        assert_eq!(r.error_code, 0, "join v{v}: {:?}", r.error_message);
        let a = r.member_id.clone().unwrap().as_str().to_string();
        if v == 1 {
            assert_eq!(a, a_id);
        } else {
            assert!(!a.is_empty());
        }
        assert_eq!(r.member_epoch, 1);
        assert_eq!(r.heartbeat_interval_ms, 5000);
        assert_eq!(cg_assigned(&r), Some(vec![(topic, vec![0, 1, 2, 3])]));

        // b joins: nothing until a has revoked half.
        let b_id = if v == 0 {
            String::new()
        } else {
            uuid::Uuid::new_v4().to_string()
        };
        let r = call(&h, cg_join(&group, &b_id, "cg"), v).await;
        assert_eq!(r.error_code, 0);
        let b = r.member_id.clone().unwrap().as_str().to_string();
        assert_eq!(r.member_epoch, 2);
        assert_eq!(cg_assigned(&r), Some(vec![]));
        let r = call(
            &h,
            cg_heartbeat(&group, &a, 1, Some(vec![(topic, vec![0, 1, 2, 3])])),
            v,
        )
        .await;
        assert_eq!((r.error_code, r.member_epoch), (0, 1));
        let keep = cg_assigned(&r).unwrap();
        assert_eq!(keep[0].1.len(), 2);
        let r = call(&h, cg_heartbeat(&group, &b, 2, None), v).await;
        assert_eq!((r.error_code, cg_assigned(&r)), (0, None));
        let r = call(&h, cg_heartbeat(&group, &a, 1, Some(keep.clone())), v).await;
        assert_eq!((r.error_code, r.member_epoch), (0, 2));
        let r = call(&h, cg_heartbeat(&group, &b, 2, None), v).await;
        let got = cg_assigned(&r).unwrap();
        let mut all: Vec<i32> = keep[0].1.iter().chain(&got[0].1).copied().collect();
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3]);
        if v == 1 {
            // range over sorted member ids.
            let first = if a < b { &keep } else { &got };
            assert_eq!(first[0].1, vec![0, 1]);
        }

        // Errors.
        let r = call(&h, cg_heartbeat(&group, &a, 7, None), v).await;
        assert_eq!(r.error_code, ResponseError::FencedMemberEpoch.code());
        let r = call(&h, cg_heartbeat(&group, "nobody", 1, None), v).await;
        assert_eq!(r.error_code, ResponseError::UnknownMemberId.code());
        let r = call(
            &h,
            cg_join(&group, &uuid::Uuid::new_v4().to_string(), "cg")
                .with_server_assignor(Some(sb("cooperative-sticky"))),
            v,
        )
        .await;
        assert_eq!(r.error_code, ResponseError::UnsupportedAssignor.code());

        for dv in 0..=1 {
            let r = call(
                &h,
                ConsumerGroupDescribeRequest::default()
                    .with_group_ids(vec![gid(&group), gid("nope")]),
                dv,
            )
            .await;
            let d = &r.groups[0];
            assert_eq!(d.error_code, 0);
            assert_eq!(d.group_state.as_str(), "Stable");
            assert_eq!((d.group_epoch, d.assignment_epoch), (2, 2));
            assert_eq!(
                d.assignor_name.as_str(),
                if v == 1 { "range" } else { "uniform" }
            );
            assert_eq!(d.members.len(), 2);
            let m = d
                .members
                .iter()
                .find(|m| m.member_id.as_str() == a)
                .unwrap();
            assert_eq!(m.member_epoch, 2);
            assert_eq!(m.subscribed_topic_names[0].0.as_str(), "cg");
            assert_eq!(m.assignment.topic_partitions[0].topic_name.0.as_str(), "cg");
            assert_eq!(m.assignment.topic_partitions[0].partitions, keep[0].1);
            assert_eq!(m.member_type, if dv >= 1 { 1 } else { -1 });
            assert_eq!(
                r.groups[1].error_code,
                ResponseError::GroupIdNotFound.code()
            );
        }
        let r = call(&h, ListGroupsRequest::default(), 5).await;
        let listed = r
            .groups
            .iter()
            .find(|g| g.group_id.0.as_str() == group)
            .unwrap();
        assert_eq!(listed.group_type.as_str(), "consumer");
        assert_eq!(listed.protocol_type.as_str(), "consumer");
        assert_eq!(listed.group_state.as_str(), "Stable");
        let r = call(
            &h,
            ListGroupsRequest::default().with_types_filter(vec![sb("classic")]),
            5,
        )
        .await;
        assert!(r.groups.iter().all(|g| g.group_id.0.as_str() != group));
        // DescribeGroups (classic) does not know it; JoinGroup cannot join it.
        let r = call(
            &h,
            DescribeGroupsRequest::default().with_groups(vec![gid(&group)]),
            5,
        )
        .await;
        assert_eq!(r.groups[0].group_state.as_str(), "Dead");
        let r = call(
            &h,
            JoinGroupRequest::default()
                .with_group_id(gid(&group))
                .with_session_timeout_ms(10_000)
                .with_member_id(sb("x"))
                .with_protocol_type(sb("consumer"))
                .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
                )
                .with_name(sb("range"))]),
            9,
        )
        .await;
        assert_eq!(
            r.error_code,
            ResponseError::InconsistentGroupProtocol.code()
        );

        // Offsets: v9 with the member epoch.
        let commit = |epoch: i32| {
            OffsetCommitRequest::default()
                .with_group_id(gid(&group))
                .with_generation_id_or_member_epoch(epoch)
                .with_member_id(sb(&a))
                .with_topics(vec![
                    offset_commit_request::OffsetCommitRequestTopic::default()
                        .with_name(TopicName(sb("cg")))
                        .with_partitions(vec![
                            offset_commit_request::OffsetCommitRequestPartition::default()
                                .with_partition_index(keep[0].1[0])
                                .with_committed_offset(3),
                        ]),
                ])
        };
        let code = |r: OffsetCommitResponse| r.topics[0].partitions[0].error_code;
        assert_eq!(code(call(&h, commit(2), 9).await), 0);
        assert_eq!(
            code(call(&h, commit(1), 9).await),
            ResponseError::StaleMemberEpoch.code()
        );
        assert_eq!(
            code(call(&h, commit(2), 8).await),
            ResponseError::UnsupportedVersion.code()
        );
        let fetch = |epoch: i32| {
            OffsetFetchRequest::default().with_groups(vec![
                offset_fetch_request::OffsetFetchRequestGroup::default()
                    .with_group_id(gid(&group))
                    .with_member_id(Some(sb(&a)))
                    .with_member_epoch(epoch)
                    .with_topics(None),
            ])
        };
        let r = call(&h, fetch(2), 9).await;
        assert_eq!(r.groups[0].error_code, 0);
        assert_eq!(r.groups[0].topics[0].partitions[0].committed_offset, 3);
        let r = call(&h, fetch(1), 9).await;
        assert_eq!(
            r.groups[0].error_code,
            ResponseError::StaleMemberEpoch.code()
        );

        // The group's state is durable: another coordinator over the same store resumes it.
        let other = fjord_broker::groups::GroupCoordinator::start(
            h.broker.coordinator.clone(),
            Default::default(),
            h.broker.cluster.clone(),
        );
        let slot = other.slot(&group).await.unwrap();
        {
            let c = slot.consumer.lock();
            assert_eq!((c.group_epoch, c.members.len()), (2, 2));
            assert_eq!(c.members[&a].member_epoch, 2);
        }

        // Both leave; the group stays, empty.
        for m in [&a, &b] {
            let r = call(&h, cg_heartbeat(&group, m, -1, None), v).await;
            assert_eq!((r.error_code, r.member_epoch), (0, -1));
        }
        let r = call(
            &h,
            ConsumerGroupDescribeRequest::default().with_group_ids(vec![gid(&group)]),
            v,
        )
        .await;
        assert_eq!(r.groups[0].group_state.as_str(), "Empty");
        assert!(r.groups[0].members.is_empty());
    }
    // v1 requires a member id; regular expressions are refused.
    let r = call(&h, cg_join("cg-x", "", "cg"), 1).await;
    assert_eq!(r.error_code, ResponseError::InvalidRequest.code());
    let r = call(
        &h,
        cg_join("cg-x", "m", "cg").with_subscribed_topic_regex(Some(sb("c.*"))),
        1,
    )
    .await;
    assert_eq!(r.error_code, ResponseError::InvalidRequest.code());
    // A classic group with members is not a consumer group.
    join_and_sync(&h, "classic", 9, 5).await;
    let r = call(&h, cg_join("classic", "m", "cg"), 1).await;
    assert_eq!(r.error_code, ResponseError::GroupIdNotFound.code());
}

/// Group deadlines (sessions, rebalance timeouts) run on the runtime's clock, the one its timers
/// use: with the clock paused, a member that never heartbeats again is expired and the rebalance
/// goes on without it once virtual time passes its session. (On the wall clock, the fuzz
/// target's paused runtime spun its 100 ms group tick until real time caught up, and libFuzzer
/// reported a hang.) Virtual time also jumps while the store does blocking I/O, so the test
/// bounds the wait by a virtual timeout rather than checking when exactly the session ended; and
/// it pauses the clock only once the first member is in the group, since a join now waits for
/// the store before it is answered, and virtual time running meanwhile would end the member's
/// session before it could sync.
#[tokio::test]
async fn group_deadlines_follow_the_runtime_clock() {
    let h = harness();
    let (first, generation) = join_and_sync(&h, "clocked", 5, 5).await;
    tokio::time::pause();
    let join = |member: StrBytes| {
        JoinGroupRequest::default()
            .with_group_id(gid("clocked"))
            .with_session_timeout_ms(60_000)
            .with_rebalance_timeout_ms(60_000)
            .with_member_id(member)
            .with_protocol_type(sb("consumer"))
            .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
            )
            .with_name(sb("range"))
            .with_metadata(Bytes::from_static(b"meta"))])
    };
    let r = call(&h, join(sb("")), 5).await;
    assert_eq!(r.error_code, ResponseError::MemberIdRequired.code());
    // The first member neither heartbeats nor rejoins: its 10 s session (join_and_sync) ends
    // and the second member's join completes without it.
    let r = tokio::time::timeout(
        Duration::from_secs(600),
        call(&h, join(r.member_id.clone()), 5),
    )
    .await
    .expect("the join never completed on the paused clock");
    assert_eq!(r.error_code, 0);
    assert!(r.generation_id > generation);
    assert_eq!(r.leader, r.member_id);
    assert_eq!(r.members.len(), 1);
    assert_ne!(r.member_id, first);
}

/// A fetch's max_bytes is shared in partition order (partitions are read concurrently, then cut
/// to whole batches within what their turn left); each partition keeps its own limit.
#[tokio::test]
async fn fetch_shares_max_bytes_in_partition_order() {
    let h = harness();
    create(&h, "m", 4).await;
    let batch = records(5, 0);
    let size = batch.len();
    for p in 0..4 {
        for _ in 0..3 {
            let r = call(&h, produce_request("m", p, batch.clone()), 9).await;
            assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
        }
    }
    let fetch_all = |max_bytes: usize, partition_max: usize| {
        FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(10)
            .with_min_bytes(1)
            .with_max_bytes(max_bytes as i32)
            .with_session_epoch(-1)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(TopicName(sb("m")))
                .with_partitions(
                    (0..4)
                        .map(|p| {
                            fetch_request::FetchPartition::default()
                                .with_partition(p)
                                .with_partition_max_bytes(partition_max as i32)
                        })
                        .collect(),
                )])
    };
    let batches = |r: &FetchResponse| -> Vec<(i32, usize)> {
        listed(r).into_iter().map(|(p, n)| (p, n / size)).collect()
    };
    let r = call(&h, fetch_all(1 << 20, 1 << 20), 12).await;
    assert_eq!(batches(&r), [(0, 3), (1, 3), (2, 3), (3, 3)]);
    // The response limit binds: whole batches in order; a partition with room left for less
    // than a batch gets none (only the first partition's first batch may exceed a limit), and
    // nothing comes after.
    let r = call(&h, fetch_all(5 * size + 1, 1 << 20), 12).await;
    assert_eq!(batches(&r), [(0, 3), (1, 2), (2, 0), (3, 0)]);
    // Partition limits too: the first two partitions are read together, the rest after them.
    let r = call(&h, fetch_all(5 * size, 2 * size + 1), 12).await;
    assert_eq!(batches(&r), [(0, 2), (1, 2), (2, 1), (3, 0)]);
    // The first batch comes even past both limits.
    let r = call(&h, fetch_all(1, 1), 12).await;
    assert_eq!(batches(&r), [(0, 1), (1, 0), (2, 0), (3, 0)]);
    for p in r.responses[0].partitions.iter() {
        if let Some(records) = &p.records {
            assert_eq!(records.len() % size, 0, "whole batches only");
        }
    }
}

fn delete_records(name: &str, partition: i32, offset: i64) -> DeleteRecordsRequest {
    DeleteRecordsRequest::default()
        .with_timeout_ms(1000)
        .with_topics(vec![delete_records_request::DeleteRecordsTopic::default()
            .with_name(TopicName(sb(name)))
            .with_partitions(vec![
                delete_records_request::DeleteRecordsPartition::default()
                    .with_partition_index(partition)
                    .with_offset(offset),
            ])])
}

fn low_watermark(r: &DeleteRecordsResponse) -> (i16, i64) {
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.low_watermark)
}

/// DeleteRecords moves the log start at every version; Fetch below it is out of range and every
/// fetch answer carries it; ListOffsets(earliest) and timestamp lookups answer from it.
#[tokio::test]
async fn delete_records_moves_the_log_start() {
    let h = harness();
    create(&h, "dr", 1).await;
    for i in 0..4 {
        let r = call(
            &h,
            common::produce_request("dr", 0, records(3, 1000 + 3 * i)),
            9,
        )
        .await;
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }
    let out_of_range = ResponseError::OffsetOutOfRange.code();
    let unknown = ResponseError::UnknownTopicOrPartition.code();
    for (v, before, expected) in [(0, 2, (0, 2)), (1, 4, (0, 4)), (2, 1, (0, 4))] {
        let r = call(&h, delete_records("dr", 0, before), v).await;
        assert_eq!(low_watermark(&r), expected, "v{v}");
    }
    let r = call(&h, delete_records("dr", 0, 13), 2).await;
    assert_eq!(low_watermark(&r), (out_of_range, -1));
    let r = call(&h, delete_records("dr", 1, 0), 2).await;
    assert_eq!(low_watermark(&r), (unknown, -1));
    let r = call(&h, delete_records("nope", 0, 0), 2).await;
    assert_eq!(low_watermark(&r), (unknown, -1));

    // Below the start: out of range, with the log start in the answer.
    let r = call(&h, common::fetch_request("dr", &[(0, 3)], 1 << 20), 12).await;
    let p = &r.responses[0].partitions[0];
    assert_eq!(p.error_code, out_of_range);
    assert_eq!((p.log_start_offset, p.high_watermark), (4, 12));
    // At the start: the batch holding it (from offset 3; clients skip what is before 4).
    let r = call(&h, common::fetch_request("dr", &[(0, 4)], 1 << 20), 12).await;
    let p = &r.responses[0].partitions[0];
    assert_eq!((p.error_code, p.log_start_offset), (0, 4));
    let mut bytes = p.records.clone().unwrap();
    let sets = RecordBatchDecoder::decode_all(&mut bytes).unwrap();
    assert_eq!(sets[0].records[0].offset, 3);

    let ask = |ts: i64| {
        ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                .with_name(TopicName(sb("dr")))
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(ts),
                ])])
    };
    let offset = |r: &ListOffsetsResponse| r.topics[0].partitions[0].offset;
    assert_eq!(offset(&call(&h, ask(-2), 8).await), 4);
    // Timestamp 1000 is at offset 0, which is gone: the first readable offset answers.
    assert_eq!(offset(&call(&h, ask(1000), 8).await), 4);
    assert_eq!(offset(&call(&h, ask(1007), 8).await), 7);

    // -1: up to the high watermark.
    let r = call(&h, delete_records("dr", 0, -1), 2).await;
    assert_eq!(low_watermark(&r), (0, 12));
    assert_eq!(offset(&call(&h, ask(-2), 8).await), 12);
    assert_eq!(offset(&call(&h, ask(1000), 8).await), -1);
}

/// A batch whose records at `keyless` have no key (the others `k<i>`), compressed as asked.
fn batch_with_keyless(
    n: usize,
    keyless: &[usize],
    compression: kafka_protocol::records::Compression,
) -> Bytes {
    let records = (0..n).map(|i| {
        let key = (!keyless.contains(&i)).then(|| Bytes::from(format!("k{i}")));
        common::record(i, key, Some(Bytes::from(format!("v{i}"))), 1000 + i as i64)
    });
    common::encode(records, compression)
}

/// A compacted topic refuses records without a key as Kafka does (KIP-467): INVALID_RECORD for
/// the partition, which records failed in `record_errors`, an `error_message`; the other
/// partitions of the same request are appended, and nothing of the refused one is stored.
#[tokio::test]
async fn compacted_topics_refuse_records_without_a_key() {
    use kafka_protocol::records::Compression;
    let h = harness();
    let r = call(
        &h,
        CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(sb("compacted")))
            .with_num_partitions(2)
            .with_replication_factor(1)
            .with_configs(vec![create_topics_request::CreatableTopicConfig::default()
                .with_name(sb("cleanup.policy"))
                .with_value(Some(sb("compact,delete")))])]),
        7,
    )
    .await;
    assert_eq!(r.topics[0].error_code, 0);
    for compression in [Compression::None, Compression::Zstd, Compression::Snappy] {
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(TopicName(sb("compacted")))
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(batch_with_keyless(5, &[1, 3], compression))),
                    produce_request::PartitionProduceData::default()
                        .with_index(1)
                        .with_records(Some(batch_with_keyless(3, &[], compression))),
                ])]);
        for version in [8, 9, 11] {
            let r = call(&h, request.clone(), version).await;
            let parts = &r.responses[0].partition_responses;
            let refused = parts.iter().find(|p| p.index == 0).unwrap();
            assert_eq!(refused.error_code, ResponseError::InvalidRecord.code());
            assert_eq!(refused.base_offset, -1);
            let indices: Vec<i32> = refused
                .record_errors
                .iter()
                .map(|e| e.batch_index)
                .collect();
            assert_eq!(indices, vec![1, 3], "{compression:?} v{version}");
            let message = refused.record_errors[0]
                .batch_index_error_message
                .as_ref()
                .unwrap();
            assert!(message.contains("without key"), "{message}");
            assert!(refused.error_message.as_ref().unwrap().contains("key"));
            let accepted = parts.iter().find(|p| p.index == 1).unwrap();
            assert_eq!(accepted.error_code, 0, "{compression:?} v{version}");
        }
    }
    // An older version gets the code without the details it cannot carry.
    let r = call(
        &h,
        produce_request(
            "compacted",
            0,
            batch_with_keyless(2, &[0], Compression::None),
        ),
        7,
    )
    .await;
    let p = &r.responses[0].partition_responses[0];
    assert_eq!(p.error_code, ResponseError::InvalidRecord.code());
    // Keyed records go in; nothing of the refused produces was stored.
    let r = call(&h, produce_request("compacted", 0, records(2, 0)), 9).await;
    let p = &r.responses[0].partition_responses[0];
    assert_eq!((p.error_code, p.base_offset), (0, 0));
    // A topic that is not compacted takes keyless records.
    create(&h, "plain", 1).await;
    let r = call(
        &h,
        produce_request(
            "plain",
            0,
            batch_with_keyless(2, &[0, 1], Compression::None),
        ),
        9,
    )
    .await;
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
}
