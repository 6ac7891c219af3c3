//! This broker's membership in the cluster: its lease in the coordinator's registry and its view
//! of the other live brokers.
//!
//! [`Membership::join`] registers the broker (choosing the lowest free node id when none is
//! configured) and returns the first [`ClusterView`]. [`Membership::run`] then renews the lease
//! every `lease / 5`, re-reads the live brokers and publishes a new view when it changed, until
//! cancelled; then it deregisters, so that other brokers drop this one at once.
//!
//! Invariants:
//! - Published views always contain this broker (see [`ClusterView`]).
//! - A failed renewal or listing keeps the last view: a coordinator outage does not make the
//!   cluster shrink to one broker in clients' eyes. A lost lease (it lapsed during an outage, or
//!   another incarnation took the node id) is re-registered on the next round.
//! - The task owns the lease: nothing else registers, renews or deregisters this incarnation.
//! - Two live brokers never share a node id: if this broker's lease lapsed and another broker took
//!   its node id meanwhile (a long coordinator outage), [`Membership::run`] ends with
//!   [`JoinError::NodeIdTaken`] and the broker must stop; restarted, it joins with a fresh id.

use std::sync::Arc;
use std::time::Duration;

use fjord_coordinator::{
    BrokerRegistration, Coordinator, CoordinatorError, ListenerEndpoint, LiveBroker,
};
use tokio::sync::watch;
use uuid::Uuid;

use super::{ClusterView, Member};

/// Highest node id tried when choosing one automatically.
const MAX_AUTO_NODE_ID: i32 = 100_000;

/// What a broker registers.
#[derive(Debug, Clone)]
pub struct MembershipSettings {
    /// A fixed node id, or `None` to take the lowest free one.
    pub node_id: Option<i32>,
    /// Host clients connect to.
    pub host: String,
    /// Port clients connect to.
    pub port: i32,
    /// Zone of this broker.
    pub rack: Option<String>,
    /// Where clients of each of its listeners reach it (empty: `host`:`port` for all).
    pub listeners: Vec<ListenerEndpoint>,
    /// Lease length; renewed every fifth of it.
    pub lease: Duration,
}

/// Errors joining the cluster.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The configured node id is held by another live broker.
    #[error("node id {0} is held by another live broker (waited {1:?} for its lease to end)")]
    NodeIdTaken(i32, Duration),
    /// No free node id below the limit.
    #[error("no free node id below {MAX_AUTO_NODE_ID}")]
    NoFreeNodeId,
    /// The coordinator failed.
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
}

/// A registered broker: its identity and the published view.
pub struct Membership {
    coordinator: Arc<dyn Coordinator>,
    registration: BrokerRegistration,
    lease: Duration,
    view: watch::Sender<Arc<ClusterView>>,
}

