//! Client quotas through the dispatcher: AlterClientQuotas and DescribeClientQuotas, and
//! Produce and Fetch responses that carry `throttle_time_ms` and are held back that long;
//! request quotas (`request_percentage`) that throttle any request by its handler time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Instant;

use common::*;
use kafka_protocol::messages::*;

fn alteration(ops: &[(&str, f64)]) -> alter_client_quotas_request::EntryData {
    alteration_of("test", ops)
}

fn alteration_of(client_id: &str, ops: &[(&str, f64)]) -> alter_client_quotas_request::EntryData {
    alter_client_quotas_request::EntryData::default()
        .with_entity(vec![alter_client_quotas_request::EntityData::default()
            .with_entity_type(sb("client-id"))
            .with_entity_name(Some(sb(client_id)))])
        .with_ops(
            ops.iter()
                .map(|(key, value)| {
                    alter_client_quotas_request::OpData::default()
                        .with_key(sb(key))
                        .with_value(*value)
                })
                .collect(),
        )
}

#[tokio::test]
async fn byte_rate_quotas_throttle_produce_and_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _writer) =
        fjord_broker::testkit::in_memory_broker(dir.path(), Default::default()).unwrap();
    create(&broker, "q", 1).await;

    // No quota yet: not throttled.
    let r = call(&broker, produce_request("q", 0, records(150, 0)), 9).await;
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    assert_eq!(r.throttle_time_ms, 0);

    for version in [0, 1] {
        let r = call(
            &broker,
            AlterClientQuotasRequest::default().with_entries(vec![alteration(&[
                ("producer_byte_rate", 1000.0),
                ("consumer_byte_rate", 1000.0),
            ])]),
            version,
        )
        .await;
        assert!(r.entries.iter().all(|e| e.error_code == 0), "{r:?}");
    }
    let r = call(
        &broker,
        DescribeClientQuotasRequest::default().with_components(vec![
            describe_client_quotas_request::ComponentData::default()
                .with_entity_type(sb("client-id"))
                .with_match_type(0)
                .with_match(Some(sb("test"))),
        ]),
        1,
    )
    .await;
    let entries = r.entries.unwrap();
    assert_eq!(entries.len(), 1);
    let mut values: Vec<(String, f64)> = entries[0]
        .values
        .iter()
        .map(|v| (v.key.to_string(), v.value))
        .collect();
    values.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        values,
        vec![
            ("consumer_byte_rate".to_string(), 1000.0),
            ("producer_byte_rate".to_string(), 1000.0)
        ]
    );

    // About 2 KB at 1000 B/s: throttled, and the response waits the throttle time.
    let started = Instant::now();
    let r = call(&broker, produce_request("q", 0, records(150, 0)), 9).await;
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    assert!(r.throttle_time_ms > 0, "{r:?}");
    assert!(started.elapsed().as_millis() >= r.throttle_time_ms as u128);

    let started = Instant::now();
    let r = call(&broker, fetch_request("q", &[(0, 0)], 1 << 20), 12).await;
    let records_bytes = r.responses[0].partitions[0]
        .records
        .as_ref()
        .map_or(0, |r| r.len());
    assert!(records_bytes > 1000, "{records_bytes}");
    assert!(r.throttle_time_ms > 0, "{r:?}");
    assert!(started.elapsed().as_millis() >= r.throttle_time_ms as u128);
}

/// Metadata requests until one is throttled (at most `n`); its throttle time.
async fn metadata_until_throttled(broker: &std::sync::Arc<fjord_broker::Broker>, n: usize) -> i32 {
    for _ in 0..n {
        let r = call(broker, MetadataRequest::default(), 12).await;
        if r.throttle_time_ms > 0 {
            return r.throttle_time_ms;
        }
    }
    0
}

#[tokio::test]
async fn request_quotas_throttle_by_handler_time() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _writer) =
        fjord_broker::testkit::in_memory_broker(dir.path(), Default::default()).unwrap();
    create(&broker, "q", 1).await;
    let set = |client: &'static str, percent: f64| {
        let broker = broker.clone();
        async move {
            let r = call(
                &broker,
                AlterClientQuotasRequest::default().with_entries(vec![alteration_of(
                    client,
                    &[("request_percentage", percent)],
                )]),
                1,
            )
            .await;
            assert!(r.entries.iter().all(|e| e.error_code == 0), "{r:?}");
        }
    };

    // Another client's quota does not throttle this one ("test").
    set("other", 0.01).await;
    assert_eq!(metadata_until_throttled(&broker, 2000).await, 0);

    // 0.2% of a thread: 2 ms of handler time per second. Metadata requests as fast as they go
    // spend more than that within the first window, and get throttle_time_ms > 0 (each held
    // back that long); the throttle never exceeds the window (11 s).
    set("test", 0.2).await;
    let r = call(
        &broker,
        DescribeClientQuotasRequest::default().with_components(vec![
            describe_client_quotas_request::ComponentData::default()
                .with_entity_type(sb("client-id"))
                .with_match_type(0)
                .with_match(Some(sb("test"))),
        ]),
        1,
    )
    .await;
    let values = &r.entries.unwrap()[0].values;
    assert_eq!(values[0].key.as_str(), "request_percentage");
    assert_eq!(values[0].value, 0.2);
    let started = Instant::now();
    let throttle = metadata_until_throttled(&broker, 200_000).await;
    assert!(throttle > 0 && throttle <= 11_000, "{throttle}");
    assert!(started.elapsed().as_millis() >= throttle as u128);
    // Produce is metered too.
    let r = call(&broker, produce_request("q", 0, records(10, 0)), 9).await;
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    assert!(r.throttle_time_ms > 0, "{r:?}");
}
