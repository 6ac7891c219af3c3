//! SASL authentication of a connection on a `SASL_PLAINTEXT` or `SASL_SSL` listener.
//!
//! [`Authenticator`] is shared by the broker's connections: the enabled mechanisms, the
//! credential store, the failed-attempt limiter. Each connection keeps a [`SaslConnection`] and
//! asks it, for every frame, what to do ([`SaslConnection::gate`]):
//! - before authentication only ApiVersions, SaslHandshake and SaslAuthenticate are served;
//!   anything else closes the connection (as Kafka does);
//! - SaslHandshake v1 then SaslAuthenticate requests carry the mechanism's tokens (KIP-152);
//!   after SaslHandshake v0 the tokens follow as bare length-prefixed frames, as before KIP-152;
//! - a failed authentication is answered with SASL_AUTHENTICATION_FAILED and a reason, after
//!   [`SaslSettings::failure_delay`], and the connection is closed;
//! - with `connections.max.reauth.ms` set, a client that authenticated with SaslAuthenticate v1+
//!   is told its session lifetime and must re-authenticate on the same connection (KIP-368) as
//!   the same principal with the same mechanism before it ends; a request after that closes the
//!   connection.
//!
//! Mechanisms: PLAIN and SCRAM-SHA-256/512. Both check the credentials in the coordinator
//! ([`fjord_coordinator::CredentialStore`]): SCRAM by the exchange, PLAIN by deriving the stored
//! key from the password; no password is stored anywhere. OAUTHBEARER (KIP-255), when an
//! [`OAuthBearer`] is configured, checks a JWT against a JWKS kept fresh by the caller
//! ([`OAuthBearer::keys`]); the session then also ends when the token expires (KIP-368).
//!
//! Every failure is logged on the `fjord::audit` target with the user, source and reason.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use fjord_auth::limiter::FailureLimiter;
use fjord_auth::scram::{self, ServerExchange};
use fjord_coordinator::clock::Clock;
use fjord_coordinator::security::{ScramCredential, ScramMechanism};
use fjord_coordinator::CredentialStore;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::{decode_request_header_from_buffer, Decodable, StrBytes};
use kafka_protocol::ResponseError;

use crate::dispatch;
use crate::session::Principal;

/// A SASL mechanism Fjord serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// PLAIN (checked against the user's SCRAM credentials).
    Plain,
    /// SCRAM-SHA-256 or SCRAM-SHA-512.
    Scram(ScramMechanism),
    /// OAUTHBEARER with a JWT (KIP-255); needs an [`OAuthBearer`].
    OAuthBearer,
}

impl Mechanism {
    /// Every mechanism.
    pub const ALL: [Mechanism; 4] = [
        Mechanism::Scram(ScramMechanism::Sha512),
        Mechanism::Scram(ScramMechanism::Sha256),
        Mechanism::Plain,
        Mechanism::OAuthBearer,
    ];

    /// The mechanisms enabled by default, strongest first (OAUTHBEARER needs a JWKS).
    pub const DEFAULT: [Mechanism; 3] = [
        Mechanism::Scram(ScramMechanism::Sha512),
        Mechanism::Scram(ScramMechanism::Sha256),
        Mechanism::Plain,
    ];

    /// The SASL name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(m) => m.name(),
            Mechanism::OAuthBearer => "OAUTHBEARER",
        }
    }

    /// The mechanism of a SASL name (case-insensitive).
    pub fn from_name(name: &str) -> Option<Mechanism> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// SASL settings (Kafka's names in brackets).
#[derive(Debug, Clone)]
pub struct SaslSettings {
    /// Mechanisms offered (`sasl.enabled.mechanisms`).
    pub mechanisms: Vec<Mechanism>,
    /// Session lifetime after which a client must re-authenticate; 0: never
    /// (`connections.max.reauth.ms`).
    pub reauth_ms: i64,
    /// How long a failed authentication waits before it is answered and the connection closed
    /// (`connection.failed.authentication.delay.ms`).
    pub failure_delay: Duration,
    /// Failed authentications allowed per source address per minute; 0: no limit.
    pub failures_per_minute: u32,
    /// Largest SASL token accepted.
    pub max_token_bytes: usize,
}

