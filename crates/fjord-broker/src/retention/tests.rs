use std::collections::BTreeMap;

use fjord_coordinator::clock::ManualClock;
use fjord_coordinator::embedded::EmbeddedCoordinator;
use fjord_coordinator::{CommitBatch, FlushCommit, PartitionOffsets, TopicSpec};

use super::*;

fn topic(configs: &[(&str, &str)]) -> TopicMeta {
    TopicMeta {
        name: "t".into(),
        id: uuid::Uuid::nil(),
        partitions: 1,
        configs: configs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[test]
fn limits_follow_topic_configs_and_broker_defaults() {
    let settings = RetentionSettings::default();
    let now = 1_000_000_000;
    assert_eq!(
        limits(&topic(&[]), &settings, now),
        Some(RetentionLimits {
            expire_before_ms: Some(now - DEFAULT_RETENTION_MS),
            max_bytes: None
        })
    );
    assert_eq!(
        limits(
            &topic(&[("retention.ms", "5000"), ("retention.bytes", "100")]),
            &settings,
            now
        ),
        Some(RetentionLimits {
            expire_before_ms: Some(now - 5000),
            max_bytes: Some(100)
        })
    );
    assert_eq!(
        limits(&topic(&[("retention.ms", "-1")]), &settings, now),
        None
    );
    assert_eq!(
        limits(&topic(&[("cleanup.policy", "compact")]), &settings, now),
        None
    );
    assert!(limits(
        &topic(&[("cleanup.policy", "compact,delete")]),
        &settings,
        now
    )
    .is_some());
    let forever = RetentionSettings {
        default_retention_ms: -1,
        default_retention_bytes: 10,
        ..RetentionSettings::default()
    };
    assert_eq!(
        limits(&topic(&[]), &forever, now),
        Some(RetentionLimits {
            expire_before_ms: None,
            max_bytes: Some(10)
        })
    );
}

async fn setup(
    clock: &Arc<ManualClock>,
    topics: &[(&str, i32, &str)],
) -> (Arc<dyn Coordinator>, Vec<TopicMeta>) {
    let c: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::in_memory(clock.clone()));
    let mut metas = Vec::new();
    for (name, partitions, retention_ms) in topics {
        let mut configs = BTreeMap::new();
        configs.insert("retention.ms".to_string(), retention_ms.to_string());
        metas.push(
            c.create_topic(TopicSpec {
                name: name.to_string(),
                partitions: *partitions,
                configs,
            })
            .await
            .unwrap(),
        );
    }
    (c, metas)
}

/// Commits `rows` rows of 10 offsets to every partition of `topic`, stamped `ts`.
async fn fill(c: &Arc<dyn Coordinator>, topic: &TopicMeta, rows: usize, ts: i64) {
    for r in 0..rows {
        let batches = (0..topic.partitions)
            .map(|partition| CommitBatch {
                tp: TopicPartition {
                    topic_id: topic.id,
                    partition,
                },
                // A gap between batches keeps each its own row.
                position: u64::from(partition as u32) * 1000,
                length: 100,
                offset_count: 10,
                max_timestamp: ts,
                producer: None,
                append: 0,
            })
            .collect();
        c.commit(FlushCommit {
            object_key: format!("{}-{ts}-{r}", topic.name),
            object_size: 100,
            timestamp_ms: ts,
            batches,
        })
        .await
        .unwrap();
    }
}

async fn starts(c: &Arc<dyn Coordinator>, topic: &TopicMeta) -> Vec<PartitionOffsets> {
    let mut out = Vec::new();
    for partition in 0..topic.partitions {
        out.push(
            c.partition_offsets(TopicPartition {
                topic_id: topic.id,
                partition,
            })
            .await
            .unwrap(),
        );
    }
    out
}

fn at(log_start: i64, high_watermark: i64) -> PartitionOffsets {
    PartitionOffsets {
        log_start,
        high_watermark,
    }
}

#[tokio::test]
async fn a_pass_expires_by_the_injected_clock() {
    let clock = ManualClock::new(1_000_000);
    let (c, t) = setup(&clock, &[("short", 2, "5000"), ("forever", 1, "-1")]).await;
    fill(&c, &t[0], 2, 1_000_000).await;
    fill(&c, &t[1], 1, 1_000_000).await;
    clock.advance(1_000);
    fill(&c, &t[0], 1, 1_001_000).await;
    let settings = RetentionSettings::default();
    let stats = RetentionStats::default();
    // Nothing is old enough yet.
    let (report, cursor) = pass(&c, &*clock, &settings, None, &stats, None).await;
    // The topic kept forever is not even looked at.
    assert_eq!((report.rows_expired, report.partitions), (0, 2));
    assert!(cursor.is_none());
    // 5 s after the first rows: those expire, the newer one stays.
    clock.set(1_005_001);
    let (report, _) = pass(&c, &*clock, &settings, None, &stats, None).await;
    assert_eq!((report.rows_expired, report.advanced), (4, 2));
    assert_eq!(starts(&c, &t[0]).await, vec![at(20, 30), at(20, 30)]);
    clock.set(1_006_001);
    pass(&c, &*clock, &settings, None, &stats, None).await;
    assert_eq!(starts(&c, &t[0]).await, vec![at(30, 30), at(30, 30)]);
    // retention.ms=-1 keeps everything.
    assert_eq!(starts(&c, &t[1]).await, vec![at(0, 10)]);
    assert_eq!(stats.rows_expired.load(Ordering::Relaxed), 6);
    assert_eq!(stats.passes.load(Ordering::Relaxed), 3);
    assert_eq!(stats.errors.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_pass_is_bounded_and_the_next_resumes_where_it_stopped() {
    let clock = ManualClock::new(10_000);
    let (c, t) = setup(&clock, &[("a", 2, "1"), ("b", 1, "1")]).await;
    for topic in &t {
        fill(&c, topic, 5, 1).await;
    }
    let settings = RetentionSettings {
        rows_per_step: 2,
        rows_per_pass: 6,
        ..RetentionSettings::default()
    };
    let stats = RetentionStats::default();
    let mut cursor = None;
    let mut passes = 0;
    loop {
        let (report, next) = pass(&c, &*clock, &settings, None, &stats, cursor).await;
        passes += 1;
        assert!(report.rows_expired <= 6);
        cursor = next;
        if !report.incomplete {
            break;
        }
        assert!(passes < 10, "no progress");
    }
    assert!(passes >= 3, "15 rows at most 6 per pass");
    for topic in &t {
        for o in starts(&c, topic).await {
            assert_eq!(o, at(50, 50), "{}", topic.name);
        }
    }
    assert_eq!(stats.rows_expired.load(Ordering::Relaxed), 15);
}
