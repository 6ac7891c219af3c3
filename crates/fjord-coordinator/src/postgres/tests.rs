//! Tests of the PostgreSQL coordinator against a real server: the conformance suite, durability
//! across reconnects, concurrent brokers on one database, migrations, error mapping, and commit
//! notifications (the `listen` module).
//!
//! The server comes from `FJORD_TEST_POSTGRES_URL` (see `scripts/test-postgres.sh`); each test
//! database is created from it as `fjord_test_<random>` and dropped at the end. Without the
//! variable these tests fail, unless `FJORD_SKIP_POSTGRES_TESTS=1` says to skip them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::testsuite;
use tokio_postgres::NoTls;

const URL_VAR: &str = "FJORD_TEST_POSTGRES_URL";
const SKIP_VAR: &str = "FJORD_SKIP_POSTGRES_TESTS";

/// The test server's URL; `None` when the tests are to be skipped.
fn server_url() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var(SKIP_VAR).as_deref() == Ok("1") => {
            eprintln!("{URL_VAR} unset and {SKIP_VAR}=1: skipping a PostgreSQL test");
            None
        }
        _ => panic!(
            "{URL_VAR} is not set, so the PostgreSQL coordinator cannot be tested. Start a \
             throwaway server with `eval \"$(scripts/test-postgres.sh start)\"` (or run \
             `scripts/test-postgres.sh run cargo test ...`), or set {SKIP_VAR}=1 to skip these \
             tests."
        ),
    }
}

/// Databases created by one test, dropped when it ends (declare it first, so that it is dropped
/// after the coordinators using it).
struct TestDatabases {
    server: String,
    names: parking_lot::Mutex<Vec<String>>,
}

impl TestDatabases {
    fn new(server: String) -> Self {
        TestDatabases {
            server,
            names: Default::default(),
        }
    }

    async fn admin(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.server, NoTls)
            .await
            .unwrap_or_else(|e| panic!("connecting to {URL_VAR}: {}", db::describe(&e)));
        tokio::spawn(connection);
        client
    }

    /// A new empty database; returns its URL.
    async fn create(&self) -> String {
        let name = format!("fjord_test_{}", Uuid::new_v4().simple());
        self.admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        self.names.lock().push(name.clone());
        let mut url = url::Url::parse(&self.server).unwrap();
        url.set_path(&name);
        url.to_string()
    }
}

impl Drop for TestDatabases {
    /// Drops the test's databases, also when the test failed (`WITH (FORCE)` ends connections
    /// still open). Runs on a thread of its own: the test's runtime may be gone or busy.
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.names.lock());
        if names.is_empty() {
            return;
        }
        let server = self.server.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let (admin, connection) = tokio_postgres::connect(&server, NoTls)
                    .await
                    .map_err(std::io::Error::other)?;
                tokio::spawn(connection);
                for name in names {
                    admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await
                        .map_err(|e| std::io::Error::other(db::describe(&e)))?;
                }
                Ok::<_, std::io::Error>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) if !std::thread::panicking() => panic!("dropping test databases: {e}"),
            Ok(Err(e)) => eprintln!("dropping test databases: {e}"),
            Err(_) => eprintln!("dropping test databases: the cleanup thread panicked"),
        }
    }
}

async fn open(url: &str) -> Arc<dyn Coordinator> {
    Arc::new(PostgresCoordinator::connect(url).await.unwrap())
}

#[tokio::test]
async fn conformance() {
    let Some(server) = server_url() else { return };
    let dbs = TestDatabases::new(server);
    testsuite::run_all(|| async { open(&dbs.create().await).await }).await;
}

#[tokio::test]
async fn state_survives_reconnect() {
    let Some(server) = server_url() else { return };
    let dbs = TestDatabases::new(server);
    let url = dbs.create().await;
    testsuite::durability(|| open(&url)).await;
}

