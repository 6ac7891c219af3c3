//! The gateway's settings: the TOML file given to `fjord gateway --config`.
//!
//! Owns parsing and validation only; the components the settings describe (producers, breakers,
//! the routing table) are built by [`crate::gateway`]. Invariants of a [`GatewayConfig`] that
//! passed [`GatewayConfig::validate`]:
//! - every group names only defined clusters, has at least one cluster, and its weights are
//!   finite and non-negative;
//! - every route (and the default route) names a defined group;
//! - limits and timeouts are non-zero where zero would make the gateway refuse everything;
//! - a `[tls]` table names both `cert_file` and `key_file` (reading them is left to
//!   [`crate::tls`], when the listener starts).
//!
//! Unknown keys are an error, so a typo never goes unnoticed.
//!
//! ```toml
//! listen = "127.0.0.1:9095"
//! metrics_listen = "127.0.0.1:9096"
//!
//! [clusters.a]
//! bootstrap_servers = "10.0.0.1:9092"
//! [clusters.b]
//! bootstrap_servers = "10.0.1.1:9092"
//! security_protocol = "sasl_ssl"
//! sasl = { mechanism = "SCRAM-SHA-512", username = "gw", password_env = "B_PASSWORD" }
//! overrides = { "linger.ms" = "10" }
//!
//! [groups.main]
//! clusters = { a = 1.0, b = 1.0 }
//!
//! [routes]
//! default = "main"
//! topics = { audit = "main" }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("parsing {path}: {error}")]
    Parse {
        path: PathBuf,
        error: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Everything in `gateway.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address of the gRPC listener. Changing it needs a restart.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Address of the Prometheus endpoint (`GET /metrics`); none when unset. Needs a restart.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Written into every message's `fjord-gateway` header (default: `<hostname>-<pid>`).
    #[serde(default)]
    pub gateway_id: Option<String>,
    /// How often (ms) the file is checked for changes; 0: only SIGHUP reloads it.
    #[serde(default = "default_reload_poll_ms")]
    pub reload_poll_ms: u64,
    /// TLS on the gRPC listener; plaintext when absent. Changing it needs a restart.
    #[serde(default)]
    pub tls: Option<ListenerTlsConfig>,
    /// Callers authenticated by bearer tokens (JWTs), as well as by client certificates.
    /// Changing it needs a restart.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Who may produce to which topics (needs mutual TLS or `[auth]`); none: every caller,
    /// every topic.
    #[serde(default, rename = "caller")]
    pub callers: Vec<CallerConfig>,
    /// On shutdown, how long (ms) requests and streams in progress may take to be answered
    /// before their connections are dropped (then the producers are flushed).
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Backend clusters by name.
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// Cluster groups by name.
    pub groups: BTreeMap<String, GroupConfig>,
    pub routes: RoutesConfig,
}

fn default_listen() -> String {
    "127.0.0.1:9095".to_owned()
}

fn default_reload_poll_ms() -> u64 {
    1000
}

fn default_drain_timeout_ms() -> u64 {
    15_000
}

/// Request size and rate limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most messages in one batch.
    pub max_messages_per_request: usize,
    /// Largest batch (sum of keys, values and headers).
    pub max_request_bytes: usize,
    /// Largest message (key, value and headers).
    pub max_message_bytes: usize,
    /// Bytes of messages held by the gateway at once (requests being produced); beyond it,
    /// requests wait up to `admission_wait_ms` and then get RESOURCE_EXHAUSTED. Needs a restart.
    pub max_inflight_bytes: usize,
    /// How long (ms) a request may wait for in-flight room.
    pub admission_wait_ms: u64,
    /// Messages per second each caller may send; 0: no limit. A caller is the
    /// `x-fjord-caller` metadata value, or else the peer's IP address.
    pub caller_messages_per_sec: f64,
    /// Burst allowance of each caller (default: one second's worth).
    pub caller_burst_messages: Option<f64>,
    /// Bytes (keys, values and headers, as for `max_request_bytes`) per second each caller may
    /// send; 0: no limit. Same callers as `caller_messages_per_sec`.
    pub caller_bytes_per_sec: f64,
    /// Byte burst allowance of each caller (default: one second's worth). A batch larger than
    /// it is always refused.
    pub caller_burst_bytes: Option<f64>,
    /// Batches of one ProduceStream in flight at once.
    pub stream_inflight_batches: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_messages_per_request: 10_000,
            max_request_bytes: 16 * 1024 * 1024,
            max_message_bytes: 1024 * 1024,
            max_inflight_bytes: 256 * 1024 * 1024,
            admission_wait_ms: 100,
            caller_messages_per_sec: 0.0,
            caller_burst_messages: None,
            caller_bytes_per_sec: 0.0,
            caller_burst_bytes: None,
            stream_inflight_batches: 32,
        }
    }
}

/// Delivery deadlines and retries.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Longest one cluster may take to store a message before it is tried elsewhere (the
    /// producers' `message.timeout.ms`).
    pub attempt_timeout_ms: u64,
    /// Longest a message may take in total, over all attempts (a caller's shorter gRPC deadline
    /// wins).
    pub delivery_timeout_ms: u64,
    /// Most clusters tried per message.
    pub max_attempts: u32,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            attempt_timeout_ms: 5_000,
            delivery_timeout_ms: 15_000,
            max_attempts: 3,
        }
    }
}

impl DeliveryConfig {
    pub fn attempt_timeout(&self) -> Duration {
        Duration::from_millis(self.attempt_timeout_ms)
    }
    pub fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.delivery_timeout_ms)
    }
}

/// Per-cluster circuit breaker (see [`crate::breaker`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Length (ms) of the sliding window that error and slow-call rates are computed over.
    pub window_ms: u64,
    /// Calls needed in the window before rates count.
    pub min_calls: u32,
    /// Open when at least this share of the window's calls failed.
    pub failure_rate: f64,
    /// Open after this many failures in a row, whatever the window says.
    pub consecutive_failures: u32,
    /// A call slower than this (ms) counts as slow.
    pub slow_call_ms: u64,
    /// Open when at least this share of the window's calls was slow.
    pub slow_call_rate: f64,
    /// How long (ms) an open breaker waits before the cluster is probed.
    pub open_ms: u64,
    /// Calls admitted at once while half-open.
    pub half_open_max_calls: u32,
    /// Successful calls while half-open that close the breaker.
    pub half_open_successes: u32,
    /// Timeout (ms) of the metadata request that probes an open cluster.
    pub probe_timeout_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window_ms: 10_000,
            min_calls: 20,
            failure_rate: 0.5,
            consecutive_failures: 5,
            slow_call_ms: 2_000,
            slow_call_rate: 0.8,
            open_ms: 5_000,
            half_open_max_calls: 3,
            half_open_successes: 3,
            probe_timeout_ms: 1_000,
        }
    }
}

/// How the gateway connects to one cluster.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub sasl: Option<SaslConfig>,
    /// librdkafka producer properties, applied last (they win over the gateway's own).
    #[serde(default)]
    pub overrides: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }
    fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// TLS on the gateway's own gRPC listener (PEM files, read when the listener starts and
/// reloaded when they change; relative paths are relative to the working directory).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// The server's certificate chain, leaf first.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// CA certificates that client certificates must chain to; when set, every client must
    /// present one (mutual TLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// Bearer-token authentication of callers (`authorization: Bearer <JWT>` metadata), with the
/// broker's OAUTHBEARER validation (Kafka's `sasl.oauthbearer.*` settings, by other names).
///
/// With `[auth]`, every request must carry a valid token, or come over a connection with a
/// verified client certificate (mutual TLS); others are refused with UNAUTHENTICATED. The
/// token's principal claim names the caller (for `[[caller]]` and the rate limits). Needs
/// `[tls]`: a token sent in clear could be replayed by anyone who saw it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Where the issuer's verification keys are: `file:///path/jwks.json` or
    /// `https://idp.example/.well-known/jwks.json`.
    pub jwks_url: String,
    /// How often (ms) an http(s) JWKS is fetched again (a file is checked every 5 s); a token
    /// with an unknown `kid` also reloads it (at most every 10 s).
    #[serde(default = "default_jwks_refresh_ms")]
    pub jwks_refresh_ms: u64,
    /// `iss` must equal this, when set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// `aud` must contain one of these, when not empty.
    #[serde(default)]
    pub audience: Vec<String>,
    /// The claim naming the caller.
    #[serde(default = "default_principal_claim")]
    pub principal_claim: String,
    /// Skew (ms) allowed on `exp`, `nbf` and `iat`.
    #[serde(default = "default_clock_skew_ms")]
    pub clock_skew_ms: u64,
    /// Tokens failing their check allowed per source address per minute (a burst of this many,
    /// earned back at this rate); then the address's unknown tokens are refused unchecked.
    /// 0: no limit.
    #[serde(default = "default_failed_tokens_per_minute")]
    pub failed_tokens_per_minute: u32,
}

