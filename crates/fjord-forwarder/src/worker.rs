//! One worker per (subscription, source cluster): the consumer-group member that fetches
//! records, schedules their delivery, acts on verdicts and commits offsets.
//!
//! Owns the rdkafka consumer and producer of its cluster, the assigned partitions' work (shared
//! with the rebalance callbacks in [`crate::assignment::Context`]), the ready queue and the event loop. Every
//! asynchronous step (an attempt, a backoff, a write to the retry or dead-letter topic) runs in
//! its own task and reports back as an [`Event`] tagged with the partition's generation.
//! Invariants:
//! - offsets are committed only from the offset trackers, so never past an unfinished record;
//! - a revoked partition's work is dropped in the revocation callback after a synchronous commit
//!   of its commit point; its generation is never reused, so late events of its in-flight
//!   records are ignored and nothing is ever committed for it again by this member (no double
//!   commits racing the new owner); its tasks are cancelled;
//! - fetching of a partition pauses when it is full (`partition.rs` limits) or the subscription
//!   is over its byte budget, and resumes at half; consumer polling itself never stops, so
//!   rebalances are served while paused;
//! - a commit refused by the group (during a rebalance) is sent again: after every rebalance and
//!   every [`RECOMMIT_EVERY`] each held partition's commit point is committed, moved or not;
//! - the state lock is never held across an `.await`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::envelope::{self, Origin, Record};
use crate::error::ForwardError;
use crate::metrics::Metrics;
use crate::outcome::Verdict;
use crate::parking::{self, Destination};
use crate::partition::{Admitted, Job, PartitionWork, Stage};
use crate::retry::Next;
use crate::sink::{self, KafkaSink, Sink};
use crate::subscription::Subscription;

use crate::assignment::{Context, State, Tp};

/// How often every partition's commit point is committed again, moved or not.
const RECOMMIT_EVERY: Duration = Duration::from_secs(5);

/// Where a record leaving memory goes first.
#[derive(Debug, Clone, Copy)]
enum Parked {
    RetryTopic { due_ms: i64 },
    DeadLetter,
}

/// What a task reports back to the event loop.
enum Event {
    /// An attempt ended (`None`: cancelled by revocation).
    Attempted {
        tp: Tp,
        generation: u64,
        offset: i64,
        result: Option<(Verdict, Duration)>,
    },
    /// A backoff or due time passed.
    Due {
        tp: Tp,
        generation: u64,
        offset: i64,
    },
    /// A write to the retry or dead-letter topic ended.
    Parked {
        tp: Tp,
        generation: u64,
        offset: i64,
        outcome: parking::Outcome,
    },
}

/// A record that may be delivered, once a permit is free.
struct Ticket {
    tp: Tp,
    generation: u64,
    offset: i64,
}

/// See the module docs.
pub struct Worker {
    sub: Arc<Subscription>,
    cluster: String,
    consumer: Arc<StreamConsumer<Context>>,
    sink: Arc<dyn Sink>,
    state: Arc<Mutex<State>>,
    abort: CancellationToken,
    events: mpsc::UnboundedSender<Event>,
    inbox: Option<mpsc::UnboundedReceiver<Event>>,
    ready: VecDeque<Ticket>,
    rng: StdRng,
    /// Attempt and write tasks running (each reports exactly one event).
    outstanding: usize,
    draining: bool,
    /// Why the worker must stop (a record that cannot leave memory without being lost).
    failure: Option<ForwardError>,
}

