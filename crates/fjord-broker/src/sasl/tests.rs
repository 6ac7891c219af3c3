#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use async_trait::async_trait;
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