fn default_failed_tokens_per_minute() -> u32 {
    30
}

fn default_jwks_refresh_ms() -> u64 {
    300_000
}

fn default_principal_claim() -> String {
    "sub".to_owned()
}

fn default_clock_skew_ms() -> u64 {
    30_000
}

fn invalid<T>(message: String) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid(message))
}

impl AuthConfig {
    /// The verifier's settings; an error names what is wrong.
    pub fn settings(&self) -> Result<fjord_jwks::OAuthSettings, ConfigError> {
        let source = fjord_jwks::JwksSource::parse(&self.jwks_url)
            .map_err(|e| ConfigError::Invalid(format!("auth.jwks_url: {e}")))?;
        if self.jwks_refresh_ms < 1000 {
            return invalid("auth.jwks_refresh_ms must be at least 1000".into());
        }
        if self.clock_skew_ms > 3_600_000 {
            return invalid("auth.clock_skew_ms is more than an hour".into());
        }
        let principal_claim = self.principal_claim.trim();
        if principal_claim.is_empty() {
            return invalid("auth.principal_claim is empty".into());
        }
        if self.audience.iter().any(|a| a.trim().is_empty()) {
            return invalid("auth.audience has an empty entry".into());
        }
        let issuer = self.issuer.as_deref().map(str::trim);
        if issuer.is_some_and(str::is_empty) {
            return invalid("auth.issuer is empty (remove it to accept any issuer)".into());
        }
        Ok(fjord_jwks::OAuthSettings {
            source,
            refresh: Duration::from_millis(self.jwks_refresh_ms),
            jwt: fjord_auth::oauth::JwtConfig {
                issuer: issuer.map(str::to_owned),
                audience: self.audience.iter().map(|a| a.trim().to_owned()).collect(),
                sub_claim: principal_claim.to_owned(),
                clock_skew_ms: self.clock_skew_ms as i64,
            },
        })
    }
}

