//! The log cleaner duty over a complete in-memory broker: produce through the protocol, run
//! cleaner passes on a manual clock, read back through Fetch as a consumer would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use bytes::Bytes;
use fjord_broker::cleaner::{pass, CleanerContext, CleanerSettings, CleanerState, CleanerStats};
use fjord_broker::{Broker, BrokerSettings};
use fjord_coordinator::clock::{Clock, ManualClock};
use fjord_coordinator::TopicPartition;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::*;
use kafka_protocol::records::{Compression, RecordBatchDecoder};

use common::{call, fetch_request, produce_request, sb};

/// One batch of (key, value) records; `None` value: a tombstone.
fn batch(records: &[(&str, Option<&str>)], ts: i64, compression: Compression) -> Bytes {
    let records = records.iter().enumerate().map(|(i, (k, v))| {
        let key = Some(Bytes::copy_from_slice(k.as_bytes()));
        common::record(i, key, v.map(|v| Bytes::copy_from_slice(v.as_bytes())), ts)
    });
    common::encode(records, compression)
}

/// Reads the partition from `from` to the high watermark as a consumer does: each fetch goes on
/// after the last batch it got. Returns (offset, key, value) of every record and the number of
/// fetches; panics if a fetch makes no progress before the end.
async fn consume(
    broker: &Arc<Broker>,
    topic: &str,
    from: i64,
) -> Vec<(i64, String, Option<String>)> {
    let mut out = Vec::new();
    let mut offset = from;
    for _ in 0..1000 {
        let r = call(broker, fetch_request(topic, &[(0, offset)], 1 << 20), 12).await;
        let p = &r.responses[0].partitions[0];
        assert_eq!(p.error_code, 0);
        if offset >= p.high_watermark {
            return out;
        }
        let mut bytes = p.records.clone().unwrap_or_default();
        assert!(
            !bytes.is_empty(),
            "no batch at {offset} below the high watermark {}",
            p.high_watermark
        );
        // Batch by batch, to see where each ends (empty batches too).
        while !bytes.is_empty() {
            let base = i64::from_be_bytes(bytes[0..8].try_into().unwrap());
            let last_delta = i32::from_be_bytes(bytes[23..27].try_into().unwrap());
            let set = RecordBatchDecoder::decode(&mut bytes).unwrap();
            for r in set.records {
                if r.offset >= offset {
                    out.push((
                        r.offset,
                        String::from_utf8(r.key.unwrap().to_vec()).unwrap(),
                        r.value.map(|v| String::from_utf8(v.to_vec()).unwrap()),
                    ));
                }
            }
            offset = offset.max(base + i64::from(last_delta) + 1);
        }
    }
    panic!("consuming {topic} did not end");
}

struct Setup {
    broker: Arc<Broker>,
    _writer: fjord_storage::writer::WriterTask,
    store: Arc<dyn object_store::ObjectStore>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let coordinator: Arc<dyn fjord_coordinator::Coordinator> =
        Arc::new(fjord_coordinator::embedded::EmbeddedCoordinator::open(dir.path()).unwrap());
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let now = fjord_coordinator::clock::system().now_ms();
    let clock = ManualClock::new(now);
    let (broker, writer) = fjord_broker::testkit::broker_with_clock(
        coordinator,
        store.clone(),
        BrokerSettings::default(),
        clock.clone(),
    );
    Setup {
        broker,
        _writer: writer,
        store,
        clock,
        _dir: dir,
    }
}

async fn create(broker: &Arc<Broker>, name: &str, configs: &[(&str, &str)]) -> uuid::Uuid {
    let r = call(
        broker,
        CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(sb(name)))
            .with_num_partitions(1)
            .with_replication_factor(1)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(sb(k))
                            .with_value(Some(sb(v)))
                    })
                    .collect(),
            )]),
        7,
    )
    .await;
    assert_eq!(r.topics[0].error_code, 0);
    r.topics[0].topic_id
}

async fn produce(broker: &Arc<Broker>, topic: &str, data: Bytes) -> i64 {
    let r = call(broker, produce_request(topic, 0, data), 9).await;
    let p = &r.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 0);
    p.base_offset
}

async fn run_pass(
    s: &Setup,
    settings: &CleanerSettings,
    stats: &CleanerStats,
    state: &CleanerState,
) -> fjord_broker::cleaner::PassReport {
    let cx = CleanerContext {
        coordinator: &s.broker.coordinator,
        reader: &s.broker.reader,
        store: &s.store,
        node_id: 0,
        clock: &*s.clock,
        settings,
        stats,
        state,
    };
    pass(&cx).await
}

