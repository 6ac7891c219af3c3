//! SASL/OAUTHBEARER (RFC 7628, as Kafka uses it in KIP-255): the client's message and the
//! validation of the JWT it carries.
//!
//! - [`parse_client_message`] reads `gs2-header \x01 auth=Bearer <token> \x01 [key=value \x01]* \x01`.
//! - [`Jwks::parse`] turns a JSON Web Key Set into verification keys (RSA and EC signing keys;
//!   symmetric keys are skipped, so HMAC-signed tokens can never be accepted).
//! - [`JwtValidator::validate`] checks a compact JWS against a [`Jwks`]: the algorithm (RS256/384/512,
//!   PS256/384/512, ES256/384; never `none` or HMAC), the key (`kid`), the signature, `exp`
//!   (required), `nbf` and `iat` (when present) with a clock skew, `iss` and `aud` when configured,
//!   and the principal claim. Time is the caller's (`now_ms`): nothing here reads a clock, and
//!   nothing does I/O; fetching and reloading the JWKS is the broker's business.
//!
//! Signatures are checked by `jsonwebtoken` on aws-lc-rs; claims are checked here, so that the
//! caller's clock is the only one used.

use std::collections::HashSet;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// The algorithms a token may be signed with.
pub const ALGORITHMS: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// The default clock skew allowed on `exp`, `nbf` and `iat` (Kafka's
/// `sasl.oauthbearer.clock.skew.seconds`).
pub const DEFAULT_CLOCK_SKEW_MS: i64 = 30_000;

/// The default principal claim (Kafka's `sasl.oauthbearer.sub.claim.name`).
pub const DEFAULT_SUB_CLAIM: &str = "sub";

/// Why an OAUTHBEARER message or its token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// The client message is not `gs2-header \x01 kvpairs \x01`.
    #[error("malformed OAUTHBEARER message: {0}")]
    Malformed(&'static str),
    /// The token is not a compact JWS, or its header or claims are not JSON objects.
    #[error("malformed token: {0}")]
    MalformedToken(String),
    /// The header's algorithm is not one Fjord accepts.
    #[error("token algorithm {0} is not accepted (RS256/384/512, PS256/384/512, ES256/384 only)")]
    Algorithm(String),
    /// No key in the JWKS has the token's `kid`.
    #[error("no key with kid {0:?} in the JWKS")]
    UnknownKid(String),
    /// No (single) key in the JWKS fits the token.
    #[error("no suitable key in the JWKS: {0}")]
    NoKey(String),
    /// The signature does not verify.
    #[error("invalid token signature")]
    Signature,
    /// A claim failed its check.
    #[error("invalid token: {0}")]
    Claim(String),
    /// The token expired.
    #[error("token expired at {exp_ms} ms (now {now_ms} ms, clock skew {skew_ms} ms)")]
    Expired {
        /// `exp`, in ms.
        exp_ms: i64,
        /// The time checked against.
        now_ms: i64,
        /// The skew allowed.
        skew_ms: i64,
    },
    /// The JWKS document is not a JSON Web Key Set.
    #[error("invalid JWKS: {0}")]
    Jwks(String),
}

impl OAuthError {
    /// Whether a fresher JWKS might accept the token (its `kid` is unknown).
    pub fn is_unknown_kid(&self) -> bool {
        matches!(self, OAuthError::UnknownKid(_))
    }
}

/// A parsed OAUTHBEARER client message.
#[derive(PartialEq, Eq)]
pub struct ClientMessage {
    /// The authorization id of the GS2 header (`a=`), if any.
    pub authzid: Option<String>,
    /// The bearer token.
    pub token: String,
    /// The other key/value pairs (SASL extensions, KIP-342).
    pub extensions: Vec<(String, String)>,
}

impl std::fmt::Debug for ClientMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientMessage")
            .field("authzid", &self.authzid)
            .field("extensions", &self.extensions)
            .finish_non_exhaustive()
    }
}

