//! Reading committed batches: a byte-bounded LRU cache in front of ranged GETs.
//!
//! The cache holds two kinds of entries: whole objects this broker just wrote (inserted by the
//! writer after a successful upload, so fresh data is served without a GET), and byte ranges
//! fetched from object storage. A read first looks for its object, then for its exact range.
//! Objects are immutable, so entries never go stale; they only age out.

use std::sync::Arc;

use bytes::Bytes;
use fjord_coordinator::IndexRow;
use lru::LruCache;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parking_lot::Mutex;

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
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Object storage failed.
    #[error("object storage read of {key}: {source}")]
    Store {
        /// Object key.
        key: String,
        /// The store's error.
        source: object_store::Error,
    },
    /// The store returned fewer bytes than the index says exist.
    #[error("object {key} is shorter than its index row says")]
    Short {
        /// Object key.
        key: String,
    },
}

/// Reads index rows' bytes.
pub struct Reader {
    store: Arc<dyn ObjectStore>,
    cache: Arc<ReadCache>,
}

impl Reader {
    /// A reader over `store` sharing `cache` with the writer.
    pub fn new(store: Arc<dyn ObjectStore>, cache: Arc<ReadCache>) -> Self {
        Reader { store, cache }
    }

    /// The raw bytes of a row (batches as stored, placeholder base offsets).
    pub async fn read_row(&self, row: &IndexRow) -> Result<Bytes, ReadError> {
        if let Some(bytes) = self.cache.get(row) {
            return Ok(bytes);
        }
        let location = Path::from(row.object_key.as_str());
        let bytes = self
            .store
            .get_range(&location, row.position..row.position + row.length)
            .await
            .map_err(|source| ReadError::Store {
                key: row.object_key.clone(),
                source,
            })?;
        if bytes.len() as u64 != row.length {
            return Err(ReadError::Short {
                key: row.object_key.clone(),
            });
        }
        self.cache.insert(
            Key::Range(row.object_key.as_str().into(), row.position, row.length),
            bytes.clone(),
        );
        Ok(bytes)
    }
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
}