impl Default for SaslSettings {
    fn default() -> Self {
        SaslSettings {
            mechanisms: Mechanism::DEFAULT.to_vec(),
            reauth_ms: 0,
            failure_delay: Duration::from_millis(100),
            failures_per_minute: 30,
            max_token_bytes: 64 << 10,
        }
    }
}

/// Authentication counters (exported as metrics).
#[derive(Debug, Default)]
pub struct SaslStats {
    /// Successful authentications (re-authentications included).
    pub successes: AtomicU64,
    /// Failed authentications.
    pub failures: AtomicU64,
    /// Attempts refused because their address failed too often.
    pub throttled: AtomicU64,
}

/// Shortest session given to a token accepted within the clock skew after its `exp` (never
/// beyond `exp` + skew, when the token would be refused): a client that re-authenticates with
/// such a token is not driven into a loop of 1 ms sessions.
pub const MIN_EXPIRED_TOKEN_SESSION_MS: i64 = 1_000;

/// OAUTHBEARER's validator and the current JWKS, kept fresh by its owner (see
/// [`fjord_jwks::Verifier`]: a token with an unknown `kid` asks for a reload).
pub use fjord_jwks::Verifier as OAuthBearer;

/// What every connection's authentication shares.
pub struct Authenticator {
    settings: SaslSettings,
    credentials: Arc<dyn CredentialStore>,
    clock: Arc<dyn Clock>,
    /// Derives the decoy salts of unknown users; random per process.
    secret: [u8; 32],
    limiter: FailureLimiter,
    oauth: Option<OAuthBearer>,
    /// Counters.
    pub stats: SaslStats,
}

impl Authenticator {
    /// An authenticator checking `credentials`, with time from `clock`.
    pub fn new(
        settings: SaslSettings,
        credentials: Arc<dyn CredentialStore>,
        clock: Arc<dyn Clock>,
    ) -> Authenticator {
        Authenticator {
            limiter: FailureLimiter::new(settings.failures_per_minute),
            settings,
            credentials,
            clock,
            secret: scram::random_bytes::<32>(),
            oauth: None,
            stats: SaslStats::default(),
        }
    }

    /// Serves OAUTHBEARER with `oauth` (when the settings enable it).
    pub fn with_oauth(mut self, oauth: OAuthBearer) -> Authenticator {
        self.oauth = Some(oauth);
        self
    }

    /// The settings.
    pub fn settings(&self) -> &SaslSettings {
        &self.settings
    }
}

/// What a connection does with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    /// A request to dispatch as usual.
    Dispatch,
    /// A SASL frame for [`SaslConnection::handle`].
    Sasl,
    /// Close the connection, for this reason.
    Close(&'static str),
}

/// The answer to a SASL frame.
#[derive(Debug)]
pub struct SaslReply {
    /// The frame to send (length prefix included); `None` when nothing can be sent.
    pub frame: Option<Bytes>,
    /// Wait this long before sending it (failed authentications).
    pub delay: Duration,
    /// Close the connection once it is sent.
    pub close: bool,
    /// The principal the connection authenticated as, when this frame completed it.
    pub principal: Option<Principal>,
}

impl SaslReply {
    fn send(frame: Bytes) -> SaslReply {
        SaslReply {
            frame: Some(frame),
            delay: Duration::ZERO,
            close: false,
            principal: None,
        }
    }

