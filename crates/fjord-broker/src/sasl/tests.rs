#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use async_trait::async_trait;
use fjord_auth::oauth::{Jwks, JwtValidator};
use fjord_auth::scram::{ClientExchange, Credential, Hash};
use fjord_coordinator::clock::ManualClock;
use fjord_coordinator::security::ScramUser;
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};
use parking_lot::Mutex;

use super::*;

/// Credentials in a map (the coordinators' own tests cover the real stores).
#[derive(Default)]
struct Users(Mutex<HashMap<(String, ScramMechanism), ScramCredential>>);

#[async_trait]
impl CredentialStore for Users {
    async fn upsert_scram_credential(
        &self,
        user: &str,
        credential: ScramCredential,
    ) -> fjord_coordinator::Result<()> {
        self.0
            .lock()
            .insert((user.to_string(), credential.mechanism), credential);
        Ok(())
    }
    async fn delete_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> fjord_coordinator::Result<bool> {
        Ok(self
            .0
            .lock()
            .remove(&(user.to_string(), mechanism))
            .is_some())
    }
    async fn scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> fjord_coordinator::Result<Option<ScramCredential>> {
        Ok(self.0.lock().get(&(user.to_string(), mechanism)).cloned())
    }
    async fn scram_users(&self) -> fjord_coordinator::Result<Vec<ScramUser>> {
        Ok(Vec::new())
    }
}

struct Fixture {
    auth: Arc<Authenticator>,
    clock: Arc<ManualClock>,
}

fn fixture(settings: SaslSettings) -> Fixture {
    let users = Users::default();
    for hash in [Hash::Sha256, Hash::Sha512] {
        let c = Credential::from_password(hash, b"alice-pw", b"salt-of-alice", 4096);
        users.0.lock().insert(
            ("alice".into(), from_auth(c.clone()).mechanism),
            from_auth(c),
        );
    }
    let clock = ManualClock::new(1_000_000);
    let auth = Arc::new(Authenticator::new(
        SaslSettings {
            failure_delay: Duration::ZERO,
            ..settings
        },
        Arc::new(users),
        clock.clone(),
    ));
    Fixture { auth, clock }
}

fn peer() -> Option<SocketAddr> {
    Some("10.1.2.3:5555".parse().unwrap())
}

fn request<R: Encodable + HeaderVersion>(key: ApiKey, version: i16, body: &R) -> Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7);
    let mut buf = BytesMut::new();
    header.encode(&mut buf, R::header_version(version)).unwrap();
    body.encode(&mut buf, version).unwrap();
    buf.freeze()
}

fn response<R: Decodable>(key: ApiKey, version: i16, frame: &Bytes) -> R {
    let mut frame = frame.slice(4..);
    let header = ResponseHeader::decode(&mut frame, key.response_header_version(version)).unwrap();
    assert_eq!(header.correlation_id, 7);
    R::decode(&mut frame, version).unwrap()
}

async fn handshake(conn: &mut SaslConnection, mechanism: &str) -> SaslHandshakeResponse {
    let frame = request(
        ApiKey::SaslHandshake,
        1,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_string(mechanism.into())),
    );
    assert_eq!(conn.gate(&frame), Gate::Sasl);
    let reply = conn.handle(frame).await;
    response(ApiKey::SaslHandshake, 1, &reply.frame.unwrap())
}

async fn token(conn: &mut SaslConnection, bytes: Vec<u8>) -> (SaslAuthenticateResponse, SaslReply) {
    let frame = request(
        ApiKey::SaslAuthenticate,
        2,
        &SaslAuthenticateRequest::default().with_auth_bytes(bytes.into()),
    );
    assert_eq!(conn.gate(&frame), Gate::Sasl);
    let reply = conn.handle(frame).await;
    let frame = reply.frame.clone().unwrap();
    (response(ApiKey::SaslAuthenticate, 2, &frame), reply)
}

