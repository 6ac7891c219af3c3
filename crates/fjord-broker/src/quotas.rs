//! Client quotas (Kafka's KIP-13/KIP-55/KIP-124): byte-rate limits on produce and fetch, and
//! request-time limits on every request ([`request_time`]), per user and client id, enforced by
//! delaying responses.
//!
//! The quotas live in the coordinator ([`fjord_coordinator::QuotaStore`]) so every broker of a
//! cluster enforces the same ones. Each broker keeps them in memory and reloads them when the
//! store's quota version changes: [`QuotaManager::run`] polls the version every
//! [`QuotaSettings::refresh_interval`] (the `quota-refresh` duty); the broker that made a change
//! reloads at once.
//!
//! Enforcement follows Kafka's `ClientQuotaManager`:
//! - The quota of a request is the first of these entities that sets the key (Kafka's
//!   precedence): user+client-id, user+default client-id, user, default user+client-id,
//!   default user+default client-id, default user, client-id, default client-id. The user is
//!   the principal's name (`ANONYMOUS` when the connection did not authenticate).
//! - Bytes are metered per *quota entity* as Kafka tags its sensors: the user if the matched
//!   entity has a user part (named or default), the client id if it has a client part. So all
//!   clients of a user with a user-level quota share one meter, while a default quota gives each
//!   user (or client) a meter of its own.
//! - A meter is a sliding window of [`QuotaSettings::samples`] samples of
//!   [`QuotaSettings::sample_ms`] (Kafka: 11 × 1 s). The rate is the bytes in the window over
//!   the time the window spans (from the start of its oldest sample to now). After a request's
//!   bytes are recorded, if the rate exceeds the quota the throttle time is Kafka's
//!   `(rate - quota) / quota × window`, capped at the whole window (samples × sample_ms): the
//!   time after which the average falls back to the quota. A young window counts as one sample
//!   long, so a new client may burst one second's worth of quota before it is throttled (Kafka
//!   pads it to `samples - 1` samples, allowing ten seconds' worth).
//! - The throttled response carries `throttle_time_ms` and is sent only once that time has
//!   passed since the bytes were recorded. Kafka ≥ 2.0 sends the response at once and mutes the
//!   connection instead; since a connection answers in order, delaying the response holds back
//!   the client the same way. A broker shutting down releases every hold
//!   ([`QuotaManager::release_holds`]): its connections answer what they read at once (the
//!   responses still carry their throttle time), so draining never waits out throttles.
//!
//! Invariants: without a matching quota nothing is metered and nothing is delayed; a failed
//! reload keeps the previous quotas in force (logged and counted); meters idle for a whole
//! window are dropped, so memory is bounded by the entities active in the last window.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fjord_coordinator::clock::Clock;
use fjord_coordinator::quotas::{
    QuotaEntity, QuotaEntityPart, QuotaEntityType, QuotaKey, QuotaValues,
};
use fjord_coordinator::QuotaStore;
use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;

/// Quota settings (Kafka's names in brackets).
#[derive(Debug, Clone)]
pub struct QuotaSettings {
    /// Samples in a meter's window (`quota.window.num`, 11).
    pub samples: usize,
    /// The length of one sample (`quota.window.size.seconds`, 1 s).
    pub sample_ms: i64,
    /// How often the store's quota version is checked.
    pub refresh_interval: Duration,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        QuotaSettings {
            samples: 11,
            sample_ms: 1000,
            refresh_interval: Duration::from_secs(1),
        }
    }
}

/// Counters (exported as metrics).
#[derive(Debug, Default)]
pub struct QuotaStats {
    /// Responses delayed by a quota.
    pub throttled: AtomicU64,
    /// Reloads of the quotas.
    pub reloads: AtomicU64,
    /// Failed reloads (the previous quotas stay in force).
    pub reload_errors: AtomicU64,
}

/// The quotas of one version.
#[derive(Debug, Default)]
struct Loaded {
    /// `None` until first loaded.
    version: Option<i64>,
    entries: HashMap<QuotaEntity, QuotaValues>,
}

/// What a meter is keyed by: the quota key and Kafka's sensor tags (user, client id; empty when
/// the matched entity has no such part).
type MeterKey = (QuotaKey, String, String);

