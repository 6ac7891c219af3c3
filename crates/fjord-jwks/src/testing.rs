//! A token issuer for tests (feature `testing`): an EC P-256 key made in the test, its JWKS,
//! and tokens it signs. Never for production: nothing protects the key.

use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::Engine;
use fjord_auth::oauth::Jwks;
use serde_json::{json, Value};

/// An issuer with a fresh key.
pub struct Issuer {
    key: EcdsaKeyPair,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").finish_non_exhaustive()
    }
}

impl Default for Issuer {
    fn default() -> Self {
        Issuer::new()
    }
}

impl Issuer {
    /// An issuer with a key made now.
    ///
    /// # Panics
    /// If the key cannot be made (tests only).
    #[allow(clippy::expect_used)]
    pub fn new() -> Issuer {
        Issuer {
            key: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("an EC P-256 key"),
        }
    }

    /// The JWKS document publishing the public key as `kid`.
    pub fn jwks_json(&self, kid: &str) -> String {
        let point = self.key.public_key().as_ref();
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": b64(&point[1..33]), "y": b64(&point[33..]),
        }]})
        .to_string()
    }

    /// The key set publishing the public key as `kid`.
    ///
    /// # Panics
    /// If the document does not parse (tests only).
    #[allow(clippy::expect_used)]
    pub fn jwks(&self, kid: &str) -> Jwks {
        Jwks::parse(self.jwks_json(kid).as_bytes())
            .expect("the issuer's JWKS")
            .0
    }

    /// A token for `sub` expiring at `exp_ms` (ms since the epoch; `exp` is in seconds) with
    /// audience `kafka`.
    pub fn token(&self, kid: &str, sub: &str, exp_ms: i64) -> String {
        self.sign(
            kid,
            &json!({"sub": sub, "exp": exp_ms / 1000, "aud": "kafka"}),
        )
    }

    /// A token with these claims, signed with ES256 as `kid`.
    ///
    /// # Panics
    /// If signing fails (tests only).
    #[allow(clippy::expect_used)]
    pub fn sign(&self, kid: &str, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
        let message = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&aws_lc_rs::rand::SystemRandom::new(), message.as_bytes())
            .expect("an ES256 signature");
        format!("{message}.{}", b64(sig.as_ref()))
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