/// Parses the client's message: `n,[a=authzid],\x01auth=Bearer <token>\x01[key=value\x01]*\x01`.
///
/// As Kafka: the GS2 flag must be `n` or `y` (no channel binding), keys are letters, values
/// printable ASCII with spaces and tabs, `auth` is required once with the `Bearer` scheme, and
/// the token is base64url characters and dots.
pub fn parse_client_message(message: &[u8]) -> Result<ClientMessage, OAuthError> {
    let text = std::str::from_utf8(message).map_err(|_| OAuthError::Malformed("not UTF-8"))?;
    let Some((gs2, rest)) = text.split_once('\x01') else {
        return Err(OAuthError::Malformed("no 0x01 after the GS2 header"));
    };
    let authzid = parse_gs2(gs2)?;
    // The key/value pairs each end with 0x01, and the message with one more.
    let Some(kvpairs) = rest.strip_suffix('\x01') else {
        return Err(OAuthError::Malformed("not terminated by 0x01 0x01"));
    };
    if !kvpairs.is_empty() && !kvpairs.ends_with('\x01') {
        return Err(OAuthError::Malformed("not terminated by 0x01 0x01"));
    }
    let mut auth = None;
    let mut extensions: Vec<(String, String)> = Vec::new();
    for pair in kvpairs.split_terminator('\x01') {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(OAuthError::Malformed("a key/value pair without '='"));
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(OAuthError::Malformed("a key that is not letters"));
        }
        if !value
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) || matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        {
            return Err(OAuthError::Malformed("a value with forbidden characters"));
        }
        if key == "auth" {
            if auth.is_some() {
                return Err(OAuthError::Malformed("auth given twice"));
            }
            auth = Some(value);
        } else {
            if extensions.iter().any(|(k, _)| k == key) {
                return Err(OAuthError::Malformed("a key given twice"));
            }
            extensions.push((key.to_string(), value.to_string()));
        }
    }
    let Some(auth) = auth else {
        return Err(OAuthError::Malformed("no auth key"));
    };
    let Some((scheme, token)) = auth.split_once(' ') else {
        return Err(OAuthError::Malformed("auth is not 'Bearer <token>'"));
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(OAuthError::Malformed("auth scheme is not Bearer"));
    }
    let token = token.trim_start_matches(' ');
    if token.is_empty()
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(OAuthError::Malformed(
            "the bearer token is empty or not base64url",
        ));
    }
    Ok(ClientMessage {
        authzid,
        token: token.to_string(),
        extensions,
    })
}

/// `gs2-cb-flag "," [ "a=" saslname ] ","`.
fn parse_gs2(gs2: &str) -> Result<Option<String>, OAuthError> {
    let mut parts = gs2.split(',');
    let (Some(flag), Some(authzid), Some(""), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(OAuthError::Malformed("bad GS2 header"));
    };
    if flag != "n" && flag != "y" {
        return Err(OAuthError::Malformed("channel binding is not supported"));
    }
    if authzid.is_empty() {
        return Ok(None);
    }
    let Some(name) = authzid.strip_prefix("a=") else {
        return Err(OAuthError::Malformed("bad GS2 authorization id"));
    };
    // saslname: "=2C" for ',' and "=3D" for '='; any other '=' is malformed.
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3);
        match escape {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(OAuthError::Malformed("bad escape in the authorization id")),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    if out.is_empty() {
        return Err(OAuthError::Malformed("empty authorization id"));
    }
    Ok(Some(out))
}

/// The server's answer to a refused token (RFC 7628 §3.2.2), as Kafka sends it.
pub fn error_challenge() -> &'static [u8] {
    br#"{"status":"invalid_token"}"#
}

/// What a key verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
}

impl KeyKind {
    fn fits(self, alg: Algorithm) -> bool {
        match self {
            KeyKind::Rsa => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            KeyKind::P256 => alg == Algorithm::ES256,
            KeyKind::P384 => alg == Algorithm::ES384,
        }
    }
}

struct Key {
    kid: Option<String>,
    /// The key's `alg`, when the JWKS names one.
    alg: Option<Algorithm>,
    kind: KeyKind,
    key: DecodingKey,
}

