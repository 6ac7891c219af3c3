//! Fuzzes SASL authentication: one `SaslConnection` (fjord-broker) driven frame by frame as a
//! connection does (`gate`, then `handle` for SASL frames), against a real in-memory coordinator
//! holding one user, and the pure parsers and exchanges of fjord-auth fed the same chunks.
//!
//! Input format (`fuzz/make_seeds.py` writes seeds in it):
//! - byte 0, the setup: bits 0-1 the mechanism (0 SCRAM-SHA-256, 1 SCRAM-SHA-512, 2 PLAIN,
//!   3 an unknown name); bit 2 the handshake version (0: bare tokens, 1: SaslAuthenticate);
//!   bit 3 the harness sends that handshake first; bit 4 sessions expire (re-authentication,
//!   KIP-368); bit 5 a small token limit (`max_token_bytes` = 200, so oversized tokens are
//!   reachable with short inputs); bit 6 the oracle client uses a wrong password.
//! - then steps until the input ends or the connection closes: a selector byte `s`; for the
//!   kinds that carry a chunk, a big-endian u16 length and that many bytes (fewer at the end).
//!   `s % 8`:
//!   0 the chunk as a SaslAuthenticate request, version `(s >> 3) % 3`;
//!   1 the chunk as a raw frame (a bare token after a v0 handshake, else any request);
//!   2 a SaslHandshake naming the chunk as mechanism, version `(s >> 3) & 1`;
//!   3 a SaslHandshake for a known mechanism `(s >> 3) % 4`, version `(s >> 5) & 1`;
//!   4 the oracle: the next message an honest client sends for the setup's mechanism (for SCRAM
//!     computed from the server's last token), as SaslAuthenticate `(s >> 3) % 4` (3: bare);
//!   5 the clock moves on by the next u16 times 10 ms;
//!   6 a non-SASL request (ApiVersions if `s & 8`, else Metadata) through the gate;
//!   7 like 4 with the chunk's first byte XORed into the oracle's message at a chunk-chosen spot.
//!
//! Every chunk also goes to `scram::parse_client_first`, to `ServerExchange::finish` of the last
//! chunk that parsed as a client-first message, to `plain::parse`, and to a `ClientExchange`
//! (`respond` until it accepts one, then `verify`).
//!
//! Invariants: nothing panics; a `principal` is only ever the seeded user; a reply that keeps
//! the connection open has a frame; a failure delay only comes with a close; after a close the
//! harness stops; `gate` dispatches only ApiVersions before authentication; an honest SCRAM
//! exchange that authenticates verifies on the client side; a `ServerExchange` only succeeds
//! for the seeded user.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fjord_auth::scram::{self, ClientExchange, Credential, Hash, ServerExchange};
use fjord_broker::sasl::{self, Authenticator, Gate, SaslConnection, SaslSettings};
use fjord_coordinator::clock::ManualClock;
use fjord_coordinator::embedded::EmbeddedCoordinator;
use fjord_coordinator::CredentialStore;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, MetadataRequest, RequestHeader, ResponseHeader,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use libfuzzer_sys::fuzz_target;

const USER: &str = "alice";
const PASSWORD: &[u8] = b"alice-pw";
const SALT: &[u8] = b"salt-of-alice";
const CLIENT_NONCE: &str = "fuzzclientnonce";

struct Harness {
    runtime: tokio::runtime::Runtime,
    store: Arc<EmbeddedCoordinator>,
    /// The seeded user's credentials, as the exchanges see them.
    credentials: [Credential; 2],
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let store = Arc::new(EmbeddedCoordinator::in_memory(ManualClock::new(1_000_000)));
    let credentials = [Hash::Sha256, Hash::Sha512]
        .map(|hash| Credential::from_password(hash, PASSWORD, SALT, scram::MIN_ITERATIONS));
    runtime.block_on(async {
        for c in &credentials {
            store
                .upsert_scram_credential(USER, sasl::from_auth(c.clone()))
                .await
                .expect("seed the user");
        }
    });
    Harness {
        runtime,
        store,
        credentials,
    }
});