/// The latest value of each key survives at its offset, superseded records and (after
/// delete.retention.ms) tombstones go, the high watermark stays, and a consumer reads through
/// the gaps to the end of the log, even when the log's last records were all removed.
#[tokio::test]
async fn a_pass_compacts_and_consumers_read_through_the_gaps() {
    let s = setup();
    let b = &s.broker;
    let id = create(
        b,
        "c",
        &[
            ("cleanup.policy", "compact"),
            ("delete.retention.ms", "60000"),
        ],
    )
    .await;
    let now = s.clock.now_ms();
    produce(
        b,
        "c",
        batch(
            &[("a", Some("a0")), ("b", Some("b0")), ("c", Some("c0"))],
            now,
            Compression::None,
        ),
    )
    .await;
    produce(
        b,
        "c",
        batch(
            &[("a", Some("a1")), ("b", Some("b1"))],
            now,
            Compression::Zstd,
        ),
    )
    .await;
    produce(b, "c", batch(&[("a", Some("a2"))], now, Compression::Lz4)).await;
    produce(b, "c", batch(&[("c", None)], now, Compression::None)).await;
    let tp = TopicPartition {
        topic_id: id,
        partition: 0,
    };
    let settings = CleanerSettings::default();
    let stats = CleanerStats::default();
    let state = CleanerState::default();

    // Still open (written less than segment.ms ago): nothing happens.
    let report = run_pass(&s, &settings, &stats, &state).await;
    assert_eq!((report.partitions, report.cleaned), (1, 0));
    assert_eq!(consume(b, "c", 0).await.len(), 7);

    // Closed: cleaned. The tombstone is younger than delete.retention.ms, so it stays and hides c.
    s.clock.advance(31_000);
    let report = run_pass(&s, &settings, &stats, &state).await;
    assert_eq!(report.cleaned, 1, "{report:?}");
    assert_eq!(report.errors, 0);
    let got = consume(b, "c", 0).await;
    let o = |v: &str| Some(v.to_string());
    assert_eq!(
        got,
        vec![
            (4, "b".into(), o("b1")),
            (5, "a".into(), o("a2")),
            (6, "c".into(), None)
        ]
    );
    assert_eq!(b.coordinator.cleaned_to(tp).await.unwrap(), 7);
    assert_eq!(
        b.coordinator
            .partition_offsets(tp)
            .await
            .unwrap()
            .high_watermark,
        7
    );
    // Nothing dirty: the next pass does nothing.
    assert_eq!(run_pass(&s, &settings, &stats, &state).await.cleaned, 0);

    // After delete.retention.ms the kept tombstone makes the partition due again, and goes; the
    // log now ends in offsets with no record, and consumers still reach its end.
    s.clock.advance(61_000);
    let report = run_pass(&s, &settings, &stats, &state).await;
    assert_eq!(report.cleaned, 1, "{report:?}");
    let got = consume(b, "c", 0).await;
    assert_eq!(
        got,
        vec![(4, "b".into(), o("b1")), (5, "a".into(), o("a2"))]
    );
    assert!(consume(b, "c", 6).await.is_empty());
    // Reads from inside a gap start at the next record.
    assert_eq!(consume(b, "c", 1).await.len(), 2);

    // New writes are cleaned against the clean part; offsets continue.
    let at = produce(
        b,
        "c",
        batch(
            &[("b", Some("b2")), ("d", Some("d0"))],
            s.clock.now_ms(),
            Compression::Gzip,
        ),
    )
    .await;
    assert_eq!(at, 7);
    s.clock.advance(31_000);
    // Too little dirty data for min.cleanable.dirty.ratio (0.5): it waits.
    let report = run_pass(&s, &settings, &stats, &state).await;
    assert_eq!(report.cleaned, 0, "{report:?}");
    // A lower ratio on the topic: cleaned.
    let r = call(
        b,
        IncrementalAlterConfigsRequest::default().with_resources(vec![
            incremental_alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(sb("c"))
                .with_configs(vec![
                    incremental_alter_configs_request::AlterableConfig::default()
                        .with_name(sb("min.cleanable.dirty.ratio"))
                        .with_value(Some(sb("0.1"))),
                ]),
        ]),
        1,
    )
    .await;
    assert_eq!(r.responses[0].error_code, 0);
    let report = run_pass(&s, &settings, &stats, &state).await;
    assert_eq!(report.cleaned, 1, "{report:?}");
    let got = consume(b, "c", 0).await;
    assert_eq!(
        got,
        vec![
            (5, "a".into(), o("a2")),
            (7, "b".into(), o("b2")),
            (8, "d".into(), o("d0"))
        ]
    );
    assert_eq!(stats.errors.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(
        stats
            .records_removed
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 6
    );
}

/// With `compact,delete`, DeleteRecords moves the log start into the middle of a row; the cleaner
/// goes on from there, and a topic that only deletes is never touched.
#[tokio::test]
async fn the_cleaner_respects_the_log_start_and_the_policy() {
    let s = setup();
    let b = &s.broker;
    let id = create(b, "cd", &[("cleanup.policy", "compact,delete")]).await;
    create(b, "plain", &[]).await;
    let now = s.clock.now_ms();
    produce(
        b,
        "cd",
        batch(
            &[("a", Some("1")), ("b", Some("1")), ("c", Some("1"))],
            now,
            Compression::Snappy,
        ),
    )
    .await;
    produce(b, "cd", batch(&[("a", Some("2"))], now, Compression::None)).await;
    produce(
        b,
        "plain",
        batch(
            &[("a", Some("1")), ("a", Some("2"))],
            now,
            Compression::None,
        ),
    )
    .await;
    let r = call(
        b,
        DeleteRecordsRequest::default().with_topics(vec![
            delete_records_request::DeleteRecordsTopic::default()
                .with_name(TopicName(sb("cd")))
                .with_partitions(vec![
                    delete_records_request::DeleteRecordsPartition::default()
                        .with_partition_index(0)
                        .with_offset(1),
                ]),
        ]),
        2,
    )
    .await;
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    s.clock.advance(31_000);
    let settings = CleanerSettings::default();
    let stats = CleanerStats::default();
    let state = CleanerState::default();
    let report = run_pass(&s, &settings, &stats, &state).await;
    assert_eq!(
        (report.partitions, report.cleaned, report.errors),
        (1, 1, 0),
        "{report:?}"
    );
    let o = |v: &str| Some(v.to_string());
    assert_eq!(
        consume(b, "cd", 1).await,
        vec![
            (1, "b".into(), o("1")),
            (2, "c".into(), o("1")),
            (3, "a".into(), o("2"))
        ]
    );
    let tp = TopicPartition {
        topic_id: id,
        partition: 0,
    };
    assert_eq!(
        b.coordinator.partition_offsets(tp).await.unwrap().log_start,
        1
    );
    assert_eq!(consume(b, "plain", 0).await.len(), 2);
}
