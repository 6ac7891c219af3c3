//! SCRAM (RFC 5802, with SHA-256 and SHA-512 as RFC 7677 and Kafka use them).
//!
//! Kafka's SCRAM has no channel binding (`n` or `y` as the GS2 flag, never `p`) and no
//! extensions Fjord serves (`tokenauth` is for delegation tokens, which Fjord does not issue), and
//! uses the password's UTF-8 bytes as they are (no SASLprep), so that credentials made by Kafka's
//! tools verify here.
//!
//! [`ServerExchange`] is the broker's side: [`ServerExchange::start`] takes the client's first
//! message and answers the server's; [`ServerExchange::finish`] checks the client's proof and
//! answers the server's signature. An unknown user gets the same answers as a known one with a
//! wrong password (a salt derived from a server secret, then a failed proof), so the exchange does
//! not tell which users exist. [`ClientExchange`] is the client's side (the CLI and tests).
//!
//! Every message is parsed with bounds: nothing a client sends can panic or allocate beyond the
//! message's own size.

use std::num::NonZeroU32;

use aws_lc_rs::{constant_time, digest, hmac, pbkdf2};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

/// The hash a mechanism uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hash {
    /// SCRAM-SHA-256.
    Sha256,
    /// SCRAM-SHA-512.
    Sha512,
}

impl Hash {
    /// The SASL mechanism name.
    pub fn mechanism(self) -> &'static str {
        match self {
            Hash::Sha256 => "SCRAM-SHA-256",
            Hash::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// Output length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha512 => 64,
        }
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            Hash::Sha256 => hmac::HMAC_SHA256,
            Hash::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Hash::Sha256 => &digest::SHA256,
            Hash::Sha512 => &digest::SHA512,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            Hash::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Hash::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn mac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(self.hmac(), key), data)
            .as_ref()
            .to_vec()
    }

    fn h(self, data: &[u8]) -> Vec<u8> {
        digest::digest(self.digest(), data).as_ref().to_vec()
    }
}

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message that is not what SCRAM allows at this step.
    #[error("malformed SCRAM message: {0}")]
    Malformed(String),
    /// A feature SCRAM defines that Kafka does not use (channel binding, mandatory extensions,
    /// delegation tokens).
    #[error("unsupported SCRAM feature: {0}")]
    Unsupported(String),
    /// The proof does not verify: wrong password, or no such user.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The server's signature does not verify (client side: not the server it claims to be).
    #[error("the server's signature does not verify")]
    BadServerSignature,
}

/// The most iterations a client is asked to do or a credential may have (Kafka's maximum).
pub const MAX_ITERATIONS: u32 = 16384;
/// The fewest (Kafka's minimum).
pub const MIN_ITERATIONS: u32 = 4096;

/// A user's credential as the server stores it (RFC 5802's StoredKey and ServerKey).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The hash.
    pub hash: Hash,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// The salt.
    pub salt: Vec<u8>,
    /// H(ClientKey).
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("hash", &self.hash)
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// PBKDF2 of a password: RFC 5802's SaltedPassword.
pub fn salted_password(hash: Hash, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0u8; hash.output_len()];
    let iterations = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    pbkdf2::derive(hash.pbkdf2(), iterations, salt, password, &mut out);
    out
}

impl Credential {
    /// The credential of `password` with `salt` and `iterations`.
    pub fn from_password(hash: Hash, password: &[u8], salt: &[u8], iterations: u32) -> Credential {
        let salted = salted_password(hash, password, salt, iterations);
        Credential::from_salted_password(hash, &salted, salt, iterations)
    }