#[tokio::test]
async fn migrations_run_once_under_concurrent_opens() {
    let Some(server) = server_url() else { return };
    let dbs = TestDatabases::new(server);
    let url = dbs.create().await;
    let opened =
        futures::future::join_all((0..6).map(|_| PostgresCoordinator::connect(&url))).await;
    let c = opened.into_iter().next().unwrap().unwrap();
    let mut client = c.client().await.unwrap();
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM fjord_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let all: Vec<i32> = migrate::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(versions, all);
    // Up to date: nothing more to apply.
    assert!(migrate::migrate(&mut client).await.unwrap().is_empty());

    // An applied migration whose text changed is refused, as is one from a newer build.
    client
        .execute(
            "UPDATE fjord_schema_migrations SET checksum = checksum + 1 WHERE version = 1",
            &[],
        )
        .await
        .unwrap();
    assert!(matches!(
        PostgresCoordinator::connect(&url).await,
        Err(CoordinatorError::Corrupt(_))
    ));
    client
        .execute(
            "UPDATE fjord_schema_migrations SET checksum = checksum - 1 WHERE version = 1",
            &[],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO fjord_schema_migrations (version, name, checksum) VALUES (9999, 'future', 0)",
            &[],
        )
        .await
        .unwrap();
    let err = PostgresCoordinator::connect(&url).await.err().unwrap();
    assert!(matches!(err, CoordinatorError::Corrupt(_)), "{err}");
}

#[tokio::test]
async fn unreachable_server_is_a_retriable_storage_error() {
    // Nothing listens on port 1; no test server needed.
    let err = PostgresCoordinator::connect_with(
        "postgres://fjord@127.0.0.1:1/fjord",
        PostgresOptions {
            connect_timeout: std::time::Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(err, CoordinatorError::Storage(_)), "{err}");
    assert!(err.is_retriable());
    let err = PostgresCoordinator::connect("postgres://[nonsense")
        .await
        .err()
        .unwrap();
    assert!(matches!(err, CoordinatorError::Invalid(_)), "{err}");
}

/// Two coordinators (two brokers) on one database commit flushes to the same partitions at
/// once, in varying partition orders, some from idempotent producers, some re-commits of the same
/// object from both. Every partition's offsets come out dense and non-overlapping, and the index
/// agrees with the outcomes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_brokers_assign_dense_offsets() {
    let Some(server) = server_url() else { return };
    let dbs = TestDatabases::new(server);
    let url = dbs.create().await;
    let a = open(&url).await;
    let b = open(&url).await;
    const PARTITIONS: i32 = 3;
    const TASKS_PER_BROKER: usize = 4;
    const FLUSHES_PER_TASK: usize = 25;
    let topic = a
        .create_topic(TopicSpec {
            name: "busy".into(),
            partitions: PARTITIONS,
            configs: BTreeMap::new(),
        })
        .await
        .unwrap();
    let topic_id = topic.id;
    let tp = move |partition| TopicPartition {
        topic_id,
        partition,
    };

    let mut tasks = Vec::new();
    for (broker, c) in [a.clone(), b.clone()].into_iter().enumerate() {
        for task in 0..TASKS_PER_BROKER {
            let c = c.clone();
            let other = if broker == 0 { b.clone() } else { a.clone() };
            let idempotent = task % 2 == 1;
            let producer_id = if idempotent {
                c.init_producer_id(InitProducer { existing: None })
                    .await
                    .unwrap()
                    .producer_id
            } else {
                -1
            };
            tasks.push(tokio::spawn(async move {
                // (partition, offset count, outcome) of every batch committed.
                let mut results = Vec::new();
                let mut sequences = [0i32; PARTITIONS as usize];
                for i in 0..FLUSHES_PER_TASK {
                    let mut batches = Vec::new();
                    let mut position = 0u64;
                    // Partitions in a rotating order, so lock requests come in every order.
                    for k in 0..PARTITIONS {
                        let partition = (k + i as i32 + task as i32) % PARTITIONS;
                        if (i + k as usize) % 4 == 3 {
                            continue;
                        }
                        let count = 1 + ((i + task + k as usize) % 5) as i64;
                        let producer = idempotent.then(|| {
                            let seq = &mut sequences[partition as usize];
                            let info = ProducerBatchInfo {
                                producer_id,
                                producer_epoch: 0,
                                base_sequence: *seq,
                            };
                            *seq += count as i32;
                            info
                        });
                        batches.push(CommitBatch {
                            tp: tp(partition),
                            position,
                            length: 10,
                            offset_count: count,
                            max_timestamp: i as i64,
                            producer,
                            append: position as u32,
                        });
                        position += 10;
                    }
                    let flush = FlushCommit {
                        object_key: format!("b{broker}-t{task}-{i}"),
                        object_size: position,
                        timestamp_ms: 1,
                        batches: batches.clone(),
                    };
                    let outcomes = if i % 5 == 0 {
                        // The same object committed by both brokers at once: one decides, the
                        // other gets the recorded outcomes.
                        let (x, y) =
                            tokio::join!(c.commit(flush.clone()), other.commit(flush.clone()));
                        let (x, y) = (x.unwrap(), y.unwrap());
                        assert_eq!(x, y);
                        x
                    } else {
                        c.commit(flush).await.unwrap()
                    };
                    for (batch, outcome) in batches.iter().zip(outcomes) {
                        results.push((batch.tp.partition, batch.offset_count, outcome));
                    }
                }
                results
            }));
        }
    }

    let mut appended: BTreeMap<i32, Vec<(i64, i64)>> = BTreeMap::new();
    for task in tasks {
        for (partition, count, outcome) in task.await.unwrap() {
            match outcome {
                BatchOutcome::Appended { base_offset } => appended
                    .entry(partition)
                    .or_default()
                    .push((base_offset, count)),
                other => panic!("unexpected outcome {other:?}"),
            }
        }
    }
    for partition in 0..PARTITIONS {
        let mut ranges = appended.remove(&partition).unwrap_or_default();
        ranges.sort();
        let mut next = 0;
        for (base, count) in &ranges {
            assert_eq!(
                *base, next,
                "partition {partition}: gap or overlap at {base}"
            );
            next = base + count;
        }
        let offsets = a.partition_offsets(tp(partition)).await.unwrap();
        assert_eq!(offsets.high_watermark, next);
        assert_eq!(b.partition_offsets(tp(partition)).await.unwrap(), offsets);
        // The index covers exactly [0, high watermark), row after row.
        let rows = b.index_rows(tp(partition), 0, u64::MAX).await.unwrap();
        let mut expect = 0;
        for row in &rows {
            assert_eq!(row.base_offset, expect);
            expect = row.last_offset + 1;
        }
        assert_eq!(expect, next);
    }
}