/// A sliding window of byte counts.
#[derive(Debug, Default)]
struct Meter {
    /// (sample start ms, bytes), oldest first.
    samples: VecDeque<(i64, f64)>,
}

impl Meter {
    fn purge(&mut self, now_ms: i64, settings: &QuotaSettings) {
        let span = settings.sample_ms * settings.samples as i64;
        while self
            .samples
            .front()
            .is_some_and(|(start, _)| *start + span <= now_ms)
        {
            self.samples.pop_front();
        }
    }

    fn record(&mut self, now_ms: i64, bytes: f64, settings: &QuotaSettings) {
        self.purge(now_ms, settings);
        match self.samples.back_mut() {
            Some((start, total)) if now_ms < *start + settings.sample_ms => *total += bytes,
            _ => self.samples.push_back((now_ms, bytes)),
        }
    }

    /// (bytes in the window, ms the window spans) as of `now_ms`.
    fn window(&self, now_ms: i64) -> (f64, i64) {
        let total: f64 = self.samples.iter().map(|(_, b)| b).sum();
        let oldest = self.samples.front().map_or(now_ms, |(start, _)| *start);
        (total, now_ms - oldest)
    }
}

/// Kafka's throttle time `(rate - quota) / quota × window` for `bytes` over a window of
/// `window_ms` (rate = bytes / window), written as `bytes / quota - window`; capped at
/// `max_ms`. It is the time after which the average over the window falls back to the quota.
pub fn throttle_ms(bytes: f64, quota_per_s: f64, window_ms: i64, max_ms: i64) -> i64 {
    if quota_per_s <= 0.0 {
        return 0;
    }
    let ms = bytes * 1000.0 / quota_per_s - window_ms as f64;
    if ms <= 0.0 {
        return 0;
    }
    (ms.ceil() as i64).clamp(0, max_ms)
}

/// The entities that can give `(user, client_id)` a quota, in Kafka's precedence order.
pub fn precedence(user: &str, client_id: &str) -> [QuotaEntity; 8] {
    let u = || QuotaEntityPart::named(QuotaEntityType::User, user);
    let du = || QuotaEntityPart::default_of(QuotaEntityType::User);
    let c = || QuotaEntityPart::named(QuotaEntityType::ClientId, client_id);
    let dc = || QuotaEntityPart::default_of(QuotaEntityType::ClientId);
    [
        vec![u(), c()],
        vec![u(), dc()],
        vec![u()],
        vec![du(), c()],
        vec![du(), dc()],
        vec![du()],
        vec![c()],
        vec![dc()],
    ]
}

/// Meters and enforces client quotas; see the module docs.
pub struct QuotaManager {
    settings: QuotaSettings,
    store: Option<Arc<dyn QuotaStore>>,
    clock: Arc<dyn Clock>,
    quotas: RwLock<Arc<Loaded>>,
    meters: Mutex<HashMap<MeterKey, Meter>>,
    /// Cancelled when the broker shuts down: held responses go out at once.
    holds_released: CancellationToken,
    /// Counters.
    pub stats: QuotaStats,
}

