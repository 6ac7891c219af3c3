//! A complete broker over an in-memory object store and an embedded coordinator, for tests,
//! fuzzing and examples. Must be called inside a Tokio runtime (it starts the writer).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fjord_coordinator::embedded::EmbeddedCoordinator;
use fjord_coordinator::CoordinatorError;
use fjord_storage::reader::{ReadCache, Reader};
use fjord_storage::writer::{Writer, WriterSettings, WriterTask};

use crate::fetch_session::FetchSessions;
use crate::groups::group::GroupSettings;
use crate::groups::GroupCoordinator;
use crate::{Broker, BrokerSettings};

/// A broker whose coordinator journal lives in `dir` and whose objects live in memory.
pub fn in_memory_broker(
    dir: &Path,
    settings: BrokerSettings,
) -> Result<(Arc<Broker>, WriterTask), CoordinatorError> {
    let coordinator = Arc::new(EmbeddedCoordinator::open(dir)?);
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let cache = Arc::new(ReadCache::new(64 << 20));
    let (tx, commits) = tokio::sync::watch::channel(0);
    let (writer, task) = Writer::start(
        WriterSettings {
            flush_interval: Duration::from_millis(1),
            ..Default::default()
        },
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
    let broker = Arc::new(Broker {
        settings,
        coordinator,
        groups,
        writer,
        reader: Reader::new(store, cache),
        commits,
        fetch_sessions: FetchSessions::new(16),
        cluster,
        offsets_cache: Default::default(),
    });
    Ok((broker, task))
}
