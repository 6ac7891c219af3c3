#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;

use super::*;

const NOW_MS: i64 = 1_800_000_000_000;
const NOW_S: i64 = NOW_MS / 1000;

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key made for the test, and its public JWK.
enum Signer {
    Ec(EcdsaKeyPair),
    Rsa(aws_lc_rs::rsa::KeyPair),
}

impl Signer {
    fn ec() -> Signer {
        Signer::Ec(EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
    }

    fn rsa() -> Signer {
        Signer::Rsa(aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap())
    }

    fn alg(&self) -> &'static str {
        match self {
            Signer::Ec(_) => "ES256",
            Signer::Rsa(_) => "RS256",
        }
    }

    fn jwk(&self, kid: Option<&str>) -> Value {
        let mut jwk = match self {
            Signer::Ec(k) => {
                let point = k.public_key().as_ref();
                assert_eq!(point.len(), 65);
                json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..])})
            }
            Signer::Rsa(k) => json!({
                "kty": "RSA",
                "n": b64(k.public_key().modulus().big_endian_without_leading_zero()),
                "e": b64(k.public_key().exponent().big_endian_without_leading_zero()),
            }),
        };
        if let Some(kid) = kid {
            jwk["kid"] = json!(kid);
        }
        jwk
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Signer::Ec(k) => k.sign(&rng, message).unwrap().as_ref().to_vec(),
            Signer::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig)
                    .unwrap();
                sig
            }
        }
    }

    fn token(&self, kid: Option<&str>, claims: Value) -> String {
        let mut header = json!({"alg": self.alg(), "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        let message = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self.sign(message.as_bytes());
        format!("{message}.{}", b64(&sig))
    }
}

fn jwks(keys: &[Value]) -> Jwks {
    let (jwks, skipped) = Jwks::parse(json!({ "keys": keys }).to_string().as_bytes()).unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    jwks
}

fn claims() -> Value {
    json!({"sub": "alice", "exp": NOW_S + 300, "iat": NOW_S, "iss": "https://idp", "aud": ["kafka", "other"]})
}

fn validator() -> JwtValidator {
    JwtValidator::new(JwtConfig {
        issuer: Some("https://idp".into()),
        audience: vec!["kafka".into()],
        ..JwtConfig::default()
    })
}

#[test]
fn valid_tokens_ec_and_rsa() {
    for signer in [Signer::ec(), Signer::rsa()] {
        let keys = jwks(&[signer.jwk(Some("k1"))]);
        let token = signer.token(Some("k1"), claims());
        let valid = validator().validate(&token, &keys, NOW_MS).unwrap();
        assert_eq!(
            valid,
            ValidToken {
                principal: "alice".into(),
                expires_at_ms: (NOW_S + 300) * 1000
            }
        );
        // Without kid: accepted when the set has exactly one suitable key.
        let token = signer.token(None, claims());
        assert!(validator().validate(&token, &keys, NOW_MS).is_ok());
    }
}

#[test]
fn token_without_kid_needs_a_single_suitable_key() {
    let (a, b) = (Signer::ec(), Signer::ec());
    let keys = jwks(&[a.jwk(Some("a")), b.jwk(Some("b"))]);
    let err = validator()
        .validate(&a.token(None, claims()), &keys, NOW_MS)
        .unwrap_err();
    assert!(matches!(err, OAuthError::NoKey(_)), "{err}");
    // An RSA key besides does not make an ES256 token ambiguous.
    let keys = jwks(&[a.jwk(None), Signer::rsa().jwk(None)]);
    assert!(validator()
        .validate(&a.token(None, claims()), &keys, NOW_MS)
        .is_ok());
}

#[test]
fn expiry_with_clock_skew() {
    let signer = Signer::ec();
    let keys = jwks(&[signer.jwk(Some("k"))]);
    let mut c = claims();
    c["exp"] = json!(NOW_S - 10);
    // 10 s late: within the default 30 s skew.
    let valid = validator()
        .validate(&signer.token(Some("k"), c.clone()), &keys, NOW_MS)
        .unwrap();
    assert_eq!(valid.expires_at_ms, (NOW_S - 10) * 1000);
    c["exp"] = json!(NOW_S - 31);
    let err = validator()
        .validate(&signer.token(Some("k"), c.clone()), &keys, NOW_MS)
        .unwrap_err();
    assert!(matches!(err, OAuthError::Expired { .. }), "{err}");
    // No skew: 10 s late is expired.
    let strict = JwtValidator::new(JwtConfig {
        clock_skew_ms: 0,
        ..JwtConfig::default()
    });
    c["exp"] = json!(NOW_S - 10);
    assert!(matches!(
        strict.validate(&signer.token(Some("k"), c.clone()), &keys, NOW_MS),
        Err(OAuthError::Expired { .. })
    ));
    // exp is required.
    c.as_object_mut().unwrap().remove("exp");
    let err = validator()
        .validate(&signer.token(Some("k"), c.clone()), &keys, NOW_MS)
        .unwrap_err();
    assert_eq!(err, OAuthError::Claim("no exp claim".into()));
    c["exp"] = json!("tomorrow");
    assert!(validator()
        .validate(&signer.token(Some("k"), c), &keys, NOW_MS)
        .is_err());
}

#[test]
fn nbf_and_iat() {
    let signer = Signer::ec();
    let keys = jwks(&[signer.jwk(None)]);
    let mut c = claims();
    c["nbf"] = json!(NOW_S + 20);
    assert!(validator()
        .validate(&signer.token(None, c.clone()), &keys, NOW_MS)
        .is_ok());
    c["nbf"] = json!(NOW_S + 60);
    assert!(matches!(
        validator().validate(&signer.token(None, c.clone()), &keys, NOW_MS),
        Err(OAuthError::Claim(_))
    ));
    let mut c = claims();
    c["iat"] = json!(NOW_S + 60);
    assert!(matches!(
        validator().validate(&signer.token(None, c), &keys, NOW_MS),
        Err(OAuthError::Claim(_))
    ));
    // Fractional NumericDates are fine.
    let mut c = claims();
    c["iat"] = json!(NOW_S as f64 - 0.5);
    assert!(validator()
        .validate(&signer.token(None, c), &keys, NOW_MS)
        .is_ok());
}

#[test]
fn issuer_and_audience() {
    let signer = Signer::ec();
    let keys = jwks(&[signer.jwk(None)]);
    let check = |c: Value| validator().validate(&signer.token(None, c), &keys, NOW_MS);
    let mut c = claims();
    c["iss"] = json!("https://evil");
    assert!(matches!(check(c.clone()), Err(OAuthError::Claim(m)) if m.contains("issuer")));
    c.as_object_mut().unwrap().remove("iss");
    assert!(matches!(check(c), Err(OAuthError::Claim(_))));
    let mut c = claims();
    c["aud"] = json!("kafka");
    assert!(check(c.clone()).is_ok());
    c["aud"] = json!("other");
    assert!(matches!(check(c.clone()), Err(OAuthError::Claim(m)) if m.contains("audience")));
    c["aud"] = json!(["a", "b"]);
    assert!(check(c.clone()).is_err());
    c.as_object_mut().unwrap().remove("aud");
    assert!(check(c).is_err());
    // Nothing configured: neither is checked.
    let mut c = claims();
    c["iss"] = json!("anyone");
    c["aud"] = json!("anything");
    assert!(JwtValidator::default()
        .validate(&signer.token(None, c), &keys, NOW_MS)
        .is_ok());
}

#[test]
fn principal_claim() {
    let signer = Signer::ec();
    let keys = jwks(&[signer.jwk(None)]);
    let by_email = JwtValidator::new(JwtConfig {
        sub_claim: "email".into(),
        ..JwtConfig::default()
    });
    let mut c = claims();
    c["email"] = json!("bob@example.com");
    let valid = by_email
        .validate(&signer.token(None, c.clone()), &keys, NOW_MS)
        .unwrap();
    assert_eq!(valid.principal, "bob@example.com");
    c.as_object_mut().unwrap().remove("email");
    assert!(by_email
        .validate(&signer.token(None, c), &keys, NOW_MS)
        .is_err());
    let mut c = claims();
    c["sub"] = json!(42);
    assert!(validator()
        .validate(&signer.token(None, c), &keys, NOW_MS)
        .is_err());
}

#[test]
fn unknown_kid_and_bad_signature() {
    let (signer, other) = (Signer::ec(), Signer::ec());
    let keys = jwks(&[signer.jwk(Some("k1"))]);
    let err = validator()
        .validate(&signer.token(Some("k2"), claims()), &keys, NOW_MS)
        .unwrap_err();
    assert!(err.is_unknown_kid(), "{err}");
    // Signed by another key under the known kid.
    let err = validator()
        .validate(&other.token(Some("k1"), claims()), &keys, NOW_MS)
        .unwrap_err();
    assert_eq!(err, OAuthError::Signature);
    // A tampered payload.
    let token = signer.token(Some("k1"), claims());
    let parts: Vec<&str> = token.split('.').collect();
    let mut c = claims();
    c["sub"] = json!("admin");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(c.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(
        validator().validate(&forged, &keys, NOW_MS).unwrap_err(),
        OAuthError::Signature
    );
    // An RSA key under the token's kid does not verify ES256.
    let keys = jwks(&[Signer::rsa().jwk(Some("k1"))]);
    assert!(matches!(
        validator().validate(&token, &keys, NOW_MS),
        Err(OAuthError::NoKey(_))
    ));
}

#[test]
fn alg_none_and_hmac_refused() {
    let signer = Signer::ec();
    let keys = jwks(&[signer.jwk(None)]);
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims().to_string().as_bytes())
    );
    assert!(matches!(
        validator().validate(&unsigned, &keys, NOW_MS),
        Err(OAuthError::Algorithm(a)) if a == "none"
    ));
    // HS256 with the public key's bytes as the secret (the classic confusion), and with a
    // JWKS that offers an oct key: both refused, and the oct key is skipped.
    let message = format!(
        "{}.{}",
        b64(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64(claims().to_string().as_bytes())
    );
    let secret = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"secret");
    let tag = aws_lc_rs::hmac::sign(&secret, message.as_bytes());
    let hs256 = format!("{message}.{}", b64(tag.as_ref()));
    let (with_oct, skipped) = Jwks::parse(
        json!({"keys": [{"kty": "oct", "k": b64(b"secret")}, signer.jwk(None)]})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(with_oct.len(), 1);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    for keys in [&keys, &with_oct] {
        assert!(matches!(
            validator().validate(&hs256, keys, NOW_MS),
            Err(OAuthError::Algorithm(a)) if a == "HS256"
        ));
    }
}

#[test]
fn malformed_tokens_never_panic() {
    let signer = Signer::ec();
    let keys = jwks(&[signer.jwk(None)]);
    let good = signer.token(None, claims());
    let parts: Vec<&str> = good.split('.').collect();
    let bad = [
        String::new(),
        ".".into(),
        "..".into(),
        "a.b.c".into(),
        "a.b.c.d".into(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{}..{}", parts[0], parts[2]),
        format!("{}.{}.", parts[0], parts[1]),
        format!("{}.!!.{}", parts[0], parts[2]),
        format!("{}.{}.{}", b64(b"[]"), parts[1], parts[2]),
        format!("{}.{}.{}", b64(b"{}"), parts[1], parts[2]),
        format!("{}.{}.{}", b64(br#"{"alg":5}"#), parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], b64(b"[1,2]"), parts[2]),
        format!("{}.{}.{}", parts[0], b64(b"not json"), parts[2]),
        format!(
            "{}.{}.{}",
            b64(br#"{"alg":"ES256","crit":["x"]}"#),
            parts[1],
            parts[2]
        ),
        "\u{0}.\u{0}.\u{0}".into(),
        "é.é.é".into(),
        "a".repeat(100_000),
    ];
    for token in bad {
        assert!(
            validator().validate(&token, &keys, NOW_MS).is_err(),
            "{token:?}"
        );
    }
    // Nor does an empty key set.
    assert!(validator()
        .validate(&good, &Jwks::default(), NOW_MS)
        .is_err());
}

#[test]
fn jwks_documents() {
    for bad in [&b"not json"[..], b"[]", b"{}", br#"{"keys": {}}"#] {
        assert!(Jwks::parse(bad).is_err());
    }
    let ec = Signer::ec();
    let mut enc = ec.jwk(Some("enc"));
    enc["use"] = json!("enc");
    let mut wrong_alg = ec.jwk(Some("wrong"));
    wrong_alg["alg"] = json!("RS256");
    let (keys, skipped) = Jwks::parse(
        json!({"keys": [
            enc,
            wrong_alg,
            {"kty": "OKP", "crv": "Ed25519", "x": b64(&[0; 32]), "kid": "ed"},
            {"kty": "EC", "crv": "P-256", "kid": "broken"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "tiny"},
            ec.jwk(Some("good")),
        ]})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    assert!(keys.has_kid("good"));
    assert!(!keys.has_kid("enc"));
    assert!(!keys.has_kid("wrong"));
    assert!(!keys.has_kid("ed"));
    assert!(!keys.has_kid("broken"));
    assert!(skipped.len() >= 4, "{skipped:?}");
}

#[test]
fn client_messages() {
    let m = parse_client_message(b"n,,\x01auth=Bearer abc.def.ghi\x01\x01").unwrap();
    assert_eq!(m.token, "abc.def.ghi");
    assert_eq!(m.authzid, None);
    assert!(m.extensions.is_empty());
    let m = parse_client_message(
        b"n,a=al=2Cice=3D,\x01host=example.com\x01auth=bearer  t-_.0\x01traceId=x y\x01\x01",
    )
    .unwrap();
    assert_eq!(m.authzid.as_deref(), Some("al,ice="));
    assert_eq!(m.token, "t-_.0");
    assert_eq!(
        m.extensions,
        vec![
            ("host".to_string(), "example.com".to_string()),
            ("traceId".to_string(), "x y".to_string())
        ]
    );
    assert!(
        !format!("{m:?}").contains("t-_.0"),
        "the token is not logged"
    );
}

#[test]
fn malformed_client_messages() {
    let oversized = format!("n,,\x01auth=Bearer {}\x01\x01", "a".repeat(1 << 20));
    let bad: Vec<&[u8]> = vec![
        b"",
        b"\x01",
        b"\x01\x01",
        b"n,,",
        b"n,,\x01",
        b"n,,\x01\x01",
        b"n,,\x01auth=Bearer t\x01",
        b"n,,\x01auth=Bearer t",
        b"n,,\x01auth=Bearer t\x01\x01\x01",
        b"n,,\x01auth=Bearer t\x01x\x01\x01",
        b"n,,\x01auth=Bearer t\x01=v\x01\x01",
        b"n,,\x01auth=Bearer t\x01k1=v\x01\x01",
        b"n,,\x01auth=Bearer t\x01k=\x00\x01\x01",
        b"n,,\x01auth=Bearer t\x01k=a\x01k=b\x01\x01",
        b"n,,\x01auth=Bearer t\x01auth=Bearer u\x01\x01",
        b"n,,\x01auth=Basic dXNlcjpwYXNz\x01\x01",
        b"n,,\x01auth=Bearer\x01\x01",
        b"n,,\x01auth=Bearer \x01\x01",
        b"n,,\x01auth=Bearer a b\x01\x01",
        b"n,,\x01auth=Bearer a+b/c=\x01\x01",
        b"n,,\x01host=x\x01\x01",
        b"p=tls-unique,,\x01auth=Bearer t\x01\x01",
        b"x,,\x01auth=Bearer t\x01\x01",
        b"n\x01auth=Bearer t\x01\x01",
        b"n,\x01auth=Bearer t\x01\x01",
        b"n,,,\x01auth=Bearer t\x01\x01",
        b"n,b=x,\x01auth=Bearer t\x01\x01",
        b"n,a=,\x01auth=Bearer t\x01\x01",
        b"n,a=x=2,\x01auth=Bearer t\x01\x01",
        b"n,a=x=41,\x01auth=Bearer t\x01\x01",
        b"n,,\x01auth=Bearer \xff\x01\x01",
        b"\xff\xfe",
        oversized.as_bytes().get(..100).unwrap(),
    ];
    for message in bad {
        assert!(
            parse_client_message(message).is_err(),
            "{:?}",
            String::from_utf8_lossy(message)
        );
    }
    // Size is the caller's bound; a huge valid message still parses without trouble.
    assert!(parse_client_message(oversized.as_bytes()).is_ok());
    // Every prefix of a valid message is refused, and none panics.
    let good = b"n,a=u,\x01host=h\x01auth=Bearer a.b.c\x01\x01";
    for end in 0..good.len() {
        assert!(parse_client_message(&good[..end]).is_err(), "{end}");
    }
    // Pseudo-random bytes never panic.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..2000 {
        let mut buf = Vec::new();
        for _ in 0..(state % 40) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let alphabet = b"n,a=\x01 Bearerauth.x\xff";
            buf.push(alphabet[(state % alphabet.len() as u64) as usize]);
        }
        let _ = parse_client_message(&buf);
        state = state.wrapping_add(1);
    }
}
