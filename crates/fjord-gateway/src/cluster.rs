//! One backend cluster as the gateway sees it: its long-lived producer and its health (the
//! circuit breaker), plus the loop that probes open clusters back.
//!
//! Invariants: the breaker is only touched under its mutex, never across an `.await`; every
//! state change is logged once and reflected in the `breaker_state` and `breaker_transitions`
//! metrics here, nowhere else; every admission is an [`AdmissionGuard`] that is recorded or given
//! back exactly once, also when whoever holds it is dropped (a cancelled or timed-out request):
//! a half-open breaker never loses its admissions.

use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::backend::{Producer, Settle, Verdict};
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
    /// Whether `problem` holds something (read on every delivery without the lock).
    has_problem: AtomicBool,
    /// Why the client cannot use the cluster, as it last reported (SASL authentication or the
    /// TLS handshake failed): named in the errors of messages that fail meanwhile. Cleared by
    /// the next message the cluster stores.
    problem: Mutex<Option<String>>,
}

impl Health {
    pub fn new(name: Arc<str>, settings: Settings, metrics: Arc<Metrics>) -> Self {
        let health = Self {
            name,
            breaker: Mutex::new(Breaker::new(settings, Instant::now())),
            metrics,
            has_problem: AtomicBool::new(false),
            problem: Mutex::new(None),
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

    /// Admits a call to this cluster, or `None` while its breaker keeps it out. The call is
    /// given up on at `attempt_deadline`: a guard dropped unrecorded after it records a failure
    /// (the cluster took too long), before it gives the admission back.
    pub fn try_admit(self: &Arc<Self>, attempt_deadline: Instant) -> Option<AdmissionGuard> {
        let admission = self.breaker.lock().try_admit()?;
        Some(AdmissionGuard {
            health: self.clone(),
            admission: Some(admission),
            attempt_deadline,
        })
    }

    fn release(&self, admission: Admission) {
        self.breaker.lock().release(admission);
    }

    fn record(&self, admission: Admission, outcome: Outcome) {
        let t = self
            .breaker
            .lock()
            .record(admission, outcome, Instant::now());
        self.transitioned(t, "call outcomes");
    }

    /// Records why the client cannot use the cluster (see `problem`).
    pub fn set_problem(&self, problem: String) {
        *self.problem.lock() = Some(problem);
        self.has_problem.store(true, AtomicOrdering::Release);
    }

    /// The client's last reported problem with the cluster, if no message was stored since.
    pub fn problem(&self) -> Option<String> {
        if !self.has_problem.load(AtomicOrdering::Acquire) {
            return None;
        }
        self.problem.lock().clone()
    }

    /// A message was stored: whatever the client reported before is over.
    pub fn clear_problem(&self) {
        if self.has_problem.load(AtomicOrdering::Acquire) {
            *self.problem.lock() = None;
            self.has_problem.store(false, AtomicOrdering::Release);
        }
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

/// One admitted call to a cluster: recorded with its outcome, or given back; dropping it does
/// one of the two (a failure once the attempt deadline has passed, else a give-back), so a
/// dropped request never keeps an admission.
#[derive(Debug)]
pub struct AdmissionGuard {
    health: Arc<Health>,
    /// `None` once recorded or given back.
    admission: Option<Admission>,
    attempt_deadline: Instant,
}

impl AdmissionGuard {
    /// Records how the call ended.
    pub fn record(mut self, outcome: Outcome) {
        if let Some(a) = self.admission.take() {
            self.health.record(a, outcome);
        }
    }

    /// Gives the admission back: the call said nothing about the cluster.
    pub fn release(mut self) {
        if let Some(a) = self.admission.take() {
            self.health.release(a);
        }
    }
}

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        if let Some(a) = self.admission.take() {
            if Instant::now() >= self.attempt_deadline {
                self.health.record(a, Outcome::Failure);
            } else {
                self.health.release(a);
            }
        }
    }
}

impl Settle for AdmissionGuard {
    fn settle(self: Box<Self>, verdict: Verdict) {
        match verdict {
            Verdict::Success { slowest } => self.record(Outcome::Success { latency: slowest }),
            Verdict::Failure => self.record(Outcome::Failure),
            Verdict::Nothing => self.release(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BreakerConfig;

    fn half_open_health(max_calls: u32) -> Arc<Health> {
        let settings = Settings::from(&BreakerConfig {
            half_open_max_calls: max_calls,
            open_ms: 0,
            ..BreakerConfig::default()
        });
        let health = Arc::new(Health::new(
            "a".into(),
            settings,
            Arc::new(Metrics::default()),
        ));
        health.force_open("test");
        health.probe_result(true);
        assert_eq!(health.state(), State::HalfOpen);
        health
    }

    #[test]
    fn a_reported_problem_lasts_until_a_message_is_stored() {
        let health = half_open_health(1);
        assert_eq!(health.problem(), None);
        health.set_problem("SASL authentication failed: bad password".into());
        assert_eq!(
            health.problem().as_deref(),
            Some("SASL authentication failed: bad password")
        );
        health.clear_problem();
        assert_eq!(health.problem(), None);
    }

    #[test]
    fn a_dropped_admission_is_given_back() {
        let health = half_open_health(1);
        let later = Instant::now() + Duration::from_secs(60);
        for _ in 0..10 {
            let guard = health.try_admit(later);
            assert!(guard.is_some(), "the admission of a dropped call leaked");
            assert!(health.try_admit(later).is_none(), "one at a time");
        }
        assert_eq!(health.state(), State::HalfOpen);
    }

    #[test]
    fn an_admission_dropped_after_its_attempt_deadline_is_a_failure() {
        let health = half_open_health(1);
        let guard = health.try_admit(Instant::now()).unwrap();
        drop(guard);
        assert_eq!(health.state(), State::Open);
    }

    #[test]
    fn verdicts_record_or_give_back() {
        let health = half_open_health(2);
        let later = Instant::now() + Duration::from_secs(60);
        let g = Box::new(health.try_admit(later).unwrap());
        g.settle(Verdict::Nothing);
        let g = Box::new(health.try_admit(later).unwrap());
        let _other = health.try_admit(later).unwrap();
        assert!(health.try_admit(later).is_none());
        g.settle(Verdict::Success {
            slowest: Duration::from_millis(1),
        });
        assert!(health.try_admit(later).is_some());
        Box::new(health.try_admit(later).unwrap()).settle(Verdict::Failure);
        assert_eq!(health.state(), State::Open);
    }
}
