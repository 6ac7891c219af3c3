//! The Kafka listener: accepts connections, frames requests, answers them in order.
//!
//! Each connection has a reader task and a writer task. The reader reads one length-prefixed
//! frame at a time and hands it to [`fjord_broker::dispatch::start`], which does the in-order
//! part of the work (queueing produced batches) and returns the response as a future. The
//! writer awaits those futures in arrival order and writes each response, so responses leave in
//! request order while later requests are already being worked on (pipelining, bounded by
//! `max_inflight_per_connection`).
//!
//! A broker serves one or more [`Listener`]s, each with a name and a security protocol as in
//! Kafka's `listeners`. On `SSL` listeners the TLS handshake happens in the connection's task
//! (bounded by [`fjord_tls::HANDSHAKE_TIMEOUT`]), never in the accept loop, and a verified client
//! certificate names the connection's principal through the listener's mapping rules. On
//! `SASL_PLAINTEXT` and `SASL_SSL` listeners the connection's [`SaslConnection`] sees every frame
//! first: until the client authenticates only ApiVersions and the SASL exchange are served, and
//! the principal it authenticates as replaces the session's. Every request carries the
//! connection's [`Session`] (listener, peer, principal).
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
use fjord_broker::sasl::{Authenticator, Gate, SaslConnection};
use fjord_broker::session::{Principal, SecurityProtocol, Session};
use fjord_broker::Broker;
use fjord_tls::{PrincipalMapper, ReloadingTls};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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

/// A bound listener and how its connections are secured.
pub struct Listener {
    name: Arc<str>,
    protocol: SecurityProtocol,
    tcp: TcpListener,
    security: ListenerSecurity,
}

/// What secures a listener's connections; each part is used only by the protocols that need it.
#[derive(Clone, Default)]
pub struct ListenerSecurity {
    /// The certificate of `SSL` and `SASL_SSL` listeners.
    pub tls: Option<Arc<ReloadingTls>>,
    /// Names clients by their certificates.
    pub principals: Arc<PrincipalMapper>,
    /// Authenticates `SASL_PLAINTEXT` and `SASL_SSL` connections.
    pub sasl: Option<Arc<Authenticator>>,
}

/// A listener that cannot be served as configured.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// A TLS listener without certificate files.
    #[error("listener {0}: {1} needs a certificate and key (--ssl-cert-file, --ssl-key-file)")]
    NoTls(String, SecurityProtocol),
    /// A SASL listener without an authenticator.
    #[error("listener {0}: {1} needs SASL settings")]
    NoSasl(String, SecurityProtocol),
}

impl Listener {
    /// A listener named `name` serving `protocol` on `tcp`, secured by the parts of `security`
    /// the protocol uses (TLS for `SSL` and `SASL_SSL`, SASL for `SASL_*`).
    pub fn new(
        name: &str,
        protocol: SecurityProtocol,
        tcp: TcpListener,
        security: ListenerSecurity,
    ) -> Result<Listener, ListenerError> {
        if protocol.uses_tls() && security.tls.is_none() {
            return Err(ListenerError::NoTls(name.to_string(), protocol));
        }
        let sasl = matches!(
            protocol,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        );
        if sasl && security.sasl.is_none() {
            return Err(ListenerError::NoSasl(name.to_string(), protocol));
        }
        Ok(Listener {
            name: Arc::from(name),
            protocol,
            tcp,
            security: ListenerSecurity {
                tls: if protocol.uses_tls() {
                    security.tls
                } else {
                    None
                },
                principals: security.principals,
                sasl: if sasl { security.sasl } else { None },
            },
        })
    }

    /// A plaintext listener named `PLAINTEXT` (what `--listen` serves).
    pub fn plaintext(tcp: TcpListener) -> Listener {
        Listener {
            name: Arc::from("PLAINTEXT"),
            protocol: SecurityProtocol::Plaintext,
            tcp,
            security: ListenerSecurity::default(),
        }
    }

    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Limits shared by every listener of the broker.
#[derive(Clone)]
struct Shared {
    broker: Arc<Broker>,
    settings: ServerSettings,
    permits: Arc<Semaphore>,
    memory: Arc<Semaphore>,
    shutdown: CancellationToken,
}

/// Serves Kafka clients on every listener until `shutdown` is cancelled and connections
/// drained. The connection cap and the request memory are shared by all listeners.
pub async fn serve(
    listeners: Vec<Listener>,
    broker: Arc<Broker>,
    settings: ServerSettings,
    shutdown: CancellationToken,
) {
    let shared = Shared {
        broker,
        permits: Arc::new(Semaphore::new(settings.max_connections.max(1))),
        memory: Arc::new(Semaphore::new(settings.max_request_memory.max(1))),
        settings,
        shutdown,
    };
    let mut loops = JoinSet::new();
    for listener in listeners {
        loops.spawn(accept_loop(listener, shared.clone()));
    }
    while let Some(done) = loops.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "a listener's accept loop failed");
        }
    }
}

