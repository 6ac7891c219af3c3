//! Checking a bearer token against the current key set.
//!
//! Whoever loads the JWKS ([`crate::Reloader`], or a test) owns the [`watch`] sender of the keys,
//! sends every new set, and reloads at once when the [`Notify`] is notified: a token with an
//! unknown `kid` asks for that at most once per [`UNKNOWN_KID_REFRESH_INTERVAL_MS`] (so a stream
//! of forged `kid`s cannot make the verifier hammer the issuer) and waits up to
//! [`UNKNOWN_KID_REFRESH_WAIT`] for the new set.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fjord_auth::oauth::{Jwks, JwtValidator, OAuthError, ValidToken};
use tokio::sync::{watch, Notify};

/// Shortest time between two reloads asked for by tokens with an unknown `kid`.
pub const UNKNOWN_KID_REFRESH_INTERVAL_MS: i64 = 10_000;

/// How long a check waits for a JWKS reload it asked for.
pub const UNKNOWN_KID_REFRESH_WAIT: Duration = Duration::from_secs(5);

/// A JWT validator and the current key set.
pub struct Verifier {
    validator: JwtValidator,
    keys: watch::Receiver<Arc<Jwks>>,
    refresh: Arc<Notify>,
    last_refresh_request_ms: AtomicI64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("validator", &self.validator)
            .field("keys", &self.keys.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Validates tokens with `validator` against the key sets `keys` receives; asks for a
    /// reload through `refresh`.
    pub fn new(
        validator: JwtValidator,
        keys: watch::Receiver<Arc<Jwks>>,
        refresh: Arc<Notify>,
    ) -> Verifier {
        Verifier {
            validator,
            keys,
            refresh,
            last_refresh_request_ms: AtomicI64::new(i64::MIN),
        }
    }

    /// The validator.
    pub fn validator(&self) -> &JwtValidator {
        &self.validator
    }

    /// The current key set.
    pub fn keys(&self) -> Arc<Jwks> {
        self.keys.borrow().clone()
    }

    /// Checks `token` against the current keys at the time `now_ms` gives (ms since the epoch).
    /// A token whose `kid` is not in the set asks for a reload (see the module doc) and is
    /// checked again against the new set.
    pub async fn verify(
        &self,
        token: &str,
        now_ms: impl Fn() -> i64,
    ) -> Result<ValidToken, OAuthError> {
        let mut keys = self.keys.clone();
        let current = keys.borrow_and_update().clone();
        let result = self.validator.validate(token, &current, now_ms());
        if !matches!(&result, Err(e) if e.is_unknown_kid()) || !self.may_refresh(now_ms()) {
            return result;
        }
        // The issuer may have rotated its keys: load the set again, once, and retry.
        self.refresh.notify_one();
        match tokio::time::timeout(UNKNOWN_KID_REFRESH_WAIT, keys.changed()).await {
            Ok(Ok(())) => {
                let fresh = keys.borrow_and_update().clone();
                self.validator.validate(token, &fresh, now_ms())
            }
            _ => result,
        }
    }

    /// Whether a reload may be asked for now (and records that it is).
    fn may_refresh(&self, now_ms: i64) -> bool {
        let last = self.last_refresh_request_ms.load(Ordering::Relaxed);
        now_ms.saturating_sub(last) >= UNKNOWN_KID_REFRESH_INTERVAL_MS
            && self
                .last_refresh_request_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}
