//! Failure scenarios found in review (issue 13), each driven through the dispatcher as a client
//! would drive it. Every test here failed on the code before its fix.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use kafka_protocol::ResponseError;

use common::*;

/// Item 4: a broker whose cached high watermark lags the store (it has not heard of another
/// broker's commits, as while its notification connection reconnects) must not answer
/// OFFSET_OUT_OF_RANGE for an offset the store has: clients would reset and skip or replay data.
#[tokio::test]
async fn a_stale_cached_high_watermark_is_not_out_of_range() {
    let c = cluster(2);
    let (a, b) = (&c.brokers[0], &c.brokers[1]);
    create(a, "t", 1).await;
    // Broker b caches the empty partition (high watermark 0).
    let r = call(b, fetch_request("t", &[(0, 0)], 1 << 20), 12).await;
    assert_eq!(r.responses[0].partitions[0].high_watermark, 0);
    // Broker a appends 5 records; b hears nothing of it.
    let r = call(a, produce_request("t", 0, records(5, 0)), 9).await;
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    // A consumer that committed offset 3 through a fetches from b.
    let r = call(b, fetch_request("t", &[(0, 3)], 1 << 20), 12).await;
    let p = &r.responses[0].partitions[0];
    assert_ne!(
        p.error_code,
        ResponseError::OffsetOutOfRange.code(),
        "offset 3 exists; the cache was stale"
    );
    assert_eq!(p.error_code, 0);
    assert_eq!(p.high_watermark, 5);
    assert!(p.records.as_ref().is_some_and(|r| !r.is_empty()));
    // Beyond the real end it is out of range.
    let r = call(b, fetch_request("t", &[(0, 6)], 1 << 20), 12).await;
    assert_eq!(
        r.responses[0].partitions[0].error_code,
        ResponseError::OffsetOutOfRange.code()
    );
}

/// Item 6: a partition's record set is appended as a unit. A later batch that is refused (here
/// an idempotent batch with a sequence gap) leaves the earlier ones unappended too: the client
/// gets one error for the partition and resends the whole record set, which must not find part
/// of it stored already.
#[tokio::test]
async fn a_partitions_record_set_is_appended_whole_or_not_at_all() {
    use kafka_protocol::messages::{InitProducerIdRequest, TransactionalId};
    use kafka_protocol::records::Compression;
    let c = cluster(1);
    let b = &c.brokers[0];
    create(b, "t", 1).await;
    let id = call(
        b,
        InitProducerIdRequest::default()
            .with_transactional_id(None::<TransactionalId>)
            .with_transaction_timeout_ms(60_000),
        4,
    )
    .await;
    assert_eq!(id.error_code, 0);
    let pid = id.producer_id.0;
    // A plain batch of 3, then an idempotent batch whose sequence does not start at 0.
    let mut set = records(3, 0).to_vec();
    set.extend_from_slice(&batch_of(2, 0, pid, 0, 5, Compression::None));
    let r = call(b, produce_request("t", 0, set.into()), 9).await;
    let p = &r.responses[0].partition_responses[0];
    assert_ne!(p.error_code, 0, "the gap is refused");
    assert_eq!(
        list_offset(b, "t", 0, -1).await,
        (0, 0),
        "nothing of the refused record set was appended"
    );
    // The corrected record set goes in whole, once.
    let mut set = records(3, 0).to_vec();
    set.extend_from_slice(&batch_of(2, 0, pid, 0, 0, Compression::None));
    let r = call(b, produce_request("t", 0, set.into()), 9).await;
    let p = &r.responses[0].partition_responses[0];
    assert_eq!((p.error_code, p.base_offset), (0, 0));
    assert_eq!(list_offset(b, "t", 0, -1).await, (0, 5));
}

