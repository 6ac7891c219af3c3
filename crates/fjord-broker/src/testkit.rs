//! A complete broker over an in-memory object store and an embedded coordinator, for tests,
//! fuzzing and examples. Must be called inside a Tokio runtime (it starts the writer).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fjord_coordinator::clock::Clock;
use fjord_coordinator::embedded::EmbeddedCoordinator;
use fjord_coordinator::{Coordinator, CoordinatorError};
use fjord_storage::reader::{ReadCache, Reader};
use fjord_storage::writer::{Writer, WriterSettings, WriterTask};
use object_store::ObjectStore;

use crate::fetch_session::{FetchSessions, SessionLimits};
use crate::groups::group::GroupSettings;
use crate::groups::GroupCoordinator;
use crate::{Broker, BrokerSettings};

/// A broker whose coordinator journal lives in `dir` and whose objects live in memory.
pub fn in_memory_broker(
    dir: &Path,
    settings: BrokerSettings,
) -> Result<(Arc<Broker>, WriterTask), CoordinatorError> {
    let coordinator: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::open(dir)?);
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    Ok(broker_on(coordinator, store, settings))
}

/// `n` brokers (node ids 0 to n-1) sharing one embedded coordinator in `dir` and one in-memory
/// object store, as the brokers of a cluster share a database and a bucket. Each has its own
/// write path, caches, fetch sessions and group coordinator, and none hears of the others'
/// commits: like brokers whose commit notifications are not arriving. Each sees a cluster of
/// itself alone, so every one of them believes it coordinates every group (a view-change race
/// that lasts).
pub fn in_memory_cluster(
    dir: &Path,
    n: i32,
    settings: BrokerSettings,
) -> Result<Vec<(Arc<Broker>, WriterTask)>, CoordinatorError> {
    let coordinator: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::open(dir)?);
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    Ok((0..n)
        .map(|node_id| {
            let settings = BrokerSettings {
                node_id,
                advertised_port: settings.advertised_port + node_id,
                ..settings.clone()
            };
            broker_on(coordinator.clone(), store.clone(), settings)
        })
        .collect())
}

/// A broker over `coordinator` and `store`.
pub fn broker_on(
    coordinator: Arc<dyn Coordinator>,
    store: Arc<dyn ObjectStore>,
    settings: BrokerSettings,
) -> (Arc<Broker>, WriterTask) {
    broker_with_clock(
        coordinator,
        store,
        settings,
        fjord_coordinator::clock::system(),
    )
}

/// A broker over `coordinator` and `store` whose wall-clock time comes from `clock`.
pub fn broker_with_clock(
    coordinator: Arc<dyn Coordinator>,
    store: Arc<dyn ObjectStore>,
    settings: BrokerSettings,
    clock: Arc<dyn Clock>,
) -> (Arc<Broker>, WriterTask) {
    let cache = Arc::new(ReadCache::new(64 << 20));
    let (tx, commits) = tokio::sync::watch::channel(0);
    let (writer, task) = Writer::start_with_clock(
        WriterSettings {
            flush_interval: Duration::from_millis(1),
            ..Default::default()
        },
        clock.clone(),
        store.clone(),
        coordinator.clone(),
        cache.clone(),
        Arc::new(tx),
    );
    let cluster = crate::cluster::fixed(crate::cluster::ClusterView::single(
        crate::cluster::Member {
            node_id: settings.node_id,
            host: settings.advertised_host.clone(),
            port: settings.advertised_port,
            rack: settings.rack.clone(),
            listeners: Vec::new(),
        },
    ));
    let groups = GroupCoordinator::start(
        coordinator.clone(),
        GroupSettings {
            initial_rebalance_delay: Duration::from_millis(50),
            ..GroupSettings::default()
        },
        cluster.clone(),
    );
    let quota_store: Arc<dyn fjord_coordinator::QuotaStore> = coordinator.clone();
    let quota_clock = clock.clone();
    let broker = Arc::new(Broker {
        fetch_memory: crate::memory::MemoryBudget::new(settings.fetch_memory_bytes),
        clock,
        settings,
        coordinator,
        groups,
        writer,
        reader: Reader::new(store, cache),
        commits,
        fetch_sessions: FetchSessions::new(SessionLimits {
            max_sessions: 16,
            ..SessionLimits::default()
        }),
        cluster,
        offsets_cache: Default::default(),
        authorizer: Arc::new(crate::authz::Authorizer::disabled()),
        quotas: Arc::new(crate::quotas::QuotaManager::new(
            crate::quotas::QuotaSettings::default(),
            quota_store,
            quota_clock,
        )),
    });
    (broker, task)
}