/// Reads the input front to back; short reads at the end.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> u16 {
        let hi = self.byte().unwrap_or(0);
        let lo = self.byte().unwrap_or(0);
        u16::from_be_bytes([hi, lo])
    }

    fn chunk(&mut self) -> &'a [u8] {
        let len = usize::from(self.u16()).min(self.0.len());
        let (chunk, rest) = self.0.split_at(len);
        self.0 = rest;
        chunk
    }
}

fn request<R: Encodable + HeaderVersion>(key: ApiKey, version: i16, body: &R) -> Option<Bytes> {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("fuzz")));
    let mut buf = BytesMut::new();
    header.encode(&mut buf, R::header_version(version)).ok()?;
    body.encode(&mut buf, version).ok()?;
    Some(buf.freeze())
}

fn authenticate(version: i16, token: &[u8]) -> Option<Bytes> {
    request(
        ApiKey::SaslAuthenticate,
        version,
        &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::copy_from_slice(token)),
    )
}

fn handshake(version: i16, mechanism: String) -> Option<Bytes> {
    request(
        ApiKey::SaslHandshake,
        version,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_string(mechanism)),
    )
}

fn mechanism_name(choice: u8) -> &'static str {
    match choice % 4 {
        0 => "SCRAM-SHA-256",
        1 => "SCRAM-SHA-512",
        2 => "PLAIN",
        _ => "GSSAPI",
    }
}

/// How the last frame was sent, to read the server's token out of its reply.
#[derive(Clone, Copy)]
enum Sent {
    Authenticate(i16),
    Bare,
    Other,
}

/// The server's token in a reply frame (length prefix included).
fn server_token(sent: Sent, frame: &Bytes) -> Option<Bytes> {
    let mut body = frame.slice(4.min(frame.len())..);
    match sent {
        Sent::Bare => Some(body),
        Sent::Authenticate(version) => {
            let header_version = ApiKey::SaslAuthenticate.response_header_version(version);
            ResponseHeader::decode(&mut body, header_version).ok()?;
            let response = SaslAuthenticateResponse::decode(&mut body, version).ok()?;
            (response.error_code == 0).then_some(response.auth_bytes)
        }
        Sent::Other => None,
    }
}

/// An honest client of the setup's mechanism.
struct Oracle {
    mechanism: u8,
    password: &'static [u8],
    scram: Option<ClientExchange>,
    /// The client has answered the server's first message and waits for its signature.
    responded: bool,
    /// Messages made so far (each SCRAM answer costs a PBKDF2: a few per input at most).
    uses: u8,
}

impl Oracle {
    fn hash(&self) -> Option<Hash> {
        match self.mechanism % 4 {
            0 => Some(Hash::Sha256),
            1 => Some(Hash::Sha512),
            _ => None,
        }
    }

    /// The next message, given the server's last token: SCRAM's first message, or its final
    /// one when the server's last token answers the client's first.
    fn next(&mut self, server: Option<&[u8]>) -> Vec<u8> {
        let Some(hash) = self.hash() else {
            return fjord_auth::plain::encode(USER, self.password);
        };
        if !self.responded {
            let password = self.password;
            let client = self
                .scram
                .get_or_insert_with(|| ClientExchange::start(hash, USER, password, CLIENT_NONCE).0);
            if let Some(server) = server {
                if let Ok(last) = client.respond(server) {
                    self.responded = true;
                    return last;
                }
            }
        }
        let (client, first) = ClientExchange::start(hash, USER, self.password, CLIENT_NONCE);
        self.scram = Some(client);
        self.responded = false;
        first
    }
}

/// The fjord-auth side: every chunk through the parsers and both exchanges.
struct Pure {
    /// The exchange started by the last client-first chunk, and whether it is the seeded user's.
    server: Option<(ServerExchange, bool)>,
    client: ClientExchange,
    client_responded: bool,
    /// A few PBKDF2 runs per input at most (each client answer costs one).
    client_attempts: u8,
}

