//! Reading committed batches: a byte-bounded LRU cache in front of ranged GETs.
//!
//! The cache holds two kinds of entries: whole objects this broker just wrote (inserted by the
//! writer after a successful upload, so fresh data is served without a GET), and byte ranges
//! fetched from object storage. A read first looks for its object, then for its exact range.
//! Objects are immutable, so entries never go stale; they only age out.
//!
//! Concurrent misses for the same range share one GET (single flight): when several consumer
//! groups read the same cold data at once, the store serves it once, not once per group. A GET
//! still running after `hedge_after` gets a second, identical GET ([`crate::hedge`]), so one
//! slow response does not hold up a fetch that needs the rows behind it; at most a fifth of
//! GETs are hedged, so that an overloaded store does not get twice the reads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fjord_coordinator::IndexRow;
use futures::future::{BoxFuture, FutureExt, Shared};
use lru::LruCache;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;

use crate::hedge::Hedger;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Object(Arc<str>),
    Range(Arc<str>, u64, u64),
}

struct Lru {
    entries: LruCache<Key, Bytes>,
    bytes: usize,
    capacity: usize,
}

/// A cache of object bytes, bounded in bytes.
pub struct ReadCache {
    inner: Mutex<Lru>,
}

impl ReadCache {
    /// A cache holding at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        ReadCache {
            inner: Mutex::new(Lru {
                entries: LruCache::unbounded(),
                bytes: 0,
                capacity,
            }),
        }
    }

    fn insert(&self, key: Key, value: Bytes) {
        let mut lru = self.inner.lock();
        if value.len() > lru.capacity {
            return;
        }
        lru.bytes += value.len();
        if let Some(old) = lru.entries.put(key, value) {
            lru.bytes -= old.len();
        }
        while lru.bytes > lru.capacity {
            match lru.entries.pop_lru() {
                Some((_, v)) => lru.bytes -= v.len(),
                None => break,
            }
        }
    }

    /// Caches a whole object.
    pub fn insert_object(&self, key: &str, object: Bytes) {
        self.insert(Key::Object(key.into()), object);
    }

    fn get(&self, row: &IndexRow) -> Option<Bytes> {
        let mut lru = self.inner.lock();
        let key: Arc<str> = row.object_key.as_str().into();
        let end = row.position + row.length;
        if let Some(object) = lru.entries.get(&Key::Object(key.clone())) {
            return usize::try_from(end)
                .ok()
                .filter(|e| *e <= object.len())
                .map(|e| object.slice(row.position as usize..e));
        }
        lru.entries
            .get(&Key::Range(key, row.position, row.length))
            .cloned()
    }

    /// Bytes currently held.
    pub fn size(&self) -> usize {
        self.inner.lock().bytes
    }
}

/// Errors reading committed data.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// Object storage failed.
    #[error("object storage read of {key}: {source}")]
    Store {
        /// Object key.
        key: String,
        /// The store's error (shared by every reader that waited for the same GET).
        source: Arc<object_store::Error>,
    },
    /// The store returned fewer bytes than the index says exist.
    #[error("object {key} is shorter than its index row says")]
    Short {
        /// Object key.
        key: String,
    },
}

/// One GET that several readers may wait for.
type Flight = Shared<BoxFuture<'static, Result<Bytes, ReadError>>>;

/// Reads index rows' bytes.
pub struct Reader {
    store: Arc<dyn ObjectStore>,
    cache: Arc<ReadCache>,
    in_flight: Arc<Mutex<HashMap<Key, Flight>>>,
    hedger: Hedger,
}

/// Hedged GETs allowed, as a fraction of GETs (a burst of [`HEDGE_BURST`] aside).
const HEDGE_FRACTION: f64 = 0.2;
/// Hedged GETs allowed at once before the fraction applies.
const HEDGE_BURST: u32 = 20;

impl Reader {
    /// A reader over `store` sharing `cache` with the writer, without hedged GETs.
    pub fn new(store: Arc<dyn ObjectStore>, cache: Arc<ReadCache>) -> Self {
        Reader {
            store,
            cache,
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            hedger: Hedger::new(None, HEDGE_FRACTION, HEDGE_BURST, Counter::default()),
        }
    }

    /// GETs that got a second, hedged GET (shared: it counts on as the reader reads).
    pub fn hedged_gets(&self) -> Counter {
        self.hedger.hedges()
    }

    /// Hedges a GET with a second one once it has run for `after` (`None`: never).
    pub fn with_hedge_after(mut self, after: Option<Duration>) -> Self {
        self.hedger = self.hedger.with_after(after);
        self
    }

    /// The raw bytes of a row (batches as stored, placeholder base offsets).
    pub async fn read_row(&self, row: &IndexRow) -> Result<Bytes, ReadError> {
        if let Some(bytes) = self.cache.get(row) {
            return Ok(bytes);
        }
        let key = Key::Range(row.object_key.as_str().into(), row.position, row.length);
        let flight = {
            let mut in_flight = self.in_flight.lock();
            match in_flight.get(&key) {
                Some(flight) => flight.clone(),
                None => {
                    let flight = fetch(
                        self.store.clone(),
                        self.cache.clone(),
                        self.in_flight.clone(),
                        key.clone(),
                        row.clone(),
                        self.hedger.clone(),
                    )
                    .boxed()
                    .shared();
                    in_flight.insert(key, flight.clone());
                    flight
                }
            }
        };
        flight.await
    }
}

