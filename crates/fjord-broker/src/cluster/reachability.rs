//! Which live brokers this broker can reach, checked directly and often, so that clients of a
//! broker that died are sent elsewhere within a fraction of a second instead of after its lease.
//!
//! The registry ([`super::membership`]) says which brokers hold a lease; a broker killed without
//! a word keeps its lease for up to `broker_lease_ms` (6 s by default), and every Metadata
//! response meanwhile names it leader of its partitions, so clients keep trying it. Brokers hold
//! no data, so nothing but this knowledge stands between a dead broker and its clients moving.
//!
//! [`spawn`] keeps a connection to every other broker of the registry's view and sends it an
//! ApiVersions request every `interval`. A peer whose connection is refused, reset or closed is
//! *unreachable* at once (a killed process's port refuses at once); one that does not answer
//! within `timeout` is unreachable after `patience` such probes in a row (a host that stopped,
//! a network partition). The published view is the registry's minus the unreachable peers; a
//! peer is back as soon as it answers. Every broker applies the same placement rules to its own
//! view, and group state is fenced in the store, so two brokers that briefly disagree on a peer
//! cannot corrupt anything: they only send some clients to different brokers for a moment.
//!
//! Invariants: the published view always contains this broker and only brokers of the registry's
//! view; a peer never answered is reachable until a probe fails (a new broker is not held back);
//! the probes of a peer that left the registry's view stop.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{ClusterView, Member};

/// How peers are probed.
#[derive(Debug, Clone)]
pub struct ReachabilitySettings {
    /// Time between probes of one peer.
    pub interval: Duration,
    /// How long a probe (connect, or a request's answer) may take.
    pub timeout: Duration,
    /// Probes in a row that must time out before a peer is unreachable (a refused or broken
    /// connection counts at once).
    pub patience: u32,
}

impl Default for ReachabilitySettings {
    fn default() -> Self {
        ReachabilitySettings {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
            patience: 3,
        }
    }
}

/// Starts probing the peers of `registry`'s views; returns the views with unreachable peers
/// left out. Probing stops when `shutdown` is cancelled.
pub fn spawn(
    registry: watch::Receiver<Arc<ClusterView>>,
    settings: ReachabilitySettings,
    shutdown: CancellationToken,
) -> (watch::Receiver<Arc<ClusterView>>, JoinHandle<()>) {
    let initial = registry.borrow().clone();
    let (out, view) = watch::channel(initial);
    let task = tokio::spawn(supervise(registry, out, settings, shutdown));
    (view, task)
}

/// A peer's probe task, stopped when dropped.
struct Probe {
    member: Member,
    task: JoinHandle<()>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn supervise(
    mut registry: watch::Receiver<Arc<ClusterView>>,
    out: watch::Sender<Arc<ClusterView>>,
    settings: ReachabilitySettings,
    shutdown: CancellationToken,
) {
    let (reports, mut rx) = mpsc::unbounded_channel::<(i32, bool)>();
    let mut probes: HashMap<i32, Probe> = HashMap::new();
    let mut unreachable: HashSet<i32> = HashSet::new();
    loop {
        let view = registry.borrow_and_update().clone();
        // Probe exactly the other brokers of the registry's view, at their current address.
        let peers: HashMap<i32, &Member> = view
            .members()
            .iter()
            .filter(|m| m.node_id != view.self_id())
            .map(|m| (m.node_id, m))
            .collect();
        probes.retain(|id, p| peers.get(id).is_some_and(|m| **m == p.member));
        unreachable.retain(|id| probes.contains_key(id));
        for (id, member) in &peers {
            if !probes.contains_key(id) {
                let task = tokio::spawn(probe_loop(
                    (*member).clone(),
                    settings.clone(),
                    reports.clone(),
                ));
                probes.insert(
                    *id,
                    Probe {
                        member: (*member).clone(),
                        task,
                    },
                );
            }
        }
        let effective = if unreachable.is_empty() {
            view
        } else {
            Arc::new(view.without(&unreachable))
        };
        out.send_if_modified(|current| {
            if **current == *effective {
                return false;
            }
            *current = effective;
            true
        });
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = registry.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            Some((id, up)) = rx.recv() => {
                if probes.contains_key(&id) {
                    if up {
                        if unreachable.remove(&id) {
                            tracing::info!(node_id = id, "broker reachable again");
                        }
                    } else if unreachable.insert(id) {
                        tracing::warn!(node_id = id, "broker unreachable: clients are sent to the others until it answers");
                    }
                }
            }
        }
    }
}

