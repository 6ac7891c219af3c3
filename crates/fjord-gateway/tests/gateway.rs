//! The gateway end to end over gRPC, with in-memory clusters whose faults the tests control:
//! routing, per-key order, failover and the breaker, reloads, limits, the stream, deadlines,
//! and TLS on the listener (with throwaway certificates made by rcgen).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjord_gateway::backend::{ErrorKind, ProduceError, Producer, Record, Report, Stored};
use fjord_gateway::breaker::State;
use fjord_gateway::cluster::Health;
use fjord_gateway::config::{ClusterConfig, DeliveryConfig, GatewayConfig};
use fjord_gateway::gateway::{Gateway, GatewayError, ProducerFactory};
use fjord_gateway::hlc::SystemClock;
use fjord_gateway::metrics::Metrics;
use fjord_gateway_client::{pb, ErrorCode, GatewayClient, Message};
use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Healthy,
    Failing(ErrorKind),
    /// Never answers (until the mode changes: then the held records time out, as librdkafka's
    /// `message.timeout.ms` would have answered them).
    Hanging,
    /// Stores and answers each record after this long.
    Delayed(Duration),
}

#[derive(Debug, Clone)]
struct StoredRecord {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

/// An in-memory cluster: 4 partitions per topic, records stored on `send`.
#[derive(Debug)]
struct FakeCluster {
    mode: Mutex<Mode>,
    log: Mutex<HashMap<(String, i32), Vec<StoredRecord>>>,
    sends: AtomicU64,
    /// Reports of records sent while hanging: kept, never answered.
    hung: Mutex<Vec<Report>>,
}

impl FakeCluster {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            mode: Mutex::new(Mode::Healthy),
            log: Mutex::new(HashMap::new()),
            sends: AtomicU64::new(0),
            hung: Mutex::new(Vec::new()),
        })
    }
    fn set(&self, mode: Mode) {
        *self.mode.lock() = mode;
        if mode != Mode::Hanging {
            for report in std::mem::take(&mut *self.hung.lock()) {
                report.complete(Err(ProduceError::new(ErrorKind::Timeout, "timed out")));
            }
        }
    }
    fn store(&self, r: StoredRecord, topic: &str, partition: i32) -> Stored {
        let mut log = self.log.lock();
        let records = log.entry((topic.to_owned(), partition)).or_default();
        records.push(r);
        Stored {
            partition,
            offset: records.len() as i64 - 1,
        }
    }
    fn records(&self, topic: &str) -> Vec<(i32, i64, StoredRecord)> {
        let log = self.log.lock();
        let mut out = Vec::new();
        for ((t, p), records) in log.iter() {
            if t == topic {
                out.extend(
                    records
                        .iter()
                        .enumerate()
                        .map(|(o, r)| (*p, o as i64, r.clone())),
                );
            }
        }
        out.sort_by_key(|(p, o, _)| (*p, *o));
        out
    }
}

#[derive(Debug)]
struct FakeProducer(Arc<FakeCluster>);

impl Producer for FakeProducer {
    fn send(&self, r: Record<'_>, report: Report) {
        self.0.sends.fetch_add(1, Ordering::Relaxed);
        let mode = *self.0.mode.lock();
        let delay = match mode {
            Mode::Healthy => None,
            Mode::Delayed(d) => Some(d),
            Mode::Failing(kind) => {
                return report.complete(Err(ProduceError::new(kind, "injected")))
            }
            Mode::Hanging => return self.0.hung.lock().push(report),
        };
        let partition = r.partition.unwrap_or_else(|| {
            r.key
                .map(|k| (k.iter().map(|b| u32::from(*b)).sum::<u32>() % 4) as i32)
                .unwrap_or(0)
        });
        let record = StoredRecord {
            key: r.key.map(<[u8]>::to_vec),
            value: r.value.to_vec(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.map(<[u8]>::to_vec)))
                .collect(),
        };
        match delay {
            None => report.complete(Ok(self.0.store(record, r.topic, partition))),
            Some(delay) => {
                let cluster = self.0.clone();
                let topic = r.topic.to_owned();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    report.complete(Ok(cluster.store(record, &topic, partition)));
                });
            }
        }
    }

    fn probe(&self, _timeout: Duration) -> BoxFuture<'static, Result<(), ProduceError>> {
        let ok = matches!(*self.0.mode.lock(), Mode::Healthy | Mode::Delayed(_));
        async move {
            if ok {
                Ok(())
            } else {
                Err(ProduceError::new(ErrorKind::Unavailable, "down"))
            }
        }
        .boxed()
    }

    fn flush(&self, _timeout: Duration) -> BoxFuture<'static, ()> {
        async {}.boxed()
    }
}

#[derive(Default)]
struct FakeFactory {
    clusters: Mutex<BTreeMap<String, Arc<FakeCluster>>>,
    created: AtomicU64,
}

impl FakeFactory {
    fn cluster(&self, name: &str) -> Arc<FakeCluster> {
        self.clusters
            .lock()
            .entry(name.to_owned())
            .or_insert_with(FakeCluster::new)
            .clone()
    }
}

struct SharedFactory(Arc<FakeFactory>);

impl ProducerFactory for SharedFactory {
    fn create(
        &self,
        name: &str,
        _config: &ClusterConfig,
        _delivery: &DeliveryConfig,
        _health: Arc<Health>,
    ) -> Result<Arc<dyn Producer>, GatewayError> {
        self.0.created.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(FakeProducer(self.0.cluster(name))))
    }
}

