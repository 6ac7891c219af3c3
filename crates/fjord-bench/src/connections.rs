//! Connection scale: many idle client connections to one broker, each of which has sent
//! ApiVersions and Metadata (what every Kafka client does first), spread over several 127.0.0.x
//! source addresses. Reports the broker's RSS and CPU time with the connections open; the caller
//! then measures a producer's latency on top.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, MetadataRequest, RequestHeader};
use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Connections per source address (well below the ~28k ephemeral ports of one address).
const PER_SOURCE: usize = 10_000;

fn frame<R: Encodable + HeaderVersion>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    request: &R,
) -> anyhow::Result<BytesMut> {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("fjord-bench-idle")));
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header.encode(&mut buf, R::header_version(version))?;
    request.encode(&mut buf, version)?;
    let len = i32::try_from(buf.len() - 4)?;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf)
}

async fn read_response(stream: &mut TcpStream) -> anyhow::Result<()> {
    let size = stream.read_i32().await?;
    if !(4..=64 << 20).contains(&size) {
        bail!("bad response size {size}");
    }
    let mut body = vec![0u8; size as usize];
    stream.read_exact(&mut body).await?;
    Ok(())
}

/// Opens one connection from `source` and does the client handshake on it.
async fn open(source: Ipv4Addr, broker: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.into(), 0))?;
    let mut stream = socket.connect(broker).await?;
    let api_versions = ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("fjord-bench"))
        .with_client_software_version(StrBytes::from_static_str("1"));
    stream
        .write_all(&frame(ApiKey::ApiVersions, 3, 1, &api_versions)?)
        .await?;
    read_response(&mut stream).await?;
    let metadata = MetadataRequest::default().with_topics(Some(Vec::new()));
    stream
        .write_all(&frame(ApiKey::Metadata, 12, 2, &metadata)?)
        .await?;
    read_response(&mut stream).await?;
    Ok(stream)
}

/// Opens `count` idle connections (64 handshakes at a time) and returns them with the time it
/// took.
pub async fn open_idle(broker: &str, count: usize) -> anyhow::Result<(Vec<TcpStream>, Duration)> {
    let broker: SocketAddr = broker.parse().context("broker address")?;
    let started = Instant::now();
    let mut open_streams = Vec::with_capacity(count);
    let mut next = 0usize;
    while next < count {
        let batch: Vec<usize> = (next..count.min(next + 64)).collect();
        next += batch.len();
        let handshakes = batch.iter().map(|i| {
            let source = Ipv4Addr::new(127, 0, 0, 1 + (i / PER_SOURCE) as u8);
            open(source, broker)
        });
        for result in futures_join(handshakes).await {
            open_streams.push(result?);
        }
    }
    Ok((open_streams, started.elapsed()))
}

async fn futures_join<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// The open-file limit of this process (soft), which bounds how many connections one process can
/// hold.
pub fn fd_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024)
}