    /// The credential of a SaltedPassword (what AlterUserScramCredentials carries).
    pub fn from_salted_password(
        hash: Hash,
        salted: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Credential {
        let client_key = hash.mac(salted, b"Client Key");
        Credential {
            hash,
            iterations,
            salt: salt.to_vec(),
            stored_key: hash.h(&client_key),
            server_key: hash.mac(salted, b"Server Key"),
        }
    }

    /// Whether `password` is this credential's (PLAIN checks passwords against SCRAM
    /// credentials). Costs one PBKDF2.
    pub fn verify_password(&self, password: &[u8]) -> bool {
        let candidate = Credential::from_password(self.hash, password, &self.salt, self.iterations);
        constant_time::verify_slices_are_equal(&candidate.stored_key, &self.stored_key).is_ok()
    }
}

/// A fresh random nonce (24 random bytes in base64: printable and without commas).
pub fn nonce() -> String {
    B64.encode(random_bytes::<24>())
}

/// `N` random bytes from a cryptographically secure generator (seeded by the OS).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut out = [0u8; N];
    rand::thread_rng().fill_bytes(&mut out);
    out
}

/// The client's first message, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// The user name (`n=`, with `=2C` and `=3D` decoded).
    pub user: String,
    /// The client's nonce.
    pub nonce: String,
    /// The GS2 header (`n,,` or `y,,` or with an authzid), echoed in the final message.
    gs2_header: String,
    /// The message without the GS2 header.
    bare: String,
}

fn text(message: &[u8]) -> Result<&str, ScramError> {
    std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8".into()))
}