impl std::fmt::Debug for QuotaManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaManager")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl QuotaManager {
    /// A manager enforcing the quotas of `store`, measuring time with `clock`. Call
    /// [`refresh`](Self::refresh) before serving, and run [`run`](Self::run) to follow changes.
    pub fn new(
        settings: QuotaSettings,
        store: Arc<dyn QuotaStore>,
        clock: Arc<dyn Clock>,
    ) -> QuotaManager {
        QuotaManager {
            settings,
            store: Some(store),
            clock,
            quotas: RwLock::new(Arc::new(Loaded::default())),
            meters: Mutex::new(HashMap::new()),
            holds_released: CancellationToken::new(),
            stats: QuotaStats::default(),
        }
    }

    /// A manager without a store: nothing is ever throttled.
    pub fn disabled(clock: Arc<dyn Clock>) -> QuotaManager {
        QuotaManager {
            settings: QuotaSettings::default(),
            store: None,
            clock,
            quotas: RwLock::new(Arc::new(Loaded::default())),
            meters: Mutex::new(HashMap::new()),
            holds_released: CancellationToken::new(),
            stats: QuotaStats::default(),
        }
    }

    /// Holds a throttled response back for `ms` (see the module docs), or until
    /// [`QuotaManager::release_holds`].
    pub async fn hold(&self, ms: i32) {
        if ms <= 0 {
            return;
        }
        let wait = Duration::from_millis(u64::from(ms.unsigned_abs()));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = self.holds_released.cancelled() => {}
        }
    }

    /// Ends every hold, now and from now on: the broker is shutting down and answers what its
    /// connections read without delay.
    pub fn release_holds(&self) {
        self.holds_released.cancel();
    }

    /// The longest throttle: the whole window (Kafka's bound).
    pub fn max_throttle_ms(&self) -> i64 {
        self.settings.sample_ms * self.settings.samples as i64
    }

    /// The quota of `key` for `(user, client_id)` and the meter it is measured on, if any.
    fn resolve(&self, key: QuotaKey, user: &str, client_id: &str) -> Option<(f64, MeterKey)> {
        let loaded = self.quotas.read().clone();
        if loaded.entries.is_empty() {
            return None;
        }
        precedence(user, client_id).into_iter().find_map(|entity| {
            let quota = *loaded.entries.get(&entity)?.get(&key)?;
            let has = |t| entity.iter().any(|p: &QuotaEntityPart| p.entity_type == t);
            let user_tag = if has(QuotaEntityType::User) { user } else { "" };
            let client_tag = if has(QuotaEntityType::ClientId) {
                client_id
            } else {
                ""
            };
            Some((quota, (key, user_tag.to_string(), client_tag.to_string())))
        })
    }

    /// The quota value of `key` that applies to `(user, client_id)`, if one does.
    pub fn quota_for(&self, key: QuotaKey, user: &str, client_id: &str) -> Option<f64> {
        self.resolve(key, user, client_id).map(|(q, _)| q)
    }

    /// Records `amount` (bytes; for `request_percentage`, percent-seconds of handler time)
    /// against the `key` quota of `(user, client_id)` and returns the throttle time in ms (0
    /// when no quota applies or the rate is within it).
    pub fn record(&self, key: QuotaKey, user: &str, client_id: &str, amount: f64) -> i64 {
        let Some((quota, meter_key)) = self.resolve(key, user, client_id) else {
            return 0;
        };
        let now = self.clock.now_ms();
        let (bytes_in_window, window) = {
            let mut meters = self.meters.lock();
            if meters.len() > 1024 {
                meters.retain(|_, m| {
                    m.purge(now, &self.settings);
                    !m.samples.is_empty()
                });
            }
            let meter = meters.entry(meter_key).or_default();
            meter.record(now, amount, &self.settings);
            let (bytes, span) = meter.window(now);
            (bytes, span.max(self.settings.sample_ms))
        };
        let ms = throttle_ms(bytes_in_window, quota, window, self.max_throttle_ms());
        if ms > 0 {
            self.stats.throttled.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                user,
                client_id,
                quota = key.name(),
                rate = bytes_in_window * 1000.0 / window.max(1) as f64,
                limit = quota,
                throttle_ms = ms,
                "throttled"
            );
        }
        ms
    }

    /// Reloads the quotas if the store's version changed.
    pub async fn refresh(&self) -> fjord_coordinator::Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let version = store.quota_version().await?;
        if self.quotas.read().version == Some(version) {
            return Ok(());
        }
        let snapshot = store.client_quotas().await?;
        let entries: HashMap<QuotaEntity, QuotaValues> = snapshot
            .entries
            .into_iter()
            .map(|e| (e.entity, e.values))
            .collect();
        let count = entries.len();
        *self.quotas.write() = Arc::new(Loaded {
            version: Some(snapshot.version),
            entries,
        });
        self.stats.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            version = snapshot.version,
            entities = count,
            "client quotas loaded"
        );
        Ok(())
    }

    /// Follows the store's quota changes until `cancel` (the `quota-refresh` duty).
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        if self.store.is_none() {
            return;
        }
        // A failed reload keeps the previous quotas in force.
        crate::duty::every(
            "quota-refresh",
            self.settings.refresh_interval,
            cancel,
            &self.stats.reload_errors,
            || self.refresh(),
        )
        .await;
    }
}

pub mod request_time;

#[cfg(test)]
mod tests;