/// Item 9: the client's own max_bytes is kept. A librdkafka consumer with
/// `fetch.max.bytes=1000000` and `max.partition.fetch.bytes=20000000` over partitions of
/// ~900 KB records got ~1.8 MB answers and dropped the connection ("Invalid response size")
/// again and again. Only the first batch of the first non-empty partition may exceed the limit.
#[tokio::test]
async fn a_response_stays_within_the_clients_max_bytes_after_the_first_batch() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{BrokerId, FetchRequest, TopicName};
    let c = cluster(1);
    let b = &c.brokers[0];
    create(b, "big", 3).await;
    let big = |p: i32| {
        // One record of ~900 KB (incompressible enough: a counter pattern).
        let value: Vec<u8> = (0..900_000u32).map(|i| (i * 7 + p as u32) as u8).collect();
        let mut buf = bytes::BytesMut::new();
        let record = kafka_protocol::records::Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: kafka_protocol::records::TimestampType::Creation,
            offset: 0,
            sequence: 0,
            timestamp: 0,
            key: None,
            value: Some(value.into()),
            headers: Default::default(),
        };
        kafka_protocol::records::RecordBatchEncoder::encode(
            &mut buf,
            [record].iter(),
            &kafka_protocol::records::RecordEncodeOptions {
                version: 2,
                compression: kafka_protocol::records::Compression::None,
            },
        )
        .unwrap();
        buf.freeze()
    };
    for p in 0..3 {
        let r = call(b, produce_request("big", p, big(p)), 9).await;
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(10)
        .with_min_bytes(1)
        .with_max_bytes(1_000_000)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(sb("big")))
            .with_partitions(
                (0..3)
                    .map(|p| {
                        FetchPartition::default()
                            .with_partition(p)
                            .with_partition_max_bytes(20_000_000)
                    })
                    .collect(),
            )]);
    let r = call(b, request, 11).await;
    let sizes: Vec<usize> = r.responses[0]
        .partitions
        .iter()
        .map(|p| p.records.as_ref().map_or(0, |r| r.len()))
        .collect();
    assert!(
        sizes[0] > 900_000,
        "the first batch comes even past the limit"
    );
    assert_eq!(
        sizes[1..],
        [0, 0],
        "nothing more once the limit is reached: {sizes:?}"
    );
}

/// Item 10: a small compressed batch that inflates to hundreds of megabytes (a decompression
/// bomb) is stored as sent, but a ListOffsets by timestamp that lands inside it scans its
/// records with a capped, streaming decompression: it answers with the batch's first offset
/// instead of inflating the whole batch into memory (which, before, every broker serving the
/// partition did on each lookup).
#[tokio::test]
async fn a_timestamp_lookup_does_not_inflate_a_decompression_bomb() {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let c = cluster(1);
    let b = &c.brokers[0];
    create(b, "bomb", 1).await;
    let record = |offset: i64, ts: i64, len: usize| Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence: offset as i32,
        timestamp: ts,
        key: None,
        value: Some(vec![0u8; len].into()),
        headers: Default::default(),
    };
    // A tiny record at t=1000, then 200 MB of zeros at t=2000 and a tiny one at t=3000.
    let records = [
        record(0, 1000, 1),
        record(1, 2000, 200 << 20),
        record(2, 3000, 1),
    ];
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::Zstd,
        },
    )
    .unwrap();
    assert!(
        buf.len() < 100_000,
        "the bomb is small: {} bytes",
        buf.len()
    );
    let r = call(b, produce_request("bomb", 0, buf.freeze()), 9).await;
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);

    // Headers answer without opening the batch: its first record is late enough.
    assert_eq!(list_offset(b, "bomb", 0, 500).await, (0, 0));
    // Inside the batch: the scan stops at its cap and answers with the batch's first offset.
    let started = std::time::Instant::now();
    assert_eq!(list_offset(b, "bomb", 0, 2500).await, (0, 0));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "bounded work: {:?}",
        started.elapsed()
    );
    // The broker still serves the partition.
    assert_eq!(list_offset(b, "bomb", 0, -1).await, (0, 3));
}

/// Item 11: a fetch naming a flood of made-up partitions is answered (with errors) once and
/// leaves nothing in its session: before, the session kept every one of them (hundreds of MB
/// for a large request, repeatably) and answered them again on every incremental fetch.
#[tokio::test]
async fn made_up_partitions_do_not_enter_a_fetch_session() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{BrokerId, FetchRequest, TopicName};
    let c = cluster(1);
    let b = &c.brokers[0];
    create(b, "real", 1).await;
    let flood = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_session_id(0)
        .with_session_epoch(0)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(sb("real")))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_partition_max_bytes(1 << 20)]),
            FetchTopic::default()
                .with_topic(TopicName(sb("made-up")))
                .with_partitions(
                    (0..200_000)
                        .map(|p| FetchPartition::default().with_partition(p))
                        .collect(),
                ),
        ]);
    let r = call(b, flood, 12).await;
    let session = r.session_id;
    assert_ne!(session, 0);
    let listed: usize = r.responses.iter().map(|t| t.partitions.len()).sum();
    assert_eq!(listed, 200_001, "every partition is answered once");
    // The next incremental fetch covers the session: only the real partition, and it has no
    // news, so nothing is listed.
    let next = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_session_id(session)
        .with_session_epoch(1);
    let r = call(b, next, 12).await;
    assert_eq!(r.error_code, 0);
    let listed: usize = r.responses.iter().map(|t| t.partitions.len()).sum();
    assert_eq!(listed, 0, "made-up partitions were kept in the session");
    assert_eq!(b.fetch_sessions.partitions(), 1);
}