/// The verification keys of a JSON Web Key Set.
#[derive(Default)]
pub struct Jwks {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field(
                "kids",
                &self
                    .keys
                    .iter()
                    .map(|k| k.kid.as_deref())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Jwks {
    /// Reads a JWKS document (`{"keys": [...]}`). Keys Fjord cannot use (symmetric, EdDSA,
    /// encryption keys, unknown curves or malformed) are skipped and described in the second
    /// value; the document itself must be valid.
    pub fn parse(json: &[u8]) -> Result<(Jwks, Vec<String>), OAuthError> {
        let doc: Value =
            serde_json::from_slice(json).map_err(|e| OAuthError::Jwks(e.to_string()))?;
        let Some(entries) = doc.get("keys").and_then(Value::as_array) else {
            return Err(OAuthError::Jwks("no \"keys\" array".into()));
        };
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let kid = entry.get("kid").and_then(Value::as_str).map(str::to_string);
            let label = kid.clone().unwrap_or_else(|| format!("#{i}"));
            match Self::key(entry, kid) {
                Ok(key) => keys.push(key),
                Err(why) => skipped.push(format!("key {label}: {why}")),
            }
        }
        Ok((Jwks { keys }, skipped))
    }

    fn key(entry: &Value, kid: Option<String>) -> Result<Key, String> {
        let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|e| e.to_string())?;
        if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
            return Err("not a signature key (use)".into());
        }
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => KeyKind::P256,
                EllipticCurve::P384 => KeyKind::P384,
                _ => return Err("unsupported curve".into()),
            },
            AlgorithmParameters::OctetKey(_) => {
                return Err("symmetric keys (HMAC) are not accepted".into())
            }
            _ => return Err("unsupported key type".into()),
        };
        let alg = match &jwk.common.key_algorithm {
            None => None,
            Some(a) => {
                let alg = a
                    .to_string()
                    .parse::<Algorithm>()
                    .map_err(|_| format!("unsupported alg {a}"))?;
                if !ALGORITHMS.contains(&alg) || !kind.fits(alg) {
                    return Err(format!("alg {a} is not accepted for this key"));
                }
                Some(alg)
            }
        };
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
        Ok(Key {
            kid,
            alg,
            kind,
            key,
        })
    }

    /// How many usable keys the set has.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set has no usable key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key has this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The key for a token signed with `alg`, named `kid`.
    fn select(&self, alg: Algorithm, kid: Option<&str>) -> Result<&Key, OAuthError> {
        let fits = |k: &&Key| k.kind.fits(alg) && k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => {
                let mut named = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .peekable();
                if named.peek().is_none() {
                    return Err(OAuthError::UnknownKid(kid.to_string()));
                }
                named.find(fits).ok_or_else(|| {
                    OAuthError::NoKey(format!("key {kid:?} does not verify {alg:?}"))
                })
            }
            None => {
                let mut suitable = self.keys.iter().filter(fits);
                match (suitable.next(), suitable.next()) {
                    (Some(key), None) => Ok(key),
                    (None, _) => Err(OAuthError::NoKey(format!("no key verifies {alg:?}"))),
                    (Some(_), Some(_)) => Err(OAuthError::NoKey(
                        "the token has no kid and several keys could verify it".into(),
                    )),
                }
            }
        }
    }
}

/// What a token is checked against (Kafka's `sasl.oauthbearer.*` settings).
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// `iss` must equal this, when set (`sasl.oauthbearer.expected.issuer`).
    pub issuer: Option<String>,
    /// `aud` must contain one of these, when not empty (`sasl.oauthbearer.expected.audience`).
    pub audience: Vec<String>,
    /// The claim naming the principal (`sasl.oauthbearer.sub.claim.name`).
    pub sub_claim: String,
    /// Skew allowed on `exp`, `nbf` and `iat`, in ms (`sasl.oauthbearer.clock.skew.seconds`).
    pub clock_skew_ms: i64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            issuer: None,
            audience: Vec::new(),
            sub_claim: DEFAULT_SUB_CLAIM.to_string(),
            clock_skew_ms: DEFAULT_CLOCK_SKEW_MS,
        }
    }
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidToken {
    /// The principal claim's value.
    pub principal: String,
    /// `exp`, in ms since the epoch.
    pub expires_at_ms: i64,
}

/// Checks tokens against a [`JwtConfig`].
#[derive(Debug, Clone, Default)]
pub struct JwtValidator {
    config: JwtConfig,
}

impl JwtValidator {
    /// A validator with these settings.
    pub fn new(config: JwtConfig) -> JwtValidator {
        JwtValidator { config }
    }

    /// The settings.
    pub fn config(&self) -> &JwtConfig {
        &self.config
    }