const BASE: &str = r#"
gateway_id = "gw-test"
[clusters.a]
bootstrap_servers = "fake-a:9092"
[clusters.b]
bootstrap_servers = "fake-b:9092"
[groups.main]
clusters = { a = 1, b = 1 }
[routes]
topics = { orders = "main", moving = "main" }
[delivery]
attempt_timeout_ms = 1000
delivery_timeout_ms = 3000
max_attempts = 2
[breaker]
consecutive_failures = 3
min_calls = 1000
open_ms = 200
half_open_max_calls = 1
half_open_successes = 2
[limits]
max_messages_per_request = 1000
max_message_bytes = 1000
max_request_bytes = 100000
max_inflight_bytes = 1000000
"#;

struct Harness {
    gateway: Arc<Gateway>,
    factory: Arc<FakeFactory>,
    addr: SocketAddr,
    client: GatewayClient,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), GatewayError>>,
}

impl Harness {
    /// A gateway with a plaintext listener and a plaintext client.
    async fn start(config: &str) -> Self {
        Self::start_with_client(config, None).await
    }

    /// A gateway and a client that connects with `client_tls` (plaintext when `None`).
    async fn start_with_client(config: &str, client_tls: Option<ClientTlsConfig>) -> Self {
        let config: GatewayConfig = toml::from_str(config).unwrap();
        let factory = Arc::new(FakeFactory::default());
        let gateway = Arc::new(
            Gateway::new(
                config,
                Box::new(SharedFactory(factory.clone())),
                Arc::new(Metrics::default()),
                Arc::new(SystemClock),
            )
            .unwrap(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(fjord_gateway::server::serve(
            gateway.clone(),
            listener,
            shutdown.clone(),
        ));
        let client = match client_tls {
            None => GatewayClient::connect(format!("http://{addr}"))
                .await
                .unwrap(),
            Some(tls) => GatewayClient::from_channel(tls_channel(addr, tls).await.unwrap()),
        };
        Self {
            gateway,
            factory,
            addr,
            client,
            shutdown,
            server,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.server.await.unwrap().unwrap();
    }

    fn breaker(&self, cluster: &str) -> State {
        self.gateway
            .clusters()
            .into_iter()
            .find(|c| &*c.name == cluster)
            .unwrap()
            .health
            .state()
    }
}

fn keyed(n: usize, keys: usize) -> Vec<Message> {
    (0..n)
        .map(|i| Message::new(format!("v{i}")).with_key(format!("key-{}", i % keys)))
        .collect()
}

fn header<'a>(r: &'a StoredRecord, name: &str) -> Option<&'a [u8]> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_deref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_stick_to_one_cluster_in_order_with_hlc_headers() {
    let mut h = Harness::start(BASE).await;
    let mut placement: HashMap<String, String> = HashMap::new();
    for round in 0..5 {
        let msgs: Vec<Message> = (0..200)
            .map(|i| {
                Message::new(format!("{round}:{i}"))
                    .with_key(format!("key-{}", i % 20))
                    .with_header("trace", Some("t1".into()))
            })
            .collect();
        let results = h.client.produce_batch("orders", msgs).await.unwrap();
        for (i, r) in results.into_iter().enumerate() {
            let d = r.unwrap();
            assert_eq!(d.attempts, 1);
            let key = format!("key-{}", i % 20);
            let prev = placement.insert(key.clone(), d.cluster.clone());
            assert!(prev.is_none_or(|p| p == d.cluster), "{key} moved");
        }
    }
    // Both clusters got keys, and each stored every key's values in send order.
    let mut total = 0;
    for name in ["a", "b"] {
        let records = h.factory.cluster(name).records("orders");
        assert!(!records.is_empty(), "cluster {name} got nothing");
        total += records.len();
        let mut last: HashMap<Vec<u8>, (u64, (usize, usize))> = HashMap::new();
        for (_, _, r) in &records {
            let hlc: u64 = std::str::from_utf8(header(r, "fjord-hlc").unwrap())
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(header(r, "fjord-gateway"), Some(&b"gw-test"[..]));
            assert_eq!(header(r, "trace"), Some(&b"t1"[..]));
            let v = String::from_utf8(r.value.clone()).unwrap();
            let (round, i) = v.split_once(':').unwrap();
            let seq = (round.parse().unwrap(), i.parse().unwrap());
            let key = r.key.clone().unwrap();
            if let Some((prev_hlc, prev_seq)) = last.get(&key) {
                assert!(
                    hlc > *prev_hlc && seq > *prev_seq,
                    "order broken for {key:?}"
                );
            }
            last.insert(key, (hlc, seq));
        }
    }
    assert_eq!(total, 1000);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_cluster_is_routed_around_and_probed_back() {
    let mut h = Harness::start(BASE).await;
    let a = h.factory.cluster("a");
    a.set(Mode::Failing(ErrorKind::Unavailable));
    // Every message is delivered, the ones meant for a on b after one retry.
    let results = h
        .client
        .produce_batch("orders", keyed(100, 50))
        .await
        .unwrap();
    let mut retried = 0;
    for r in &results {
        let d = r.as_ref().unwrap();
        assert_eq!(d.cluster, "b");
        retried += usize::from(d.attempts == 2);
    }
    assert!(retried > 0);
    // One batch is one call per cluster: three batches open the breaker.
    for _ in 0..2 {
        h.client
            .produce_batch("orders", keyed(10, 10))
            .await
            .unwrap();
    }
    assert_eq!(h.breaker("a"), State::Open);
    let sends_while_open = a.sends.load(Ordering::Relaxed);
    for r in h
        .client
        .produce_batch("orders", keyed(50, 50))
        .await
        .unwrap()
    {
        assert_eq!(r.unwrap().attempts, 1, "no attempt on the open cluster");
    }
    assert_eq!(a.sends.load(Ordering::Relaxed), sends_while_open);
    // Probes keep failing while a is down; once it is back, half-open then closed.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(h.breaker("a"), State::Open);
    a.set(Mode::Healthy);
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.breaker("a") != State::Closed {
        assert!(Instant::now() < deadline, "breaker did not close");
        h.client
            .produce_batch("orders", keyed(20, 20))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let results = h
        .client
        .produce_batch("orders", keyed(100, 50))
        .await
        .unwrap();
    assert!(results.iter().any(|r| r.as_ref().unwrap().cluster == "a"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_cluster_and_non_retriable_errors_are_reported_per_message() {
    let mut h = Harness::start(BASE).await;
    h.factory
        .cluster("a")
        .set(Mode::Failing(ErrorKind::Rejected));
    h.factory
        .cluster("b")
        .set(Mode::Failing(ErrorKind::Unavailable));
    let results = h
        .client
        .produce_batch("orders", keyed(40, 40))
        .await
        .unwrap();
    let mut codes = BTreeMap::new();
    for r in results {
        let f = r.unwrap_err();
        *codes.entry(format!("{:?}", f.code)).or_insert(0) += 1;
        match f.code {
            ErrorCode::Rejected => {
                assert!(!f.retriable && f.clusters_tried.ends_with(&["a".to_owned()]))
            }
            ErrorCode::BackendUnavailable => assert!(f.retriable),
            other => panic!("unexpected {other:?}: {}", f.message),
        }
    }
    assert!(codes.contains_key("Rejected"), "{codes:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_cluster_ends_at_the_deadline() {
    let mut h = Harness::start(&BASE.replace(
        "attempt_timeout_ms = 1000\ndelivery_timeout_ms = 3000",
        "attempt_timeout_ms = 200\ndelivery_timeout_ms = 300",
    ))
    .await;
    h.factory.cluster("a").set(Mode::Hanging);
    h.factory.cluster("b").set(Mode::Hanging);
    let started = Instant::now();
    let results = h.client.produce_batch("orders", keyed(5, 5)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    for r in results {
        let f = r.unwrap_err();
        assert_eq!(f.code, ErrorCode::Timeout);
        assert!(f.message.contains("may still be stored"), "{}", f.message);
    }
    // A caller's shorter deadline wins too.
    h.factory.cluster("a").set(Mode::Healthy);
    h.factory.cluster("b").set(Mode::Healthy);
    let mut quick = h.client.clone().with_timeout(Duration::from_millis(500));
    assert!(quick.publish("orders", Message::new("x")).await.is_ok());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_get_clear_errors_and_the_gateway_stays_up() {
    let mut h = Harness::start(BASE).await;
    let err = |e: fjord_gateway_client::ClientError| match e {
        fjord_gateway_client::ClientError::Status(s) => (s.code(), s.message().to_owned()),
        other => panic!("{other}"),
    };
    let (code, msg) = err(h.client.produce_batch("orders", vec![]).await.unwrap_err());
    assert_eq!(
        (code, msg.as_str()),
        (Code::InvalidArgument, "the batch has no messages")
    );
    let (code, msg) = err(h
        .client
        .produce_batch("elsewhere", keyed(1, 1))
        .await
        .unwrap_err());
    assert_eq!(code, Code::NotFound);
    assert!(msg.contains("no route for topic \"elsewhere\""), "{msg}");
    let big = Message::new(vec![b'x'; 1001]);
    let (code, msg) = err(h
        .client
        .produce_batch("orders", vec![Message::new("ok"), big])
        .await
        .unwrap_err());
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("message 1 has 1001 bytes"), "{msg}");
    let (code, _) = err(h
        .client
        .produce_batch("orders", keyed(1001, 1))
        .await
        .unwrap_err());
    assert_eq!(code, Code::InvalidArgument);
    let (code, _) = err(h.client.produce_batch("", keyed(1, 1)).await.unwrap_err());
    assert_eq!(code, Code::InvalidArgument);
    // Nothing of the refused requests was produced; the gateway still serves.
    assert!(h.factory.cluster("a").records("orders").is_empty());
    assert!(h.factory.cluster("b").records("orders").is_empty());
    h.client
        .publish("orders", Message::new("fine"))
        .await
        .unwrap();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_are_rate_limited_separately() {
    let config = BASE.replace(
        "[limits]",
        "[limits]\ncaller_messages_per_sec = 10\ncaller_burst_messages = 100",
    );
    let h = Harness::start(&config).await;
    let mut alice = h.client.clone();
    let results = alice.produce_batch("orders", keyed(100, 5)).await.unwrap();
    assert!(results.iter().all(Result::is_ok));
    let err = alice
        .produce_batch("orders", keyed(50, 5))
        .await
        .unwrap_err();
    assert!(err.is_retriable());
    match err {
        fjord_gateway_client::ClientError::Status(s) => {
            assert_eq!(s.code(), Code::ResourceExhausted);
            assert!(s.message().contains("rate limit"), "{}", s.message());
        }
        other => panic!("{other}"),
    }
    // Another caller (x-fjord-caller) has its own budget.
    let mut req = tonic::Request::new(pb::ProduceBatchRequest {
        topic: "orders".into(),
        messages: vec![pb::Message {
            value: b"bob".to_vec(),
            ..Default::default()
        }],
    });
    req.metadata_mut()
        .insert("x-fjord-caller", "bob".parse().unwrap());
    let mut bob = h.client.clone();
    assert!(bob.raw().produce_batch(req).await.is_ok());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_changes_move_traffic_without_new_producers() {
    let config = BASE.replace("clusters = { a = 1, b = 1 }", "clusters = { a = 1, b = 0 }");
    let mut h = Harness::start(&config).await;
    for r in h
        .client
        .produce_batch("moving", keyed(100, 30))
        .await
        .unwrap()
    {
        assert_eq!(r.unwrap().cluster, "a");
    }
    let mut shifted: GatewayConfig =
        toml::from_str(&BASE.replace("clusters = { a = 1, b = 1 }", "clusters = { a = 0, b = 1 }"))
            .unwrap();
    h.gateway.reload(shifted.clone()).unwrap();
    for r in h
        .client
        .produce_batch("moving", keyed(100, 30))
        .await
        .unwrap()
    {
        assert_eq!(r.unwrap().cluster, "b");
    }
    assert_eq!(
        h.factory.created.load(Ordering::Relaxed),
        2,
        "producers were kept"
    );
    // An invalid configuration is refused and the old one stays in force.
    shifted.routes.default = Some("nope".into());
    assert!(h.gateway.reload(shifted).is_err());
    assert!(h.client.produce_batch("moving", keyed(1, 1)).await.is_ok());
    assert_eq!(h.factory.cluster("a").records("moving").len(), 100);
    assert_eq!(h.factory.cluster("b").records("moving").len(), 101);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_answers_in_order_and_ends_on_a_request_error() {
    let mut h = Harness::start(BASE).await;
    let requests: Vec<pb::ProduceStreamRequest> = (0..20u64)
        .map(|id| pb::ProduceStreamRequest {
            request_id: id,
            batch: Some(pb::ProduceBatchRequest {
                topic: "orders".into(),
                messages: (0..10)
                    .map(|i| pb::Message {
                        key: Some(format!("k{}", i % 3).into_bytes()),
                        value: format!("{id}:{i}").into_bytes(),
                        ..Default::default()
                    })
                    .collect(),
            }),
        })
        .chain(std::iter::once(pb::ProduceStreamRequest {
            request_id: 99,
            batch: Some(pb::ProduceBatchRequest {
                topic: "orders".into(),
                messages: vec![],
            }),
        }))
        .collect();
    let mut responses = h
        .client
        .raw()
        .produce_stream(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut ids = Vec::new();
    let status = loop {
        match responses.message().await {
            Ok(Some(r)) => {
                assert_eq!(r.results.len(), 10);
                ids.push(r.request_id);
            }
            Ok(None) => panic!("the stream should end with the empty batch's error"),
            Err(s) => break s,
        }
    };
    assert_eq!(ids, (0..20).collect::<Vec<_>>());
    assert_eq!(status.code(), Code::InvalidArgument);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bound_gives_backpressure_not_unbounded_queues() {
    let config = BASE
        .replace(
            "attempt_timeout_ms = 1000\ndelivery_timeout_ms = 3000",
            "attempt_timeout_ms = 500\ndelivery_timeout_ms = 1000",
        )
        .replace(
            "max_request_bytes = 100000\nmax_inflight_bytes = 1000000",
            "max_request_bytes = 1500\nmax_inflight_bytes = 2000\nadmission_wait_ms = 50",
        );
    let h = Harness::start(&config).await;
    h.factory.cluster("a").set(Mode::Hanging);
    h.factory.cluster("b").set(Mode::Hanging);
    let batch = |n: usize| vec![Message::new(vec![b'x'; 500]); n];
    let mut first = h.client.clone();
    let held = tokio::spawn(async move { first.produce_batch("orders", batch(3)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut second = h.client.clone();
    match second.produce_batch("orders", batch(2)).await.unwrap_err() {
        fjord_gateway_client::ClientError::Status(s) => {
            assert_eq!(s.code(), Code::ResourceExhausted);
            assert!(s.message().contains("holds 2000 bytes"), "{}", s.message());
        }
        other => panic!("{other}"),
    }
    // The held request ends at its deadline; its room comes back once the clusters let go of
    // its records (here: they time out when the clusters recover).
    let results = held.await.unwrap().unwrap();
    assert!(results
        .iter()
        .all(|r| r.as_ref().unwrap_err().code == ErrorCode::Timeout));
    h.factory.cluster("a").set(Mode::Healthy);
    h.factory.cluster("b").set(Mode::Healthy);
    assert_eq!(h.gateway.metrics().inflight_bytes.get(), 0);
    let results = second.produce_batch("orders", batch(2)).await.unwrap();
    assert!(results.iter().all(Result::is_ok));
    h.stop().await;
}

/// Sends a batch as `caller` (the `x-fjord-caller` metadata).
async fn produce_as(
    client: &GatewayClient,
    caller: &str,
    messages: Vec<pb::Message>,
) -> Result<pb::ProduceBatchResponse, tonic::Status> {
    let mut req = tonic::Request::new(pb::ProduceBatchRequest {
        topic: "orders".into(),
        messages,
    });
    req.metadata_mut()
        .insert("x-fjord-caller", caller.parse().unwrap());
    let mut client = client.clone();
    client
        .raw()
        .produce_batch(req)
        .await
        .map(tonic::Response::into_inner)
}

/// `n` messages of `bytes` bytes each (key + value + headers, as the limits count them).
fn sized(n: usize, bytes: usize) -> Vec<pb::Message> {
    (0..n)
        .map(|i| pb::Message {
            key: Some(vec![b'k'; 10]),
            value: vec![b'v'; bytes - 10 - 6],
            headers: vec![pb::Header {
                key: "h".into(),
                value: Some(format!("{:05}", i % 100_000).into_bytes()),
            }],
            ..Default::default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_have_separate_byte_budgets() {
    let config = BASE.replace(
        "[limits]",
        "[limits]\ncaller_bytes_per_sec = 100\ncaller_burst_bytes = 2000",
    );
    let h = Harness::start(&config).await;
    // 1500 of alice's 2000 bytes; the next 1000 are over her budget (5 s away at 100 bytes/s).
    let ok = produce_as(&h.client, "alice", sized(15, 100))
        .await
        .unwrap();
    assert_eq!(ok.results.len(), 15);
    let refused = produce_as(&h.client, "alice", sized(10, 100))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    let msg = refused.message();
    assert!(
        msg.starts_with("rate limit of caller \"alice\" exceeded (100 bytes/s); retry in "),
        "{msg}"
    );
    // Bob's budget is his own: the same batches pass.
    produce_as(&h.client, "bob", sized(15, 100)).await.unwrap();
    // A few messages still fit alice's remaining 500 bytes: the refusal cost her nothing.
    produce_as(&h.client, "alice", sized(4, 100)).await.unwrap();
    // A batch larger than the burst never passes, even from a fresh caller.
    let refused = produce_as(&h.client, "carol", sized(21, 100))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused
            .message()
            .contains("the batch is larger than the burst of 2000 bytes: split it"),
        "{}",
        refused.message()
    );
    // A stream is held to the same budget: its third 800-byte batch ends it.
    let batches: Vec<pb::ProduceStreamRequest> = (0..3u64)
        .map(|id| pb::ProduceStreamRequest {
            request_id: id,
            batch: Some(pb::ProduceBatchRequest {
                topic: "orders".into(),
                messages: sized(8, 100),
            }),
        })
        .collect();
    let mut req = tonic::Request::new(futures::stream::iter(batches));
    req.metadata_mut()
        .insert("x-fjord-caller", "dave".parse().unwrap());
    let mut client = h.client.clone();
    let mut responses = client.raw().produce_stream(req).await.unwrap().into_inner();
    let mut answered = Vec::new();
    let status = loop {
        match responses.message().await {
            Ok(Some(r)) => answered.push(r.request_id),
            Ok(None) => panic!("the stream should end with the byte limit's refusal"),
            Err(s) => break s,
        }
    };
    assert_eq!(answered, vec![0, 1]);
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("caller \"dave\""), "{status}");
    // Counted apart from the message-rate limit; nothing refused was produced.
    assert_eq!(h.gateway.metrics().byte_rate_limited.get(), 3);
    assert_eq!(h.gateway.metrics().rate_limited.get(), 0);
    let stored = h.factory.cluster("a").records("orders").len()
        + h.factory.cluster("b").records("orders").len();
    assert_eq!(stored, 15 + 15 + 4 + 16);
    h.stop().await;
}

/// A throwaway certificate authority whose files live in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        Self {
            dir: tempfile::tempdir().unwrap(),
            ca,
        }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A certificate for `names` signed by this CA, for a server or a client: (cert, key) PEM.
    fn issue(&self, names: &[&str], server: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
        params.extended_key_usages = vec![if server {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = params.signed_by(&key, &*self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

/// BASE with a `[tls]` table: a server certificate for localhost/127.0.0.1 from `pki`, and
/// `client_ca` as the client CA file if given.
fn tls_config(pki: &Pki, client_ca: Option<&Path>) -> String {
    let (cert, key) = pki.issue(&["localhost", "127.0.0.1"], true);
    let cert = pki.write("server.pem", &cert);
    let key = pki.write("server-key.pem", &key);
    let mut table = format!(
        "\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    if let Some(ca) = client_ca {
        table.push_str(&format!(
            "client_ca_file = {:?}\n",
            ca.display().to_string()
        ));
    }
    format!("{BASE}{table}")
}

/// Client TLS trusting `ca_pem`, presenting `identity` (cert, key PEM) if given.
fn client_tls(ca_pem: &str, identity: Option<&(String, String)>) -> ClientTlsConfig {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    match identity {
        Some((cert, key)) => tls.identity(Identity::from_pem(cert, key)),
        None => tls,
    }
}

async fn tls_channel(
    addr: SocketAddr,
    tls: ClientTlsConfig,
) -> Result<Channel, tonic::transport::Error> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// Connects with `tls` (plaintext when `None`) and sends one message; any failure, from the
/// handshake to the call, is an error.
async fn try_publish(addr: SocketAddr, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    let attempt = async {
        let mut client = match tls {
            Some(tls) => GatewayClient::from_channel(
                tls_channel(addr, tls).await.map_err(|e| e.to_string())?,
            ),
            None => GatewayClient::connect(format!("http://{addr}"))
                .await
                .map_err(|e| e.to_string())?,
        };
        client
            .publish("orders", Message::new("x"))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(|_| "timed out".to_owned())?
}

fn stored(h: &Harness) -> usize {
    h.factory.cluster("a").records("orders").len() + h.factory.cluster("b").records("orders").len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_clients_that_trust_its_ca_and_refuses_plaintext() {
    let pki = Pki::new("gateway");
    let h = Harness::start_with_client(
        &tls_config(&pki, None),
        Some(client_tls(&pki.ca_pem(), None)),
    )
    .await;
    let mut client = h.client.clone();
    let results = client.produce_batch("orders", keyed(10, 5)).await.unwrap();
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(stored(&h), 10);

    // Health checking and reflection are served over the same TLS listener.
    let channel = tls_channel(h.addr, client_tls(&pki.ca_pem(), None))
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "fjord.gateway.v1.Gateway"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer {answer:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "fjord.gateway.v1.Gateway"),
        "{list:?}"
    );

    // Plaintext is refused, and so is a client that trusts another CA.
    let err = try_publish(h.addr, None).await.unwrap_err();
    assert_ne!(err, "timed out");
    let other = Pki::new("other");
    let err = try_publish(h.addr, Some(client_tls(&other.ca_pem(), None)))
        .await
        .unwrap_err();
    assert_ne!(err, "timed out");
    assert_eq!(stored(&h), 10);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_client_ca() {
    let server_pki = Pki::new("gateway");
    let clients = Pki::new("clients");
    let clients_ca = server_pki.write("clients-ca.pem", &clients.ca_pem());
    let alice = clients.issue(&["alice.clients.test"], false);
    let h = Harness::start_with_client(
        &tls_config(&server_pki, Some(&clients_ca)),
        Some(client_tls(&server_pki.ca_pem(), Some(&alice))),
    )
    .await;
    let mut client = h.client.clone();
    client
        .publish("orders", Message::new("from alice"))
        .await
        .unwrap();
    assert_eq!(stored(&h), 1);

    // No client certificate: refused.
    let err = try_publish(h.addr, Some(client_tls(&server_pki.ca_pem(), None)))
        .await
        .unwrap_err();
    assert_ne!(err, "timed out");
    // A certificate from a CA the gateway does not trust for clients: refused.
    let mallory = server_pki.issue(&["mallory.clients.test"], false);
    let err = try_publish(
        h.addr,
        Some(client_tls(&server_pki.ca_pem(), Some(&mallory))),
    )
    .await
    .unwrap_err();
    assert_ne!(err, "timed out");
    // Another certificate of the client CA: served.
    let bob = clients.issue(&["bob.clients.test"], false);
    try_publish(h.addr, Some(client_tls(&server_pki.ca_pem(), Some(&bob))))
        .await
        .unwrap();
    assert_eq!(stored(&h), 2);
    h.stop().await;
}

/// `config` plus a group of cluster a alone, serving topic "solo": what a cannot take has nowhere
/// else to go.
fn solo(config: &str) -> String {
    config
        .replace("[routes]", "[groups.solo]\nclusters = { a = 1 }\n[routes]")
        .replace("moving = \"main\"", "moving = \"main\", solo = \"solo\"")
}

async fn wait_for_breaker(h: &Harness, cluster: &str, state: State, within: Duration) {
    let deadline = Instant::now() + within;
    while h.breaker(cluster) != state {
        assert!(
            Instant::now() < deadline,
            "the breaker of {cluster} is {:?}, not {state:?}",
            h.breaker(cluster)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Three failed batches to "solo" (consecutive_failures = 3 in BASE) open a's breaker.
async fn open_breaker_of_a(h: &mut Harness) {
    h.factory
        .cluster("a")
        .set(Mode::Failing(ErrorKind::Unavailable));
    for _ in 0..3 {
        h.client.produce_batch("solo", keyed(1, 1)).await.unwrap();
    }
    assert_eq!(h.breaker("a"), State::Open);
}

/// Issue 14, item 4: a request dropped while it holds a half-open admission (the caller
/// cancelled, or its deadline passed and tonic dropped the request) must give the admission
/// back; before, each such drop leaked one, and once `half_open_max_calls` had leaked the
/// breaker admitted nothing, forever, while staying half-open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_admissions_are_released_by_cancelled_and_timed_out_calls() {
    // One call admitted at a time while half-open; enough successes needed to stay half-open
    // through the three dropped calls below.
    let config = solo(BASE).replace("half_open_successes = 2", "half_open_successes = 10");
    let mut h = Harness::start(&config).await;
    open_breaker_of_a(&mut h).await;
    let a = h.factory.cluster("a");
    a.set(Mode::Delayed(Duration::from_millis(300)));
    wait_for_breaker(&h, "a", State::HalfOpen, Duration::from_secs(3)).await;
    // Cancelled: the caller goes away while its message is with a.
    let mut caller = h.client.clone();
    let call = tokio::spawn(async move { caller.produce_batch("solo", keyed(1, 1)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Timed out: the caller's 50 ms deadline passes while a holds the message.
    let mut quick = h.client.clone().with_timeout(Duration::from_millis(50));
    let _ = quick.produce_batch("solo", keyed(1, 1)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Dropped by whoever awaits the gateway's future (a timeout around it). It must have been
    // admitted: the two calls above gave their admission back.
    let request = fjord_gateway::pb::ProduceBatchRequest {
        topic: "solo".into(),
        messages: vec![fjord_gateway::pb::Message {
            value: b"dropped".to_vec().into(),
            ..Default::default()
        }],
    };
    let dropped = tokio::time::timeout(Duration::from_millis(50), async {
        match h.gateway.start("tester", request, None).await {
            Ok(outcomes) => Some(outcomes.await),
            Err(_) => None,
        }
    })
    .await;
    assert!(
        dropped.is_err(),
        "not admitted: the dropped calls leaked a's half-open admission ({:?})",
        dropped.map(|o| o.map(|o| format!("{o:?}")))
    );
    assert_eq!(h.breaker("a"), State::HalfOpen);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The cluster is healthy: the breaker must close, not stay wedged half-open.
    a.set(Mode::Healthy);
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.breaker("a") != State::Closed {
        assert!(
            Instant::now() < deadline,
            "the breaker of a is wedged {:?}",
            h.breaker("a")
        );
        let _ = h.client.produce_batch("solo", keyed(1, 1)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.stop().await;
}

/// Issue 14, item 5: callers whose deadlines are shorter than the attempt timeout never saw a
/// hung cluster fail (their rounds ended unanswered and counted nothing), so its breaker never
/// opened. A cluster that holds a record past the attempt timeout counts as failed, whether or
/// not its caller is still waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_cluster_opens_its_breaker_for_callers_with_short_deadlines() {
    let config = solo(&BASE.replace("attempt_timeout_ms = 1000", "attempt_timeout_ms = 300"));
    let h = Harness::start(&config).await;
    let a = h.factory.cluster("a");
    a.set(Mode::Hanging);
    let started = Instant::now();
    let mut quick = h.client.clone().with_timeout(Duration::from_millis(100));
    let mut calls = 0;
    while h.breaker("a") != State::Open {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the breaker of the hung cluster is still {:?} after {calls} calls",
            h.breaker("a")
        );
        let _ = quick.produce_batch("solo", keyed(1, 1)).await;
        calls += 1;
    }
    // Back to health: probed, half-open, closed.
    a.set(Mode::Healthy);
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.breaker("a") != State::Closed {
        assert!(Instant::now() < deadline, "the breaker of a did not close");
        let _ = quick.produce_batch("solo", keyed(1, 1)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.stop().await;
}

/// Issue 14, item 6: a message that timed out on a (so a may have stored it) and was then
/// rejected by b must not be answered REJECTED / not retriable: its outcome is unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_then_a_rejection_is_answered_outcome_unknown() {
    let mut h = Harness::start(BASE).await;
    h.factory
        .cluster("a")
        .set(Mode::Failing(ErrorKind::Timeout));
    h.factory
        .cluster("b")
        .set(Mode::Failing(ErrorKind::Rejected));
    let results = h
        .client
        .produce_batch("orders", keyed(40, 40))
        .await
        .unwrap();
    let mut unknown = 0;
    for r in results {
        let f = r.unwrap_err();
        if f.clusters_tried == ["a", "b"] {
            assert_eq!(f.code, ErrorCode::OutcomeUnknown, "{}", f.message);
            assert!(f.retriable, "{}", f.message);
            assert!(f.message.contains("cluster a"), "{}", f.message);
            unknown += 1;
        } else {
            assert_eq!(f.clusters_tried, ["b"]);
            assert_eq!(f.code, ErrorCode::Rejected);
            assert!(!f.retriable);
        }
    }
    assert!(unknown > 0);
    h.stop().await;
}

/// Issue 14, item 7: a full client queue on a healthy cluster is backpressure, answered to the
/// caller (retriable), not a reason to move the key to another healthy cluster; nor does it count
/// against the cluster's breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_full_backpressures_the_caller_instead_of_moving_the_key() {
    let mut h = Harness::start(BASE).await;
    let first = h
        .client
        .produce_batch("orders", keyed(40, 40))
        .await
        .unwrap();
    let home: Vec<String> = first.into_iter().map(|r| r.unwrap().cluster).collect();
    assert!(home.iter().any(|c| c == "a") && home.iter().any(|c| c == "b"));
    let on_b = h.factory.cluster("b").records("orders").len();
    h.factory
        .cluster("a")
        .set(Mode::Failing(ErrorKind::QueueFull));
    for _ in 0..5 {
        let results = h
            .client
            .produce_batch("orders", keyed(40, 40))
            .await
            .unwrap();
        for (r, home) in results.into_iter().zip(&home) {
            if home == "a" {
                let f = r.unwrap_err();
                assert_eq!(f.code, ErrorCode::ResourceExhausted, "{}", f.message);
                assert!(f.retriable);
                assert_eq!(f.clusters_tried, ["a"]);
            } else {
                assert_eq!(r.unwrap().cluster, "b");
            }
        }
    }
    let b_keys = home.iter().filter(|c| *c == "b").count();
    assert_eq!(
        h.factory.cluster("b").records("orders").len(),
        on_b + 5 * b_keys,
        "only b's own keys went to b"
    );
    assert_eq!(h.breaker("a"), State::Closed);
    h.stop().await;
}

/// Issue 14, item 8: a request dropped before its answer (the caller cancelled) gives its bytes
/// back to the in-flight gauge and is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_requests_update_the_inflight_gauge_and_the_request_counters() {
    use fjord_gateway::metrics::RequestLabels;
    let h = Harness::start(BASE).await;
    for c in ["a", "b"] {
        h.factory
            .cluster(c)
            .set(Mode::Delayed(Duration::from_millis(200)));
    }
    let mut caller = h.client.clone();
    let call = tokio::spawn(async move { caller.produce_batch("orders", keyed(5, 5)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(h.gateway.metrics().inflight_bytes.get() > 0);
    call.abort();
    let _ = call.await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let metrics = h.gateway.metrics();
    assert_eq!(metrics.inflight_bytes.get(), 0);
    let cancelled = metrics
        .requests
        .get_or_create(&RequestLabels {
            method: "ProduceBatch",
            code: "cancelled",
        })
        .get();
    assert_eq!(cancelled, 1);
    h.stop().await;
}

/// Issue 14, item 8: `max_inflight_bytes` bounds what the producers hold too: a request whose
/// caller's deadline passed keeps its room until the clusters have answered its records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_room_is_held_until_the_clusters_answer() {
    let config = BASE.replace(
        "max_request_bytes = 100000\nmax_inflight_bytes = 1000000",
        "max_request_bytes = 1500\nmax_inflight_bytes = 2000\nadmission_wait_ms = 50",
    );
    let h = Harness::start(&config).await;
    for c in ["a", "b"] {
        h.factory
            .cluster(c)
            .set(Mode::Delayed(Duration::from_millis(500)));
    }
    let batch = |n: usize| vec![Message::new(vec![b'x'; 500]); n];
    let mut quick = h.client.clone().with_timeout(Duration::from_millis(100));
    // The caller's deadline passes: either its call ends with DEADLINE_EXCEEDED, or the
    // gateway's copy of the deadline fires first and answers every message TIMEOUT.
    if let Ok(results) = quick.produce_batch("orders", batch(3)).await {
        assert!(results.iter().all(Result::is_err), "{results:?}");
    }
    // The caller gave up, but the clusters still hold its 1500 bytes.
    let mut second = h.client.clone();
    match second.produce_batch("orders", batch(2)).await.unwrap_err() {
        fjord_gateway_client::ClientError::Status(s) => {
            assert_eq!(s.code(), Code::ResourceExhausted, "{s}")
        }
        other => panic!("{other}"),
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(h.gateway.metrics().inflight_bytes.get(), 0);
    let results = second.produce_batch("orders", batch(2)).await.unwrap();
    assert!(results.iter().all(Result::is_ok));
    h.stop().await;
}

/// Issue 14, item 8: SIGTERM with a stream whose caller stopped reading must not hang: the
/// drain is bounded by `drain_timeout_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_when_a_stream_caller_stops_reading() {
    let config = format!("drain_timeout_ms = 500\n{BASE}");
    let h = Harness::start(&config).await;
    // A small receive window: the gateway's answers stall once it is full.
    let channel = Endpoint::from_shared(format!("http://{}", h.addr))
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    let mut client = GatewayClient::from_channel(channel);
    let requests: Vec<pb::ProduceStreamRequest> = (0..100u64)
        .map(|id| pb::ProduceStreamRequest {
            request_id: id,
            batch: Some(pb::ProduceBatchRequest {
                topic: "orders".into(),
                messages: (0..100)
                    .map(|i| pb::Message {
                        key: Some(format!("k{}", i % 10).into_bytes()),
                        value: vec![b'v'; 50],
                        ..Default::default()
                    })
                    .collect(),
            }),
        })
        .collect();
    // Never read.
    let _responses = client
        .raw()
        .produce_stream(futures::stream::iter(requests))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    h.shutdown.cancel();
    let served = tokio::time::timeout(Duration::from_secs(10), h.server)
        .await
        .expect("shutdown hung on a stream whose caller stopped reading");
    served.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// Issue 14, item 9: with mutual TLS, the caller of the rate limits is the client certificate's
/// identity; rotating `x-fjord-caller` does not get a fresh budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_the_rate_limited_caller_whatever_its_header() {
    let server_pki = Pki::new("gateway");
    let clients = Pki::new("clients");
    let clients_ca = server_pki.write("clients-ca.pem", &clients.ca_pem());
    let alice = clients.issue(&["alice.clients.test"], false);
    let config = tls_config(&server_pki, Some(&clients_ca)).replace(
        "[limits]",
        "[limits]\ncaller_messages_per_sec = 1\ncaller_burst_messages = 10",
    );
    let h = Harness::start_with_client(
        &config,
        Some(client_tls(&server_pki.ca_pem(), Some(&alice))),
    )
    .await;
    let one = || {
        vec![pb::Message {
            value: b"m".to_vec(),
            ..Default::default()
        }]
    };
    for i in 0..10 {
        produce_as(&h.client, &format!("rotating-{i}"), one())
            .await
            .unwrap();
    }
    let refused = produce_as(&h.client, "rotating-10", one())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("CN=alice.clients.test"),
        "{}",
        refused.message()
    );
    // Another certificate is another caller.
    let bob = clients.issue(&["bob.clients.test"], false);
    let channel = tls_channel(h.addr, client_tls(&server_pki.ca_pem(), Some(&bob)))
        .await
        .unwrap();
    let bob = GatewayClient::from_channel(channel);
    produce_as(&bob, "rotating-0", one()).await.unwrap();
    h.stop().await;
}