async fn scram_login(
    conn: &mut SaslConnection,
    hash: Hash,
    user: &str,
    password: &[u8],
) -> (SaslAuthenticateResponse, SaslReply) {
    let h = handshake(conn, hash.mechanism()).await;
    assert_eq!(h.error_code, 0);
    let (mut client, first) = ClientExchange::start(hash, user, password, &scram::nonce());
    let (r, reply) = token(conn, first).await;
    assert_eq!(r.error_code, 0, "{:?}", r.error_message);
    assert!(!reply.close);
    let last = client.respond(&r.auth_bytes).unwrap();
    let (r, reply) = token(conn, last).await;
    if r.error_code == 0 {
        client.verify(&r.auth_bytes).unwrap();
    }
    (r, reply)
}

fn metadata_frame() -> Bytes {
    request(
        ApiKey::Metadata,
        12,
        &kafka_protocol::messages::MetadataRequest::default(),
    )
}

#[tokio::test]
async fn scram_logins_succeed_and_let_requests_through() {
    for hash in [Hash::Sha256, Hash::Sha512] {
        let f = fixture(SaslSettings::default());
        let mut conn = SaslConnection::new(f.auth.clone(), peer());
        assert_eq!(
            conn.gate(&metadata_frame()),
            Gate::Close("request before SASL authentication")
        );
        let api_versions = request(
            ApiKey::ApiVersions,
            3,
            &kafka_protocol::messages::ApiVersionsRequest::default(),
        );
        assert_eq!(conn.gate(&api_versions), Gate::Dispatch);
        let (r, reply) = scram_login(&mut conn, hash, "alice", b"alice-pw").await;
        assert_eq!(r.error_code, 0);
        assert_eq!(r.session_lifetime_ms, 0);
        assert_eq!(reply.principal, Some(Principal::user("alice")));
        assert!(!reply.close);
        assert!(conn.is_authenticated());
        assert_eq!(conn.gate(&metadata_frame()), Gate::Dispatch);
    }
}

