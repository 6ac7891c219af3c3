//! The forwarder's test harness: a real Fjord broker in this process (in-memory object store,
//! embedded coordinator, served on a loopback TCP port), real librdkafka consumers and producers,
//! and a fake endpoint ([`Endpoint`]) whose answers the test controls: it can hold every delivery
//! until the test opens its gate, and answer each record as the test says. Workers run exactly
//! as `fjord forward` runs them ([`Member`]), so a test can drive pauses, rebalances (members
//! joining and leaving) and failures, and then read the group's committed offsets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use fjord_broker::BrokerSettings;
use fjord_forwarder::config::ForwarderConfig;
use fjord_forwarder::delivery::Deliverer;
use fjord_forwarder::error::ForwardError;
use fjord_forwarder::metrics::Metrics;
use fjord_forwarder::outcome::Verdict;
use fjord_forwarder::proto::Delivery;
use fjord_forwarder::subscription::Subscription;
use fjord_forwarder::worker::Worker;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A Fjord broker served on 127.0.0.1 until dropped.
pub struct Cluster {
    pub bootstrap: String,
    stop: CancellationToken,
    /// Keeps the broker's write path running.
    _writer: Box<dyn std::any::Any + Send>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Cluster {
    /// A broker that creates topics on first use when `auto_create` (as Kafka does by default).
    pub async fn start(auto_create: bool) -> Cluster {
        let listener = fjord_server::bind("127.0.0.1:0", 128).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let settings = BrokerSettings {
            advertised_host: "127.0.0.1".into(),
            advertised_port: i32::from(port),
            auto_create_topics: auto_create,
            ..BrokerSettings::default()
        };
        let (broker, writer) =
            fjord_broker::testkit::in_memory_broker(dir.path(), settings).unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(fjord_server::serve(
            vec![fjord_server::Listener::plaintext(listener)],
            broker,
            fjord_server::ServerSettings::default(),
            stop.clone(),
        ));
        Cluster {
            bootstrap: format!("127.0.0.1:{port}"),
            stop,
            _writer: Box::new(writer),
            _dir: dir,
        }
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c
    }

    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self.client().create().unwrap();
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let results = admin
            .create_topics([&topic], &AdminOptions::new())
            .await
            .unwrap();
        for r in results {
            r.unwrap();
        }
    }

    /// Produces `(partition, key, value)` records and waits for every acknowledgement.
    pub async fn produce(&self, topic: &str, records: &[(i32, String, Vec<u8>)]) {
        let producer: FutureProducer = self
            .client()
            .set("linger.ms", "5")
            .set("message.max.bytes", "10000000")
            .create()
            .unwrap();
        let sends = records.iter().map(|(p, k, v)| {
            producer.send(
                FutureRecord::to(topic).partition(*p).key(k).payload(v),
                Duration::from_secs(30),
            )
        });
        for sent in futures::future::join_all(sends).await {
            sent.map_err(|(e, _)| e).unwrap();
        }
    }

    /// The offsets `group` committed for `topic`'s `partitions` (`-1`: none).
    pub async fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
        let mut config = self.client();
        config.set("group.id", group);
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = config.create().unwrap();
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition(&topic, p);
            }
            let committed = consumer
                .committed_offsets(tpl, Duration::from_secs(10))
                .unwrap();
            (0..partitions)
                .map(
                    |p| match committed.find_partition(&topic, p).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => o,
                        _ => -1,
                    },
                )
                .collect()
        })
        .await
        .unwrap()
    }

    /// Every record of `topic` (`partitions` of them) as `(key, value, headers)`.
    pub async fn read_all(
        &self,
        topic: &str,
        partitions: i32,
    ) -> Vec<(Option<Vec<u8>>, Option<Vec<u8>>, BTreeMap<String, String>)> {
        let mut config = self.client();
        config
            .set("group.id", format!("reader-{topic}"))
            .set("enable.auto.commit", "false");
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = config.create().unwrap();
            let mut tpl = TopicPartitionList::new();
            let mut ends = HashMap::new();
            for p in 0..partitions {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .unwrap();
                ends.insert(p, high);
                tpl.add_partition_offset(&topic, p, Offset::Beginning)
                    .unwrap();
            }
            consumer.assign(&tpl).unwrap();
            let mut out = Vec::new();
            let mut next: HashMap<i32, i64> = (0..partitions).map(|p| (p, 0)).collect();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while next.iter().any(|(p, o)| *o < ends[p]) {
                assert!(std::time::Instant::now() < deadline, "reading {topic}");
                let Some(m) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let m = m.unwrap();
                next.insert(m.partition(), m.offset() + 1);
                let headers = m.headers().map_or_else(BTreeMap::new, |hs| {
                    hs.iter()
                        .map(|h| {
                            let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                            (h.key.to_string(), v.unwrap_or_default())
                        })
                        .collect()
                });
                out.push((
                    m.key().map(<[u8]>::to_vec),
                    m.payload().map(<[u8]>::to_vec),
                    headers,
                ));
            }
            out
        })
        .await
        .unwrap()
    }
}

/// How the fake endpoint answers one delivery.
pub type Answer = Arc<dyn Fn(&Delivery) -> Verdict + Send + Sync>;

/// A fake RecordHandler: holds deliveries while its gate is closed, answers by [`Answer`], and
/// remembers what it acknowledged. Clones share everything.
#[derive(Clone)]
pub struct Endpoint(Arc<Shared>);