/// Probes one peer forever, reporting each change of its reachability. Between probes it
/// watches the idle connection: a peer that dies closes it (the kernel resets or ends it the
/// moment the process is gone), which is noticed at once, as early as the peer's clients notice
/// it, rather than at the next probe.
async fn probe_loop(
    member: Member,
    settings: ReachabilitySettings,
    reports: mpsc::UnboundedSender<(i32, bool)>,
) {
    let address = format!("{}:{}", member.host, member.port);
    let mut connection: Option<TcpStream> = None;
    let mut reachable = true;
    let mut timeouts = 0u32;
    let mut correlation = 0i32;
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let closed = tokio::select! {
            _ = ticker.tick() => false,
            () = closed(connection.as_ref()) => true,
        };
        let now_reachable = if closed {
            connection = None;
            timeouts = 0;
            false
        } else {
            correlation = correlation.wrapping_add(1);
            let outcome = tokio::time::timeout(
                settings.timeout,
                probe_once(&address, &mut connection, correlation),
            )
            .await;
            match outcome {
                Ok(Ok(())) => {
                    timeouts = 0;
                    true
                }
                Ok(Err(_)) => {
                    // Refused, reset or closed: nobody is serving there.
                    connection = None;
                    timeouts = 0;
                    false
                }
                Err(_) => {
                    connection = None;
                    timeouts += 1;
                    timeouts < settings.patience
                }
            }
        };
        if now_reachable != reachable {
            reachable = now_reachable;
            if reports.send((member.node_id, reachable)).is_err() {
                return;
            }
        }
    }
}

/// Completes when the idle connection (between probes nothing is owed on it) is closed or
/// broken by the peer; never without a connection.
async fn closed(connection: Option<&TcpStream>) {
    let Some(stream) = connection else {
        return std::future::pending().await;
    };
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        let mut byte = [0u8; 1];
        match stream.try_read(&mut byte) {
            // End of stream, or data nobody asked for: the peer is not a broker serving us.
            Ok(_) => return,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        }
    }
}