/// A caller identified by its client certificate or bearer token, and the topics it may
/// produce to. Once any `[[caller]]` is configured, a request from a caller not listed, or for
/// a topic not allowed to it, is refused with PERMISSION_DENIED.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    /// The client certificate's subject as the gateway names it (RFC 4514, e.g.
    /// `CN=billing,O=Example`), or the token's principal claim (`[auth]`); the caller name of
    /// the rate limits. Certificates and tokens share these names, as Kafka's principals do.
    pub name: String,
    /// Topics allowed by name.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Topics allowed by prefix.
    #[serde(default)]
    pub topic_prefixes: Vec<String>,
}

impl CallerConfig {
    pub fn allows(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| t == topic)
            || self
                .topic_prefixes
                .iter()
                .any(|p| topic.starts_with(p.as_str()))
    }
}

/// TLS towards a cluster (PEM files).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA bundle that verifies the brokers (default: the system's).
    pub ca_location: Option<PathBuf>,
    /// Client certificate and key, for mutual TLS.
    pub certificate_location: Option<PathBuf>,
    pub key_location: Option<PathBuf>,
    pub key_password_env: Option<String>,
    /// Check the broker's host name against its certificate (default true).
    #[serde(default = "default_true")]
    pub verify_hostname: bool,
}

fn default_true() -> bool {
    true
}

