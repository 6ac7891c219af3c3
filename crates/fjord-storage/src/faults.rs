//! A fault-injecting decorator over any object store, for tests that need a PUT, a GET or a
//! DELETE to fail or to stop at a precise moment. It shares its fault plan with the coordinator's
//! decorator ([`fjord_coordinator::faults::FaultPlan`]): arm a failure or a hold per operation,
//! and the next calls of that operation meet them in order. Unarmed calls pass straight through.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use fjord_coordinator::faults::{FaultPlan, Injected};
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// An object-store operation faults can be armed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    /// A PUT (uploads of flushes).
    Put,
    /// A GET of a whole object or of ranges.
    Get,
    /// A DELETE.
    Delete,
    /// A LIST.
    List,
}

/// The faults armed on a [`FaultyStore`].
pub type StoreFaults = FaultPlan<StoreOp>;

/// An object store that meets the [`StoreFaults`] armed on it before forwarding each call.
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    faults: Arc<StoreFaults>,
}

impl FaultyStore {
    /// Wraps `inner`; arm faults through the returned plan.
    pub fn new(inner: Arc<dyn ObjectStore>) -> (Arc<FaultyStore>, Arc<StoreFaults>) {
        let faults = Arc::new(StoreFaults::default());
        (
            Arc::new(FaultyStore {
                inner,
                faults: faults.clone(),
            }),
            faults,
        )
    }

    async fn meet(&self, op: StoreOp, location: &Path) -> Result<()> {
        self.faults
            .meet(op)
            .await
            .map_err(|Injected| object_store::Error::Generic {
                store: "FaultyStore",
                source: format!("injected failure of {op:?} {location}").into(),
            })
    }
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({:?})", self.inner)
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.meet(StoreOp::Put, location).await?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.meet(StoreOp::Put, location).await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.meet(StoreOp::Get, location).await?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.meet(StoreOp::Get, location).await?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let faults = self.faults.clone();
        let checked = locations
            .then(move |location| {
                let faults = faults.clone();
                async move {
                    let location = location?;
                    faults.meet(StoreOp::Delete).await.map_err(|Injected| {
                        object_store::Error::Generic {
                            store: "FaultyStore",
                            source: format!("injected failure of Delete {location}").into(),
                        }
                    })?;
                    Ok(location)
                }
            })
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let faults = self.faults.clone();
        let inner = self.inner.list(prefix);
        futures::stream::once(async move {
            match faults.meet(StoreOp::List).await {
                Ok(()) => inner,
                Err(Injected) => futures::stream::once(async {
                    Err(object_store::Error::Generic {
                        store: "FaultyStore",
                        source: "injected failure of List".into(),
                    })
                })
                .boxed(),
            }
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.meet(StoreOp::List, &Path::default()).await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn faults_fail_and_hold_the_calls_they_are_armed_for() {
        let (store, faults) = FaultyStore::new(Arc::new(object_store::memory::InMemory::new()));
        let path = Path::from("objects/a");
        faults.fail(StoreOp::Put, 1);
        assert!(store
            .put(&path, Bytes::from_static(b"x").into())
            .await
            .is_err());
        store
            .put(&path, Bytes::from_static(b"x").into())
            .await
            .unwrap();
        let hold = faults.hold(StoreOp::Get);
        let reader = store.clone();
        let get = tokio::spawn(async move { reader.get(&Path::from("objects/a")).await });
        hold.reached().await;
        assert!(!get.is_finished());
        hold.release();
        assert!(get.await.unwrap().is_ok());
        faults.fail(StoreOp::List, 1);
        let listed: Vec<_> = store.list(None).collect().await;
        assert!(listed.iter().any(|r| r.is_err()));
        faults.fail(StoreOp::Delete, 1);
        assert!(store.delete(&path).await.is_err());
        store.delete(&path).await.unwrap();
    }
}