/// GETs a row's range, caches it, and retires its flight (whatever the outcome, so a failed GET
/// is retried by the next reader).
async fn fetch(
    store: Arc<dyn ObjectStore>,
    cache: Arc<ReadCache>,
    in_flight: Arc<Mutex<HashMap<Key, Flight>>>,
    key: Key,
    row: IndexRow,
    hedger: Hedger,
) -> Result<Bytes, ReadError> {
    let location = Path::from(row.object_key.as_str());
    let range = row.position..row.position + row.length;
    let result = hedger
        .run(&location, || store.get_range(&location, range.clone()))
        .await
        .map_err(|source| ReadError::Store {
            key: row.object_key.clone(),
            source: Arc::new(source),
        })
        .and_then(|bytes| {
            if bytes.len() as u64 == row.length {
                Ok(bytes)
            } else {
                Err(ReadError::Short {
                    key: row.object_key.clone(),
                })
            }
        });
    if let Ok(bytes) = &result {
        cache.insert(key.clone(), bytes.clone());
    }
    in_flight.lock().remove(&key);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, position: u64, length: u64) -> IndexRow {
        IndexRow {
            base_offset: 0,
            last_offset: 0,
            object_key: key.into(),
            position,
            length,
            max_timestamp: 0,
        }
    }

    #[tokio::test]
    async fn reads_through_cache_and_store() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        store
            .put(&Path::from("a"), Bytes::from_static(b"0123456789").into())
            .await
            .unwrap();
        let cache = Arc::new(ReadCache::new(8));
        let reader = Reader::new(store.clone(), cache.clone());
        assert_eq!(reader.read_row(&row("a", 2, 3)).await.unwrap(), &b"234"[..]);
        assert_eq!(cache.size(), 3);
        // Served from cache even when the object is gone.
        store.delete(&Path::from("a")).await.unwrap();
        assert_eq!(reader.read_row(&row("a", 2, 3)).await.unwrap(), &b"234"[..]);
        // A whole cached object serves any range; the cache stays within its bound.
        cache.insert_object("b", Bytes::from_static(b"abcdefg"));
        assert_eq!(reader.read_row(&row("b", 1, 2)).await.unwrap(), &b"bc"[..]);
        assert!(cache.size() <= 8);
        assert!(reader.read_row(&row("missing", 0, 1)).await.is_err());
    }

    /// An in-memory store whose GETs take `get_ms`, holding object "a" = "0123456789".
    async fn slow_store(
        get_ms: u32,
    ) -> (Arc<dyn ObjectStore>, Arc<crate::instrumented::StoreStats>) {
        use crate::instrumented::{InstrumentedStore, LatencyModel};
        let model = LatencyModel::parse(&format!("put=0/0,get={get_ms}/{get_ms}")).unwrap();
        let instrumented =
            InstrumentedStore::new(Arc::new(object_store::memory::InMemory::new()), Some(model));
        let stats = instrumented.stats();
        let store: Arc<dyn ObjectStore> = Arc::new(instrumented);
        store
            .put(&Path::from("a"), Bytes::from_static(b"0123456789").into())
            .await
            .unwrap();
        (store, stats)
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_get() {
        let (store, stats) = slow_store(50).await;
        let reader = Reader::new(store, Arc::new(ReadCache::new(1 << 20)));
        let r = row("a", 1, 4);
        let reads = futures::future::join_all((0..8).map(|_| reader.read_row(&r))).await;
        for got in reads {
            assert_eq!(got.unwrap(), &b"1234"[..]);
        }
        assert_eq!(stats.snapshot().gets, 1);
        // A failed GET is not remembered: the next read tries again.
        let missing = row("missing", 0, 1);
        assert!(reader.read_row(&missing).await.is_err());
        assert!(reader.read_row(&missing).await.is_err());
        assert_eq!(stats.snapshot().gets, 3);
        assert!(reader.in_flight.lock().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_get_is_hedged_once_for_all_its_readers() {
        let (store, stats) = slow_store(300).await;
        let cache = Arc::new(ReadCache::new(1 << 20));
        let hedging = Reader::new(store.clone(), cache.clone())
            .with_hedge_after(Some(Duration::from_millis(100)));
        let r = row("a", 1, 4);
        let reads = futures::future::join_all((0..8).map(|_| hedging.read_row(&r))).await;
        for got in reads {
            assert_eq!(got.unwrap(), &b"1234"[..]);
        }
        assert_eq!(stats.snapshot().gets, 2, "one GET and its hedge");
        assert_eq!(hedging.hedged_gets().get(), 1);
        // A GET faster than the hedge delay is sent once.
        let plain = Reader::new(store, Arc::new(ReadCache::new(1 << 20)))
            .with_hedge_after(Some(Duration::from_millis(400)));
        assert_eq!(plain.read_row(&r).await.unwrap(), &b"1234"[..]);
        assert_eq!(stats.snapshot().gets, 3);
    }
}
