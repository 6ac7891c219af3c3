//! A minimal Kafka protocol client for the admin commands: one connection, one request at a
//! time, versions negotiated with ApiVersions. Messages come from `kafka-protocol`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiVersionsRequest, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(30);
const MAX_RESPONSE: usize = 256 << 20;

/// One connection to one broker.
pub struct Client {
    stream: TcpStream,
    correlation_id: i32,
    versions: HashMap<i16, (i16, i16)>,
}

impl Client {
    /// Connects and negotiates API versions.
    pub async fn connect(address: &str) -> anyhow::Result<Client> {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| anyhow!("connecting to {address}: timed out"))?
            .with_context(|| format!("connecting to {address}"))?;
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
        Ok(client)
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