/// SASL towards a cluster.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    pub username: String,
    /// Environment variable holding the password (passwords stay out of config files).
    pub password_env: String,
}

/// A set of interchangeable clusters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// Cluster name -> weight. Weight 0 keeps a cluster in the group without traffic.
    pub clusters: BTreeMap<String, f64>,
}

/// Which group serves which topic.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesConfig {
    /// Group of topics not listed in `topics`; unset: such topics are refused (NOT_FOUND).
    #[serde(default)]
    pub default: Option<String>,
    /// Topic -> group.
    #[serde(default)]
    pub topics: BTreeMap<String, String>,
}

impl GatewayConfig {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let config: Self = toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            error: Box::new(error),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the invariants listed in the module documentation.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.clusters.is_empty() {
            return invalid("no clusters defined".into());
        }
        for (name, c) in &self.clusters {
            if c.bootstrap_servers.trim().is_empty() {
                return invalid(format!("cluster {name}: bootstrap_servers is empty"));
            }
            if c.security_protocol.uses_sasl() != c.sasl.is_some() {
                return invalid(format!(
                    "cluster {name}: a sasl section goes with security_protocol sasl_plaintext \
                     or sasl_ssl, and only with them"
                ));
            }
        }
        for (name, g) in &self.groups {
            if g.clusters.is_empty() {
                return invalid(format!("group {name} has no clusters"));
            }
            for (cluster, weight) in &g.clusters {
                if !self.clusters.contains_key(cluster) {
                    return invalid(format!("group {name}: unknown cluster {cluster}"));
                }
                if !weight.is_finite() || *weight < 0.0 {
                    return invalid(format!(
                        "group {name}: weight of {cluster} must be a finite number >= 0"
                    ));
                }
            }
        }
        let routes = self.routes.topics.iter().map(|(t, g)| (t.as_str(), g));
        for (topic, group) in routes.chain(self.routes.default.iter().map(|g| ("(default)", g))) {
            if !self.groups.contains_key(group) {
                return invalid(format!("route {topic}: unknown group {group}"));
            }
        }
        let l = &self.limits;
        if l.max_messages_per_request == 0
            || l.max_request_bytes == 0
            || l.max_message_bytes == 0
            || l.max_inflight_bytes < l.max_request_bytes
            || l.stream_inflight_batches == 0
        {
            return invalid(
                "limits: counts and sizes must be > 0 and max_inflight_bytes >= max_request_bytes"
                    .into(),
            );
        }
        if !(l.caller_messages_per_sec >= 0.0 && l.caller_messages_per_sec.is_finite()) {
            return invalid("limits.caller_messages_per_sec must be >= 0".into());
        }
        if !(l.caller_bytes_per_sec >= 0.0 && l.caller_bytes_per_sec.is_finite()) {
            return invalid("limits.caller_bytes_per_sec must be >= 0".into());
        }
        if l.caller_burst_bytes
            .is_some_and(|b| !(b > 0.0 && b.is_finite()))
        {
            return invalid("limits.caller_burst_bytes must be > 0".into());
        }
        let mutual_tls = self
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca_file.is_some());
        if !self.callers.is_empty() && !mutual_tls && self.auth.is_none() {
            return invalid(
                "[[caller]] needs authenticated callers: mutual TLS (a [tls] table with \
                 client_ca_file) or bearer tokens ([auth])"
                    .into(),
            );
        }
        if let Some(auth) = &self.auth {
            if self.tls.is_none() {
                return invalid(
                    "[auth] needs [tls]: a bearer token sent in clear could be replayed by \
                     anyone who saw it"
                        .into(),
                );
            }
            auth.settings()?;
        }
        let mut caller_names = std::collections::BTreeSet::new();
        for c in &self.callers {
            if c.name.trim().is_empty() || !caller_names.insert(c.name.as_str()) {
                return invalid(format!("caller name {:?} is empty or used twice", c.name));
            }
        }
        if let Some(tls) = &self.tls {
            match (&tls.cert_file, &tls.key_file) {
                (Some(_), Some(_)) => {}
                (Some(_), None) => {
                    return invalid("tls: cert_file is set but key_file is not; give both".into())
                }
                (None, Some(_)) => {
                    return invalid("tls: key_file is set but cert_file is not; give both".into())
                }
                (None, None) => {
                    return invalid(
                        "tls: cert_file and key_file are required (remove the [tls] table for \
                         plaintext)"
                            .into(),
                    )
                }
            }
        }
        let d = &self.delivery;
        if d.attempt_timeout_ms == 0 || d.delivery_timeout_ms == 0 || d.max_attempts == 0 {
            return invalid("delivery: timeouts and max_attempts must be > 0".into());
        }
        if d.attempt_timeout_ms >= d.delivery_timeout_ms {
            return invalid(format!(
                "delivery: attempt_timeout_ms ({}) must be less than delivery_timeout_ms ({}): \
                 one cluster's attempt has to end before the message's deadline, or a hung \
                 cluster is never tried elsewhere and its timeouts never reach its breaker",
                d.attempt_timeout_ms, d.delivery_timeout_ms
            ));
        }
        let b = &self.breaker;
        let rate_ok = |r: f64| r > 0.0 && r <= 1.0;
        if !rate_ok(b.failure_rate)
            || !rate_ok(b.slow_call_rate)
            || b.window_ms == 0
            || b.consecutive_failures == 0
            || b.half_open_max_calls == 0
            || b.half_open_successes == 0
        {
            return invalid(
                "breaker: rates must be in (0, 1]; window, thresholds and half-open counts > 0"
                    .into(),
            );
        }
        Ok(())
    }

    /// The id written into the `fjord-gateway` header.
    pub fn resolved_gateway_id(&self) -> String {
        if let Some(id) = &self.gateway_id {
            return id.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "gateway".to_owned());
        format!("{host}-{}", std::process::id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [clusters.a]
        bootstrap_servers = "127.0.0.1:9092"
        [clusters.b]
        bootstrap_servers = "127.0.0.1:9093"
        [groups.main]
        clusters = { a = 1, b = 2.5 }
        [routes]
        default = "main"
    "#;

    fn parse(text: &str) -> Result<GatewayConfig, ConfigError> {
        let c: GatewayConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "test".into(),
            error: Box::new(e),
        })?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9095");
        assert_eq!(c.groups["main"].clusters["b"], 2.5);
        assert_eq!(c.delivery, DeliveryConfig::default());
        assert_eq!(
            c.clusters["a"].security_protocol,
            SecurityProtocol::Plaintext
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = parse(&format!("{MINIMAL}\n[limits]\nmax_mesages = 3\n")).unwrap_err();
        assert!(err.to_string().contains("max_mesages"), "{err}");
    }

    #[test]
    fn references_must_resolve() {
        let bad_cluster = MINIMAL.replace("a = 1,", "c = 1,");
        assert!(parse(&bad_cluster)
            .unwrap_err()
            .to_string()
            .contains("unknown cluster c"));
        let bad_route = format!("{MINIMAL}\ntopics = {{ t = \"nope\" }}\n");
        assert!(parse(&bad_route)
            .unwrap_err()
            .to_string()
            .contains("unknown group nope"));
    }

    #[test]
    fn weights_must_be_non_negative() {
        let bad = MINIMAL.replace("b = 2.5", "b = -1");
        assert!(parse(&bad).unwrap_err().to_string().contains("weight of b"));
    }

    #[test]
    fn sasl_goes_with_a_sasl_protocol() {
        let bad = MINIMAL.replace(
            "bootstrap_servers = \"127.0.0.1:9093\"",
            "bootstrap_servers = \"x:1\"\nsasl = { mechanism = \"PLAIN\", username = \"u\", \
             password_env = \"P\" }",
        );
        assert!(parse(&bad).unwrap_err().to_string().contains("sasl"));
        let good = bad.replace(
            "bootstrap_servers = \"x:1\"",
            "bootstrap_servers = \"x:1\"\nsecurity_protocol = \"sasl_ssl\"",
        );
        assert_eq!(
            parse(&good).unwrap().clusters["b"].security_protocol,
            SecurityProtocol::SaslSsl
        );
    }

    #[test]
    fn listener_tls_is_off_by_default_and_parsed_when_given() {
        assert_eq!(parse(MINIMAL).unwrap().tls, None);
        let c = parse(&format!(
            "[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nclient_ca_file = \"ca.pem\"\n\
             {MINIMAL}"
        ))
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert_file, Some(PathBuf::from("c.pem")));
        assert_eq!(tls.key_file, Some(PathBuf::from("k.pem")));
        assert_eq!(tls.client_ca_file, Some(PathBuf::from("ca.pem")));
    }

    #[test]
    fn listener_tls_needs_both_cert_and_key() {
        let with_tls = |table: &str| parse(&format!("[tls]\n{table}\n{MINIMAL}"));
        let err = with_tls("cert_file = \"c.pem\"").unwrap_err().to_string();
        assert!(
            err.contains("cert_file is set but key_file is not"),
            "{err}"
        );
        let err = with_tls("key_file = \"k.pem\"").unwrap_err().to_string();
        assert!(
            err.contains("key_file is set but cert_file is not"),
            "{err}"
        );
        let err = with_tls("client_ca_file = \"ca.pem\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cert_file and key_file are required"), "{err}");
        let err = with_tls("").unwrap_err().to_string();
        assert!(err.contains("cert_file and key_file are required"), "{err}");
        let err = with_tls("cert = \"c.pem\"").unwrap_err().to_string();
        assert!(err.contains("unknown field `cert`"), "{err}");
    }

    #[test]
    fn callers_need_mutual_tls_and_unique_names() {
        let mtls =
            "[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nclient_ca_file = \"ca.pem\"\n";
        let caller = "[[caller]]\nname = \"CN=billing,O=Example\"\ntopics = [\"invoices\"]\ntopic_prefixes = [\"billing.\"]\n";
        let c = parse(&format!("{mtls}{MINIMAL}\n{caller}")).unwrap();
        assert_eq!(c.callers.len(), 1);
        let billing = &c.callers[0];
        assert!(billing.allows("invoices") && billing.allows("billing.events"));
        assert!(!billing.allows("invoices2") && !billing.allows("payments"));
        let plain = parse(&format!("{MINIMAL}\n{caller}"))
            .unwrap_err()
            .to_string();
        assert!(plain.contains("needs authenticated callers"), "{plain}");
        let twice = parse(&format!("{mtls}{MINIMAL}\n{caller}{caller}"))
            .unwrap_err()
            .to_string();
        assert!(twice.contains("used twice"), "{twice}");
        assert!(parse(MINIMAL).unwrap().callers.is_empty());
    }

    #[test]
    fn bearer_tokens_need_tls_and_valid_settings() {
        let tls = "[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n";
        let auth =
            "[auth]\njwks_url = \"file:///etc/fjord/jwks.json\"\naudience = [\"fjord-gateway\"]\n";
        let caller = "[[caller]]\nname = \"svc-billing\"\ntopics = [\"invoices\"]\n";
        let c = parse(&format!("{tls}{MINIMAL}\n{auth}\n{caller}")).unwrap();
        let settings = c.auth.as_ref().unwrap().settings().unwrap();
        assert_eq!(
            settings.source,
            fjord_jwks::JwksSource::File("/etc/fjord/jwks.json".into())
        );
        assert_eq!(settings.jwt.audience, vec!["fjord-gateway".to_owned()]);
        assert_eq!(settings.jwt.sub_claim, "sub");
        assert_eq!(settings.jwt.clock_skew_ms, 30_000);
        assert_eq!(settings.refresh, Duration::from_secs(300));

        let plain = parse(&format!("{MINIMAL}\n{auth}"))
            .unwrap_err()
            .to_string();
        assert!(plain.contains("[auth] needs [tls]"), "{plain}");
        for (bad, why) in [
            ("jwks_url = \"jwks.json\"", "auth.jwks_url"),
            (
                "jwks_url = \"file:///j.json\"\njwks_refresh_ms = 10",
                "jwks_refresh_ms",
            ),
            (
                "jwks_url = \"file:///j.json\"\nprincipal_claim = \" \"",
                "principal_claim",
            ),
            (
                "jwks_url = \"file:///j.json\"\naudience = [\"\"]",
                "audience",
            ),
            ("jwks_url = \"file:///j.json\"\nissuer = \"\"", "issuer"),
            (
                "jwks_url = \"file:///j.json\"\nclock_skew_ms = 99999999",
                "clock_skew_ms",
            ),
        ] {
            let err = parse(&format!("{tls}{MINIMAL}\n[auth]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn byte_rate_limit_is_off_by_default_and_validated() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.limits.caller_bytes_per_sec, 0.0);
        assert_eq!(c.limits.caller_burst_bytes, None);
        let c = parse(&format!(
            "{MINIMAL}\n[limits]\ncaller_bytes_per_sec = 1000\ncaller_burst_bytes = 5000\n"
        ))
        .unwrap();
        assert_eq!(c.limits.caller_bytes_per_sec, 1000.0);
        assert_eq!(c.limits.caller_burst_bytes, Some(5000.0));
        let err = parse(&format!("{MINIMAL}\n[limits]\ncaller_bytes_per_sec = -1\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("caller_bytes_per_sec must be >= 0"), "{err}");
        let err = parse(&format!(
            "{MINIMAL}\n[limits]\ncaller_bytes_per_sec = 10\ncaller_burst_bytes = 0\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("caller_burst_bytes must be > 0"), "{err}");
    }

    #[test]
    fn attempt_timeout_must_be_shorter_than_delivery_timeout() {
        let with = |attempt: u64, delivery: u64| {
            parse(&format!(
                "{MINIMAL}\n[delivery]\nattempt_timeout_ms = {attempt}\n\
                 delivery_timeout_ms = {delivery}\n"
            ))
        };
        let err = with(5000, 5000).unwrap_err().to_string();
        assert!(
            err.contains("attempt_timeout_ms (5000) must be less than delivery_timeout_ms (5000)"),
            "{err}"
        );
        assert!(with(6000, 5000).is_err());
        assert!(with(4999, 5000).is_ok());
    }

    #[test]
    fn drain_timeout_has_a_default() {
        assert_eq!(parse(MINIMAL).unwrap().drain_timeout_ms, 15_000);
        let c = parse(&format!("drain_timeout_ms = 500\n{MINIMAL}")).unwrap();
        assert_eq!(c.drain_timeout_ms, 500);
    }

    #[test]
    fn inflight_bound_must_hold_a_request() {
        let bad =
            format!("{MINIMAL}\n[limits]\nmax_request_bytes = 100\nmax_inflight_bytes = 10\n");
        assert!(parse(&bad).is_err());
    }
}