// The forwarder is a Kafka client stamping its own headers; it has no injected clock yet.
#[allow(clippy::disallowed_methods)]
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Commits `last` synchronously and closes `consumer`, both off the runtime's worker threads:
/// each blocks until the group coordinator answers (closing polls librdkafka until the group is
/// left, a revocation callback included). `consumer` must be the last handle (a handle left
/// elsewhere would close it later, on whatever thread drops it); returns whether it was.
async fn close(
    consumer: Arc<StreamConsumer<Context>>,
    last: TopicPartitionList,
    subscription: &str,
    cluster: &str,
) -> bool {
    match Arc::try_unwrap(consumer) {
        Ok(consumer) => {
            let (sub, cl) = (subscription.to_string(), cluster.to_string());
            let closing = move || {
                if last.count() > 0 {
                    if let Err(e) = consumer.commit(&last, CommitMode::Sync) {
                        tracing::warn!(subscription = %sub, cluster = %cl, error = %e,
                            "the last commit failed (the records after the previous one will be delivered again)");
                    }
                }
                drop(consumer);
            };
            if let Err(e) = tokio::task::spawn_blocking(closing).await {
                tracing::warn!(%subscription, %cluster, error = %e, "closing the consumer");
            }
            true
        }
        Err(shared) => {
            tracing::error!(%subscription, %cluster, handles = Arc::strong_count(&shared),
                "the consumer is still shared at shutdown: it closes where its last handle is dropped");
            false
        }
    }
}

fn record_of(m: &BorrowedMessage<'_>) -> Record {
    let headers = m.headers().map_or_else(Vec::new, |hs| {
        hs.iter()
            .map(|h| (h.key.to_string(), h.value.map(Bytes::copy_from_slice)))
            .collect()
    });
    Record {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(Bytes::copy_from_slice),
        value: m.payload().map(Bytes::copy_from_slice),
        headers,
        timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
    }
}