/// Topic creation races: exactly one broker wins a name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_topic_creation_has_one_winner() {
    let Some(server) = server_url() else { return };
    let dbs = TestDatabases::new(server);
    let url = dbs.create().await;
    let (a, b) = (open(&url).await, open(&url).await);
    for round in 0..10 {
        let spec = TopicSpec {
            name: format!("race-{round}"),
            partitions: 2,
            configs: BTreeMap::new(),
        };
        let (x, y) = tokio::join!(a.create_topic(spec.clone()), b.create_topic(spec));
        let wins = [&x, &y].iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "{x:?} {y:?}");
        for r in [x, y] {
            if let Err(e) = r {
                assert!(matches!(e, CoordinatorError::TopicExists(_)), "{e}");
            }
        }
    }
}

/// ACL changes from two brokers race: each binding is created once and deleted by exactly one
/// of two overlapping deletes, and the version counts exactly the effective changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acl_changes_are_atomic_and_versioned() {
    use crate::security::*;
    let Some(server) = server_url() else { return };
    let dbs = TestDatabases::new(server);
    let url = dbs.create().await;
    let (a, b) = (open(&url).await, open(&url).await);
    let binding = |name: String| AclBinding {
        resource_type: ResourceType::Topic,
        resource_name: name,
        pattern_type: PatternType::Literal,
        principal: "User:alice".into(),
        host: "*".into(),
        operation: AclOperation::Read,
        permission: AclPermission::Allow,
    };
    let v0 = a.acl_version().await.unwrap();
    let mut effective = 0;
    for round in 0..10 {
        let same = vec![binding(format!("t{round}"))];
        let (x, y) = tokio::join!(a.create_acls(same.clone()), b.create_acls(same));
        x.unwrap();
        y.unwrap();
        effective += 1;
    }
    assert_eq!(a.acl_version().await.unwrap(), v0 + effective);
    assert_eq!(b.acls().await.unwrap().bindings.len(), 10);
    let all = AclFilter::any();
    let (x, y) = tokio::join!(a.delete_acls(vec![all.clone()]), b.delete_acls(vec![all]));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x[0].len() + y[0].len(), 10, "{x:?} {y:?}");
    assert!(x[0].is_empty() || y[0].is_empty(), "{x:?} {y:?}");
    let snapshot = a.acls().await.unwrap();
    assert!(snapshot.bindings.is_empty());
    assert_eq!(snapshot.version, v0 + effective + 1);
}

