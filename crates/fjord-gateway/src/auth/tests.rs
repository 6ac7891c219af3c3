#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use fjord_auth::oauth::{JwtConfig, JwtValidator};
use fjord_jwks::testing::Issuer;
use serde_json::json;
use tokio::sync::{watch, Notify};

use super::*;
use crate::hlc::ManualClock;

const NOW_MS: u64 = 1_800_000_000_000;

struct Fixture {
    issuer: Issuer,
    keys: watch::Sender<Arc<fjord_auth::oauth::Jwks>>,
    clock: Arc<ManualClock>,
    metrics: Arc<Metrics>,
    auth: CallerAuth,
}

fn fixture() -> Fixture {
    fixture_limited(30)
}

/// A fixture whose addresses may fail `failed_tokens_per_minute` token checks a minute.
fn fixture_limited(failed_tokens_per_minute: u32) -> Fixture {
    let issuer = Issuer::new();
    let (keys, rx) = watch::channel(Arc::new(issuer.jwks("k1")));
    let validator = JwtValidator::new(JwtConfig {
        audience: vec!["fjord-gateway".into()],
        ..JwtConfig::default()
    });
    let clock = Arc::new(ManualClock::at(NOW_MS));
    let metrics = Arc::new(Metrics::default());
    let auth = CallerAuth::with_verifier(
        Verifier::new(validator, rx, Arc::new(Notify::new())),
        failed_tokens_per_minute,
        clock.clone(),
        metrics.clone(),
    );
    Fixture {
        issuer,
        keys,
        clock,
        metrics,
        auth,
    }
}

impl Fixture {
    fn token(&self, sub: &str, exp_ms: u64) -> String {
        self.issuer.sign(
            "k1",
            &json!({"sub": sub, "exp": exp_ms / 1000, "aud": "fjord-gateway"}),
        )
    }

    fn count(&self, result: &'static str) -> u64 {
        self.metrics
            .authentications
            .get_or_create(&ResultLabels { result })
            .get()
    }
}

