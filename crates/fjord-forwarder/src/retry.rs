//! The retry policy: after a failed attempt, what happens to the record next.
//!
//! Owns the decision and the backoff arithmetic; randomness is passed in, so tests are
//! deterministic. A record lives in rounds: round 0 is its first fetch from the source topic,
//! round `n` its `n`-th fetch back from the retry topic. Within a round it gets `max_attempts`
//! attempts in memory, with exponential backoff and jitter between them.
//! Invariants:
//! - the number of attempts of a record is bounded: `max_attempts × (retry_topic_rounds + 1)`
//!   with a retry topic, `max_attempts` without; after that it is dead-lettered, so a poison
//!   record never stalls its partition forever;
//! - a backoff is never above `max_backoff_ms` and never below `(1 - jitter)` of the nominal
//!   value;
//! - a handler's RETRY delay is honoured: in memory up to `max_in_memory_delay_ms`, through the
//!   retry topic beyond (when there is one); without a retry topic a longer delay is cut to
//!   `max_in_memory_delay_ms`, because a record waiting in memory holds its key's lane and its
//!   partition's commit point, so no handler answer can hold them for longer than
//!   `max_attempts × max_in_memory_delay_ms`.

use std::time::Duration;

use rand::Rng;

use crate::config::RetryConfig;

/// What to do with a record after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Attempt again in memory after this delay.
    Again(Duration),
    /// Park it in the retry topic, due this long from now.
    RetryTopic(Duration),
    /// Give up: dead-letter topic.
    DeadLetter,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    config: RetryConfig,
    has_retry_topic: bool,
}

impl RetryPolicy {
    pub fn new(config: RetryConfig, has_retry_topic: bool) -> Self {
        RetryPolicy {
            config,
            has_retry_topic,
        }
    }