pub struct Shared {
    gate: watch::Sender<bool>,
    answer: Mutex<Answer>,
    /// Acknowledged records: (topic, partition, offset) → times.
    pub acked: Mutex<HashMap<(String, i32, i64), u32>>,
    /// Deliveries started (attempts).
    pub attempts: Mutex<u64>,
    /// Deliveries waiting at the closed gate now.
    pub waiting: Mutex<u64>,
}

impl std::ops::Deref for Endpoint {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl Endpoint {
    /// An endpoint that acknowledges everything, with its gate open.
    pub fn new() -> Endpoint {
        Endpoint(Arc::new(Shared {
            gate: watch::channel(true).0,
            answer: Mutex::new(Arc::new(|_| Verdict::Ack)),
            acked: Mutex::new(HashMap::new()),
            attempts: Mutex::new(0),
            waiting: Mutex::new(0),
        }))
    }

    /// Holds every delivery (the endpoint hangs) until [`Endpoint::open`].
    pub fn close(&self) {
        self.0.gate.send_replace(false);
    }

    pub fn open(&self) {
        self.0.gate.send_replace(true);
    }

    pub fn answer_with(&self, answer: Answer) {
        *self.0.answer.lock() = answer;
    }

    pub fn acked_count(&self) -> usize {
        self.0.acked.lock().len()
    }

    pub fn waiting_now(&self) -> u64 {
        *self.0.waiting.lock()
    }
}

impl Deliverer for Endpoint {
    fn deliver(&self, delivery: Delivery, timeout: Duration) -> BoxFuture<'static, Verdict> {
        *self.0.attempts.lock() += 1;
        let mut gate = self.0.gate.subscribe();
        let answer = self.0.answer.lock().clone();
        let shared = self.0.clone();
        Box::pin(async move {
            *shared.waiting.lock() += 1;
            let opened = tokio::time::timeout(timeout, gate.wait_for(|open| *open)).await;
            *shared.waiting.lock() -= 1;
            if opened.is_err() {
                return Verdict::Retry {
                    after: None,
                    error: "DEADLINE_EXCEEDED".into(),
                };
            }
            let verdict = answer(&delivery);
            if matches!(verdict, Verdict::Ack) {
                *shared
                    .acked
                    .lock()
                    .entry((delivery.topic.clone(), delivery.partition, delivery.offset))
                    .or_default() += 1;
            }
            verdict
        })
    }
}

/// A forwarder subscription's settings over `cluster`, as TOML (`extra` is added to the
/// `[[subscription]]` table, `consumer` to its consumer properties, `properties` to the
/// cluster's).
pub fn config(
    cluster: &Cluster,
    topic: &str,
    group: &str,
    extra: &str,
    consumer: &str,
    properties: &str,
) -> ForwarderConfig {
    let text = format!(
        r#"
        shutdown_timeout_secs = 2
        [clusters.a]
        bootstrap = "{bootstrap}"
        [clusters.a.properties]
        {properties}
        [[subscription]]
        name = "s"
        clusters = ["a"]
        topics = ["{topic}"]
        group_id = "{group}"
        endpoint = "http://127.0.0.1:1"
        dead_letter_topic = "{topic}.dlq"
        commit_interval_ms = 100
        {extra}
        [subscription.consumer_properties]
        "heartbeat.interval.ms" = "200"
        "session.timeout.ms" = "6000"
        "topic.metadata.refresh.interval.ms" = "1000"
        {consumer}
        "#,
        bootstrap = cluster.bootstrap,
    );
    ForwarderConfig::parse(&text).unwrap()
}

/// One member of a subscription's group: a worker as `fjord forward` runs it.
pub struct Member {
    pub metrics: Arc<Metrics>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ForwardError>>,
}

impl Member {
    pub async fn start(config: &ForwarderConfig, endpoint: &Endpoint) -> Member {
        let metrics = Arc::new(Metrics::new());
        let sub_config = config.subscriptions[0].clone();
        let sub = Arc::new(Subscription::new(
            sub_config.clone(),
            Arc::new(endpoint.clone()),
            metrics.subscription(&sub_config.name),
        ));
        let cluster = &config.clusters["a"];
        let worker = Worker::start(sub, "a", cluster, metrics.clone())
            .await
            .unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(worker.run(stop.clone(), config.shutdown_timeout()));
        Member {
            metrics,
            stop,
            task,
        }
    }

    /// Stops the member (drain, commit, leave the group) and returns how its worker ended.
    pub async fn stop(self) -> Result<(), ForwardError> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("a worker stops within 30 s")
            .expect("the worker task does not panic")
    }

    /// Waits for the worker to end on its own (at most `within`).
    pub async fn ended(self, within: Duration) -> Result<(), ForwardError> {
        tokio::time::timeout(within, self.task)
            .await
            .expect("the worker stopped on its own")
            .expect("the worker task does not panic")
    }

    /// Partitions assigned to this member now (each has a `paused` gauge).
    pub fn assigned(&self) -> usize {
        self.metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("fjord_forwarder_paused{"))
            .count()
    }

    /// The value of `metric` for every label set that contains `labels`, summed.
    pub fn metric(&self, metric: &str, labels: &str) -> i64 {
        let text = self.metrics.encode();
        text.lines()
            .filter(|l| l.starts_with(metric) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as i64)
            .sum()
    }
}

/// Waits until `check` holds, polling every 50 ms, for at most `within`; panics with `what`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
