//! The Kafka listener: accepts connections, frames requests, answers them in order.
//!
//! Each connection has a reader task and a writer task. The reader reads one length-prefixed
//! frame at a time and hands it to [`fjord_broker::dispatch::start`], which does the in-order
//! part of the work (queueing produced batches) and returns the response as a future. The
//! writer awaits those futures in arrival order and writes each response, so responses leave in
//! request order while later requests are already being worked on (pipelining, bounded by
//! `max_inflight_per_connection`).
//!
//! Bad input closes the connection, never the broker: a frame larger than
//! `max_request_bytes`, a negative length, an unknown API, a version not served or a body that
//! does not decode are logged and the socket is closed (what Kafka does).
//!
//! Shutdown: cancelling the token stops accepting and stops every reader; writers still answer
//! every request already read; [`serve`] returns when all connections are done or when
//! `drain_timeout` has passed.

pub mod fdlimit;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fjord_broker::dispatch::{self, Reply};
use fjord_broker::Broker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Largest request frame accepted (Kafka's `socket.request.max.bytes`).
    pub max_request_bytes: usize,
    /// Connections served at once; further ones wait in the accept queue.
    pub max_connections: usize,
    /// Requests of one connection being worked on before its reader waits. Deep on purpose: a
    /// produce request is answered only after a PUT and a commit (tens of milliseconds on S3), and
    /// producers without idempotence (librdkafka's default) send one small request per partition
    /// with no limit of their own; at 32, a 12-partition producer at 20 MB/s fell behind by
    /// seconds on simulated S3 latency. Memory stays bounded by `max_request_memory` and by the
    /// writer's buffer limit, not by this count.
    pub max_inflight_per_connection: usize,
    /// How long shutdown waits for connections to finish their requests.
    pub drain_timeout: Duration,
    /// Bytes of request frames held at once across all connections (Kafka's
    /// `queued.max.request.bytes`): a connection waits before reading a frame that would exceed
    /// it, so slow or hostile clients cannot make the broker allocate without bound.
    pub max_request_memory: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            max_request_bytes: 100 << 20,
            max_connections: 100_000,
            max_inflight_per_connection: 1024,
            drain_timeout: Duration::from_secs(30),
            max_request_memory: 512 << 20,
        }
    }
}

/// Binds a listener on `address` (`host:port`, the first address it resolves to) with room for
/// `backlog` connections that the kernel has completed but the broker not yet accepted.
/// `TcpListener::bind` would queue only 128: when thousands of clients reconnect at once after a
/// restart, or wait while the broker is at its connection cap, the kernel drops the SYNs beyond
/// that and those clients retry after one, three, seven seconds. Like std, sets `SO_REUSEADDR`
/// so a restarted broker can bind while old connections linger in TIME_WAIT.
pub async fn bind(address: &str, backlog: u32) -> std::io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(address).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr) {
            Ok(()) => return socket.listen(backlog.max(1)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{address} resolves to no address"),
        )
    }))
}

/// Serves Kafka clients on `listener` until `shutdown` is cancelled and connections drained.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    settings: ServerSettings,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    let memory = Arc::new(Semaphore::new(settings.max_request_memory.max(1)));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let broker = broker.clone();
                let settings = settings.clone();
                let shutdown = shutdown.clone();
                let memory = memory.clone();
                connections.spawn(async move {
                    connection(stream, peer, broker, settings, memory, shutdown).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    tracing::info!(
        open = connections.len(),
        "listener closed; draining connections"
    );
    let drained = tokio::time::timeout(settings.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "drain timeout; closing remaining connections"
        );
        connections.shutdown().await;
    }
}

#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("request size {0} is negative or over the limit of {1} bytes")]
    Size(i32, usize),
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A request frame and its share of the request-memory budget, released with the response.
struct Frame {
    bytes: Bytes,
    memory: OwnedSemaphorePermit,
}

async fn read_frame(
    reader: &mut OwnedReadHalf,
    max: usize,
    memory: &Arc<Semaphore>,
    budget: usize,
) -> Result<Frame, FrameError> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let size = i32::from_be_bytes(len);
    let n = usize::try_from(size)
        .ok()
        .filter(|n| *n <= max)
        .ok_or(FrameError::Size(size, max))?;
    // Wait for room before allocating what the client announced.
    let share = u32::try_from(n.clamp(1, budget.max(1))).unwrap_or(u32::MAX);
    let memory = memory
        .clone()
        .acquire_many_owned(share)
        .await
        .map_err(|_| FrameError::Closed)?;
    // Read straight into uninitialised capacity: zeroing a megabyte-sized produce request first
    // showed up in profiles.
    let mut buf = BytesMut::with_capacity(n);
    let mut body = AsyncReadExt::take(&mut *reader, n as u64);
    while buf.len() < n {
        if body.read_buf(&mut buf).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
    Ok(Frame {
        bytes: buf.freeze(),
        memory,
    })
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    settings: ServerSettings,
    memory: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    tracing::debug!(%peer, "connection opened");
    let (mut reader, writer) = stream.into_split();
    let (tx, rx) =
        mpsc::channel::<(Reply, OwnedSemaphorePermit)>(settings.max_inflight_per_connection.max(1));
    let writer_task = tokio::spawn(write_replies(writer, rx, peer));
    loop {
        let frame = tokio::select! {
            () = shutdown.cancelled() => break,
            frame = read_frame(&mut reader, settings.max_request_bytes, &memory, settings.max_request_memory) => frame,
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(FrameError::Closed) => break,
            Err(e) => {
                tracing::info!(%peer, error = %e, "closing connection");
                break;
            }
        };
        match dispatch::start_from(&broker, frame.bytes, Some(peer)).await {
            Ok(started) => {
                if tx.send((started.reply, frame.memory)).await.is_err() {
                    break; // the writer failed: the socket is gone
                }
            }
            Err(e) => {
                tracing::info!(%peer, error = %e, "closing connection");
                break;
            }
        }
    }
    // Let the writer answer everything already read, then close.
    drop(tx);
    let _ = writer_task.await;
    tracing::debug!(%peer, "connection closed");
}

async fn write_replies(
    mut writer: OwnedWriteHalf,
    mut rx: mpsc::Receiver<(Reply, OwnedSemaphorePermit)>,
    peer: SocketAddr,
) {
    // Each request's memory share is released (dropped) once its response is written.
    while let Some((reply, _memory)) = rx.recv().await {
        let bytes = match reply.await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(%peer, error = %e, "closing connection");
                return;
            }
        };
        if let Err(e) = writer.write_all(&bytes).await {
            tracing::debug!(%peer, error = %e, "write failed");
            return;
        }
    }
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bind_listens_on_the_address_it_resolves() {
        let listener = bind("localhost:0", 16).await.unwrap();
        let address = listener.local_addr().unwrap();
        assert!(address.ip().is_loopback());
        let client = TcpStream::connect(address).await.unwrap();
        let (_, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
    }

    #[tokio::test]
    async fn bind_reports_an_address_in_use_or_unresolvable_as_an_error() {
        let first = bind("127.0.0.1:0", 16).await.unwrap();
        let taken = first.local_addr().unwrap().to_string();
        assert!(bind(&taken, 16).await.is_err());
        assert!(bind("no-such-host.invalid:9092", 16).await.is_err());
        assert!(bind("no port", 16).await.is_err());
    }
}
