//! A per-cluster circuit breaker: closed / open / half-open, on error rate, slow-call rate and
//! consecutive failures.
//!
//! This module owns the state machine only; time is passed in (`now`), so it is deterministic to
//! test, and it does no I/O: who probes an open cluster and who records call outcomes is
//! [`crate::cluster`]'s business.
//!
//! - **Closed**: every call is admitted. Outcomes go into a sliding window of `window` length
//!   (ten buckets). The breaker opens when `consecutive_failures` calls failed in a row, or when
//!   the window holds at least `min_calls` calls and the failure share reaches `failure_rate`
//!   or the slow share reaches `slow_call_rate`. [`Breaker::force_open`] opens it at once (the
//!   client reported every broker of the cluster down).
//! - **Open**: no call is admitted. After `open_for`, [`Breaker::probe_due`] says the cluster
//!   should be probed; a successful probe moves it to half-open, a failed one restarts the wait.
//! - **Half-open**: at most `half_open_max_calls` calls at once are admitted; one failure opens
//!   the breaker again, `half_open_successes` successes close it (with an empty window).
//!
//! Invariant: calls admitted in one state and completed in another are counted only where they
//! still make sense: a late outcome never closes an open breaker, and a late failure from before
//! a half-open phase does not count against that phase's probes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::BreakerConfig;

/// Buckets of the sliding window.
const BUCKETS: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// For the `fjord_gateway_breaker_state` gauge.
    pub fn as_gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// How a call ended, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success {
        latency: Duration,
    },
    /// The cluster failed or timed out.
    Failure,
}

/// Breaker parameters (from [`BreakerConfig`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub window: Duration,
    pub min_calls: u32,
    pub failure_rate: f64,
    pub consecutive_failures: u32,
    pub slow_call: Duration,
    pub slow_call_rate: f64,
    pub open_for: Duration,
    pub half_open_max_calls: u32,
    pub half_open_successes: u32,
}

impl From<&BreakerConfig> for Settings {
    fn from(c: &BreakerConfig) -> Self {
        Self {
            window: Duration::from_millis(c.window_ms),
            min_calls: c.min_calls,
            failure_rate: c.failure_rate,
            consecutive_failures: c.consecutive_failures,
            slow_call: Duration::from_millis(c.slow_call_ms),
            slow_call_rate: c.slow_call_rate,
            open_for: Duration::from_millis(c.open_ms),
            half_open_max_calls: c.half_open_max_calls,
            half_open_successes: c.half_open_successes,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    start_offset: u32,
    calls: u32,
    failures: u32,
    slow: u32,
}

/// A ticket for one admitted call; hand it back with the outcome to [`Breaker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Which phase admitted the call.
    epoch: u64,
    half_open: bool,
}

#[derive(Debug)]
pub struct Breaker {
    settings: Settings,
    state: State,
    /// Bumped on every transition: outcomes of calls admitted in an earlier phase are ignored
    /// by half-open accounting.
    epoch: u64,
    origin: Instant,
    window: VecDeque<Bucket>,
    consecutive_failures: u32,
    open_until: Instant,
    half_open_in_flight: u32,
    half_open_successes: u32,
}

/// A state change, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
}