impl Membership {
    /// Registers this broker. A fixed node id still held by a lapsing lease of an earlier
    /// incarnation (a restart after a crash) is retried until that lease has had time to end.
    pub async fn join(
        coordinator: Arc<dyn Coordinator>,
        settings: MembershipSettings,
    ) -> Result<Membership, JoinError> {
        let incarnation = Uuid::new_v4();
        let registration = |node_id| BrokerRegistration {
            node_id,
            host: settings.host.clone(),
            port: settings.port,
            rack: settings.rack.clone(),
            incarnation,
            listeners: settings.listeners.clone(),
        };
        let lease_ms = lease_ms(settings.lease);
        let registered = match settings.node_id {
            Some(id) => {
                let patience = settings.lease * 2 + Duration::from_secs(1);
                let deadline = tokio::time::Instant::now() + patience;
                loop {
                    match coordinator
                        .register_broker(registration(id), lease_ms)
                        .await
                    {
                        Ok(live) => break live,
                        Err(CoordinatorError::Invalid(_))
                            if tokio::time::Instant::now() < deadline =>
                        {
                            tracing::warn!(
                                node_id = id,
                                "node id held by another incarnation; waiting for its lease to end"
                            );
                            tokio::time::sleep(settings.lease / 5).await;
                        }
                        Err(CoordinatorError::Invalid(_)) => {
                            return Err(JoinError::NodeIdTaken(id, patience))
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            None => {
                let live: Vec<i32> = coordinator
                    .live_brokers()
                    .await?
                    .iter()
                    .map(|b| b.registration.node_id)
                    .collect();
                let mut chosen = None;
                for id in (0..MAX_AUTO_NODE_ID).filter(|id| !live.contains(id)) {
                    match coordinator
                        .register_broker(registration(id), lease_ms)
                        .await
                    {
                        Ok(live) => {
                            chosen = Some(live);
                            break;
                        }
                        // Taken meanwhile (or by a lapsing lease): try the next.
                        Err(CoordinatorError::Invalid(_)) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                chosen.ok_or(JoinError::NoFreeNodeId)?
            }
        };
        let registration = registered.registration;
        let me = member(&registration);
        let view = match coordinator.live_brokers().await {
            Ok(live) => ClusterView::new(me, live.iter().map(|b| member(&b.registration))),
            Err(e) => {
                tracing::warn!(error = %e, "listing live brokers failed; starting with a view of this broker only");
                ClusterView::single(me)
            }
        };
        tracing::info!(
            node_id = registration.node_id,
            %incarnation,
            brokers = view.members().len(),
            "joined the cluster"
        );
        let (view, _) = watch::channel(Arc::new(view));
        Ok(Membership {
            coordinator,
            registration,
            lease: settings.lease,
            view,
        })
    }

    /// This broker's node id.
    pub fn node_id(&self) -> i32 {
        self.registration.node_id
    }

    /// The current view and its updates.
    pub fn view(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.subscribe()
    }

    /// Renews the lease and refreshes the view until `shutdown`, then deregisters. Fails (after
    /// deregistering nothing: the node id belongs to another broker) when this broker's node id
    /// was taken by another live broker while its own lease had lapsed.
    pub async fn run(self, shutdown: tokio_util::sync::CancellationToken) -> Result<(), JoinError> {
        let mut ticker = tokio::time::interval(self.lease / 5);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut lease_lost = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let round = self.round(&mut lease_lost);
            let taken = tokio::select! {
                () = shutdown.cancelled() => break,
                taken = round => taken,
            };
            if taken {
                tracing::error!(
                    node_id = self.node_id(),
                    "another live broker took this broker's node id while its lease had lapsed; \
                     stopping (restarted, it joins with a fresh id)"
                );
                return Err(JoinError::NodeIdTaken(self.node_id(), self.lease));
            }
        }
        let deregister = self
            .coordinator
            .deregister_broker(self.registration.node_id, self.registration.incarnation);
        match tokio::time::timeout(Duration::from_secs(5), deregister).await {
            Ok(Ok(())) => tracing::info!(node_id = self.node_id(), "left the cluster"),
            Ok(Err(e)) => tracing::warn!(error = %e, "deregistering failed; the lease will lapse"),
            Err(_) => tracing::warn!("deregistering timed out; the lease will lapse"),
        }
        Ok(())
    }

    /// One renewal and view refresh; true when the node id turned out to be held by another
    /// live broker.
    async fn round(&self, lease_lost: &mut bool) -> bool {
        let lease_ms = lease_ms(self.lease);
        let r = &self.registration;
        let renewed = if *lease_lost {
            self.coordinator
                .register_broker(r.clone(), lease_ms)
                .await
                .map(|_| ())
        } else {
            self.coordinator
                .renew_broker(r.node_id, r.incarnation, lease_ms)
                .await
                .map(|_| ())
        };
        match renewed {
            Ok(()) => {
                if *lease_lost {
                    tracing::info!(
                        node_id = r.node_id,
                        "registered again after losing the lease"
                    );
                }
                *lease_lost = false;
            }
            Err(CoordinatorError::Invalid(_)) if *lease_lost => {
                // Registering again was refused: another live incarnation holds the node id.
                return true;
            }
            Err(CoordinatorError::Invalid(reason)) => {
                tracing::warn!(node_id = r.node_id, %reason, "broker lease lost; registering again");
                *lease_lost = true;
            }
            Err(e) => tracing::warn!(error = %e, "renewing the broker lease failed; will retry"),
        }
        match self.coordinator.live_brokers().await {
            Ok(live) => self.publish(&live),
            Err(e) => {
                tracing::warn!(error = %e, "listing live brokers failed; keeping the last view")
            }
        }
        false
    }

    fn publish(&self, live: &[LiveBroker]) {
        let view = ClusterView::new(
            member(&self.registration),
            live.iter().map(|b| member(&b.registration)),
        );
        self.view.send_if_modified(|current| {
            if **current == view {
                return false;
            }
            tracing::info!(
                brokers = ?view.members().iter().map(|m| m.node_id).collect::<Vec<_>>(),
                "cluster view changed"
            );
            *current = Arc::new(view);
            true
        });
    }
}

fn member(r: &BrokerRegistration) -> Member {
    Member {
        node_id: r.node_id,
        host: r.host.clone(),
        port: r.port,
        rack: r.rack.clone(),
        listeners: r.listeners.clone(),
    }
}

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}