    /// Checks `token` (a compact JWS) against `keys` at `now_ms` (ms since the epoch).
    pub fn validate(
        &self,
        token: &str,
        keys: &Jwks,
        now_ms: i64,
    ) -> Result<ValidToken, OAuthError> {
        if token.split('.').count() != 3 {
            return Err(OAuthError::MalformedToken(
                "not three dot-separated parts (a compact JWS)".into(),
            ));
        }
        // The header's alg must be one we accept before anything else ("none" and HS* fail
        // here: "none" does not even parse).
        let header_part = token.split('.').next().unwrap_or_default();
        let raw_alg = raw_header_alg(header_part)?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| OAuthError::Algorithm(raw_alg.clone()))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(OAuthError::Algorithm(raw_alg));
        }
        if header.crit.is_some() {
            return Err(OAuthError::MalformedToken(
                "critical header parameters are not supported".into(),
            ));
        }
        let key = keys.select(header.alg, header.kid.as_deref())?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => OAuthError::Signature,
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                    OAuthError::Algorithm(raw_alg.clone())
                }
                _ => OAuthError::MalformedToken(e.to_string()),
            })?;
        self.check_claims(&data.claims, now_ms)
    }

    fn check_claims(
        &self,
        claims: &Map<String, Value>,
        now_ms: i64,
    ) -> Result<ValidToken, OAuthError> {
        let skew = self.config.clock_skew_ms.max(0);
        let Some(exp_ms) = numeric_date(claims, "exp")? else {
            return Err(OAuthError::Claim("no exp claim".into()));
        };
        if now_ms >= exp_ms.saturating_add(skew) {
            return Err(OAuthError::Expired {
                exp_ms,
                now_ms,
                skew_ms: skew,
            });
        }
        if let Some(nbf_ms) = numeric_date(claims, "nbf")? {
            if now_ms.saturating_add(skew) < nbf_ms {
                return Err(OAuthError::Claim(format!(
                    "not valid before {nbf_ms} ms (nbf; now {now_ms} ms)"
                )));
            }
        }
        if let Some(iat_ms) = numeric_date(claims, "iat")? {
            if iat_ms > now_ms.saturating_add(skew) {
                return Err(OAuthError::Claim(format!(
                    "issued in the future at {iat_ms} ms (iat; now {now_ms} ms)"
                )));
            }
        }
        if let Some(issuer) = &self.config.issuer {
            match claims.get("iss") {
                Some(Value::String(iss)) if iss == issuer => {}
                Some(Value::String(iss)) => {
                    return Err(OAuthError::Claim(format!(
                        "issuer {iss:?} is not the expected {issuer:?}"
                    )))
                }
                _ => return Err(OAuthError::Claim("no iss claim".into())),
            }
        }
        if !self.config.audience.is_empty() {
            let expected = |a: &str| self.config.audience.iter().any(|e| e == a);
            let found = match claims.get("aud") {
                Some(Value::String(a)) => expected(a),
                Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(expected),
                _ => return Err(OAuthError::Claim("no aud claim".into())),
            };
            if !found {
                return Err(OAuthError::Claim(format!(
                    "audience is not one of {:?}",
                    self.config.audience
                )));
            }
        }
        let principal = match claims.get(&self.config.sub_claim) {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            _ => {
                return Err(OAuthError::Claim(format!(
                    "no {:?} claim naming the principal",
                    self.config.sub_claim
                )))
            }
        };
        Ok(ValidToken {
            principal,
            expires_at_ms: exp_ms,
        })
    }
}

/// The header's `alg`, as written (for messages, and to refuse before parsing).
fn raw_header_alg(header_b64: &str) -> Result<String, OAuthError> {
    use base64::Engine;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header_b64.trim_end_matches('='))
        .map_err(|_| OAuthError::MalformedToken("header is not base64url".into()))?;
    let header: Value = serde_json::from_slice(&json)
        .map_err(|_| OAuthError::MalformedToken("header is not JSON".into()))?;
    match header.get("alg") {
        Some(Value::String(alg)) => Ok(alg.clone()),
        _ => Err(OAuthError::MalformedToken("header has no alg".into())),
    }
}

/// A NumericDate claim (seconds, possibly fractional) in ms.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, OAuthError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let ms = if let Some(s) = value.as_i64() {
        s.saturating_mul(1000)
    } else if let Some(f) = value.as_f64().filter(|f| f.is_finite()) {
        // `as` saturates for out-of-range floats.
        (f * 1000.0) as i64
    } else {
        return Err(OAuthError::Claim(format!("{name} is not a number")));
    };
    Ok(Some(ms))
}

#[cfg(test)]
mod tests;
