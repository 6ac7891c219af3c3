//! Who is calling: the caller of a request, from its bearer token, its client certificate, its
//! `x-fjord-caller` metadata or its address, and whether it may call at all.
//!
//! Without `[auth]`: the caller is the verified client certificate's identity (mutual TLS),
//! else the `x-fjord-caller` value, else the peer's IP address; only a certificate is
//! *verified* (what `[[caller]]` allowlists check). A token sent anyway is ignored.
//!
//! With `[auth]` ([`CallerAuth::load`]), every request must be authenticated:
//! - an `authorization: Bearer <JWT>` token is checked with the broker's OAUTHBEARER validation
//!   ([`fjord_jwks::Verifier`]): signature against the issuer's JWKS, `exp` (required), `nbf`,
//!   `iat`, issuer and audience; its principal claim names the caller. A token that fails, or
//!   an `authorization` value that is not a bearer token, is refused with UNAUTHENTICATED and
//!   the reason, whatever else the request carries;
//! - without a token, a verified client certificate names the caller;
//! - with neither, the request is refused with UNAUTHENTICATED.
//!
//! Invariants:
//! - a verified identity (certificate or token) always wins over `x-fjord-caller`, so an
//!   authenticated caller cannot pick another name to get a fresh rate-limit budget;
//! - a token accepted once is remembered (bounded, [`TOKEN_CACHE_SIZE`]) until it expires or
//!   the key set changes, so a caller sending one token per request pays for one signature
//!   check; a cached token is checked against the clock on every use;
//! - tokens that fail their check are limited per source address
//!   (`[auth] failed_tokens_per_minute`, the broker's [`FailureLimiter`]): past the limit, an
//!   address's tokens that are not remembered are refused with RESOURCE_EXHAUSTED without a
//!   signature check, so forged tokens cannot make the gateway spend its CPU on them; a token
//!   already accepted still works from there;
//! - a stream authenticated by a token ends with UNAUTHENTICATED at the first batch read after
//!   the token expired ([`Caller::check_fresh`]);
//! - every refusal is counted (`fjord_gateway_authentications{result}`, `refused` or
//!   `throttled`) and logged on the
//!   `fjord::audit` target with the source address and the reason; the lock on the cache is
//!   never held across an `.await`.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::Arc;

use fjord_auth::limiter::FailureLimiter;
use fjord_auth::oauth::{Jwks, ValidToken};
use fjord_jwks::{Reloader, Verifier};
use lru::LruCache;
use parking_lot::Mutex;
use tonic::Request;

use crate::config::GatewayConfig;
use crate::gateway::GatewayError;
use crate::hlc::Clock;
use crate::metrics::{Metrics, ResultLabels};
use crate::status::RequestError;

/// Metadata key naming the caller for rate limits (when nothing authenticates it).
pub const CALLER_METADATA: &str = "x-fjord-caller";

/// Tokens remembered after a successful check.
pub const TOKEN_CACHE_SIZE: usize = 4096;

/// Longest `authorization` value looked at (a JWT is a few KB at most).
pub const MAX_TOKEN_BYTES: usize = 16 << 10;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The name of the rate limits.
    pub name: String,
    /// The authenticated identity (certificate or token), checked against `[[caller]]`.
    pub verified: Option<String>,
    /// When the token that authenticated the caller expires (ms since the epoch, clock skew
    /// included); `None`: not authenticated by a token.
    pub expires_at_ms: Option<i64>,
}

impl Caller {
    /// Whether the caller is still authenticated at `now_ms` (its token has not expired).
    pub fn check_fresh(&self, now_ms: i64) -> Result<(), String> {
        match self.expires_at_ms {
            Some(exp) if now_ms > exp => Err(
                "the bearer token expired during the stream; open a new one with a fresh token"
                    .into(),
            ),
            _ => Ok(()),
        }
    }
}

/// The gateway's caller authentication.
pub struct CallerAuth {
    /// `None`: no `[auth]`, tokens are not checked (nor required).
    tokens: Option<Tokens>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

struct Tokens {
    verifier: Verifier,
    skew_ms: i64,
    /// Failed token checks per source address.
    failures: FailureLimiter,
    /// Accepted tokens, with the key set they were checked against.
    cache: Mutex<TokenCache>,
}

struct TokenCache {
    /// The key set the tokens were checked against (held, so that a new set can never be
    /// mistaken for it by its address).
    keys: Option<Arc<Jwks>>,
    tokens: LruCache<Box<str>, ValidToken>,
}

impl std::fmt::Debug for CallerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerAuth")
            .field("tokens", &self.tokens.as_ref().map(|t| &t.verifier))
            .finish_non_exhaustive()
    }
}

