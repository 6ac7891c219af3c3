//! One backend cluster as the gateway sees it: its long-lived producer and its health (the
//! circuit breaker), plus the loop that probes open clusters back.
//!
//! Invariants: the breaker is only touched under its mutex, never across an `.await`; every
//! state change is logged once and reflected in the `breaker_state` and `breaker_transitions`
//! metrics here, nowhere else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::backend::Producer;
use crate::breaker::{Admission, Breaker, Outcome, Settings, State, Transition};
use crate::config::ClusterConfig;
use crate::metrics::{ClusterLabels, Metrics, TransitionLabels};

/// A cluster's breaker with its metrics; shared with the producer's client callbacks (which
/// report "all brokers down").
#[derive(Debug)]
pub struct Health {
    name: Arc<str>,
    breaker: Mutex<Breaker>,
    metrics: Arc<Metrics>,
}

impl Health {
    pub fn new(name: Arc<str>, settings: Settings, metrics: Arc<Metrics>) -> Self {
        let health = Self {
            name,
            breaker: Mutex::new(Breaker::new(settings, Instant::now())),
            metrics,
        };
        health.publish_state(State::Closed);
        health
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn state(&self) -> State {
        self.breaker.lock().state()
    }

    pub fn set_settings(&self, settings: Settings) {
        self.breaker.lock().set_settings(settings);
    }

    /// Admits a call to this cluster, or `None` while its breaker keeps it out.
    pub fn try_admit(&self) -> Option<Admission> {
        self.breaker.lock().try_admit()
    }

    pub fn release(&self, admission: Admission) {
        self.breaker.lock().release(admission);
    }

    pub fn record(&self, admission: Admission, outcome: Outcome) {
        let t = self
            .breaker
            .lock()
            .record(admission, outcome, Instant::now());
        self.transitioned(t, "call outcomes");
    }

    /// Opens the breaker at once (the client reported the cluster down).
    pub fn force_open(&self, reason: &str) {
        let t = self.breaker.lock().force_open(Instant::now());
        self.transitioned(t, reason);
    }

    fn probe_due(&self) -> bool {
        self.breaker.lock().probe_due(Instant::now())
    }

    fn probe_result(&self, ok: bool) {
        let t = self.breaker.lock().probe_result(ok, Instant::now());
        self.transitioned(t, "probe answered");
    }

    fn transitioned(&self, t: Option<Transition>, reason: &str) {
        let Some(t) = t else { return };
        match t.to {
            State::Open => tracing::warn!(cluster = %self.name, from = t.from.name(), reason,
                "circuit breaker opened: routing around the cluster"),
            State::HalfOpen => tracing::info!(cluster = %self.name,
                "circuit breaker half-open: trying the cluster again"),
            State::Closed => tracing::info!(cluster = %self.name, "circuit breaker closed"),
        }
        self.metrics
            .breaker_transitions
            .get_or_create(&TransitionLabels {
                cluster: self.name.to_string(),
                to: t.to.name(),
            })
            .inc();
        self.publish_state(t.to);
    }

    fn publish_state(&self, state: State) {
        self.metrics
            .breaker_state
            .get_or_create(&ClusterLabels {
                cluster: self.name.to_string(),
            })
            .set(state.as_gauge());
    }
}

/// A backend cluster: its configuration, producer and health.
#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    /// What the producer was built from (a reload with other settings builds a new one).
    pub config: ClusterConfig,
    /// The producer's per-attempt timeout (also part of what it was built from).
    pub attempt_timeout: Duration,
    pub producer: Arc<dyn Producer>,
    pub health: Arc<Health>,
    /// Label value for per-cluster metrics.
    pub labels: ClusterLabels,
}

impl Cluster {
    pub fn new(
        config: ClusterConfig,
        attempt_timeout: Duration,
        producer: Arc<dyn Producer>,
        health: Arc<Health>,
    ) -> Self {
        let name = health.name().clone();
        Self {
            labels: ClusterLabels {
                cluster: name.to_string(),
            },
            name,
            config,
            attempt_timeout,
            producer,
            health,
        }
    }
}

/// Probes clusters whose breakers are open and due, every `interval`, until `shutdown`.
/// `clusters` is called each round, so clusters added by a reload are probed too.
pub async fn probe_loop(
    clusters: impl Fn() -> Vec<Arc<Cluster>>,
    interval: Duration,
    probe_timeout: impl Fn() -> Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let timeout = probe_timeout();
        let round =
            clusters()
                .into_iter()
                .filter(|c| c.health.probe_due())
                .map(|cluster| async move {
                    let result = cluster.producer.probe(timeout).await;
                    if let Err(e) = &result {
                        tracing::debug!(cluster = %cluster.name, error = %e, "probe failed");
                    }
                    cluster.health.probe_result(result.is_ok());
                });
        // One probe per cluster at a time: this round ends before the next starts.
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = futures::future::join_all(round) => {}
        }
    }
}