impl Pure {
    fn new(hash: Hash) -> Pure {
        Pure {
            server: None,
            client: ClientExchange::start(hash, USER, PASSWORD, CLIENT_NONCE).0,
            client_responded: false,
            client_attempts: 0,
        }
    }

    fn feed(&mut self, h: &Harness, hash: Hash, chunk: &[u8]) {
        if let Some((server, user_known)) = self.server.take() {
            if let Ok(last) = server.finish(chunk) {
                assert!(user_known, "a SCRAM exchange succeeded for an unknown user");
                assert!(last.starts_with(b"v="));
            }
        }
        if let Ok(first) = scram::parse_client_first(chunk) {
            assert!(!first.user.is_empty());
            let credential = (first.user == USER).then(|| {
                let i = usize::from(hash == Hash::Sha512);
                h.credentials[i].clone()
            });
            let known = credential.is_some();
            let (server, message) =
                ServerExchange::start(hash, &first, credential, b"secret", "servernonce");
            assert!(message.starts_with(format!("r={}servernonce,", first.nonce).as_bytes()));
            self.server = Some((server, known));
        }
        if let Ok(message) = fjord_auth::plain::parse(chunk) {
            assert!(!message.user.is_empty() && !message.password.is_empty());
            assert!(!message.user.contains('\0') && !message.password.contains(&0));
        }
        if self.client_responded {
            let _ = self.client.verify(chunk);
        } else if self.client_attempts < 4 {
            // Only messages that extend the nonce get as far as PBKDF2.
            if chunk.starts_with(format!("r={CLIENT_NONCE}").as_bytes()) {
                self.client_attempts += 1;
            }
            if let Ok(last) = self.client.respond(chunk) {
                assert!(last.starts_with(b"c=biws,r="));
                self.client_responded = true;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let h = &*HARNESS;
    let mut input = Input(data);
    let Some(setup) = input.byte() else { return };
    let mechanism = setup & 3;
    let handshake_version = i16::from(setup >> 2 & 1);
    let clock = ManualClock::new(1_000_000);
    let settings = SaslSettings {
        reauth_ms: if setup & 0x10 != 0 { 1_000 } else { 0 },
        max_token_bytes: if setup & 0x20 != 0 { 200 } else { 64 << 10 },
        ..SaslSettings::default()
    };
    let max_token_bytes = settings.max_token_bytes;
    let auth = Arc::new(Authenticator::new(settings, h.store.clone(), clock.clone()));
    let peer: SocketAddr = "10.1.2.3:5555".parse().expect("address");
    let mut conn = SaslConnection::new(auth, Some(peer));
    let mut oracle = Oracle {
        mechanism,
        password: if setup & 0x40 != 0 {
            b"wrong"
        } else {
            PASSWORD
        },
        scram: None,
        responded: false,
        uses: 0,
    };
    let pure_hash = if mechanism == 1 {
        Hash::Sha512
    } else {
        Hash::Sha256
    };
    let mut pure = Pure::new(pure_hash);
    let mut last_server: Option<Bytes> = None;
    // Whether the last token went through the server untouched from an honest client with the
    // right password (then a success must verify on the client side).
    let honest = setup & 0x40 == 0;

    h.runtime.block_on(async {
        let mut pending: Option<(Bytes, Sent, bool)> = None;
        if setup & 8 != 0 {
            let name = mechanism_name(mechanism).to_string();
            pending = handshake(handshake_version, name).map(|f| (f, Sent::Other, false));
        }
        loop {
            // The SASL token's length, when the frame carries one.
            let mut token_len = 0;
            let (frame, sent, from_oracle) = match pending.take() {
                Some(p) => p,
                None => {
                    let Some(s) = input.byte() else { break };
                    match s % 8 {
                        0 => {
                            let version = i16::from(s >> 3) % 3;
                            let chunk = input.chunk();
                            pure.feed(h, pure_hash, chunk);
                            token_len = chunk.len();
                            match authenticate(version, chunk) {
                                Some(f) => (f, Sent::Authenticate(version), false),
                                None => continue,
                            }
                        }
                        1 => {
                            let chunk = input.chunk();
                            pure.feed(h, pure_hash, chunk);
                            token_len = chunk.len();
                            (Bytes::copy_from_slice(chunk), Sent::Bare, false)
                        }
                        2 => {
                            let version = i16::from(s >> 3 & 1);
                            let chunk = input.chunk();
                            pure.feed(h, pure_hash, chunk);
                            let name = String::from_utf8_lossy(chunk).into_owned();
                            match handshake(version, name) {
                                Some(f) => (f, Sent::Other, false),
                                None => continue,
                            }
                        }
                        3 => {
                            let name = mechanism_name(s >> 3).to_string();
                            match handshake(i16::from(s >> 5 & 1), name) {
                                Some(f) => (f, Sent::Other, false),
                                None => continue,
                            }
                        }
                        4 | 7 => {
                            if oracle.uses >= 16 {
                                continue;
                            }
                            oracle.uses += 1;
                            let mut token = oracle.next(last_server.as_deref());
                            let corrupt = s % 8 == 7;
                            if corrupt {
                                let chunk = input.chunk();
                                if let (Some(&x), false) = (chunk.first(), token.is_empty()) {
                                    let at = usize::from(chunk.get(1).copied().unwrap_or(0));
                                    let at = at % token.len();
                                    token[at] ^= x;
                                }
                            }
                            pure.feed(h, pure_hash, &token);
                            token_len = token.len();
                            let kind = (s >> 3) % 4;
                            if kind == 3 {
                                (Bytes::from(token), Sent::Bare, !corrupt)
                            } else {
                                let version = i16::from(kind);
                                match authenticate(version, &token) {
                                    Some(f) => (f, Sent::Authenticate(version), !corrupt),
                                    None => continue,
                                }
                            }
                        }
                        5 => {
                            clock.advance(i64::from(input.u16()) * 10);
                            continue;
                        }
                        _ => {
                            let frame = if s & 8 != 0 {
                                request(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
                            } else {
                                request(ApiKey::Metadata, 12, &MetadataRequest::default())
                            };
                            match frame {
                                Some(f) => (f, Sent::Other, false),
                                None => continue,
                            }
                        }
                    }
                }
            };
            match conn.gate(&frame) {
                Gate::Close(_) => break,
                Gate::Dispatch => {
                    let key = frame.get(..2).map(|k| i16::from_be_bytes([k[0], k[1]]));
                    assert!(
                        conn.is_authenticated() || key == Some(ApiKey::ApiVersions as i16),
                        "gate dispatched {key:?} before authentication"
                    );
                    // The broker would serve it; this harness has no broker behind it.
                    continue;
                }
                Gate::Sasl => {}
            }
            let reply = conn.handle(frame).await;
            if let Some(principal) = &reply.principal {
                assert_eq!(principal.kind, "User");
                assert_eq!(principal.name, USER, "authenticated as someone else");
                assert!(conn.is_authenticated());
                assert!(!reply.close);
                assert!(
                    token_len <= max_token_bytes,
                    "an oversized token authenticated"
                );
                if from_oracle && honest {
                    if let (Some(client), Some(frame)) = (&oracle.scram, &reply.frame) {
                        if oracle.responded && oracle.hash().is_some() {
                            if let Some(last) = server_token(sent, frame) {
                                assert_eq!(
                                    client.verify(&last),
                                    Ok(()),
                                    "the server's signature does not verify"
                                );
                            }
                        }
                    }
                }
                // A new exchange (re-authentication) starts from a new client.
                oracle.scram = None;
                oracle.responded = false;
            }
            if !reply.close {
                assert!(
                    reply.frame.is_some(),
                    "an open connection's reply has no frame"
                );
            }
            if !reply.delay.is_zero() {
                assert!(reply.close, "a failure delay without a close");
                tokio::time::sleep(reply.delay.min(Duration::from_secs(60))).await;
            }
            if let Some(frame) = &reply.frame {
                if let Some(token) = server_token(sent, frame) {
                    last_server = Some(token);
                }
            }
            if reply.close {
                break;
            }
        }
    });
});