/// One ApiVersions round trip on the peer's connection, opened first if there is none.
async fn probe_once(
    address: &str,
    connection: &mut Option<TcpStream>,
    correlation: i32,
) -> std::io::Result<()> {
    if connection.is_none() {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        *connection = Some(stream);
    }
    let Some(stream) = connection.as_mut() else {
        return Err(std::io::ErrorKind::NotConnected.into());
    };
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::ApiVersions as i16)
        .with_request_api_version(0)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str("fjord-peer-probe")));
    let encoded = header
        .encode(&mut frame, 1)
        .and_then(|()| ApiVersionsRequest::default().encode(&mut frame, 0));
    if encoded.is_err() {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    let len = i32::try_from(frame.len() - 4).unwrap_or(i32::MAX);
    frame[..4].copy_from_slice(&len.to_be_bytes());
    stream.write_all(&frame).await?;
    let size = stream.read_i32().await?;
    // An ApiVersions answer is small; anything else is not a broker talking.
    let size = usize::try_from(size)
        .ok()
        .filter(|s| (4..=1 << 20).contains(s))
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let mut body = vec![0u8; size];
    stream.read_exact(&mut body).await?;
    let mut body = bytes::Bytes::from(body);
    let header =
        ResponseHeader::decode(&mut body, 0).map_err(|_| std::io::ErrorKind::InvalidData)?;
    if header.correlation_id != correlation || body.remaining() == 0 {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(node_id: i32, port: u16) -> Member {
        Member {
            node_id,
            host: "127.0.0.1".into(),
            port: i32::from(port),
            rack: None,
            listeners: Vec::new(),
        }
    }

    /// Answers ApiVersions like a broker on `listener` until `stop` (then every connection
    /// closes, as a killed process's do).
    fn serve(listener: tokio::net::TcpListener, stop: CancellationToken) {
        tokio::spawn(async move {
            let mut connections: Vec<JoinHandle<()>> = Vec::new();
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    accepted = listener.accept() => {
                        let Ok((mut s, _)) = accepted else { break };
                        connections.push(tokio::spawn(async move {
                            loop {
                                let Ok(len) = s.read_i32().await else { return };
                                let mut req = vec![0u8; len.max(0) as usize];
                                if s.read_exact(&mut req).await.is_err() || req.len() < 8 {
                                    return;
                                }
                                let mut resp = vec![0, 0, 0, 6];
                                resp.extend_from_slice(&req[4..8]);
                                resp.extend_from_slice(&[0, 0]);
                                if s.write_all(&resp).await.is_err() {
                                    return;
                                }
                            }
                        }));
                    }
                }
            }
            for c in connections {
                c.abort();
            }
        });
    }

    async fn fake_broker(port: u16) -> (u16, CancellationToken) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = CancellationToken::new();
        serve(listener, stop.clone());
        (port, stop)
    }

    async fn wait_for(
        view: &mut watch::Receiver<Arc<ClusterView>>,
        ids: &[i32],
        within: Duration,
    ) -> Duration {
        let started = tokio::time::Instant::now();
        tokio::time::timeout(within, async {
            loop {
                let now: Vec<i32> = view.borrow().members().iter().map(|m| m.node_id).collect();
                if now == ids {
                    return;
                }
                view.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("view never became {ids:?}: {:?}", view.borrow()));
        started.elapsed()
    }

    /// Item 14 of issue 13: a peer that dies leaves this broker's view within a fraction of a
    /// second (its lease would keep it for seconds), and comes back when it answers again.
    #[tokio::test]
    async fn a_dead_peer_leaves_the_view_at_once_and_comes_back() {
        let (port1, stop1) = fake_broker(0).await;
        let (port2, _stop2) = fake_broker(0).await;
        let registry = ClusterView::new(member(0, 1), [member(1, port1), member(2, port2)]);
        let (tx, rx) = watch::channel(Arc::new(registry));
        let shutdown = CancellationToken::new();
        let (mut view, _task) = spawn(rx, ReachabilitySettings::default(), shutdown.clone());
        wait_for(&mut view, &[0, 1, 2], Duration::from_secs(1)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Broker 1 dies; its lease (the registry's view) still names it.
        stop1.cancel();
        let took = wait_for(&mut view, &[0, 2], Duration::from_secs(2)).await;
        assert!(took < Duration::from_millis(500), "noticed after {took:?}");
        // It restarts on the same port: back at once.
        let (_, _stop1_again) = fake_broker(port1).await;
        wait_for(&mut view, &[0, 1, 2], Duration::from_secs(2)).await;
        // The registry drops broker 2: its probes stop and the view follows.
        tx.send(Arc::new(ClusterView::new(member(0, 1), [member(1, port1)])))
            .unwrap();
        wait_for(&mut view, &[0, 1], Duration::from_secs(2)).await;
        shutdown.cancel();
    }

    /// A peer that stops answering (a host that froze) leaves after `patience` timeouts.
    #[tokio::test]
    async fn a_peer_that_stops_answering_leaves_after_its_patience() {
        // Accepts connections but never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let registry = ClusterView::new(member(0, 1), [member(1, port)]);
        let (_tx, rx) = watch::channel(Arc::new(registry));
        let settings = ReachabilitySettings {
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(100),
            patience: 3,
        };
        let (mut view, _task) = spawn(rx, settings, CancellationToken::new());
        let took = wait_for(&mut view, &[0], Duration::from_secs(3)).await;
        assert!(took >= Duration::from_millis(250), "left after {took:?}");
    }
}
