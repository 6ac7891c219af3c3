//! The forwarder's worker and assignment code against a real broker and real librdkafka consumer
//! groups (see `common` for the harness): backpressure pauses, rebalances with members joining
//! and leaving, records that cannot leave memory, and shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{config, eventually, Cluster, Endpoint, Member};
use fjord_forwarder::error::ForwardError;
use fjord_forwarder::outcome::Verdict;

const WITHIN: Duration = Duration::from_secs(60);

/// `per_partition` records in each of `partitions` partitions, keys cycling over 7 values.
fn records(partitions: i32, per_partition: i64) -> Vec<(i32, String, Vec<u8>)> {
    (0..partitions)
        .flat_map(|p| {
            (0..per_partition)
                .map(move |i| (p, format!("k{}", i % 7), format!("v{p}-{i}").into_bytes()))
        })
        .collect()
}

/// Issue 14, item 1: librdkafka keeps the application's pause flag of a partition across
/// unassign and assign. A partition paused for backpressure when it was revoked was never
/// resumed once assigned back (the new partition state believed it was not paused), so it was
/// never fetched again on this member. The endpoint hangs until every partition is paused, a
/// second member joins and leaves, the endpoint recovers: every record must be acknowledged and
/// committed.
async fn paused_partitions_are_fetched_again_after_a_rebalance(strategy: &str) {
    const PARTITIONS: i32 = 4;
    const PER_PARTITION: i64 = 60;
    let cluster = Cluster::start(true).await;
    let topic = format!("orders-{strategy}");
    cluster.create_topic(&topic, PARTITIONS).await;
    cluster
        .produce(&topic, &records(PARTITIONS, PER_PARTITION))
        .await;
    let endpoint = Endpoint::new();
    endpoint.close();
    let config = config(
        &cluster,
        &topic,
        "g",
        "ordering = \"none\"\nmax_pending_records_per_partition = 10\ndelivery_timeout_ms = 600000",
        &format!("\"partition.assignment.strategy\" = \"{strategy}\""),
        "",
    );

    let a = Member::start(&config, &endpoint).await;
    let am = &a;
    eventually(
        WITHIN,
        "every partition paused on the first member",
        || async move {
            am.assigned() == PARTITIONS as usize
                && am.metric("fjord_forwarder_paused", "") == i64::from(PARTITIONS)
        },
    )
    .await;

    let b = Member::start(&config, &endpoint).await;
    let bm = &b;
    eventually(
        WITHIN,
        "the second member shares the partitions",
        || async move { bm.assigned() > 0 && am.assigned() + bm.assigned() == PARTITIONS as usize },
    )
    .await;
    b.stop().await.unwrap();
    eventually(
        WITHIN,
        "the first member has every partition back",
        || async move { am.assigned() == PARTITIONS as usize },
    )
    .await;

    endpoint.open();
    let (c, t) = (&cluster, topic.as_str());
    eventually(
        WITHIN,
        "every partition committed to its end",
        || async move {
            c.committed("g", t, PARTITIONS).await == vec![PER_PARTITION; PARTITIONS as usize]
        },
    )
    .await;
    let acked = endpoint.acked.lock().clone();
    for p in 0..PARTITIONS {
        for o in 0..PER_PARTITION {
            assert!(
                acked.contains_key(&(topic.clone(), p, o)),
                "{p}/{o} never acknowledged"
            );
        }
    }
    assert_eq!(a.metric("fjord_forwarder_paused", ""), 0);
    a.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_partitions_are_fetched_again_after_an_eager_rebalance() {
    paused_partitions_are_fetched_again_after_a_rebalance("range").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_partitions_are_fetched_again_after_a_cooperative_rebalance() {
    paused_partitions_are_fetched_again_after_a_rebalance("cooperative-sticky").await;
}

/// Issue 14, item 2: a record that fitted its source topic but, with the forwarder's headers (a
/// 50 kB DEAD_LETTER reason in `fjord.error`), not the producer's `message.max.bytes`, was
/// retried every 5 s forever and its partition never committed past it. The reason is now cut
/// to 1 kB, and a record still too large is dead-lettered without its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_record_over_the_size_limit_does_not_stall_its_partition() {
    let cluster = Cluster::start(true).await;
    let topic = "big";
    cluster.create_topic(topic, 1).await;
    let records = vec![
        (0, "small-reason".to_string(), vec![b's'; 100]),
        (0, "too-big".to_string(), vec![b'b'; 1_900]),
        (0, "fine".to_string(), b"ok".to_vec()),
    ];
    cluster.produce(topic, &records).await;
    let endpoint = Endpoint::new();
    endpoint.answer_with(std::sync::Arc::new(|d| match d.offset {
        2 => Verdict::Ack,
        _ => Verdict::DeadLetter {
            reason: "x".repeat(50_000),
        },
    }));
    let config = config(
        &cluster,
        topic,
        "g",
        "",
        "",
        "\"message.max.bytes\" = \"2000\"",
    );
    let member = Member::start(&config, &endpoint).await;
    let c = &cluster;
    eventually(
        WITHIN,
        "the partition committed to its end",
        || async move { c.committed("g", topic, 1).await == vec![3] },
    )
    .await;
    member.stop().await.unwrap();

    let mut dlq = cluster.read_all("big.dlq", 1).await;
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    // Different keys are dead-lettered concurrently: their order in the topic is not fixed.
    dlq.sort_by_key(|(key, _, _)| key.clone());
    let (key, value, headers) = &dlq[0];
    assert_eq!(key.as_deref(), Some(&b"small-reason"[..]));
    assert_eq!(
        value.as_deref(),
        Some(&[b's'; 100][..]),
        "fits: written whole"
    );
    assert!(headers["fjord.error"].len() <= 1024);
    assert!(headers["fjord.error"].ends_with("(50000 bytes, cut)"));
    let (key, value, headers) = &dlq[1];
    assert_eq!(key.as_deref(), Some(&b"too-big"[..]));
    assert_eq!(
        value, &None,
        "too large with the headers: written without its value"
    );
    assert_eq!(headers["fjord.original.offset"], "1");
    assert!(
        headers["fjord.dropped"].contains("value (1900 bytes)"),
        "{headers:?}"
    );
}

/// Issue 14, item 2: a dead-letter topic that cannot be written (missing, auto-creation off) made
/// the worker retry the write every 5 s forever, with nothing but a warning. Now, after
/// `park_timeout_ms`, the worker stops with an error naming the record and the topic, having
/// committed up to the record and not past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_dead_letter_topic_stops_the_worker_with_a_clear_error() {
    let cluster = Cluster::start(false).await;
    let topic = "nodlq";
    cluster.create_topic(topic, 1).await;
    cluster.produce(topic, &records(1, 3)).await;
    let endpoint = Endpoint::new();
    endpoint.answer_with(std::sync::Arc::new(|d| match d.offset {
        1 => Verdict::DeadLetter {
            reason: "unacceptable".into(),
        },
        _ => Verdict::Ack,
    }));
    let config = config(
        &cluster,
        topic,
        "g",
        "create_topics = false\npark_timeout_ms = 1500",
        "",
        "",
    );
    let member = Member::start(&config, &endpoint).await;
    let failed = member.metrics.clone();
    let error = member
        .ended(WITHIN)
        .await
        .expect_err("the worker stops on its own");
    let text = error.to_string();
    assert!(
        matches!(
            &error,
            ForwardError::Park { topic: t, partition: 0, offset: 1, dead_letter_topic, .. }
                if t == topic && dead_letter_topic == "nodlq.dlq"
        ),
        "{text}"
    );
    assert!(
        text.contains("could not be written to the dead-letter topic nodlq.dlq"),
        "{text}"
    );
    assert!(failed
        .encode()
        .contains("fjord_forwarder_park_errors_total{subscription=\"s\"}"));
    assert_eq!(
        cluster.committed("g", topic, 1).await,
        vec![1],
        "committed up to the record that could not leave memory, not past it"
    );
}

/// Issue 14, item 3: a stopping worker made its last synchronous commit and closed its consumer
/// (a blocking call that polls until the group is left) on a runtime worker thread, stalling
/// every task scheduled there until the group coordinator answered. Here the runtime has a
/// single thread, which also runs the broker: a blocking commit or close on it waits for an
/// answer that thread can never give, and the worker never stops. Both now run on the blocking
/// pool, and a worker must hand its last consumer handle to them (`stop()` reports an error
/// otherwise).
#[tokio::test(flavor = "current_thread")]
async fn a_stopping_worker_closes_its_consumer_off_the_runtime() {
    let cluster = Cluster::start(true).await;
    let topic = "close";
    cluster.create_topic(topic, 2).await;
    cluster.produce(topic, &records(2, 5)).await;
    let endpoint = Endpoint::new();
    let config = config(&cluster, topic, "g", "", "", "");
    let member = Member::start(&config, &endpoint).await;
    let c = &cluster;
    eventually(WITHIN, "every record committed", || async move {
        c.committed("g", topic, 2).await == vec![5, 5]
    })
    .await;
    member.stop().await.unwrap();
}
