//! A minimal Kafka protocol client for the admin commands: one connection, one request at a
//! time, versions negotiated with ApiVersions, optionally over TLS and authenticated with SASL
//! (PLAIN, SCRAM-SHA-256/512) as [`Security`] says. Messages come from `kafka-protocol`.
//!
//! The security settings are the process's: the CLI sets them once from its flags
//! ([`configure`]) before any command connects, and every connection of the command uses them
//! (a command may connect to several brokers: the controller, a group's coordinator).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiVersionsRequest, RequestHeader, ResponseHeader, SaslAuthenticateRequest,
    SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(30);
const MAX_RESPONSE: usize = 256 << 20;

/// How the CLI's connections are secured (Kafka client settings of the same names).
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// TLS: the CA file the brokers' certificates must chain to, and an optional client
    /// certificate and key for mutual TLS.
    pub tls: Option<(PathBuf, Option<(PathBuf, PathBuf)>)>,
    /// SASL: mechanism, user, password.
    pub sasl: Option<(String, String, String)>,
}

static SECURITY: OnceLock<Security> = OnceLock::new();

/// Sets how this process's admin connections are secured (once, before connecting).
pub fn configure(security: Security) -> anyhow::Result<()> {
    SECURITY
        .set(security)
        .map_err(|_| anyhow!("connection security was configured twice"))
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One connection to one broker.
pub struct Client {
    stream: Box<dyn Stream>,
    correlation_id: i32,
    versions: HashMap<i16, (i16, i16)>,
}

impl Client {
    /// Connects, secures the connection as configured and negotiates API versions.
    pub async fn connect(address: &str) -> anyhow::Result<Client> {
        let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| anyhow!("connecting to {address}: timed out"))?
            .with_context(|| format!("connecting to {address}"))?;
        let security = SECURITY.get().cloned().unwrap_or_default();
        let stream: Box<dyn Stream> = match &security.tls {
            None => Box::new(tcp),
            Some((ca, identity)) => {
                let identity = identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
                let config = fjord_tls::client_config(ca, identity)?;
                let host = address
                    .rsplit_once(':')
                    .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
                    .unwrap_or(address);
                let name = rustls_name(host)?;
                let tls = tokio::time::timeout(
                    TIMEOUT,
                    fjord_tls::TlsConnector::from(Arc::clone(&config)).connect(name, tcp),
                )
                .await
                .map_err(|_| anyhow!("TLS handshake with {address}: timed out"))?
                .with_context(|| format!("TLS handshake with {address}"))?;
                Box::new(tls)
            }
        };
        let mut client = Client {
            stream,
            correlation_id: 0,
            versions: HashMap::new(),
        };
        let response = client
            .send(ApiVersionsRequest::default(), 0)
            .await
            .context("ApiVersions")?;
        if response.error_code != 0 {
            bail!("broker refused ApiVersions (error {})", response.error_code);
        }
        client.versions = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        if let Some((mechanism, user, password)) = &security.sasl {
            client
                .authenticate(mechanism, user, password)
                .await
                .with_context(|| format!("SASL {mechanism} authentication as {user}"))?;
        }
        Ok(client)
    }

    /// SaslHandshake, then the mechanism's tokens in SaslAuthenticate requests (KIP-152).
    async fn authenticate(
        &mut self,
        mechanism: &str,
        user: &str,
        password: &str,
    ) -> anyhow::Result<()> {
        use fjord_auth::scram::{ClientExchange, Hash};
        let handshake = self
            .call(
                SaslHandshakeRequest::default()
                    .with_mechanism(StrBytes::from_string(mechanism.to_string())),
            )
            .await?;
        if handshake.error_code != 0 {
            let offered: Vec<&str> = handshake.mechanisms.iter().map(|m| m.as_str()).collect();
            bail!(
                "the broker refused the mechanism (error {}); it offers {}",
                handshake.error_code,
                offered.join(", ")
            );
        }
        let hash = match mechanism.to_ascii_uppercase().as_str() {
            "PLAIN" => None,
            "SCRAM-SHA-256" => Some(Hash::Sha256),
            "SCRAM-SHA-512" => Some(Hash::Sha512),
            other => bail!("SASL mechanism {other} is not supported by this client"),
        };
        let Some(hash) = hash else {
            self.token(fjord_auth::plain::encode(user, password.as_bytes()))
                .await?;
            return Ok(());
        };
        let (mut exchange, first) =
            ClientExchange::start(hash, user, password.as_bytes(), &fjord_auth::scram::nonce());
        let server_first = self.token(first).await?;
        let last = exchange.respond(&server_first)?;
        let server_final = self.token(last).await?;
        exchange.verify(&server_final)?;
        Ok(())
    }

    async fn token(&mut self, token: Vec<u8>) -> anyhow::Result<Bytes> {
        let response = self
            .call(SaslAuthenticateRequest::default().with_auth_bytes(token.into()))
            .await?;
        if response.error_code != 0 {
            bail!(
                "{}",
                response
                    .error_message
                    .as_ref()
                    .map(|m| m.as_str().to_string())
                    .unwrap_or_else(|| format!("error {}", response.error_code))
            );
        }
        Ok(response.auth_bytes)
    }

    /// The highest version of `R` both sides support.
    pub fn version<R: Request>(&self) -> anyhow::Result<i16> {
        let (min, max) = self
            .versions
            .get(&R::KEY)
            .copied()
            .ok_or_else(|| anyhow!("the broker does not support API key {}", R::KEY))?;
        let ours = R::VERSIONS;
        let v = max.min(ours.max);
        if v < min.max(ours.min) {
            bail!("no common version for API key {}", R::KEY);
        }
        Ok(v)
    }

    /// Sends a request at the negotiated version.
    pub async fn call<R: Request>(&mut self, request: R) -> anyhow::Result<R::Response> {
        let version = self.version::<R>()?;
        self.send(request, version).await
    }

    async fn send<R: Request>(&mut self, request: R, version: i16) -> anyhow::Result<R::Response> {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("fjord-cli")));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header.encode(&mut buf, R::header_version(version))?;
        request.encode(&mut buf, version)?;
        let len = (buf.len() - 4) as i32;
        buf[0..4].copy_from_slice(&len.to_be_bytes());
        let frame = tokio::time::timeout(TIMEOUT, async {
            self.stream.write_all(&buf).await?;
            let size = self.stream.read_i32().await?;
            let size = usize::try_from(size)
                .ok()
                .filter(|s| *s <= MAX_RESPONSE)
                .ok_or_else(|| std::io::Error::other(format!("bad response size {size}")))?;
            let mut body = BytesMut::zeroed(size);
            self.stream.read_exact(&mut body).await?;
            Ok::<Bytes, std::io::Error>(body.freeze())
        })
        .await
        .map_err(|_| anyhow!("request timed out"))??;
        let mut frame = frame;
        let header = ResponseHeader::decode(
            &mut frame,
            <R::Response as HeaderVersion>::header_version(version),
        )?;
        if header.correlation_id != self.correlation_id {
            bail!(
                "response correlation id {} does not match {}",
                header.correlation_id,
                self.correlation_id
            );
        }
        R::Response::decode(&mut frame, version)
    }
}

fn rustls_name(host: &str) -> anyhow::Result<rustls_pki_types::ServerName<'static>> {
    rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| anyhow!("{host} is not a valid TLS server name: {e}"))
}