/// Deleting a topic while both brokers commit flushes touching it and another topic: no call
/// fails, batches after the deletion are rejected, and every object ends up live exactly when a
/// surviving index row references it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topic_deletion_races_commits() {
    let Some(server) = server_url() else { return };
    let dbs = TestDatabases::new(server);
    let url = dbs.create().await;
    let (a, b) = (open(&url).await, open(&url).await);
    let spec = |name: &str, partitions| TopicSpec {
        name: name.into(),
        partitions,
        configs: BTreeMap::new(),
    };
    let doomed = a.create_topic(spec("doomed", 2)).await.unwrap();
    let kept = a.create_topic(spec("kept", 1)).await.unwrap();
    let on = |topic: &TopicMeta, partition| TopicPartition {
        topic_id: topic.id,
        partition,
    };

    let mut tasks = Vec::new();
    for (n, c) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        let (d0, d1, k) = (on(&doomed, 0), on(&doomed, 1), on(&kept, 0));
        tasks.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            for i in 0..30 {
                // Every third flush touches only the doomed topic.
                let mut batches = vec![
                    CommitBatch {
                        tp: if i % 2 == 0 { d0 } else { d1 },
                        position: 0,
                        length: 10,
                        offset_count: 1,
                        max_timestamp: 0,
                        producer: None,
                        append: 0,
                    },
                    CommitBatch {
                        tp: d0,
                        position: 100,
                        length: 10,
                        offset_count: 2,
                        max_timestamp: 0,
                        producer: None,
                        append: 0,
                    },
                ];
                if i % 3 != 0 {
                    batches.push(CommitBatch {
                        tp: k,
                        position: 10,
                        length: 10,
                        offset_count: 1,
                        max_timestamp: 0,
                        producer: None,
                        append: 0,
                    });
                }
                let key = format!("r{n}-{i}");
                let outcomes = c
                    .commit(FlushCommit {
                        object_key: key.clone(),
                        object_size: 120,
                        timestamp_ms: 5,
                        batches: batches.clone(),
                    })
                    .await
                    .unwrap();
                let kept_appended = batches
                    .iter()
                    .zip(&outcomes)
                    .any(|(b, o)| b.tp == k && matches!(o, BatchOutcome::Appended { .. }));
                committed.push((key, kept_appended));
            }
            committed
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    b.delete_topic("doomed").await.unwrap();

    let mut expected_live = std::collections::BTreeSet::new();
    let mut all = Vec::new();
    for task in tasks {
        for (key, kept_appended) in task.await.unwrap() {
            if kept_appended {
                expected_live.insert(key.clone());
            }
            all.push(key);
        }
    }
    let dead: std::collections::BTreeSet<String> = a
        .dead_objects(i64::MAX, 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.key)
        .collect();
    let known = a.known_objects(all.clone()).await.unwrap();
    let live: std::collections::BTreeSet<String> = known.difference(&dead).cloned().collect();
    assert_eq!(live, expected_live);
    for key in &all {
        assert!(known.contains(key), "{key} is in the ledger, live or dead");
    }
    // The survivor's index is intact and dense.
    let rows = a.index_rows(on(&kept, 0), 0, u64::MAX).await.unwrap();
    let hw = a
        .partition_offsets(on(&kept, 0))
        .await
        .unwrap()
        .high_watermark;
    assert_eq!(
        rows.iter()
            .map(|r| r.last_offset - r.base_offset + 1)
            .sum::<i64>(),
        hw
    );
    assert_eq!(hw as usize, expected_live.len());
}

/// The pruning statement keeps recent commit outcomes and drops old ones.
#[tokio::test]
async fn old_commit_outcomes_are_pruned() {
    let Some(server) = server_url() else { return };
    let dbs = TestDatabases::new(server);
    let url = dbs.create().await;
    let c = PostgresCoordinator::connect(&url).await.unwrap();
    let client = c.client().await.unwrap();
    client
        .batch_execute(
            "INSERT INTO fjord_commits (object_key, outcomes, committed_at) VALUES
                 ('old', '[]', now() - interval '2 hours'),
                 ('new', '[]', now() - interval '5 minutes')",
        )
        .await
        .unwrap();
    assert_eq!(client.execute(commit::PRUNE_COMMITS, &[]).await.unwrap(), 1);
    let left: Vec<String> = client
        .query("SELECT object_key FROM fjord_commits", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, vec!["new".to_string()]);
}