impl Breaker {
    pub fn new(settings: Settings, now: Instant) -> Self {
        Self {
            settings,
            state: State::Closed,
            epoch: 0,
            origin: now,
            window: VecDeque::new(),
            consecutive_failures: 0,
            open_until: now,
            half_open_in_flight: 0,
            half_open_successes: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// New parameters (a configuration reload); the state is kept.
    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = settings;
    }

    /// Admits a call, or says the cluster should not be used now.
    pub fn try_admit(&mut self) -> Option<Admission> {
        match self.state {
            State::Closed => Some(Admission {
                epoch: self.epoch,
                half_open: false,
            }),
            State::Open => None,
            State::HalfOpen => {
                if self.half_open_in_flight >= self.settings.half_open_max_calls {
                    return None;
                }
                self.half_open_in_flight += 1;
                Some(Admission {
                    epoch: self.epoch,
                    half_open: true,
                })
            }
        }
    }

    /// Gives back an admission whose call was never made.
    pub fn release(&mut self, admission: Admission) {
        if admission.half_open && admission.epoch == self.epoch {
            self.half_open_in_flight = self.half_open_in_flight.saturating_sub(1);
        }
    }

    /// Records how an admitted call ended.
    pub fn record(
        &mut self,
        admission: Admission,
        outcome: Outcome,
        now: Instant,
    ) -> Option<Transition> {
        let current = admission.epoch == self.epoch;
        match self.state {
            State::Closed => {
                if !current {
                    // Admitted before the breaker last closed: says nothing about now.
                    return None;
                }
                self.record_closed(outcome, now)
            }
            State::Open => None,
            State::HalfOpen => {
                if !current {
                    return None;
                }
                self.half_open_in_flight = self.half_open_in_flight.saturating_sub(1);
                match outcome {
                    Outcome::Success { .. } => {
                        self.half_open_successes += 1;
                        if self.half_open_successes >= self.settings.half_open_successes {
                            Some(self.go(State::Closed, now))
                        } else {
                            None
                        }
                    }
                    Outcome::Failure => Some(self.go(State::Open, now)),
                }
            }
        }
    }

    /// Opens the breaker now (unless it is open already).
    pub fn force_open(&mut self, now: Instant) -> Option<Transition> {
        (self.state != State::Open).then(|| self.go(State::Open, now))
    }

    /// Whether an open breaker has waited long enough for its cluster to be probed.
    pub fn probe_due(&self, now: Instant) -> bool {
        self.state == State::Open && now >= self.open_until
    }

    /// The result of a probe of an open cluster.
    pub fn probe_result(&mut self, ok: bool, now: Instant) -> Option<Transition> {
        if self.state != State::Open {
            return None;
        }
        if ok {
            Some(self.go(State::HalfOpen, now))
        } else {
            self.open_until = now + self.settings.open_for;
            None
        }
    }

    fn record_closed(&mut self, outcome: Outcome, now: Instant) -> Option<Transition> {
        let slow_call = self.settings.slow_call;
        let bucket = self.bucket(now);
        bucket.calls += 1;
        match outcome {
            Outcome::Success { latency } => {
                if latency >= slow_call {
                    bucket.slow += 1;
                }
                self.consecutive_failures = 0;
            }
            Outcome::Failure => {
                bucket.failures += 1;
                self.consecutive_failures += 1;
            }
        }
        let (calls, failures, slow) = self.window.iter().fold((0, 0, 0), |(c, f, s), b| {
            (c + b.calls, f + b.failures, s + b.slow)
        });
        let s = &self.settings;
        let rates_count = calls >= s.min_calls && calls > 0;
        let trip = self.consecutive_failures >= s.consecutive_failures
            || (rates_count && f64::from(failures) / f64::from(calls) >= s.failure_rate)
            || (rates_count && f64::from(slow) / f64::from(calls) >= s.slow_call_rate);
        trip.then(|| self.go(State::Open, now))
    }

    /// The window's current bucket, after dropping buckets that left the window.
    fn bucket(&mut self, now: Instant) -> &mut Bucket {
        let width = (self.settings.window / BUCKETS).max(Duration::from_millis(1));
        let offset =
            (now.saturating_duration_since(self.origin).as_nanos() / width.as_nanos()) as u32;
        while let Some(front) = self.window.front() {
            if offset.saturating_sub(front.start_offset) >= BUCKETS {
                self.window.pop_front();
            } else {
                break;
            }
        }
        if self.window.back().map(|b| b.start_offset) != Some(offset) {
            self.window.push_back(Bucket {
                start_offset: offset,
                ..Bucket::default()
            });
        }
        // The bucket was pushed just above if it was missing.
        let last = self.window.len() - 1;
        &mut self.window[last]
    }

    fn go(&mut self, to: State, now: Instant) -> Transition {
        let from = self.state;
        self.state = to;
        self.epoch += 1;
        self.half_open_in_flight = 0;
        self.half_open_successes = 0;
        self.consecutive_failures = 0;
        self.window.clear();
        if to == State::Open {
            self.open_until = now + self.settings.open_for;
        }
        Transition { from, to }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::from(&BreakerConfig {
            window_ms: 1_000,
            min_calls: 10,
            failure_rate: 0.5,
            consecutive_failures: 5,
            slow_call_ms: 100,
            slow_call_rate: 0.8,
            open_ms: 500,
            half_open_max_calls: 2,
            half_open_successes: 3,
            probe_timeout_ms: 100,
        })
    }

    const FAST: Outcome = Outcome::Success {
        latency: Duration::from_millis(1),
    };
    const SLOW: Outcome = Outcome::Success {
        latency: Duration::from_millis(150),
    };

    fn call(b: &mut Breaker, outcome: Outcome, now: Instant) -> Option<Transition> {
        let a = b.try_admit().unwrap();
        b.record(a, outcome, now)
    }

    #[test]
    fn consecutive_failures_open_it() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings(), t0);
        for _ in 0..4 {
            assert_eq!(call(&mut b, Outcome::Failure, t0), None);
        }
        let tr = call(&mut b, Outcome::Failure, t0).unwrap();
        assert_eq!((tr.from, tr.to), (State::Closed, State::Open));
        assert!(b.try_admit().is_none());
    }

    #[test]
    fn a_success_resets_the_failure_streak_but_the_rate_still_counts() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings(), t0);
        // F F F F S, twice: never 5 in a row, but 8 of 10 failed.
        let mut opened = None;
        for i in 0..10 {
            let o = if i % 5 == 4 { FAST } else { Outcome::Failure };
            if let Some(t) = call(&mut b, o, t0) {
                opened = Some((i, t.to));
            }
        }
        assert_eq!(opened, Some((9, State::Open)));
    }

    #[test]
    fn rates_need_min_calls_and_old_buckets_expire() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings(), t0);
        // 4 failures, 5 successes: 9 calls, under min_calls.
        for _ in 0..4 {
            call(&mut b, Outcome::Failure, t0);
            call(&mut b, FAST, t0);
        }
        call(&mut b, FAST, t0);
        assert_eq!(b.state(), State::Closed);
        // A second later those calls left the window: one more failure is 1 call of 1, but
        // under min_calls, so still closed.
        let t1 = t0 + Duration::from_millis(1_100);
        assert_eq!(call(&mut b, Outcome::Failure, t1), None);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn slow_calls_open_it() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings(), t0);
        for _ in 0..7 {
            call(&mut b, SLOW, t0);
        }
        call(&mut b, FAST, t0);
        call(&mut b, FAST, t0);
        assert_eq!(b.state(), State::Closed);
        // 8 of 10 slow.
        assert_eq!(call(&mut b, SLOW, t0).map(|t| t.to), Some(State::Open));
    }

    #[test]
    fn open_probe_half_open_close() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings(), t0);
        b.force_open(t0).unwrap();
        assert!(!b.probe_due(t0 + Duration::from_millis(499)));
        let t1 = t0 + Duration::from_millis(500);
        assert!(b.probe_due(t1));
        // A failed probe restarts the wait.
        assert_eq!(b.probe_result(false, t1), None);
        assert!(!b.probe_due(t1 + Duration::from_millis(499)));
        let t2 = t1 + Duration::from_millis(500);
        assert_eq!(b.probe_result(true, t2).unwrap().to, State::HalfOpen);
        // Two calls at once at most.
        let a1 = b.try_admit().unwrap();
        let a2 = b.try_admit().unwrap();
        assert!(b.try_admit().is_none());
        assert_eq!(b.record(a1, FAST, t2), None);
        assert_eq!(b.record(a2, FAST, t2), None);
        let tr = call(&mut b, FAST, t2).unwrap();
        assert_eq!((tr.from, tr.to), (State::HalfOpen, State::Closed));
    }

    #[test]
    fn a_half_open_failure_reopens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings(), t0);
        b.force_open(t0);
        b.probe_result(true, t0 + Duration::from_secs(1));
        let tr = call(&mut b, Outcome::Failure, t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(tr.to, State::Open);
    }

    #[test]
    fn late_outcomes_from_an_earlier_phase_are_ignored() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings(), t0);
        let stale = b.try_admit().unwrap();
        b.force_open(t0);
        assert_eq!(b.record(stale, FAST, t0), None);
        assert_eq!(b.state(), State::Open);
        b.probe_result(true, t0 + Duration::from_secs(1));
        // A failure admitted while closed does not spoil the half-open phase.
        assert_eq!(b.record(stale, Outcome::Failure, t0), None);
        assert_eq!(b.state(), State::HalfOpen);
        // Released admissions free half-open room.
        let a1 = b.try_admit().unwrap();
        let _a2 = b.try_admit().unwrap();
        assert!(b.try_admit().is_none());
        b.release(a1);
        assert!(b.try_admit().is_some());
    }
}