#[tokio::test]
async fn wrong_passwords_and_unknown_users_are_refused_alike_and_close() {
    let f = fixture(SaslSettings::default());
    for (user, pw) in [("alice", &b"wrong"[..]), ("mallory", b"alice-pw")] {
        let mut conn = SaslConnection::new(f.auth.clone(), peer());
        let (r, reply) = scram_login(&mut conn, Hash::Sha512, user, pw).await;
        assert_eq!(r.error_code, ResponseError::SaslAuthenticationFailed.code());
        assert_eq!(
            r.error_message.unwrap().as_str(),
            "authentication failed: invalid credentials (SCRAM)"
        );
        assert!(reply.close && reply.principal.is_none());
        assert!(!conn.is_authenticated());
        let again = conn.handle(metadata_frame()).await;
        assert!(again.close, "nothing more is served after a failure");
    }
    assert_eq!(f.auth.stats.failures.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn plain_checks_the_password_against_the_scram_credential() {
    let f = fixture(SaslSettings::default());
    let mut conn = SaslConnection::new(f.auth.clone(), peer());
    assert_eq!(handshake(&mut conn, "PLAIN").await.error_code, 0);
    let (r, reply) = token(&mut conn, fjord_auth::plain::encode("alice", b"alice-pw")).await;
    assert_eq!(r.error_code, 0);
    assert_eq!(reply.principal, Some(Principal::user("alice")));
    for (user, pw) in [("alice", &b"nope"[..]), ("nobody", b"alice-pw")] {
        let mut conn = SaslConnection::new(f.auth.clone(), peer());
        handshake(&mut conn, "PLAIN").await;
        let (r, reply) = token(&mut conn, fjord_auth::plain::encode(user, pw)).await;
        assert_eq!(r.error_code, ResponseError::SaslAuthenticationFailed.code());
        assert!(reply.close);
    }
}

#[tokio::test]
async fn mechanisms_not_enabled_and_out_of_order_requests_are_refused() {
    let f = fixture(SaslSettings {
        mechanisms: vec![Mechanism::Scram(ScramMechanism::Sha512)],
        ..SaslSettings::default()
    });
    let mut conn = SaslConnection::new(f.auth.clone(), peer());
    let h = handshake(&mut conn, "PLAIN").await;
    assert_eq!(h.error_code, ResponseError::UnsupportedSaslMechanism.code());
    assert_eq!(h.mechanisms.len(), 1);
    assert_eq!(h.mechanisms[0].as_str(), "SCRAM-SHA-512");

    let mut conn = SaslConnection::new(f.auth.clone(), peer());
    let (r, reply) = token(&mut conn, b"n,,n=alice,r=abc".to_vec()).await;
    assert_eq!(r.error_code, ResponseError::IllegalSaslState.code());
    assert!(reply.close);

    let mut conn = SaslConnection::new(f.auth.clone(), peer());
    handshake(&mut conn, "SCRAM-SHA-512").await;
    let again = handshake(&mut conn, "SCRAM-SHA-512").await;
    assert_eq!(again.error_code, ResponseError::IllegalSaslState.code());
    let (r, _) = token(&mut conn, b"garbage".to_vec()).await;
    assert_eq!(r.error_code, ResponseError::IllegalSaslState.code());
}

#[tokio::test]
async fn oversized_and_malformed_tokens_fail_cleanly() {
    let f = fixture(SaslSettings {
        max_token_bytes: 100,
        ..SaslSettings::default()
    });
    let mut conn = SaslConnection::new(f.auth.clone(), peer());
    handshake(&mut conn, "SCRAM-SHA-256").await;
    let (r, reply) = token(&mut conn, vec![b'x'; 101]).await;
    assert_eq!(r.error_code, ResponseError::SaslAuthenticationFailed.code());
    assert!(r.error_message.unwrap().contains("larger than the limit"));
    assert!(reply.close);
    let mut conn = SaslConnection::new(f.auth.clone(), peer());
    handshake(&mut conn, "SCRAM-SHA-256").await;
    let (r, _) = token(&mut conn, b"\xff,,n=a".to_vec()).await;
    assert_eq!(r.error_code, ResponseError::SaslAuthenticationFailed.code());
    // Frames that are not requests at all close the connection without an answer.
    let mut conn = SaslConnection::new(f.auth.clone(), peer());
    let reply = conn.handle(Bytes::from_static(&[0, 17, 0, 1, 0])).await;
    assert!(reply.close && reply.frame.is_none());
}

#[tokio::test]
async fn an_address_that_keeps_failing_is_held_back() {
    let f = fixture(SaslSettings {
        failures_per_minute: 2,
        ..SaslSettings::default()
    });
    for _ in 0..2 {
        let mut conn = SaslConnection::new(f.auth.clone(), peer());
        let (r, _) = scram_login(&mut conn, Hash::Sha256, "alice", b"guess").await;
        assert_eq!(r.error_code, ResponseError::SaslAuthenticationFailed.code());
    }
    // Even the right password is refused now, without being checked.
    let mut conn = SaslConnection::new(f.auth.clone(), peer());
    handshake(&mut conn, "SCRAM-SHA-256").await;
    let (_, first) = ClientExchange::start(Hash::Sha256, "alice", b"alice-pw", "n0nce");
    let (r, _) = token(&mut conn, first).await;
    assert!(r.error_message.unwrap().contains("too many failed"));
    assert_eq!(f.auth.stats.throttled.load(Ordering::Relaxed), 1);
    // Another address is unaffected, and the first earns attempts back with time.
    let other = Some("10.9.9.9:1".parse().unwrap());
    let mut conn = SaslConnection::new(f.auth.clone(), other);
    let (r, _) = scram_login(&mut conn, Hash::Sha256, "alice", b"alice-pw").await;
    assert_eq!(r.error_code, 0);
    f.clock.advance(30_000);
    let mut conn = SaslConnection::new(f.auth.clone(), peer());
    let (r, _) = scram_login(&mut conn, Hash::Sha256, "alice", b"alice-pw").await;
    assert_eq!(r.error_code, 0);
}

#[tokio::test]
async fn sessions_expire_unless_the_client_reauthenticates_as_itself() {
    let f = fixture(SaslSettings {
        reauth_ms: 60_000,
        ..SaslSettings::default()
    });
    let mut conn = SaslConnection::new(f.auth.clone(), peer());
    let (r, _) = scram_login(&mut conn, Hash::Sha512, "alice", b"alice-pw").await;
    assert_eq!(r.session_lifetime_ms, 60_000);
    f.clock.advance(59_000);
    assert_eq!(conn.gate(&metadata_frame()), Gate::Dispatch);
    // Re-authentication on the same connection renews the session.
    let (r, reply) = scram_login(&mut conn, Hash::Sha512, "alice", b"alice-pw").await;
    assert_eq!(r.error_code, 0);
    assert_eq!(reply.principal, Some(Principal::user("alice")));
    f.clock.advance(59_000);
    assert_eq!(conn.gate(&metadata_frame()), Gate::Dispatch);
    f.clock.advance(1_000);
    assert!(matches!(conn.gate(&metadata_frame()), Gate::Close(_)));
    // Re-authenticating with another mechanism is refused.
    let h = handshake(&mut conn, "PLAIN").await;
    assert_eq!(h.error_code, ResponseError::IllegalSaslState.code());
}

#[tokio::test]
async fn handshake_v0_carries_bare_tokens() {
    let f = fixture(SaslSettings::default());
    let mut conn = SaslConnection::new(f.auth.clone(), peer());
    let frame = request(
        ApiKey::SaslHandshake,
        0,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
    );
    let reply = conn.handle(frame).await;
    let h: SaslHandshakeResponse = response(ApiKey::SaslHandshake, 0, &reply.frame.unwrap());
    assert_eq!(h.error_code, 0);
    let token = Bytes::from(fjord_auth::plain::encode("alice", b"alice-pw"));
    assert_eq!(
        conn.gate(&token),
        Gate::Sasl,
        "the next frame is a bare token"
    );
    let reply = conn.handle(token).await;
    assert_eq!(reply.frame.unwrap().as_ref(), &[0, 0, 0, 0]);
    assert_eq!(reply.principal, Some(Principal::user("alice")));
    assert_eq!(conn.gate(&metadata_frame()), Gate::Dispatch);

    let mut conn = SaslConnection::new(f.auth.clone(), peer());
    let frame = request(
        ApiKey::SaslHandshake,
        0,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
    );
    conn.handle(frame).await;
    let reply = conn
        .handle(Bytes::from(fjord_auth::plain::encode("alice", b"bad")))
        .await;
    assert!(reply.close && reply.frame.is_none());
}

use fjord_jwks::testing::Issuer;

fn client_message(token: &str) -> Vec<u8> {
    format!("n,,\x01auth=Bearer {token}\x01\x01").into_bytes()
}

struct OAuthFixture {
    f: Fixture,
    issuer: Issuer,
    keys: tokio::sync::watch::Sender<Arc<Jwks>>,
    refresh: Arc<tokio::sync::Notify>,
}

fn oauth_fixture(reauth_ms: i64) -> OAuthFixture {
    let mut f = fixture(SaslSettings {
        mechanisms: vec![Mechanism::OAuthBearer, Mechanism::Plain],
        reauth_ms,
        ..SaslSettings::default()
    });
    let issuer = Issuer::new();
    let (keys, rx) = tokio::sync::watch::channel(Arc::new(issuer.jwks("k1")));
    let refresh = Arc::new(tokio::sync::Notify::new());
    let validator = JwtValidator::new(fjord_auth::oauth::JwtConfig {
        audience: vec!["kafka".into()],
        ..Default::default()
    });
    let auth = Arc::into_inner(f.auth).unwrap();
    f.auth = Arc::new(auth.with_oauth(OAuthBearer::new(validator, rx, refresh.clone())));
    OAuthFixture {
        f,
        issuer,
        keys,
        refresh,
    }
}

#[tokio::test]
async fn oauthbearer_accepts_a_valid_token() {
    let o = oauth_fixture(0);
    let mut conn = SaslConnection::new(o.f.auth.clone(), peer());
    let h = handshake(&mut conn, "OAUTHBEARER").await;
    assert_eq!(h.error_code, 0);
    let names: Vec<&str> = h.mechanisms.iter().map(|m| m.as_str()).collect();
    assert_eq!(names, ["OAUTHBEARER", "PLAIN"]);
    let now = o.f.clock.now_ms();
    let (r, reply) = token(
        &mut conn,
        client_message(&o.issuer.token("k1", "svc-orders", now + 300_000)),
    )
    .await;
    assert_eq!(r.error_code, 0, "{:?}", r.error_message);
    assert!(r.auth_bytes.is_empty());
    assert_eq!(
        r.session_lifetime_ms, 0,
        "no reauth configured: no lifetime"
    );
    assert_eq!(reply.principal, Some(Principal::user("svc-orders")));
    assert_eq!(conn.gate(&metadata_frame()), Gate::Dispatch);
    // Without re-authentication configured the session outlives the token (as in Kafka).
    o.f.clock.advance(600_000);
    assert_eq!(conn.gate(&metadata_frame()), Gate::Dispatch);
}

#[tokio::test]
async fn oauthbearer_refuses_expired_forged_and_malformed_tokens() {
    let o = oauth_fixture(0);
    let now = o.f.clock.now_ms();
    let other = Issuer::new();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            client_message(&o.issuer.token("k1", "alice", now - 60_000)),
            "expired",
        ),
        (
            client_message(&other.token("k1", "alice", now + 60_000)),
            "signature",
        ),
        (b"n,,\x01auth=Bearer\x01\x01".to_vec(), "malformed"),
        (b"garbage".to_vec(), "malformed"),
        (
            format!(
                "n,a=admin,\x01auth=Bearer {}\x01\x01",
                o.issuer.token("k1", "alice", now + 60_000)
            )
            .into_bytes(),
            "authorization id",
        ),
    ];
    for (message, expected) in cases {
        let mut conn = SaslConnection::new(o.f.auth.clone(), peer());
        handshake(&mut conn, "OAUTHBEARER").await;
        let (r, reply) = token(&mut conn, message).await;
        assert_eq!(r.error_code, ResponseError::SaslAuthenticationFailed.code());
        let msg = r.error_message.unwrap();
        assert!(
            msg.contains(expected),
            "{msg:?} should mention {expected:?}"
        );
        assert!(reply.close && reply.principal.is_none());
        assert!(!conn.is_authenticated());
    }
    assert_eq!(o.f.auth.stats.failures.load(Ordering::Relaxed), 5);
}