async fn accept_loop(listener: Listener, shared: Shared) {
    let Listener {
        name,
        protocol,
        tcp,
        security,
    } = listener;
    let shutdown = shared.shutdown.clone();
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = shared.permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = tcp.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(%peer, error = %e, "setting TCP_NODELAY failed");
                }
                let shared = shared.clone();
                let session = Session {
                    listener: name.clone(),
                    protocol,
                    peer: Some(peer),
                    principal: Principal::anonymous(),
                };
                let security = security.clone();
                connections.spawn(async move {
                    match &security.tls {
                        None => {
                            let (reader, writer) = stream.into_split();
                            connection(reader, writer, session, security.sasl, &shared).await;
                        }
                        Some(tls) => secure(stream, session, tls, &security, &shared).await,
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    drop(tcp);
    tracing::info!(
        listener = %name,
        open = connections.len(),
        "listener closed; draining connections"
    );
    let drained = tokio::time::timeout(shared.settings.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            listener = %name,
            open = connections.len(),
            "drain timeout; closing remaining connections"
        );
        connections.shutdown().await;
    }
}

/// The TLS handshake, the principal of the client certificate, then the connection.
async fn secure(
    stream: TcpStream,
    mut session: Session,
    tls: &ReloadingTls,
    security: &ListenerSecurity,
    shared: &Shared,
) {
    let peer = session.peer;
    let handshake =
        tokio::time::timeout(fjord_tls::HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream));
    let stream = tokio::select! {
        () = shared.shutdown.cancelled() => return,
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::info!(?peer, listener = %session.listener, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(?peer, listener = %session.listener, "TLS handshake timed out");
                return;
            }
        },
    };
    let certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first());
    if let Some(der) = certificate {
        let name = fjord_tls::subject_name(der).and_then(|dn| security.principals.map(&dn));
        match name {
            Some(name) => session.principal = Principal::user(name),
            None => {
                tracing::warn!(
                    ?peer,
                    listener = %session.listener,
                    "client certificate refused: its subject is unreadable or no principal mapping rule applies"
                );
                return;
            }
        }
    }
    tracing::debug!(?peer, principal = %session.principal, "TLS connection");
    let (reader, writer) = tokio::io::split(stream);
    connection(reader, writer, session, security.sasl.clone(), shared).await;
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

async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
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

async fn connection<R, W>(
    mut reader: R,
    writer: W,
    session: Session,
    sasl: Option<Arc<Authenticator>>,
    shared: &Shared,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let settings = &shared.settings;
    let peer = session.peer;
    let mut session = Arc::new(session);
    let mut sasl = sasl.map(|auth| SaslConnection::new(auth, peer));
    tracing::debug!(?peer, listener = %session.listener, "connection opened");
    let (tx, rx) =
        mpsc::channel::<(Reply, OwnedSemaphorePermit)>(settings.max_inflight_per_connection.max(1));
    let writer_task = tokio::spawn(write_replies(writer, rx, peer));
    loop {
        let frame = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            frame = read_frame(&mut reader, settings.max_request_bytes, &shared.memory, settings.max_request_memory) => frame,
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(FrameError::Closed) => break,
            Err(e) => {
                tracing::info!(?peer, error = %e, "closing connection");
                break;
            }
        };
        let Frame { bytes, memory } = frame;
        if let Some(sasl) = sasl.as_mut() {
            match sasl.gate(&bytes) {
                Gate::Dispatch => {}
                Gate::Close(reason) => {
                    tracing::info!(?peer, reason, "closing connection");
                    break;
                }
                Gate::Sasl => {
                    let reply = sasl.handle(bytes).await;
                    if !reply.delay.is_zero() {
                        tokio::select! {
                            () = shared.shutdown.cancelled() => break,
                            () = tokio::time::sleep(reply.delay) => {}
                        }
                    }
                    if let Some(principal) = reply.principal {
                        session = Arc::new(Session {
                            principal,
                            ..Session::clone(&session)
                        });
                    }
                    if let Some(bytes) = reply.frame {
                        let answer: Reply = Box::pin(std::future::ready(Ok(Some(bytes))));
                        if tx.send((answer, memory)).await.is_err() {
                            break;
                        }
                    }
                    if reply.close {
                        break;
                    }
                    continue;
                }
            }
        }
        match dispatch::start_from(&shared.broker, bytes, &session).await {
            Ok(started) => {
                if tx.send((started.reply, memory)).await.is_err() {
                    break; // the writer failed: the socket is gone
                }
            }
            Err(e) => {
                tracing::info!(?peer, error = %e, "closing connection");
                break;
            }
        }
    }
    // Let the writer answer everything already read, then close.
    drop(tx);
    if let Err(e) = writer_task.await {
        tracing::error!(?peer, error = %e, "the connection's writer failed");
    }
    tracing::debug!(?peer, "connection closed");
}

async fn write_replies<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::Receiver<(Reply, OwnedSemaphorePermit)>,
    peer: Option<SocketAddr>,
) {
    // Each request's memory share is released (dropped) once its response is written.
    while let Some((reply, _memory)) = rx.recv().await {
        let bytes = match reply.await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(?peer, error = %e, "closing connection");
                return;
            }
        };
        if let Err(e) = writer.write_all(&bytes).await {
            tracing::debug!(?peer, error = %e, "write failed");
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