impl Worker {
    /// Creates the clients of one cluster, the retry and dead-letter topics (if asked to) and
    /// joins the group.
    pub async fn start(
        sub: Arc<Subscription>,
        cluster_name: &str,
        cluster: &ClusterConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Worker, ForwardError> {
        let c = &sub.config;
        let kafka_err = |source| ForwardError::Kafka {
            subscription: c.name.clone(),
            cluster: cluster_name.to_string(),
            source,
        };
        let base = sink::client_config(&cluster.bootstrap, &cluster.client_properties()?);
        let mut own_topics = vec![c.dead_letter_topic.clone()];
        own_topics.extend(c.retry_topic.clone());
        if c.create_topics {
            if let Err(e) =
                sink::ensure_topics(&base, &own_topics, c.created_topic_partitions).await
            {
                tracing::warn!(subscription = %c.name, cluster = %cluster_name, error = %e,
                    "could not create the retry/dead-letter topics; assuming they exist");
            }
        }
        let sink = KafkaSink::new(base.clone(), sub.park_timeout()).map_err(kafka_err)?;

        let state = Arc::new(Mutex::new(State::default()));
        let abort = CancellationToken::new();
        let context = Context {
            state: state.clone(),
            sub: sub.clone(),
            cluster: cluster_name.to_string(),
            metrics,
            abort: abort.clone(),
        };
        let mut config = base;
        config
            .set("group.id", &c.group_id)
            .set("client.id", format!("fjord-forward-{}", c.name))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", c.start_from.as_str());
        for (k, v) in &c.consumer_properties {
            config.set(k, v);
        }
        let consumer: StreamConsumer<Context> =
            config.create_with_context(context).map_err(kafka_err)?;
        let mut topics: Vec<&str> = c.topics.iter().map(String::as_str).collect();
        topics.extend(c.retry_topic.as_deref());
        consumer.subscribe(&topics).map_err(kafka_err)?;
        tracing::info!(subscription = %c.name, cluster = %cluster_name, ?topics,
            group = %c.group_id, endpoint = %c.endpoint, "subscribed");

        let (events, inbox) = mpsc::unbounded_channel();
        Ok(Worker {
            sub,
            cluster: cluster_name.to_string(),
            consumer: Arc::new(consumer),
            sink: Arc::new(sink),
            state,
            abort,
            events,
            inbox: Some(inbox),
            ready: VecDeque::new(),
            rng: StdRng::from_entropy(),
            outstanding: 0,
            draining: false,
            failure: None,
        })
    }

    /// Runs until `cancel`, then drains for at most `drain_timeout`, commits and leaves the
    /// group. An error: the worker stopped on its own because a record could not leave memory
    /// without being lost (see `parking.rs`); it drained and committed all the same.
    pub async fn run(
        mut self,
        cancel: CancellationToken,
        drain_timeout: Duration,
    ) -> Result<(), ForwardError> {
        let Some(mut inbox) = self.inbox.take() else {
            return Ok(());
        };
        // A handle of our own: a fetched message borrows the consumer while the loop changes
        // `self`. Dropped before draining, so that closing finds the last handle.
        let consumer = self.consumer.clone();
        let permits = self.sub.permits.clone();
        let mut ticker =
            tokio::time::interval(Duration::from_millis(self.sub.config.commit_interval_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let recommit = tokio::time::sleep(RECOMMIT_EVERY);
        tokio::pin!(recommit);
        while self.failure.is_none() {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(event) = inbox.recv() => {
                    self.on_event(event);
                    while let Ok(event) = inbox.try_recv() {
                        self.on_event(event);
                    }
                }
                permit = permits.clone().acquire_owned(), if !self.ready.is_empty() => {
                    let Ok(permit) = permit else { break };
                    self.dispatch(permit);
                    while !self.ready.is_empty() {
                        match permits.clone().try_acquire_owned() {
                            Ok(permit) => self.dispatch(permit),
                            Err(_) => break,
                        }
                    }
                }
                message = consumer.recv() => match message {
                    Ok(m) => self.on_message(&m),
                    Err(e) => tracing::warn!(subscription = %self.sub.name(), cluster = %self.cluster,
                        error = %e, "consumer error"),
                },
                _ = ticker.tick() => {
                    // Every point again now and then: a refused asynchronous commit is not
                    // reported back (see `Context::commit_callback`).
                    let all = recommit.is_elapsed();
                    if all {
                        recommit.as_mut().reset(Instant::now() + RECOMMIT_EVERY);
                    }
                    self.commit(all);
                    self.rebalance_flow();
                }
            }
        }
        drop(consumer);
        self.drain(&mut inbox, drain_timeout).await
    }

    /// Stops starting attempts, waits for the running ones (and their writes), commits, leaves.
    async fn drain(
        mut self,
        inbox: &mut mpsc::UnboundedReceiver<Event>,
        timeout: Duration,
    ) -> Result<(), ForwardError> {
        self.draining = true;
        self.ready.clear();
        let deadline = Instant::now() + timeout;
        while self.outstanding > 0 {
            tokio::select! {
                Some(event) = inbox.recv() => self.on_event(event),
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(subscription = %self.sub.name(), cluster = %self.cluster,
                        outstanding = self.outstanding, "shutdown timeout: abandoning deliveries in flight");
                    break;
                }
            }
        }
        let last = self.commit_list(true);
        {
            // Nothing of ours is committed after this (the close's revocation finds no work).
            let mut st = self.state.lock();
            for (_, work) in st.partitions.drain() {
                self.sub.remove_pending(work.bytes(), work.pending() as i64);
            }
        }
        self.abort.cancel();
        let failure = self.failure.take();
        let Worker {
            consumer,
            sub,
            cluster,
            ..
        } = self;
        let closed = close(consumer, last, sub.name(), &cluster).await;
        match failure {
            Some(failure) => Err(failure),
            None if !closed => Err(ForwardError::Task(format!(
                "subscription {}, cluster {cluster}: the consumer was still shared at shutdown",
                sub.name()
            ))),
            None => Ok(()),
        }
    }

    fn on_message(&mut self, m: &BorrowedMessage<'_>) {
        let record = record_of(m);
        let tp = (record.topic.clone(), record.partition);
        let size = record.size();
        let mut unreadable = None;
        let origin = if self.sub.is_retry_topic(&record.topic) {
            match envelope::parse_retry_record(&record, self.sub.name()) {
                Ok(origin) => origin,
                Err(e) => {
                    unreadable = Some(e);
                    Origin::source(&record, &self.cluster)
                }
            }
        } else {
            Origin::source(&record, &self.cluster)
        };
        let mut job = Job::new(record, origin);
        job.unreadable = unreadable;
        let state = self.state.clone();
        let mut st = state.lock();
        let Some(work) = st.partitions.get_mut(&tp) else {
            tracing::debug!(topic = %tp.0, partition = tp.1, "record of an unassigned partition");
            return;
        };
        let offset = job.record.offset;
        match work.admit(job) {
            Admitted::Duplicate => return,
            Admitted::Ready => self.release(&tp, work, offset),
            Admitted::Waiting => {}
        }
        self.sub.add_pending(size, 1);
        if !work.paused && (work.is_full(self.sub.partition_limits()) || self.sub.is_full()) {
            self.set_paused(&tp, work, true);
        }
        if self.sub.is_full() {
            for (tp, work) in st.partitions.iter_mut() {
                if !work.paused {
                    self.set_paused(tp, work, true);
                }
            }
        }
    }

    /// A record became deliverable: queue it, or wait for its due time, or dead-letter an
    /// unreadable retry record.
    fn release(&mut self, tp: &Tp, work: &mut PartitionWork, offset: i64) {
        let generation = work.generation;
        let Some(job) = work.job_mut(offset) else {
            return;
        };
        if let Some(reason) = job.unreadable.clone() {
            job.last_error = reason;
            self.park(tp, work, offset, Parked::DeadLetter);
            return;
        }
        let wait = job.origin.due_ms.map_or(0, |due| due - now_ms());
        if wait > 0 {
            job.stage = Stage::Sleeping;
            self.wake_later(
                tp,
                generation,
                offset,
                Duration::from_millis(wait as u64),
                work,
            );
            return;
        }
        job.stage = Stage::Queued;
        if !self.draining {
            self.ready.push_back(Ticket {
                tp: tp.clone(),
                generation,
                offset,
            });
        }
    }

    fn dispatch(&mut self, permit: OwnedSemaphorePermit) {
        let Some(ticket) = self.ready.pop_front() else {
            return;
        };
        let state = self.state.clone();
        let mut st = state.lock();
        let Some(work) = st
            .partitions
            .get_mut(&ticket.tp)
            .filter(|w| w.generation == ticket.generation)
        else {
            return;
        };
        let cancel = work.cancel.clone();
        let Some(job) = work
            .job_mut(ticket.offset)
            .filter(|j| j.stage == Stage::Queued)
        else {
            return;
        };
        job.attempts += 1;
        job.round_attempts += 1;
        job.stage = Stage::InFlight;
        let delivery = envelope::delivery(&job.record, &job.origin, job.attempts, self.sub.name());
        drop(st);
        self.outstanding += 1;
        let sub = self.sub.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let attempt = async {
                sub.limiter.acquire().await;
                sub.metrics.delivered.inc();
                let _in_flight = InFlight::enter(&sub.metrics.in_flight);
                let started = Instant::now();
                let verdict = sub
                    .deliverer
                    .deliver(delivery, sub.delivery_timeout())
                    .await;
                (verdict, started.elapsed())
            };
            let result = tokio::select! {
                biased;
                _ = cancel.cancelled() => None,
                r = attempt => Some(r),
            };
            let _ = events.send(Event::Attempted {
                tp: ticket.tp,
                generation: ticket.generation,
                offset: ticket.offset,
                result,
            });
        });
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Attempted {
                tp,
                generation,
                offset,
                result,
            } => {
                self.outstanding -= 1;
                if let Some((verdict, elapsed)) = result {
                    self.sub.metrics.observe_latency(verdict.label(), elapsed);
                    self.on_verdict(tp, generation, offset, verdict);
                }
            }
            Event::Due {
                tp,
                generation,
                offset,
            } => {
                let state = self.state.clone();
                let mut st = state.lock();
                let Some(work) = live(&mut st, &tp, generation) else {
                    return;
                };
                if let Some(job) = work.job_mut(offset).filter(|j| j.stage == Stage::Sleeping) {
                    job.stage = Stage::Queued;
                    if !self.draining {
                        self.ready.push_back(Ticket {
                            tp,
                            generation,
                            offset,
                        });
                    }
                }
            }
            Event::Parked {
                tp,
                generation,
                offset,
                outcome,
            } => {
                self.outstanding -= 1;
                match outcome {
                    parking::Outcome::Written(Destination::RetryTopic) => {
                        self.sub.metrics.retry_topic.inc();
                    }
                    parking::Outcome::Written(_) => {
                        self.sub.metrics.dead_lettered.inc();
                    }
                    parking::Outcome::Cancelled => return,
                    parking::Outcome::Failed { .. }
                        if live(&mut self.state.lock(), &tp, generation).is_none() =>
                    {
                        return; // revoked meanwhile: the new owner delivers the record again
                    }
                    parking::Outcome::Failed { topic, error } => {
                        let failure = ForwardError::Park {
                            subscription: self.sub.name().to_string(),
                            cluster: self.cluster.clone(),
                            topic: tp.0,
                            partition: tp.1,
                            offset,
                            dead_letter_topic: topic,
                            error,
                        };
                        tracing::error!(error = %failure, "stopping the subscription");
                        self.failure.get_or_insert(failure);
                        return;
                    }
                }
                let state = self.state.clone();
                let mut st = state.lock();
                if let Some(work) = live(&mut st, &tp, generation) {
                    if work.job(offset).is_some_and(|j| j.stage == Stage::Parking) {
                        self.finish(&tp, work, offset);
                    }
                }
            }
        }
    }

    fn on_verdict(&mut self, tp: Tp, generation: u64, offset: i64, verdict: Verdict) {
        let state = self.state.clone();
        let mut st = state.lock();
        let Some(work) = live(&mut st, &tp, generation) else {
            tracing::debug!(topic = %tp.0, partition = tp.1, offset, "verdict for a revoked partition ignored");
            return;
        };
        let Some(job) = work.job_mut(offset).filter(|j| j.stage == Stage::InFlight) else {
            return;
        };
        match verdict {
            Verdict::Ack => {
                self.sub.metrics.acked.inc();
                self.finish(&tp, work, offset);
            }
            Verdict::DeadLetter { reason } => {
                tracing::warn!(subscription = %self.sub.name(), topic = %job.origin.topic,
                    partition = job.origin.partition, offset = job.origin.offset,
                    attempts = job.attempts, %reason, "dead-lettering a record");
                job.last_error = reason;
                self.park(&tp, work, offset, Parked::DeadLetter);
            }
            Verdict::Retry { after, error } => {
                self.sub.metrics.retried.inc();
                job.last_error = error;
                if self.draining {
                    job.stage = Stage::Sleeping; // left unfinished: redelivered after restart
                    return;
                }
                let next = self.sub.policy.after_failure(
                    job.round_attempts,
                    job.origin.round,
                    after,
                    &mut self.rng,
                );
                tracing::debug!(subscription = %self.sub.name(), topic = %job.origin.topic,
                    partition = job.origin.partition, offset = job.origin.offset,
                    attempts = job.attempts, error = %job.last_error, ?next, "attempt failed");
                match next {
                    Next::Again(delay) => {
                        job.stage = Stage::Sleeping;
                        self.wake_later(&tp, generation, offset, delay, work);
                    }
                    Next::RetryTopic(delay) => {
                        let due_ms = now_ms() + delay.as_millis() as i64;
                        self.park(&tp, work, offset, Parked::RetryTopic { due_ms });
                    }
                    Next::DeadLetter => {
                        tracing::warn!(subscription = %self.sub.name(), topic = %job.origin.topic,
                            partition = job.origin.partition, offset = job.origin.offset,
                            attempts = job.attempts, error = %job.last_error,
                            "attempts exhausted; dead-lettering a record");
                        self.park(&tp, work, offset, Parked::DeadLetter);
                    }
                }
            }
        }
    }

    fn wake_later(
        &self,
        tp: &Tp,
        generation: u64,
        offset: i64,
        delay: Duration,
        work: &PartitionWork,
    ) {
        let cancel = work.cancel.clone();
        let events = self.events.clone();
        let tp = tp.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(delay) => {
                    let _ = events.send(Event::Due { tp, generation, offset });
                }
            }
        });
    }

    /// Writes a record to the retry or dead-letter topic; it finishes once acknowledged.
    fn park(&mut self, tp: &Tp, work: &mut PartitionWork, offset: i64, to: Parked) {
        let generation = work.generation;
        let cancel = work.cancel.clone();
        let Some(job) = work.job_mut(offset) else {
            return;
        };
        job.stage = Stage::Parking;
        let c = &self.sub.config;
        let retry = match (to, &c.retry_topic) {
            (Parked::RetryTopic { due_ms }, Some(topic)) => Some(envelope::retry(
                topic,
                &job.record,
                &job.origin,
                job.attempts,
                &job.last_error,
                &c.name,
                due_ms,
            )),
            _ => None,
        };
        let plan = parking::Plan {
            retry,
            dead_letter: envelope::dead_letter(
                &c.dead_letter_topic,
                &job.record,
                &job.origin,
                job.attempts,
                &job.last_error,
                &c.name,
            ),
        };
        self.outstanding += 1;
        let sink = self.sink.clone();
        let sub = self.sub.clone();
        let events = self.events.clone();
        let tp = tp.clone();
        tokio::spawn(async move {
            let limit = sub.park_timeout();
            let outcome = parking::park(sink.as_ref(), plan, &cancel, limit, &sub.metrics).await;
            let _ = events.send(Event::Parked {
                tp,
                generation,
                offset,
                outcome,
            });
        });
    }

    fn finish(&mut self, tp: &Tp, work: &mut PartitionWork, offset: i64) {
        let Some((size, next)) = work.finish(offset) else {
            return;
        };
        self.sub.remove_pending(size, 1);
        if let Some(next) = next {
            self.release(tp, work, next);
        }
        if work.paused && work.has_room(self.sub.partition_limits()) && self.sub.has_room() {
            self.set_paused(tp, work, false);
        }
    }

    fn set_paused(&self, tp: &Tp, work: &mut PartitionWork, paused: bool) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&tp.0, tp.1);
        let result = if paused {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        match result {
            Ok(()) => {
                work.paused = paused;
                work.metrics.paused.set(i64::from(paused));
                tracing::debug!(topic = %tp.0, partition = tp.1, paused,
                    pending = work.pending(), bytes = work.bytes(), "backpressure");
            }
            Err(e) => tracing::warn!(topic = %tp.0, partition = tp.1, error = %e, "pause/resume"),
        }
    }

    /// Resumes paused partitions that have room again (another worker of the subscription may
    /// have freed the subscription's budget).
    fn rebalance_flow(&mut self) {
        if !self.sub.has_room() {
            return;
        }
        let limits = self.sub.partition_limits();
        let state = self.state.clone();
        let mut st = state.lock();
        for (tp, work) in st.partitions.iter_mut() {
            if work.paused && work.has_room(limits) {
                self.set_paused(tp, work, false);
            }
        }
    }

    /// Commits, asynchronously, every partition whose commit point moved since its last commit,
    /// or (`all`) every partition's commit point.
    fn commit(&self, all: bool) {
        let tpl = self.commit_list(all);
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::warn!(subscription = %self.sub.name(), cluster = %self.cluster, error = %e,
                "offset commit failed; retried at the next tick");
            let mut st = self.state.lock();
            for elem in tpl.elements() {
                if let Offset::Offset(offset) = elem.offset() {
                    st.commit_failed(&(elem.topic().to_string(), elem.partition()), offset);
                }
            }
        }
    }

    /// The commit points to commit (see [`Worker::commit`]), recorded as committed.
    fn commit_list(&self, all: bool) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        {
            let mut st = self.state.lock();
            for (tp, work) in st.partitions.iter_mut() {
                let point = if all {
                    work.commit_point()
                } else {
                    work.commit_due()
                };
                work.metrics.commit_lag.set(work.commit_lag());
                let Some(point) = point else {
                    continue;
                };
                if tpl
                    .add_partition_offset(&tp.0, tp.1, Offset::Offset(point))
                    .is_ok()
                {
                    work.last_committed = Some(point);
                    work.metrics.committed.set(point);
                }
            }
        }
        tpl
    }
}

/// Counts an attempt in the in-flight gauge while alive (also when the attempt is cancelled).
struct InFlight<'a>(&'a Gauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a Gauge) -> Self {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The work of `tp` if it is still the generation an event was issued for.
fn live<'a>(st: &'a mut State, tp: &Tp, generation: u64) -> Option<&'a mut PartitionWork> {
    st.partitions
        .get_mut(tp)
        .filter(|w| w.generation == generation)
}