    fn close() -> SaslReply {
        SaslReply {
            frame: None,
            delay: Duration::ZERO,
            close: true,
            principal: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Authenticated {
    principal: Principal,
    mechanism: Mechanism,
    /// When the session ends (ms); `None`: never.
    expires_at_ms: Option<i64>,
}

enum Exchange {
    /// No exchange under way.
    Idle,
    /// After SaslHandshake, waiting for the first token.
    Started { mechanism: Mechanism, raw: bool },
    /// Between SCRAM's first and final messages.
    Scram {
        mechanism: Mechanism,
        raw: bool,
        user: String,
        exchange: Box<ServerExchange>,
    },
    /// Failed: nothing more is accepted.
    Failed,
}

/// One connection's authentication state.
pub struct SaslConnection {
    auth: Arc<Authenticator>,
    peer: Option<SocketAddr>,
    exchange: Exchange,
    authenticated: Option<Authenticated>,
}

/// What one token led to.
enum Step {
    /// Send this token and wait for the next.
    Continue(Vec<u8>),
    /// Authenticated as `user` with `mechanism`; send this last token. `expires_at_ms`: when
    /// the credential (an OAuth token) expires.
    Done {
        user: String,
        mechanism: Mechanism,
        token: Vec<u8>,
        expires_at_ms: Option<i64>,
    },
    /// Refused: the reason is for the client and the audit log; `user` when known.
    Fail {
        reason: String,
        user: Option<String>,
        /// Counted against the source's failed attempts (not for store outages).
        counts: bool,
    },
}

impl SaslConnection {
    /// A connection from `peer` that has not authenticated.
    pub fn new(auth: Arc<Authenticator>, peer: Option<SocketAddr>) -> SaslConnection {
        SaslConnection {
            auth,
            peer,
            exchange: Exchange::Idle,
            authenticated: None,
        }
    }

    /// Whether the connection has authenticated.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated.is_some()
    }

    /// What to do with `frame` (a request frame without its length prefix).
    pub fn gate(&self, frame: &[u8]) -> Gate {
        if matches!(
            self.exchange,
            Exchange::Started { raw: true, .. } | Exchange::Scram { raw: true, .. }
        ) {
            return Gate::Sasl;
        }
        let Some(key) = frame.get(..2).map(|k| i16::from_be_bytes([k[0], k[1]])) else {
            return Gate::Close("request too short");
        };
        if key == ApiKey::SaslHandshake as i16 || key == ApiKey::SaslAuthenticate as i16 {
            return Gate::Sasl;
        }
        match &self.authenticated {
            Some(a) => match a.expires_at_ms {
                Some(at) if self.auth.clock.now_ms() >= at => {
                    Gate::Close("the SASL session expired and the client did not re-authenticate")
                }
                _ => Gate::Dispatch,
            },
            None if key == ApiKey::ApiVersions as i16
                && matches!(self.exchange, Exchange::Idle) =>
            {
                Gate::Dispatch
            }
            None => Gate::Close("request before SASL authentication"),
        }
    }

    /// Handles a frame [`gate`](Self::gate) sent here.
    pub async fn handle(&mut self, frame: Bytes) -> SaslReply {
        let raw = matches!(
            self.exchange,
            Exchange::Started { raw: true, .. } | Exchange::Scram { raw: true, .. }
        );
        if raw {
            return self.raw_token(frame).await;
        }
        let mut body = frame;
        let Some(key) = body.get(..4).map(|b| {
            (
                i16::from_be_bytes([b[0], b[1]]),
                i16::from_be_bytes([b[2], b[3]]),
            )
        }) else {
            return SaslReply::close();
        };
        let (key, version) = key;
        let Ok(header) = decode_request_header_from_buffer(&mut body) else {
            return SaslReply::close();
        };
        let correlation_id = header.correlation_id;
        if key == ApiKey::SaslHandshake as i16 {
            if !(0..=1).contains(&version) {
                return SaslReply::close();
            }
            let Ok(request) = SaslHandshakeRequest::decode(&mut body, version) else {
                return SaslReply::close();
            };
            let (response, close) = self.handshake(request.mechanism.as_str(), version);
            let frame = dispatch::encode(ApiKey::SaslHandshake, version, correlation_id, &response);
            return match frame {
                Ok(frame) => SaslReply {
                    close,
                    ..SaslReply::send(frame)
                },
                Err(_) => SaslReply::close(),
            };
        }
        if !(0..=2).contains(&version) {
            return SaslReply::close();
        }
        let Ok(request) = SaslAuthenticateRequest::decode(&mut body, version) else {
            return SaslReply::close();
        };
        let mut reply = self.authenticate(request.auth_bytes, version >= 1).await;
        let frame = dispatch::encode(
            ApiKey::SaslAuthenticate,
            version,
            correlation_id,
            &reply.response,
        );
        match frame {
            Ok(frame) => {
                reply.reply.frame = Some(frame);
                reply.reply
            }
            Err(_) => SaslReply::close(),
        }
    }

    fn handshake(&mut self, name: &str, version: i16) -> (SaslHandshakeResponse, bool) {
        let enabled: Vec<StrBytes> = self
            .auth
            .settings
            .mechanisms
            .iter()
            .map(|m| StrBytes::from_static_str(m.name()))
            .collect();
        let response = SaslHandshakeResponse::default().with_mechanisms(enabled);
        if !matches!(self.exchange, Exchange::Idle) {
            self.exchange = Exchange::Failed;
            return (
                response.with_error_code(ResponseError::IllegalSaslState.code()),
                true,
            );
        }
        let mechanism =
            Mechanism::from_name(name).filter(|m| self.auth.settings.mechanisms.contains(m));
        let Some(mechanism) = mechanism else {
            self.exchange = Exchange::Failed;
            self.audit_failure(None, &format!("mechanism {name:?} is not enabled"));
            return (
                response.with_error_code(ResponseError::UnsupportedSaslMechanism.code()),
                true,
            );
        };
        if let Some(current) = &self.authenticated {
            // Re-authentication (KIP-368) needs SaslAuthenticate, and the same mechanism.
            if version == 0 || current.mechanism != mechanism {
                self.exchange = Exchange::Failed;
                self.audit_failure(
                    Some(&current.principal.name),
                    "re-authentication with another mechanism or without SaslAuthenticate",
                );
                return (
                    response.with_error_code(ResponseError::IllegalSaslState.code()),
                    true,
                );
            }
        }
        self.exchange = Exchange::Started {
            mechanism,
            raw: version == 0,
        };
        (response, false)
    }

    async fn authenticate(&mut self, token: Bytes, tells_lifetime: bool) -> Authenticate {
        if matches!(self.exchange, Exchange::Idle | Exchange::Failed) {
            self.exchange = Exchange::Failed;
            return Authenticate {
                response: SaslAuthenticateResponse::default()
                    .with_error_code(ResponseError::IllegalSaslState.code())
                    .with_error_message(Some(StrBytes::from_static_str(
                        "SaslAuthenticate before SaslHandshake",
                    ))),
                reply: SaslReply::close(),
            };
        }
        match self.step(&token).await {
            Step::Continue(token) => Authenticate {
                response: SaslAuthenticateResponse::default().with_auth_bytes(token.into()),
                reply: SaslReply::keep_open(),
            },
            Step::Done {
                user,
                mechanism,
                token,
                expires_at_ms,
            } => match self.complete(user, mechanism, tells_lifetime, expires_at_ms) {
                Ok((principal, lifetime_ms)) => Authenticate {
                    response: SaslAuthenticateResponse::default()
                        .with_auth_bytes(token.into())
                        .with_session_lifetime_ms(lifetime_ms),
                    reply: SaslReply {
                        principal: Some(principal),
                        ..SaslReply::keep_open()
                    },
                },
                Err(reason) => self.failed_response(reason),
            },
            Step::Fail { reason, .. } => self.failed_response(reason),
        }
    }

    fn failed_response(&mut self, reason: String) -> Authenticate {
        self.exchange = Exchange::Failed;
        Authenticate {
            response: SaslAuthenticateResponse::default()
                .with_error_code(ResponseError::SaslAuthenticationFailed.code())
                .with_error_message(Some(StrBytes::from_string(reason))),
            reply: SaslReply {
                delay: self.auth.settings.failure_delay,
                ..SaslReply::close()
            },
        }
    }

    /// A bare token after SaslHandshake v0: answered bare; a failure closes the connection.
    async fn raw_token(&mut self, token: Bytes) -> SaslReply {
        match self.step(&token).await {
            Step::Continue(token) => SaslReply::send(bare(&token)),
            Step::Done {
                user,
                mechanism,
                token,
                expires_at_ms,
            } => match self.complete(user, mechanism, false, expires_at_ms) {
                Ok((principal, _)) => SaslReply {
                    principal: Some(principal),
                    ..SaslReply::send(bare(&token))
                },
                Err(_) => SaslReply {
                    delay: self.auth.settings.failure_delay,
                    ..SaslReply::close()
                },
            },
            Step::Fail { .. } => {
                self.exchange = Exchange::Failed;
                SaslReply {
                    delay: self.auth.settings.failure_delay,
                    ..SaslReply::close()
                }
            }
        }
    }

    /// Records a successful exchange: the principal and, when the client can re-authenticate
    /// and `connections.max.reauth.ms` is set, the session's end: after
    /// `connections.max.reauth.ms`, or when the credential expires (`credential_expires_at_ms`,
    /// an OAuth token's `exp`) if that is sooner, as Kafka does.
    fn complete(
        &mut self,
        user: String,
        mechanism: Mechanism,
        tells_lifetime: bool,
        credential_expires_at_ms: Option<i64>,
    ) -> Result<(Principal, i64), String> {
        self.exchange = Exchange::Idle;
        let principal = Principal::user(user);
        if let Some(previous) = &self.authenticated {
            if previous.principal != principal {
                self.audit_failure(
                    Some(&principal.name),
                    &format!(
                        "re-authentication as another principal than {}",
                        previous.principal
                    ),
                );
                return Err("re-authentication must keep the same principal".into());
            }
        }
        let now = self.auth.clock.now_ms();
        let reauth = self.auth.settings.reauth_ms;
        let lifetime_ms = if tells_lifetime && reauth > 0 {
            match credential_expires_at_ms {
                // Never 0, which would mean "never".
                Some(exp) => reauth.min(exp.saturating_sub(now)).max(1),
                None => reauth,
            }
        } else {
            0
        };
        self.authenticated = Some(Authenticated {
            principal: principal.clone(),
            mechanism,
            expires_at_ms: (lifetime_ms > 0).then(|| now.saturating_add(lifetime_ms)),
        });
        self.auth.stats.successes.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer = ?self.peer, %principal, %mechanism, session_lifetime_ms = lifetime_ms, "SASL authentication succeeded");
        Ok((principal, lifetime_ms))
    }

    /// Runs one token through the exchange under way.
    async fn step(&mut self, token: &[u8]) -> Step {
        let now = self.auth.clock.now_ms();
        let ip = self.peer.map(|p| p.ip());
        let step = if token.len() > self.auth.settings.max_token_bytes {
            Step::Fail {
                reason: format!(
                    "SASL token of {} bytes is larger than the limit of {}",
                    token.len(),
                    self.auth.settings.max_token_bytes
                ),
                user: None,
                counts: true,
            }
        } else if ip.is_some_and(|ip| !self.auth.limiter.allows(ip, now)) {
            self.auth.stats.throttled.fetch_add(1, Ordering::Relaxed);
            Step::Fail {
                reason: "too many failed authentications from this address; retry later".into(),
                user: None,
                counts: false,
            }
        } else {
            match std::mem::replace(&mut self.exchange, Exchange::Failed) {
                Exchange::Started { mechanism, raw } => match mechanism {
                    Mechanism::Plain => self.plain(token).await,
                    Mechanism::Scram(m) => self.scram_first(m, raw, token).await,
                    Mechanism::OAuthBearer => self.oauthbearer(token).await,
                },
                Exchange::Scram {
                    user,
                    exchange,
                    mechanism,
                    ..
                } => match exchange.finish(token) {
                    Ok(last) => Step::Done {
                        user,
                        mechanism,
                        token: last,
                        expires_at_ms: None,
                    },
                    Err(e) => Step::Fail {
                        reason: scram_reason(&e),
                        user: Some(user),
                        counts: true,
                    },
                },
                Exchange::Idle | Exchange::Failed => Step::Fail {
                    reason: "no SASL exchange under way".into(),
                    user: None,
                    counts: false,
                },
            }
        };
        if let Step::Fail {
            reason,
            user,
            counts,
        } = &step
        {
            self.exchange = Exchange::Failed;
            self.auth.stats.failures.fetch_add(1, Ordering::Relaxed);
            if *counts {
                if let Some(ip) = ip {
                    self.auth.limiter.failed(ip, now);
                }
            }
            self.audit_failure(user.as_deref(), reason);
        }
        step
    }

    async fn plain(&mut self, token: &[u8]) -> Step {
        let message = match fjord_auth::plain::parse(token) {
            Ok(m) => m,
            Err(e) => {
                return Step::Fail {
                    reason: e.to_string(),
                    user: None,
                    counts: true,
                }
            }
        };
        let user = message.user.clone();
        let mut stored = None;
        for mechanism in [ScramMechanism::Sha512, ScramMechanism::Sha256] {
            match self
                .auth
                .credentials
                .scram_credential(&user, mechanism)
                .await
            {
                Ok(Some(c)) => {
                    stored = Some(c);
                    break;
                }
                Ok(None) => {}
                Err(e) => return store_failed(user, &e),
            }
        }
        // An unknown user costs the same PBKDF2 as a known one, so timing does not tell.
        let credential = stored.as_ref().map(to_auth).unwrap_or_else(|| {
            scram::Credential::from_password(
                scram::Hash::Sha512,
                b"",
                b"decoy",
                scram::MIN_ITERATIONS,
            )
        });
        let known = stored.is_some();
        let password = message.password;
        let verified =
            tokio::task::spawn_blocking(move || credential.verify_password(&password)).await;
        match verified {
            Ok(true) if known => Step::Done {
                user,
                mechanism: Mechanism::Plain,
                token: Vec::new(),
                expires_at_ms: None,
            },
            Ok(_) => Step::Fail {
                reason: invalid_credentials(Mechanism::Plain),
                user: Some(user),
                counts: true,
            },
            Err(e) => Step::Fail {
                reason: format!("checking the password failed: {e}"),
                user: Some(user),
                counts: false,
            },
        }
    }

    /// OAUTHBEARER: one client message with the token; success is an empty reply. A refused
    /// token fails at once with SASL_AUTHENTICATION_FAILED and the reason, rather than with
    /// RFC 7628's error challenge and the client's `0x01` (librdkafka, the Java client and
    /// kafka-python all accept either).
    async fn oauthbearer(&mut self, token: &[u8]) -> Step {
        let Some(oauth) = self.auth.oauth.as_ref() else {
            return Step::Fail {
                reason: "OAUTHBEARER is not configured on this broker".into(),
                user: None,
                counts: false,
            };
        };
        let message = match fjord_auth::oauth::parse_client_message(token) {
            Ok(m) => m,
            Err(e) => {
                return Step::Fail {
                    reason: format!("authentication failed: {e}"),
                    user: None,
                    counts: true,
                }
            }
        };
        let clock = &self.auth.clock;
        let result = oauth.verify(&message.token, || clock.now_ms()).await;
        let valid = match result {
            Ok(valid) => valid,
            Err(e) => {
                return Step::Fail {
                    reason: format!("authentication failed: OAUTHBEARER token refused: {e}"),
                    user: None,
                    counts: true,
                }
            }
        };
        if let Some(authzid) = &message.authzid {
            if *authzid != valid.principal {
                return Step::Fail {
                    reason:
                        "authentication failed: the authorization id is not the token's principal"
                            .into(),
                    user: Some(valid.principal),
                    counts: true,
                };
            }
        }
        // The session may end at exp; a token accepted within the skew after exp gets a short
        // session that still ends before the token would be refused.
        let now = self.auth.clock.now_ms();
        let skew = oauth.validator().config().clock_skew_ms.max(0);
        let acceptable_until = valid.expires_at_ms.saturating_add(skew);
        let expires_at_ms = valid.expires_at_ms.max(
            now.saturating_add(MIN_EXPIRED_TOKEN_SESSION_MS)
                .min(acceptable_until),
        );
        Step::Done {
            user: valid.principal,
            mechanism: Mechanism::OAuthBearer,
            token: Vec::new(),
            expires_at_ms: Some(expires_at_ms),
        }
    }

    async fn scram_first(&mut self, mechanism: ScramMechanism, raw: bool, token: &[u8]) -> Step {
        let first = match scram::parse_client_first(token) {
            Ok(first) => first,
            Err(e) => {
                return Step::Fail {
                    reason: scram_reason(&e),
                    user: None,
                    counts: true,
                }
            }
        };
        let stored = match self
            .auth
            .credentials
            .scram_credential(&first.user, mechanism)
            .await
        {
            Ok(stored) => stored,
            Err(e) => return store_failed(first.user, &e),
        };
        let (exchange, server_first) = ServerExchange::start(
            hash(mechanism),
            &first,
            stored.as_ref().map(to_auth),
            &self.auth.secret,
            &scram::nonce(),
        );
        self.exchange = Exchange::Scram {
            mechanism: Mechanism::Scram(mechanism),
            raw,
            user: first.user,
            exchange: Box::new(exchange),
        };
        Step::Continue(server_first)
    }

    fn audit_failure(&self, user: Option<&str>, reason: &str) {
        tracing::warn!(
            target: "fjord::audit",
            event = "authentication_failed",
            principal = %user.map(|u| format!("User:{u}")).unwrap_or_default(),
            source = %self.peer.map(|p| p.ip().to_string()).unwrap_or_default(),
            reason,
            "SASL authentication failed"
        );
    }
}

struct Authenticate {
    response: SaslAuthenticateResponse,
    reply: SaslReply,
}

impl SaslReply {
    fn keep_open() -> SaslReply {
        SaslReply {
            frame: None,
            delay: Duration::ZERO,
            close: false,
            principal: None,
        }
    }
}

fn store_failed(user: String, e: &fjord_coordinator::CoordinatorError) -> Step {
    Step::Fail {
        reason: format!("the credential store is unavailable, retry: {e}"),
        user: Some(user),
        counts: false,
    }
}

fn invalid_credentials(mechanism: Mechanism) -> String {
    format!("authentication failed: invalid credentials (mechanism {mechanism})")
}

fn scram_reason(e: &scram::ScramError) -> String {
    match e {
        scram::ScramError::InvalidCredentials => {
            "authentication failed: invalid credentials (SCRAM)".into()
        }
        other => format!("authentication failed: {other}"),
    }
}

fn hash(mechanism: ScramMechanism) -> scram::Hash {
    match mechanism {
        ScramMechanism::Sha256 => scram::Hash::Sha256,
        ScramMechanism::Sha512 => scram::Hash::Sha512,
    }
}

/// The exchange's view of a stored credential.
pub fn to_auth(c: &ScramCredential) -> scram::Credential {
    scram::Credential {
        hash: hash(c.mechanism),
        iterations: u32::try_from(c.iterations).unwrap_or(scram::MIN_ITERATIONS),
        salt: c.salt.clone(),
        stored_key: c.stored_key.clone(),
        server_key: c.server_key.clone(),
    }
}

/// The stored form of a credential.
pub fn from_auth(c: scram::Credential) -> ScramCredential {
    ScramCredential {
        mechanism: match c.hash {
            scram::Hash::Sha256 => ScramMechanism::Sha256,
            scram::Hash::Sha512 => ScramMechanism::Sha512,
        },
        iterations: i32::try_from(c.iterations).unwrap_or(i32::MAX),
        salt: c.salt,
        stored_key: c.stored_key,
        server_key: c.server_key,
    }
}

/// A bare length-prefixed token (the framing after SaslHandshake v0).
fn bare(token: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + token.len());
    out.put_u32(token.len() as u32);
    out.put_slice(token);
    out.freeze()
}

#[cfg(test)]
mod tests;