fn request(metadata: &[(&'static str, &str)]) -> Request<()> {
    let mut r = Request::new(());
    for (k, v) in metadata {
        r.metadata_mut().insert(*k, v.parse().unwrap());
    }
    r
}

/// [`request`] from `ip` (as the gRPC server records a TCP connection's peer).
fn request_from(ip: [u8; 4], metadata: &[(&'static str, &str)]) -> Request<()> {
    let mut r = request(metadata);
    r.extensions_mut()
        .insert(tonic::transport::server::TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(SocketAddr::from((ip, 40_000))),
        });
    r
}

fn refused(result: Result<Caller, RequestError>) -> String {
    match result {
        Err(RequestError::Unauthenticated(why)) => why,
        other => panic!("expected UNAUTHENTICATED, got {other:?}"),
    }
}

#[tokio::test]
async fn without_auth_callers_are_named_not_verified_and_tokens_are_ignored() {
    let auth = CallerAuth::without_tokens(
        Arc::new(ManualClock::at(NOW_MS)),
        Arc::new(Metrics::default()),
    );
    let c = auth
        .authenticate(&request(&[
            (CALLER_METADATA, "billing"),
            ("authorization", "Bearer whatever"),
        ]))
        .await
        .unwrap();
    assert_eq!(c.name, "billing");
    assert_eq!(c.verified, None);
    assert_eq!(c.expires_at_ms, None);
    let c = auth.authenticate(&request(&[])).await.unwrap();
    assert_eq!(c.name, "unknown");
}

#[tokio::test]
async fn a_valid_token_names_the_caller_and_wins_over_the_caller_header() {
    let f = fixture();
    let token = f.token("svc-billing", NOW_MS + 60_000);
    let c = f
        .auth
        .authenticate(&request(&[
            ("authorization", &format!("bearer {token}")),
            (CALLER_METADATA, "someone-else"),
        ]))
        .await
        .unwrap();
    assert_eq!(c.name, "svc-billing");
    assert_eq!(c.verified.as_deref(), Some("svc-billing"));
    // exp is in seconds; the default skew of 30 s is added.
    assert_eq!(c.expires_at_ms, Some((NOW_MS + 60_000) as i64 + 30_000));
    assert_eq!(f.count("ok"), 1);
}

#[tokio::test]
async fn missing_malformed_expired_and_forged_tokens_are_refused() {
    let f = fixture();
    let why = refused(f.auth.authenticate(&request(&[])).await);
    assert!(why.contains("bearer token is required"), "{why}");
    let why = refused(
        f.auth
            .authenticate(&request(&[("authorization", "Basic dXNlcjpwdw==")]))
            .await,
    );
    assert!(why.contains("expected `Bearer <token>`"), "{why}");
    let why = refused(
        f.auth
            .authenticate(&request(&[("authorization", "Bearer not.a.jwt")]))
            .await,
    );
    assert!(why.contains("bearer token refused"), "{why}");
    // Expired beyond the clock skew.
    let old = f.token("svc", NOW_MS - 31_000);
    let why = refused(
        f.auth
            .authenticate(&request(&[("authorization", &format!("Bearer {old}"))]))
            .await,
    );
    assert!(why.contains("expired"), "{why}");
    // Signed by a key the gateway does not trust, under a kid it knows.
    let forged = Issuer::new().sign(
        "k1",
        &json!({"sub": "admin", "exp": (NOW_MS + 60_000) / 1000, "aud": "fjord-gateway"}),
    );
    let why = refused(
        f.auth
            .authenticate(&request(&[("authorization", &format!("Bearer {forged}"))]))
            .await,
    );
    assert!(why.contains("signature"), "{why}");
    // The wrong audience.
    let other_audience = f.issuer.sign(
        "k1",
        &json!({"sub": "svc", "exp": (NOW_MS + 60_000) / 1000, "aud": "kafka"}),
    );
    let why = refused(
        f.auth
            .authenticate(&request(&[(
                "authorization",
                &format!("Bearer {other_audience}"),
            )]))
            .await,
    );
    assert!(why.contains("aud"), "{why}");
    assert_eq!(f.count("refused"), 6);
    assert_eq!(f.count("ok"), 0);
}

#[tokio::test]
async fn a_remembered_token_still_expires_and_a_key_rotation_forgets_it() {
    let f = fixture();
    let token = f.token("svc", NOW_MS + 10_000);
    let header = format!("Bearer {token}");
    for _ in 0..3 {
        f.auth
            .authenticate(&request(&[("authorization", &header)]))
            .await
            .unwrap();
    }
    // Past exp + skew: refused, from the cache as from the verifier.
    f.clock.advance(40_001);
    let why = refused(
        f.auth
            .authenticate(&request(&[("authorization", &header)]))
            .await,
    );
    assert!(why.contains("expired"), "{why}");

    // A token accepted with one key set is checked again once the set changes: the issuer
    // rotated "k1" to another key, so the old token no longer verifies.
    let f = fixture();
    let header = format!("Bearer {}", f.token("svc", NOW_MS + 60_000));
    f.auth
        .authenticate(&request(&[("authorization", &header)]))
        .await
        .unwrap();
    f.keys.send_replace(Arc::new(Issuer::new().jwks("k1")));
    let why = refused(
        f.auth
            .authenticate(&request(&[("authorization", &header)]))
            .await,
    );
    assert!(why.contains("signature"), "{why}");
}

#[tokio::test]
async fn an_address_sending_bad_tokens_is_held_back_without_checking_them() {
    let f = fixture_limited(3);
    let attacker = [10, 0, 0, 66];
    let good = format!("Bearer {}", f.token("svc", NOW_MS + 600_000));
    let remembered = format!("Bearer {}", f.token("svc-early", NOW_MS + 600_000));
    f.auth
        .authenticate(&request_from(attacker, &[("authorization", &remembered)]))
        .await
        .unwrap();
    let forged = Issuer::new().sign(
        "k1",
        &json!({"sub": "admin", "exp": (NOW_MS + 60_000) / 1000, "aud": "fjord-gateway"}),
    );
    let forged = format!("Bearer {forged}");
    for _ in 0..3 {
        let why = refused(
            f.auth
                .authenticate(&request_from(attacker, &[("authorization", &forged)]))
                .await,
        );
        assert!(why.contains("signature"), "{why}");
    }
    // The burst is spent: even a valid token from there is not checked now...
    let throttled = f
        .auth
        .authenticate(&request_from(attacker, &[("authorization", &good)]))
        .await;
    assert!(
        matches!(throttled, Err(RequestError::AuthenticationThrottled)),
        "{throttled:?}"
    );
    assert_eq!(
        RequestError::AuthenticationThrottled.code(),
        tonic::Code::ResourceExhausted
    );
    assert_eq!(f.count("throttled"), 1);
    // ...while a token accepted before still works from it, and other addresses are served.
    let c = f
        .auth
        .authenticate(&request_from(attacker, &[("authorization", &remembered)]))
        .await
        .unwrap();
    assert_eq!(c.name, "svc-early");
    let c = f
        .auth
        .authenticate(&request_from([10, 0, 0, 7], &[("authorization", &good)]))
        .await
        .unwrap();
    assert_eq!(c.name, "svc");
    // A third of a minute earns one check back (a token not seen before, so it is checked).
    f.clock.advance(20_000);
    let late = format!("Bearer {}", f.token("svc-late", NOW_MS + 600_000));
    let c = f
        .auth
        .authenticate(&request_from(attacker, &[("authorization", &late)]))
        .await
        .unwrap();
    assert_eq!(c.name, "svc-late");
    assert_eq!(f.count("refused"), 3);
}

#[test]
fn a_stream_caller_goes_stale_when_its_token_expires() {
    let caller = Caller {
        name: "svc".into(),
        verified: Some("svc".into()),
        expires_at_ms: Some(1_000),
    };
    assert!(caller.check_fresh(1_000).is_ok());
    let why = caller.check_fresh(1_001).unwrap_err();
    assert!(why.contains("expired during the stream"), "{why}");
    let certificate = Caller {
        expires_at_ms: None,
        ..caller
    };
    assert!(certificate.check_fresh(i64::MAX).is_ok());
}