/// Two brokers commit and delete offsets of the same groups at once, touching overlapping
/// partitions in varying orders, while groups are saved and deleted: no call fails (no
/// deadlock), and afterwards every group holds exactly what its last writes left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_group_writes_do_not_deadlock() {
    let Some(server) = server_url() else { return };
    let dbs = TestDatabases::new(server);
    let url = dbs.create().await;
    let (a, b) = (open(&url).await, open(&url).await);
    const PARTITIONS: i32 = 12;
    let offset = |topic: &str, partition, offset| CommittedOffset {
        topic: topic.into(),
        partition,
        offset,
        leader_epoch: -1,
        metadata: None,
        commit_timestamp_ms: offset,
    };
    let mut tasks = Vec::new();
    for (n, c) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        tasks.push(tokio::spawn(async move {
            for i in 0..40i32 {
                let group = if i % 2 == 0 { "shared" } else { "other" };
                // Partitions in a rotating order, some in reverse.
                let mut offsets: Vec<_> = (0..PARTITIONS)
                    .map(|k| {
                        let p = (k + i + n as i32) % PARTITIONS;
                        offset(if p % 3 == 0 { "x" } else { "y" }, p, i64::from(i))
                    })
                    .collect();
                if (i + n as i32) % 3 == 0 {
                    offsets.reverse();
                }
                c.commit_offsets(group, offsets.clone(), None)
                    .await
                    .unwrap();
                // The version another task may change at any moment: fenced writes race saves.
                let version = c.load_group(group).await.unwrap().map_or(0, |s| s.version);
                let fenced_ok = |r: Result<()>| match r {
                    Ok(()) | Err(CoordinatorError::Fenced(_)) => {}
                    Err(e) => panic!("{e}"),
                };
                match i % 6 {
                    1 => c
                        .delete_offsets(
                            group,
                            (0..PARTITIONS)
                                .rev()
                                .step_by(2)
                                .map(|p| (if p % 3 == 0 { "x" } else { "y" }.to_string(), p))
                                .collect(),
                            None,
                        )
                        .await
                        .unwrap(),
                    2 => fenced_ok(
                        c.save_group(group, version, vec![n as u8; 64])
                            .await
                            .map(|_| ()),
                    ),
                    3 => {
                        c.delete_group(group, None).await.unwrap();
                    }
                    4 => fenced_ok(c.commit_offsets(group, offsets, Some(version)).await),
                    _ => {}
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Quiet now: one last write per group decides what is there.
    for group in ["shared", "other"] {
        a.delete_group(group, None).await.unwrap();
        b.commit_offsets(group, vec![offset("x", 0, 1), offset("y", 1, 2)], None)
            .await
            .unwrap();
        assert_eq!(
            a.fetch_offsets(group).await.unwrap(),
            vec![offset("x", 0, 1), offset("y", 1, 2)]
        );
        assert_eq!(a.load_group(group).await.unwrap(), None);
    }
    assert_eq!(a.list_groups().await.unwrap(), vec!["other", "shared"]);
}

/// A counter for [`PostgresCoordinator::spawn_commit_listener`] and a receiver of it.
fn commit_counter() -> (
    Arc<tokio::sync::watch::Sender<u64>>,
    tokio::sync::watch::Receiver<u64>,
) {
    let (tx, rx) = tokio::sync::watch::channel(0);
    (Arc::new(tx), rx)
}

/// Waits up to `within` for the counter to pass `above`; returns its value.
async fn bumped_above(
    rx: &mut tokio::sync::watch::Receiver<u64>,
    above: u64,
    within: std::time::Duration,
    what: &str,
) -> u64 {
    match tokio::time::timeout(within, rx.wait_for(|n| *n > above)).await {
        Ok(Ok(n)) => *n,
        Ok(Err(_)) => panic!("{what}: the counter's sender is gone"),
        Err(_) => panic!("{what}: not bumped above {above} within {within:?}"),
    }
}

/// Pids of the commit listener sessions on `c`'s database.
async fn listener_pids(c: &PostgresCoordinator) -> Vec<i32> {
    c.client()
        .await
        .unwrap()
        .query(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = $1",
            &[&LISTENER_APPLICATION_NAME],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Pids of the commit listener sessions on `c`'s database that are idle after their `LISTEN`.
async fn listening_pids(c: &PostgresCoordinator) -> Vec<i32> {
    c.client()
        .await
        .unwrap()
        .query(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = $1
               AND state = 'idle' AND query ILIKE 'LISTEN%'",
            &[&LISTENER_APPLICATION_NAME],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A plain `LISTEN` session on `url` reporting the payloads of commit notifications, in the
/// order delivered; it listens once this returns, and until the client is dropped.
async fn raw_listener(
    url: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(|cx| connection.poll_message(cx));
        while let Some(Ok(message)) = futures::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                assert_eq!(n.channel(), listen::CHANNEL);
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {}", listen::CHANNEL))
        .await
        .unwrap();
    (client, rx)
}

fn one_batch(tp: TopicPartition, producer: Option<ProducerBatchInfo>) -> Vec<CommitBatch> {
    vec![CommitBatch {
        tp,
        position: 0,
        length: 10,
        offset_count: 2,
        max_timestamp: 1,
        producer,
        append: 0,
    }]
}

fn flush(key: &str, batches: Vec<CommitBatch>) -> FlushCommit {
    FlushCommit {
        object_key: key.into(),
        object_size: 10,
        timestamp_ms: 1,
        batches,
    }
}

const SECOND: std::time::Duration = std::time::Duration::from_secs(1);

/// A topic of one partition created through `c`.
async fn one_partition_topic(c: &PostgresCoordinator, name: &str) -> TopicPartition {
    let topic = c
        .create_topic(TopicSpec {
            name: name.into(),
            partitions: 1,
            configs: BTreeMap::new(),
        })
        .await
        .unwrap();
    TopicPartition {
        topic_id: topic.id,
        partition: 0,
    }
}

#[test]
fn notify_payloads_are_cut_at_a_character_boundary() {
    assert_eq!(listen::notify_payload("obj/1"), "obj/1");
    let long = format!("x{}", "ø".repeat(400));
    let cut = listen::notify_payload(&long);
    assert_eq!(cut, format!("x{}", "ø".repeat(127)));
    assert!(cut.len() <= listen::MAX_PAYLOAD_BYTES);
}

/// Broker B listens; commits through broker A wake it. Commits that append nothing (an
/// idempotent retry, a batch for a missing partition, a re-commit of an object) do not notify;
/// notifications arrive in commit order, so a plain listener sees exactly the appending commits.
#[tokio::test]
async fn commits_wake_listeners_on_other_brokers() {
    let Some(server) = server_url() else { return };
    let dbs = TestDatabases::new(server);
    let url = dbs.create().await;
    let a = PostgresCoordinator::connect(&url).await.unwrap();
    let b = PostgresCoordinator::connect(&url).await.unwrap();
    let tp = one_partition_topic(&a, "woken").await;
    let (counter, mut rx) = commit_counter();
    let listener = b.spawn_commit_listener(counter.clone());
    // Bumped once on connecting; it listens from then on.
    let mut seen = bumped_above(&mut rx, 0, 10 * SECOND, "connecting").await;
    assert_eq!(listener_pids(&b).await.len(), 1);
    let (_raw, mut payloads) = raw_listener(&url).await;

    for i in 0..3 {
        let key = format!("appended-{i}");
        let outcomes = a.commit(flush(&key, one_batch(tp, None))).await.unwrap();
        assert_eq!(
            outcomes,
            vec![BatchOutcome::Appended {
                base_offset: 2 * i64::from(i)
            }]
        );
        seen = bumped_above(&mut rx, seen, 2 * SECOND, "a commit through A").await;
    }

    // Appending nothing.
    let producer = a
        .init_producer_id(InitProducer { existing: None })
        .await
        .unwrap();
    let sequenced = Some(ProducerBatchInfo {
        producer_id: producer.producer_id,
        producer_epoch: producer.producer_epoch,
        base_sequence: 0,
    });
    let appended = a
        .commit(flush("idempotent", one_batch(tp, sequenced)))
        .await
        .unwrap();
    assert_eq!(appended, vec![BatchOutcome::Appended { base_offset: 6 }]);
    let retried = a
        .commit(flush("retry", one_batch(tp, sequenced)))
        .await
        .unwrap();
    assert_eq!(retried, vec![BatchOutcome::Duplicate { base_offset: 6 }]);
    let missing = TopicPartition { partition: 7, ..tp };
    let rejected = a
        .commit(flush("missing", one_batch(missing, None)))
        .await
        .unwrap();
    assert_eq!(
        rejected,
        vec![BatchOutcome::Rejected(
            BatchRejection::UnknownTopicOrPartition
        )]
    );
    let recommitted = a
        .commit(flush("appended-0", one_batch(tp, None)))
        .await
        .unwrap();
    assert_eq!(recommitted, vec![BatchOutcome::Appended { base_offset: 0 }]);
    // A long key notifies with a prefix of it (a payload of 8000 bytes or more would fail).
    let long_key = format!("x{}", "ø".repeat(400));
    a.commit(flush(&long_key, one_batch(tp, None)))
        .await
        .unwrap();
    bumped_above(&mut rx, seen, 2 * SECOND, "a commit with a long key").await;

    let mut got = Vec::new();
    while got.len() < 5 {
        match tokio::time::timeout(2 * SECOND, payloads.recv()).await {
            Ok(Some(payload)) => got.push(payload),
            other => panic!("after {got:?}: {other:?}"),
        }
    }
    assert_eq!(
        got,
        vec![
            "appended-0".to_string(),
            "appended-1".to_string(),
            "appended-2".to_string(),
            "idempotent".to_string(),
            listen::notify_payload(&long_key).to_string(),
        ]
    );
    listener.stop().await;
}

/// When the listener's session is terminated, the listener reconnects, bumps the counter (commits
/// made meanwhile were not notified to it), and later commits wake it again.
#[tokio::test]
async fn commit_listener_reconnects_after_losing_its_session() {
    let Some(server) = server_url() else { return };
    let dbs = TestDatabases::new(server);
    let url = dbs.create().await;
    let a = PostgresCoordinator::connect(&url).await.unwrap();
    let b = PostgresCoordinator::connect(&url).await.unwrap();
    let tp = one_partition_topic(&a, "lost").await;
    let (counter, mut rx) = commit_counter();
    let listener = b.spawn_commit_listener(counter.clone());
    let mut seen = bumped_above(&mut rx, 0, 10 * SECOND, "connecting").await;

    for round in 0..2 {
        let pids = listening_pids(&a).await;
        assert_eq!(pids.len(), 1, "round {round}");
        let terminated: bool = a
            .client()
            .await
            .unwrap()
            .query_one("SELECT pg_terminate_backend($1)", &[&pids[0]])
            .await
            .unwrap()
            .get(0);
        assert!(terminated);
        // A commit while the listener is (probably) disconnected: covered by the bump that
        // follows reconnecting.
        a.commit(flush(&format!("meanwhile-{round}"), one_batch(tp, None)))
            .await
            .unwrap();
        seen = bumped_above(&mut rx, seen, 5 * SECOND, "reconnecting").await;
        // Wait for the new session to have run LISTEN (idle after it); give the listener a
        // moment to bump for the reconnection; from then on, only a notification bumps.
        let deadline = tokio::time::Instant::now() + 5 * SECOND;
        while listening_pids(&a).await.iter().all(|pid| *pid == pids[0]) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: no new listening session"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        seen = seen.max(*rx.borrow_and_update());
        a.commit(flush(&format!("after-{round}"), one_batch(tp, None)))
            .await
            .unwrap();
        seen = bumped_above(&mut rx, seen, 3 * SECOND, "a commit after reconnecting").await;
    }
    assert!(!listener.is_finished());
    listener.stop().await;
}

/// Stopping or dropping a listener ends its task (the counter's sender is released) and its
/// session; commits after that bump nothing.
#[tokio::test]
async fn stopping_or_dropping_the_commit_listener_ends_it() {
    let Some(server) = server_url() else { return };
    let dbs = TestDatabases::new(server);
    let url = dbs.create().await;
    let a = PostgresCoordinator::connect(&url).await.unwrap();
    let tp = one_partition_topic(&a, "quiet").await;
    let (counter, mut rx) = commit_counter();

    for (round, stop) in [true, false].into_iter().enumerate() {
        let seen = *rx.borrow_and_update();
        let listener = a.spawn_commit_listener(counter.clone());
        bumped_above(&mut rx, seen, 10 * SECOND, "connecting").await;
        assert_eq!(Arc::strong_count(&counter), 2);
        assert_eq!(listener_pids(&a).await.len(), 1);
        if stop {
            listener.stop().await;
            assert_eq!(
                Arc::strong_count(&counter),
                1,
                "stop returned before the task ended"
            );
        } else {
            drop(listener);
        }
        let deadline = tokio::time::Instant::now() + 5 * SECOND;
        while Arc::strong_count(&counter) > 1 || !listener_pids(&a).await.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "stop: {stop}: the task or its session survived"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let seen = *rx.borrow_and_update();
        a.commit(flush(&format!("unheard-{round}"), one_batch(tp, None)))
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(*rx.borrow(), seen);
    }
}

/// With `sslmode=require` the coordinator (pool and commit listener) talks TLS and verifies the
/// server: trusted through the CA file it works; without the CA it is refused.
#[tokio::test]
async fn tls_when_required_and_verified() {
    let Some(server) = server_url() else { return };
    let ca = std::env::var("FJORD_TEST_POSTGRES_CA")
        .expect("FJORD_TEST_POSTGRES_CA is set by scripts/test-postgres.sh start");
    let dbs = TestDatabases::new(server);
    let url = dbs.create().await;
    let tls_url = format!("{url}?sslmode=require");
    let options = PostgresOptions {
        ca_file: Some(ca.clone().into()),
        ..PostgresOptions::default()
    };
    let coordinator = PostgresCoordinator::connect_with(&tls_url, options)
        .await
        .expect("TLS with the test CA");
    let (tx, mut rx) = tokio::sync::watch::channel(0u64);
    let listener = coordinator.spawn_commit_listener(Arc::new(tx));
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("the commit listener connects over TLS")
        .unwrap();
    let client = coordinator.client().await.unwrap();
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    let (encrypted, all): (i64, i64) = (row.get(0), row.get(1));
    assert!(all >= 2, "pool and listener sessions: {all}");
    assert_eq!(encrypted, all, "every session of the database uses TLS");
    drop(client);
    listener.stop().await;

    // Not trusted: the system roots do not know the test CA.
    let err = PostgresCoordinator::connect(&tls_url)
        .await
        .err()
        .expect("an unverifiable server is refused");
    assert!(matches!(err, CoordinatorError::Storage(_)), "{err}");
    // A CA file without sslmode=require is a configuration error, not a silent plain connection.
    let options = PostgresOptions {
        ca_file: Some(ca.into()),
        ..PostgresOptions::default()
    };
    let err = PostgresCoordinator::connect_with(&url, options)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, CoordinatorError::Invalid(_)), "{err}");
}

/// During a rolling upgrade, brokers from before migration 0004 save groups with their old
/// statement (an upsert that knows no version). Their saves still give the blob a new version,
/// so a newer broker holding the version it read before is refused instead of overwriting them.
#[tokio::test]
async fn saves_by_brokers_older_than_group_versions_still_fence() {
    let Some(server) = server_url() else { return };
    let dbs = TestDatabases::new(server);
    let url = dbs.create().await;
    let c = PostgresCoordinator::connect(&url).await.unwrap();
    let v1 = c.save_group("g", 0, b"new".to_vec()).await.unwrap();
    // The statement the broker before 0004 runs.
    const OLD_SAVE: &str = "INSERT INTO fjord_groups (group_id, state, updated_ms) VALUES ($1, $2, $3)
        ON CONFLICT (group_key) DO UPDATE SET state = EXCLUDED.state, updated_ms = EXCLUDED.updated_ms";
    let client = c.client().await.unwrap();
    client
        .execute(OLD_SAVE, &[&"g".as_bytes(), &b"old".to_vec(), &1i64])
        .await
        .unwrap();
    client
        .execute(OLD_SAVE, &[&"h".as_bytes(), &b"old".to_vec(), &1i64])
        .await
        .unwrap();
    let g = c.load_group("g").await.unwrap().unwrap();
    assert_eq!(g.state, b"old");
    assert!(g.version > v1, "an old broker's save got a new version");
    assert!(matches!(
        c.save_group("g", v1, b"stale".to_vec()).await,
        Err(CoordinatorError::Fenced(_))
    ));
    // An old broker's first save of a group gets a version too.
    let h = c.load_group("h").await.unwrap().unwrap();
    assert!(h.version > 0);
    c.save_group("h", h.version, b"new".to_vec()).await.unwrap();
}