    /// The decision after a failed attempt. `round_attempts` counts the attempts of the current
    /// round, the failed one included (so it is at least 1); `round` is the record's round;
    /// `requested` the delay the handler asked for.
    pub fn after_failure(
        &self,
        round_attempts: u32,
        round: u32,
        requested: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Next {
        let c = &self.config;
        let long = requested.is_some_and(|d| d > Duration::from_millis(c.max_in_memory_delay_ms));
        if round_attempts < c.max_attempts && !(long && self.has_retry_topic) {
            let in_memory_limit = Duration::from_millis(c.max_in_memory_delay_ms);
            return Next::Again(
                requested
                    .map(|d| d.min(in_memory_limit))
                    .unwrap_or_else(|| self.backoff(round_attempts, rng)),
            );
        }
        if self.has_retry_topic && round < c.retry_topic_rounds {
            let delay = Duration::from_millis(c.retry_topic_delay_ms);
            return Next::RetryTopic(requested.map_or(delay, |r| r.max(delay)));
        }
        Next::DeadLetter
    }

    /// The backoff after the `failures`-th failed attempt of a round (1-based).
    pub fn backoff(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let c = &self.config;
        let exponent = failures.saturating_sub(1).min(64) as i32;
        let nominal = (c.initial_backoff_ms as f64 * c.multiplier.powi(exponent))
            .min(c.max_backoff_ms as f64)
            .max(0.0);
        let jitter = c.jitter.clamp(0.0, 1.0);
        let factor = 1.0 - jitter * rng.gen_range(0.0..1.0);
        Duration::from_millis((nominal * factor).round() as u64)
    }

    /// The most attempts any record gets.
    pub fn max_total_attempts(&self) -> u32 {
        let rounds = if self.has_retry_topic {
            self.config.retry_topic_rounds.saturating_add(1)
        } else {
            1
        };
        self.config.max_attempts.saturating_mul(rounds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn config() -> RetryConfig {
        RetryConfig {
            max_attempts: 3,
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
            multiplier: 2.0,
            jitter: 0.5,
            max_in_memory_delay_ms: 5_000,
            retry_topic_delay_ms: 60_000,
            retry_topic_rounds: 2,
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered_within_bounds() {
        let p = RetryPolicy::new(config(), true);
        let mut rng = StdRng::seed_from_u64(7);
        for failures in 1..20 {
            let nominal = (100.0 * 2f64.powi(failures as i32 - 1)).min(1_000.0);
            for _ in 0..50 {
                let b = p.backoff(failures, &mut rng).as_millis() as f64;
                assert!(b <= nominal && b >= nominal * 0.5 - 1.0, "{failures}: {b}");
            }
        }
        let no_jitter = RetryPolicy::new(
            RetryConfig {
                jitter: 0.0,
                ..config()
            },
            true,
        );
        assert_eq!(
            no_jitter.backoff(3, &mut rng),
            Duration::from_millis(400),
            "100 × 2²"
        );
    }

    #[test]
    fn in_memory_then_retry_topic_then_dead_letter() {
        let p = RetryPolicy::new(config(), true);
        let mut rng = StdRng::seed_from_u64(1);
        assert!(matches!(
            p.after_failure(1, 0, None, &mut rng),
            Next::Again(_)
        ));
        assert!(matches!(
            p.after_failure(2, 0, None, &mut rng),
            Next::Again(_)
        ));
        assert_eq!(
            p.after_failure(3, 0, None, &mut rng),
            Next::RetryTopic(Duration::from_secs(60))
        );
        assert_eq!(
            p.after_failure(3, 1, None, &mut rng),
            Next::RetryTopic(Duration::from_secs(60))
        );
        assert_eq!(p.after_failure(3, 2, None, &mut rng), Next::DeadLetter);
        assert_eq!(p.max_total_attempts(), 9);
    }

    #[test]
    fn without_retry_topic_attempts_end_in_dead_letter() {
        let p = RetryPolicy::new(config(), false);
        let mut rng = StdRng::seed_from_u64(1);
        assert!(matches!(
            p.after_failure(2, 0, None, &mut rng),
            Next::Again(_)
        ));
        assert_eq!(p.after_failure(3, 0, None, &mut rng), Next::DeadLetter);
        // A requested delay up to the in-memory limit is waited in memory when there is nowhere
        // else to wait.
        assert_eq!(
            p.after_failure(1, 0, Some(Duration::from_secs(5)), &mut rng),
            Next::Again(Duration::from_secs(5))
        );
        assert_eq!(p.max_total_attempts(), 3);
    }

    /// Issue 14, item 3: without a retry topic, `Retry(after=10 days)` held the record's key lane
    /// and its partition's commit point for ten days per attempt.
    #[test]
    fn without_retry_topic_a_long_requested_delay_is_capped_in_memory() {
        let p = RetryPolicy::new(config(), false);
        let mut rng = StdRng::seed_from_u64(1);
        let ten_days = Duration::from_secs(10 * 24 * 3600);
        assert_eq!(
            p.after_failure(1, 0, Some(ten_days), &mut rng),
            Next::Again(Duration::from_millis(config().max_in_memory_delay_ms))
        );
        assert_eq!(
            p.after_failure(3, 0, Some(ten_days), &mut rng),
            Next::DeadLetter
        );
    }

    #[test]
    fn requested_delays_are_honoured() {
        let p = RetryPolicy::new(config(), true);
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            p.after_failure(1, 0, Some(Duration::from_millis(700)), &mut rng),
            Next::Again(Duration::from_millis(700))
        );
        // Longer than the in-memory limit: through the retry topic at once, not before due.
        assert_eq!(
            p.after_failure(1, 0, Some(Duration::from_secs(120)), &mut rng),
            Next::RetryTopic(Duration::from_secs(120))
        );
        assert_eq!(
            p.after_failure(3, 0, Some(Duration::from_secs(1)), &mut rng),
            Next::RetryTopic(Duration::from_secs(60))
        );
    }

    /// Property: whatever the handler answers, a record's attempts are bounded, and so is each
    /// wait in memory (by `max_in_memory_delay_ms` or `max_backoff_ms`).
    #[test]
    fn attempts_are_bounded_for_any_answers() {
        for seed in 0..200u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let has_topic = seed % 2 == 0;
            let p = RetryPolicy::new(config(), has_topic);
            let (mut round, mut in_round, mut total) = (0u32, 0u32, 0u32);
            loop {
                total += 1;
                in_round += 1;
                assert!(total <= p.max_total_attempts(), "seed {seed}");
                let requested = match rng.gen_range(0..3) {
                    0 => None,
                    1 => Some(Duration::from_millis(rng.gen_range(0..10_000))),
                    _ => Some(Duration::from_secs(rng.gen_range(0..1_000))),
                };
                match p.after_failure(in_round, round, requested, &mut rng) {
                    Next::Again(d) => assert!(
                        d <= Duration::from_millis(5_000).max(Duration::from_millis(1_000)),
                        "seed {seed}: an in-memory wait of {d:?} is over both limits"
                    ),
                    Next::RetryTopic(_) => {
                        round += 1;
                        in_round = 0;
                    }
                    Next::DeadLetter => break,
                }
            }
        }
    }
}