/// Decodes a SCRAM `saslname` (RFC 5802: `=2C` is `,` and `=3D` is `=`).
fn decode_name(name: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3);
        match code {
            Some("2C") => out.push(','),
            Some("3D") => out.push('='),
            _ => {
                return Err(ScramError::Malformed(
                    "bad '=' escape in a user name".into(),
                ))
            }
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Encodes a user name as a SCRAM `saslname`.
pub fn encode_name(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

fn valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// One `x=value` attribute.
fn attribute(part: Option<&str>, name: char) -> Result<&str, ScramError> {
    let part = part.ok_or_else(|| ScramError::Malformed(format!("missing '{name}='")))?;
    let mut chars = part.chars();
    if chars.next() != Some(name) || chars.next() != Some('=') {
        return Err(ScramError::Malformed(format!(
            "expected '{name}=', found {:?}",
            part.get(..2).unwrap_or(part)
        )));
    }
    Ok(&part[2..])
}

/// Parses the client's first message.
pub fn parse_client_first(message: &[u8]) -> Result<ClientFirst, ScramError> {
    let message = text(message)?;
    let mut parts = message.splitn(3, ',');
    let flag = parts.next().unwrap_or_default();
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => {
            return Err(ScramError::Unsupported("channel binding".into()));
        }
        _ => return Err(ScramError::Malformed("bad GS2 channel-binding flag".into())),
    }
    let authzid = parts
        .next()
        .ok_or_else(|| ScramError::Malformed("no GS2 header".into()))?;
    let bare = parts
        .next()
        .ok_or_else(|| ScramError::Malformed("no client-first-message-bare".into()))?;
    let gs2_header = format!("{flag},{authzid},");
    let mut fields = bare.split(',');
    let first = fields.next();
    if first.is_some_and(|f| f.starts_with("m=")) {
        return Err(ScramError::Unsupported("mandatory extension".into()));
    }
    let user = decode_name(attribute(first, 'n')?)?;
    if user.is_empty() {
        return Err(ScramError::Malformed("empty user name".into()));
    }
    let nonce = attribute(fields.next(), 'r')?;
    if !valid_nonce(nonce) {
        return Err(ScramError::Malformed("bad client nonce".into()));
    }
    for extension in fields {
        if extension.starts_with("tokenauth=") {
            return Err(ScramError::Unsupported("delegation tokens".into()));
        }
        if !extension.contains('=') {
            return Err(ScramError::Malformed("bad extension".into()));
        }
    }
    if !authzid.is_empty() {
        let authzid = decode_name(attribute(Some(authzid), 'a')?)?;
        if authzid != user {
            return Err(ScramError::Unsupported(
                "an authorization id other than the user".into(),
            ));
        }
    }
    Ok(ClientFirst {
        user,
        nonce: nonce.to_string(),
        gs2_header,
        bare: bare.to_string(),
    })
}

/// The server's side of one exchange, between its first and final messages.
pub struct ServerExchange {
    credential: Credential,
    /// False for an unknown user: the proof never verifies.
    known: bool,
    gs2_header: String,
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

impl ServerExchange {
    /// Answers `first` for `credential` (`None`: no such user; the exchange then goes on with a
    /// decoy salt derived from `secret` and the user name, and fails at the proof). Returns the
    /// exchange and the server's first message.
    pub fn start(
        hash: Hash,
        first: &ClientFirst,
        credential: Option<Credential>,
        secret: &[u8],
        server_nonce: &str,
    ) -> (ServerExchange, Vec<u8>) {
        let (credential, known) = match credential {
            Some(c) if c.hash == hash => (c, true),
            _ => (decoy(hash, secret, &first.user), false),
        };
        let nonce = format!("{}{}", first.nonce, server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credential.salt),
            credential.iterations
        );
        let message = server_first.clone().into_bytes();
        (
            ServerExchange {
                credential,
                known,
                gs2_header: first.gs2_header.clone(),
                nonce,
                client_first_bare: first.bare.clone(),
                server_first,
            },
            message,
        )
    }

    /// Checks the client's final message; on success returns the server's final message.
    pub fn finish(self, client_final: &[u8]) -> Result<Vec<u8>, ScramError> {
        let message = text(client_final)?;
        let (without_proof, proof) = message
            .rsplit_once(",p=")
            .ok_or_else(|| ScramError::Malformed("no proof".into()))?;
        let mut fields = without_proof.split(',');
        let binding = attribute(fields.next(), 'c')?;
        let expected = B64.encode(self.gs2_header.as_bytes());
        if binding != expected {
            return Err(ScramError::Malformed(
                "channel binding does not match the first message".into(),
            ));
        }
        // RFC 5802 wants the combined nonce back unchanged. librdkafka up to 2.0 sends its own
        // nonce in front of it again; Kafka accepts any nonce that ends with the combined one,
        // and so does Fjord (the proof covers the message as sent, so nothing is weakened).
        let nonce = attribute(fields.next(), 'r')?;
        if !nonce.ends_with(&self.nonce) {
            return Err(ScramError::Malformed("nonce does not match".into()));
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64".into()))?;
        let hash = self.credential.hash;
        if proof.len() != hash.output_len() {
            return Err(ScramError::Malformed("proof has the wrong length".into()));
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hash.mac(&self.credential.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        let verified = constant_time::verify_slices_are_equal(
            &hash.h(&client_key),
            &self.credential.stored_key,
        )
        .is_ok();
        if !verified || !self.known {
            return Err(ScramError::InvalidCredentials);
        }
        let server_signature = hash.mac(&self.credential.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

/// The credential an unknown user appears to have: a salt that is the same for every attempt
/// at that name (derived from the server's secret) and keys nothing verifies against.
fn decoy(hash: Hash, secret: &[u8], user: &str) -> Credential {
    let salt = hash.mac(secret, user.as_bytes());
    Credential {
        hash,
        iterations: MIN_ITERATIONS,
        salt: salt[..16.min(salt.len())].to_vec(),
        stored_key: random_bytes::<64>()[..hash.output_len()].to_vec(),
        server_key: vec![0; hash.output_len()],
    }
}

/// The client's side of one exchange.
pub struct ClientExchange {
    hash: Hash,
    password: Vec<u8>,
    nonce: String,
    client_first_bare: String,
    server_signature: Option<Vec<u8>>,
}

impl ClientExchange {
    /// Starts an exchange for `user`; returns it and the client's first message.
    pub fn start(
        hash: Hash,
        user: &str,
        password: &[u8],
        nonce: &str,
    ) -> (ClientExchange, Vec<u8>) {
        let bare = format!("n={},r={nonce}", encode_name(user));
        let message = format!("n,,{bare}").into_bytes();
        (
            ClientExchange {
                hash,
                password: password.to_vec(),
                nonce: nonce.to_string(),
                client_first_bare: bare,
                server_signature: None,
            },
            message,
        )
    }

    /// Answers the server's first message with the client's final message.
    pub fn respond(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        let server_first = text(server_first)?;
        let mut fields = server_first.split(',');
        let nonce = attribute(fields.next(), 'r')?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Malformed(
                "the server's nonce does not extend ours".into(),
            ));
        }
        let salt = B64
            .decode(attribute(fields.next(), 's')?)
            .map_err(|_| ScramError::Malformed("salt is not base64".into()))?;
        let iterations: u32 = attribute(fields.next(), 'i')?
            .parse()
            .map_err(|_| ScramError::Malformed("bad iteration count".into()))?;
        if !(1..=MAX_ITERATIONS).contains(&iterations) {
            return Err(ScramError::Malformed(format!("{iterations} iterations")));
        }
        let hash = self.hash;
        let salted = salted_password(hash, &self.password, &salt, iterations);
        let client_key = hash.mac(&salted, b"Client Key");
        let stored_key = hash.h(&client_key);
        let without_proof = format!("c={},r={nonce}", B64.encode(b"n,,"));
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = hash.mac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&client_signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hash.mac(&salted, b"Server Key");
        self.server_signature = Some(hash.mac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server's final message.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let server_final = text(server_final)?;
        let signature = attribute(Some(server_final), 'v')
            .ok()
            .and_then(|v| B64.decode(v).ok())
            .ok_or_else(|| ScramError::Malformed("no server signature".into()))?;
        match &self.server_signature {
            Some(expected)
                if constant_time::verify_slices_are_equal(expected, &signature).is_ok() =>
            {
                Ok(())
            }
            _ => Err(ScramError::BadServerSignature),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SECRET: &[u8] = b"server secret";

    fn exchange(hash: Hash, stored: &Credential, password: &[u8]) -> Result<(), ScramError> {
        let (mut client, first) = ClientExchange::start(hash, "user", password, &nonce());
        let parsed = parse_client_first(&first)?;
        assert_eq!(parsed.user, "user");
        let (server, server_first) =
            ServerExchange::start(hash, &parsed, Some(stored.clone()), SECRET, &nonce());
        let client_final = client.respond(&server_first)?;
        let server_final = server.finish(&client_final)?;
        client.verify(&server_final)
    }

    #[test]
    fn rfc_7677_test_vector() {
        // RFC 7677 section 3 (SCRAM-SHA-256, user "user", password "pencil").
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let stored = Credential::from_password(Hash::Sha256, b"pencil", &salt, 4096);
        let first = parse_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        let (server, server_first) = ServerExchange::start(
            Hash::Sha256,
            &first,
            Some(stored),
            SECRET,
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        );
        assert_eq!(
            server_first,
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let server_final = server
            .finish(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        assert_eq!(
            server_final,
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn both_hashes_accept_the_password_and_refuse_others() {
        for hash in [Hash::Sha256, Hash::Sha512] {
            let stored = Credential::from_password(hash, b"s3cret", b"salty", 4096);
            exchange(hash, &stored, b"s3cret").unwrap();
            assert_eq!(
                exchange(hash, &stored, b"wrong"),
                Err(ScramError::InvalidCredentials)
            );
            assert!(stored.verify_password(b"s3cret"));
            assert!(!stored.verify_password(b"s3cret "));
        }
    }

    #[test]
    fn an_unknown_user_fails_only_at_the_proof_with_a_stable_salt() {
        let first = parse_client_first(b"n,,n=ghost,r=abc").unwrap();
        let (_, a) = ServerExchange::start(Hash::Sha512, &first, None, SECRET, "x");
        let (server, b) = ServerExchange::start(Hash::Sha512, &first, None, SECRET, "x");
        assert_eq!(a, b, "the decoy salt is the same every time");
        let (mut client, _) = ClientExchange::start(Hash::Sha512, "ghost", b"pw", "abc");
        let client_final = client.respond(&b).unwrap();
        assert_eq!(
            server.finish(&client_final),
            Err(ScramError::InvalidCredentials)
        );
    }

    #[test]
    fn a_credential_of_the_other_hash_never_verifies() {
        let stored = Credential::from_password(Hash::Sha256, b"pw", b"salt", 4096);
        assert_eq!(
            exchange(Hash::Sha512, &stored, b"pw"),
            Err(ScramError::InvalidCredentials)
        );
    }

    #[test]
    fn the_final_nonce_of_old_librdkafka_is_accepted() {
        // librdkafka 2.0.2 (Debian's kcat) repeats its nonce before the combined one.
        let stored = Credential::from_password(Hash::Sha256, b"pw", b"salt", 4096);
        let first = parse_client_first(b"n,,n=u,r=CLIENT").unwrap();
        let (server, server_first) =
            ServerExchange::start(Hash::Sha256, &first, Some(stored), SECRET, "SERVER");
        assert_eq!(&server_first[..15], b"r=CLIENTSERVER,");
        let salted = salted_password(Hash::Sha256, b"pw", b"salt", 4096);
        let client_key = Hash::Sha256.mac(&salted, b"Client Key");
        let without_proof = "c=biws,r=CLIENTCLIENTSERVER";
        let auth = format!(
            "n=u,r=CLIENT,{},{without_proof}",
            std::str::from_utf8(&server_first).unwrap()
        );
        let signature = Hash::Sha256.mac(&Hash::Sha256.h(&client_key), auth.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let last = format!("{without_proof},p={}", B64.encode(proof));
        server.finish(last.as_bytes()).unwrap();
    }

    #[test]
    fn names_are_escaped_and_authzids_must_be_the_user() {
        assert_eq!(encode_name("a,b=c"), "a=2Cb=3Dc");
        let first = parse_client_first(b"n,a=a=2Cb,n=a=2Cb,r=xyz").unwrap();
        assert_eq!(first.user, "a,b");
        assert!(matches!(
            parse_client_first(b"n,a=other,n=user,r=xyz"),
            Err(ScramError::Unsupported(_))
        ));
    }

    #[test]
    fn malformed_messages_are_refused() {
        for bad in [
            &b""[..],
            b"n",
            b"n,,",
            b"x,,n=user,r=abc",
            b"p=tls-unique,,n=user,r=abc",
            b"n,,m=ext,n=user,r=abc",
            b"n,,n=,r=abc",
            b"n,,n=us=er,r=abc",
            b"n,,n=user",
            b"n,,n=user,r=",
            b"n,,n=user,r=a b",
            b"n,,n=user,r=abc,tokenauth=true",
            b"n,,r=abc,n=user",
            b"\xff\xfe",
        ] {
            assert!(parse_client_first(bad).is_err(), "{bad:?}");
        }
        let first = parse_client_first(b"n,,n=user,r=abc").unwrap();
        let stored = Credential::from_password(Hash::Sha256, b"pw", b"salt", 4096);
        for bad in [
            &b""[..],
            b"c=biws,r=abcSERVER",
            b"c=eSws,r=abcSERVER,p=AAAA",
            b"c=biws,r=abcOTHER,p=AAAA",
            b"c=biws,r=abcSERVER,p=!!!",
            b"c=biws,r=abcSERVER,p=AAAA",
            b"r=abcSERVER,c=biws,p=AAAA",
        ] {
            let (server, _) =
                ServerExchange::start(Hash::Sha256, &first, Some(stored.clone()), SECRET, "SERVER");
            assert!(server.finish(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_client_refuses_a_server_that_cannot_prove_itself() {
        let (mut client, _) = ClientExchange::start(Hash::Sha256, "u", b"pw", "abc");
        assert!(
            client.respond(b"r=abc,s=c2FsdA==,i=4096").is_err(),
            "nonce not extended"
        );
        assert!(client.respond(b"r=abcd,s=c2FsdA==,i=99999999").is_err());
        client.respond(b"r=abcd,s=c2FsdA==,i=4096").unwrap();
        assert_eq!(
            client.verify(b"v=AAAA"),
            Err(ScramError::BadServerSignature)
        );
    }
}