#[tokio::test]
async fn oauthbearer_session_lifetime_is_the_sooner_of_reauth_and_exp() {
    let o = oauth_fixture(60_000);
    let now = o.f.clock.now_ms();
    // The token outlives connections.max.reauth.ms: the session lasts 60 s.
    let mut conn = SaslConnection::new(o.f.auth.clone(), peer());
    handshake(&mut conn, "OAUTHBEARER").await;
    let (r, _) = token(
        &mut conn,
        client_message(&o.issuer.token("k1", "alice", now + 300_000)),
    )
    .await;
    assert_eq!(r.session_lifetime_ms, 60_000);
    // The token expires in 20 s: so does the session.
    let mut conn = SaslConnection::new(o.f.auth.clone(), peer());
    handshake(&mut conn, "OAUTHBEARER").await;
    let (r, _) = token(
        &mut conn,
        client_message(&o.issuer.token("k1", "alice", now + 20_000)),
    )
    .await;
    assert_eq!(r.error_code, 0);
    assert_eq!(r.session_lifetime_ms, 20_000);
    o.f.clock.advance(19_000);
    assert_eq!(conn.gate(&metadata_frame()), Gate::Dispatch);
    // Re-authenticating with a fresh token renews it; another principal is refused.
    handshake(&mut conn, "OAUTHBEARER").await;
    let now = o.f.clock.now_ms();
    let (r, reply) = token(
        &mut conn,
        client_message(&o.issuer.token("k1", "alice", now + 30_000)),
    )
    .await;
    assert_eq!(r.session_lifetime_ms, 30_000);
    assert_eq!(reply.principal, Some(Principal::user("alice")));
    o.f.clock.advance(30_000);
    assert!(matches!(conn.gate(&metadata_frame()), Gate::Close(_)));
    // A token inside the clock skew after its exp gets a short session (1 s), never beyond the
    // end of the skew.
    let now = o.f.clock.now_ms();
    let mut conn = SaslConnection::new(o.f.auth.clone(), peer());
    handshake(&mut conn, "OAUTHBEARER").await;
    let (r, _) = token(
        &mut conn,
        client_message(&o.issuer.token("k1", "alice", now - 5_000)),
    )
    .await;
    assert_eq!(r.error_code, 0);
    assert_eq!(r.session_lifetime_ms, MIN_EXPIRED_TOKEN_SESSION_MS);
    o.f.clock.advance(600);
    let now = o.f.clock.now_ms();
    assert_eq!(now % 1000, 600, "exp is in whole seconds");
    let mut conn = SaslConnection::new(o.f.auth.clone(), peer());
    handshake(&mut conn, "OAUTHBEARER").await;
    let (r, _) = token(
        &mut conn,
        client_message(&o.issuer.token("k1", "alice", now - 29_600)),
    )
    .await;
    assert_eq!(r.error_code, 0);
    assert_eq!(r.session_lifetime_ms, 400, "ends with the skew");
    let mut conn2 = SaslConnection::new(o.f.auth.clone(), peer());
    handshake(&mut conn2, "OAUTHBEARER").await;
    let (r, _) = token(
        &mut conn2,
        client_message(&o.issuer.token("k1", "bob", now + 100_000)),
    )
    .await;
    assert_eq!(r.session_lifetime_ms, 60_000);
    handshake(&mut conn2, "OAUTHBEARER").await;
    let (r, _) = token(
        &mut conn2,
        client_message(&o.issuer.token("k1", "alice", now + 100_000)),
    )
    .await;
    assert_eq!(r.error_code, ResponseError::SaslAuthenticationFailed.code());
}

