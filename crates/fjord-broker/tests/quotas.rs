//! Client quotas through the dispatcher: AlterClientQuotas and DescribeClientQuotas, and
//! Produce and Fetch responses that carry `throttle_time_ms` and are held back that long.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Instant;

use common::*;
use kafka_protocol::messages::*;

fn alteration(ops: &[(&str, f64)]) -> alter_client_quotas_request::EntryData {
    alter_client_quotas_request::EntryData::default()
        .with_entity(vec![alter_client_quotas_request::EntityData::default()
            .with_entity_type(sb("client-id"))
            .with_entity_name(Some(sb("test")))])
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

    // request_percentage is not enforced, so it is refused rather than stored.
    let r = call(
        &broker,
        AlterClientQuotasRequest::default()
            .with_entries(vec![alteration(&[("request_percentage", 50.0)])]),
        1,
    )
    .await;
    assert_eq!(
        r.entries[0].error_code,
        kafka_protocol::ResponseError::InvalidRequest.code()
    );
}