impl CallerAuth {
    /// Authentication as `config` sets it up. With `[auth]`, the JWKS is loaded now (a gateway
    /// that cannot check tokens does not start) and the returned [`Reloader`] keeps it fresh
    /// once spawned.
    pub async fn load(
        config: &GatewayConfig,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<(CallerAuth, Option<Reloader>), GatewayError> {
        let Some(auth) = &config.auth else {
            return Ok((CallerAuth::without_tokens(clock, metrics), None));
        };
        let settings = auth.settings()?;
        let (verifier, reloader) = settings.load().await?;
        if metrics.jwks.set(reloader.stats()).is_err() {
            tracing::debug!("JWKS counters already exported (the gateway served twice)");
        }
        tracing::info!(source = %settings.source, keys = verifier.keys().len(),
            "caller bearer tokens: JWKS loaded");
        Ok((
            CallerAuth::with_verifier(verifier, auth.failed_tokens_per_minute, clock, metrics),
            Some(reloader),
        ))
    }

    /// No `[auth]`: callers are named, not authenticated (except by client certificates).
    pub fn without_tokens(clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> CallerAuth {
        CallerAuth {
            tokens: None,
            clock,
            metrics,
        }
    }

    /// Every caller must present a token `verifier` accepts, or a verified client certificate;
    /// an address may fail `failed_tokens_per_minute` token checks a minute (0: no limit).
    pub fn with_verifier(
        verifier: Verifier,
        failed_tokens_per_minute: u32,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> CallerAuth {
        let skew_ms = verifier.validator().config().clock_skew_ms.max(0);
        let size = NonZeroUsize::new(TOKEN_CACHE_SIZE).unwrap_or(NonZeroUsize::MIN);
        CallerAuth {
            tokens: Some(Tokens {
                verifier,
                skew_ms,
                failures: FailureLimiter::new(failed_tokens_per_minute),
                cache: Mutex::new(TokenCache {
                    keys: None,
                    tokens: LruCache::new(size),
                }),
            }),
            clock,
            metrics,
        }
    }

    /// The time tokens are checked at, in ms since the epoch.
    pub fn now_ms(&self) -> i64 {
        i64::try_from(self.clock.now_millis()).unwrap_or(i64::MAX)
    }

    /// Whether a stream's `caller` is still authenticated (its token has not expired since the
    /// stream opened); a refusal is counted and audited as at [`CallerAuth::authenticate`].
    pub fn check_fresh(
        &self,
        caller: &Caller,
        source: Option<SocketAddr>,
    ) -> Result<(), RequestError> {
        caller
            .check_fresh(self.now_ms())
            .map_err(|reason| self.refused(source, reason))
    }

    fn refused(&self, source: Option<SocketAddr>, reason: String) -> RequestError {
        self.metrics
            .authentications
            .get_or_create(&ResultLabels { result: "refused" })
            .inc();
        tracing::warn!(
            target: "fjord::audit",
            event = "authentication_failed",
            source = %source.map(|a| a.ip().to_string()).unwrap_or_default(),
            reason = %reason,
            "gateway caller refused"
        );
        RequestError::Unauthenticated(reason)
    }

    fn throttled(&self, source: Option<SocketAddr>) -> RequestError {
        self.metrics
            .authentications
            .get_or_create(&ResultLabels {
                result: "throttled",
            })
            .inc();
        tracing::warn!(
            target: "fjord::audit",
            event = "authentication_throttled",
            source = %source.map(|a| a.ip().to_string()).unwrap_or_default(),
            "gateway caller refused: too many failed tokens from its address"
        );
        RequestError::AuthenticationThrottled
    }

    /// Who sent `request`; refused with UNAUTHENTICATED if `[auth]` requires a token and the
    /// request has no valid one (nor a verified client certificate).
    pub async fn authenticate<T>(&self, request: &Request<T>) -> Result<Caller, RequestError> {
        let certificate = certificate_identity(request);
        let Some(tokens) = &self.tokens else {
            return Ok(Caller {
                name: certificate
                    .clone()
                    .unwrap_or_else(|| unverified_name(request)),
                verified: certificate,
                expires_at_ms: None,
            });
        };
        let source = request.remote_addr();
        let result = match bearer_token(request) {
            Some(Ok(token)) => match self.check(tokens, token, source.map(|a| a.ip())).await {
                Ok(caller) => Ok(caller),
                Err(Refusal::Invalid(why)) => Err(why),
                Err(Refusal::Throttled) => return Err(self.throttled(source)),
            },
            Some(Err(why)) => Err(why),
            None => match certificate {
                Some(identity) => Ok(Caller {
                    name: identity.clone(),
                    verified: Some(identity),
                    expires_at_ms: None,
                }),
                None => Err(
                    "a bearer token is required (metadata `authorization: Bearer <JWT>`) or a \
                     client certificate"
                        .to_owned(),
                ),
            },
        };
        match result {
            Ok(caller) => {
                self.metrics
                    .authentications
                    .get_or_create(&ResultLabels { result: "ok" })
                    .inc();
                Ok(caller)
            }
            Err(reason) => Err(self.refused(source, reason)),
        }
    }

    /// Checks `token` sent from `ip`: from the cache, or with the verifier (then remembered)
    /// if `ip` has not failed too often lately.
    async fn check(
        &self,
        tokens: &Tokens,
        token: &str,
        ip: Option<IpAddr>,
    ) -> Result<Caller, Refusal> {
        let now = self.now_ms();
        let keys = tokens.verifier.keys();
        let cached = {
            let mut cache = tokens.cache.lock();
            if !cache.keys.as_ref().is_some_and(|k| Arc::ptr_eq(k, &keys)) {
                cache.tokens.clear();
                cache.keys = Some(keys.clone());
            }
            cache.tokens.get(token).cloned()
        };
        let valid = match cached {
            Some(valid) if now <= valid.expires_at_ms.saturating_add(tokens.skew_ms) => valid,
            Some(_) => {
                tokens.cache.lock().tokens.pop(token);
                return Err(Refusal::Invalid(
                    "bearer token refused: the token expired".to_owned(),
                ));
            }
            None => {
                if ip.is_some_and(|ip| !tokens.failures.allows(ip, now)) {
                    return Err(Refusal::Throttled);
                }
                let valid = match tokens.verifier.verify(token, || self.now_ms()).await {
                    Ok(valid) => valid,
                    Err(e) => {
                        if let Some(ip) = ip {
                            tokens.failures.failed(ip, self.now_ms());
                        }
                        return Err(Refusal::Invalid(format!("bearer token refused: {e}")));
                    }
                };
                let mut cache = tokens.cache.lock();
                // Remembered only if the keys did not change meanwhile (the verifier may have
                // reloaded them): a rotation clears the cache, and this token was not checked
                // against the new set.
                let current = tokens.verifier.keys();
                if Arc::ptr_eq(&keys, &current)
                    && cache
                        .keys
                        .as_ref()
                        .is_some_and(|k| Arc::ptr_eq(k, &current))
                {
                    cache.tokens.put(token.into(), valid.clone());
                }
                valid
            }
        };
        Ok(Caller {
            name: valid.principal.clone(),
            verified: Some(valid.principal),
            expires_at_ms: Some(valid.expires_at_ms.saturating_add(tokens.skew_ms)),
        })
    }
}

/// Why a token was not accepted.
enum Refusal {
    /// It failed its check (the reason).
    Invalid(String),
    /// Its address failed too often lately; it was not checked.
    Throttled,
}

/// The identity of the connection's verified client certificate (mutual TLS), if any.
fn certificate_identity<T>(request: &Request<T>) -> Option<String> {
    request
        .peer_certs()
        .and_then(|certs| certs.first().and_then(|c| crate::tls::identity(c.as_ref())))
}

/// The `x-fjord-caller` value, else the peer's IP address.
fn unverified_name<T>(request: &Request<T>) -> String {
    if let Some(caller) = request
        .metadata()
        .get(CALLER_METADATA)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
    {
        return caller.chars().take(128).collect();
    }
    request
        .remote_addr()
        .map(|a: SocketAddr| a.ip().to_string())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The bearer token of the `authorization` metadata: `None` if there is none, an error if the
/// value is not `Bearer <token>` (the scheme is case-insensitive, RFC 6750).
fn bearer_token<T>(request: &Request<T>) -> Option<Result<&str, String>> {
    let value = request.metadata().get("authorization")?;
    let refused = |why: &str| Some(Err(format!("authorization metadata refused: {why}")));
    let Ok(value) = value.to_str() else {
        return refused("not ASCII");
    };
    if value.len() > MAX_TOKEN_BYTES {
        return refused(&format!("longer than {MAX_TOKEN_BYTES} bytes"));
    }
    let mut parts = value.trim().splitn(2, ' ');
    match (parts.next(), parts.next().map(str::trim)) {
        (Some(scheme), Some(token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() =>
        {
            Some(Ok(token))
        }
        _ => refused("expected `Bearer <token>`"),
    }
}

#[cfg(test)]
mod tests;