#[tokio::test]
async fn an_unknown_kid_asks_for_a_refresh_at_most_every_ten_seconds() {
    let o = oauth_fixture(0);
    let now = o.f.clock.now_ms();
    let rotated = Issuer::new();
    // The loader answers a refresh request with the rotated set.
    let refresh = o.refresh.clone();
    let keys = o.keys.clone();
    let rotated_jwks = Arc::new(rotated.jwks("k2"));
    let loader = tokio::spawn(async move {
        refresh.notified().await;
        keys.send_replace(rotated_jwks);
    });
    let mut conn = SaslConnection::new(o.f.auth.clone(), peer());
    handshake(&mut conn, "OAUTHBEARER").await;
    let (r, reply) = token(
        &mut conn,
        client_message(&rotated.token("k2", "alice", now + 60_000)),
    )
    .await;
    assert_eq!(r.error_code, 0, "{:?}", r.error_message);
    assert_eq!(reply.principal, Some(Principal::user("alice")));
    loader.await.unwrap();
    // Another unknown kid right after: no refresh asked for, refused at once.
    let mut conn = SaslConnection::new(o.f.auth.clone(), peer());
    handshake(&mut conn, "OAUTHBEARER").await;
    let (r, _) = token(
        &mut conn,
        client_message(&rotated.token("k3", "alice", now + 60_000)),
    )
    .await;
    assert!(r.error_message.unwrap().contains("no key with kid"));
}

#[tokio::test]
async fn oauthbearer_without_a_validator_is_refused() {
    let f = fixture(SaslSettings {
        mechanisms: vec![Mechanism::OAuthBearer],
        ..SaslSettings::default()
    });
    let mut conn = SaslConnection::new(f.auth.clone(), peer());
    handshake(&mut conn, "OAUTHBEARER").await;
    let (r, _) = token(&mut conn, client_message("a.b.c")).await;
    assert!(r.error_message.unwrap().contains("not configured"));
    assert_eq!(
        Mechanism::from_name("oauthbearer"),
        Some(Mechanism::OAuthBearer)
    );
    assert!(!SaslSettings::default()
        .mechanisms
        .contains(&Mechanism::OAuthBearer));
}
