//! A decorator over any object store that counts requests and bytes per operation and, for
//! benchmarks and tests, adds latency drawn from a distribution like S3's.
//!
//! [`InstrumentedStore`] wraps an `Arc<dyn ObjectStore>` (slatedb-style: decorators compose over
//! the trait object). Counting is always on and costs a few atomic adds per request; the counts
//! ([`StoreStats`]) are what the broker exports as metrics and what the benchmarks turn into
//! "requests per GiB" (the cloud bill). Latency is off unless a [`LatencyModel`] is given.
//!
//! Invariants: the decorator never changes what a request does or returns, only when it
//! returns; a request is counted once, when it is issued (failed requests count too: S3 bills
//! them); GET bytes are the bytes of the range the store answered.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use rand::Rng;

/// Latency of one kind of request: log-normal with this median and 99th percentile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Median.
    pub median: Duration,
    /// 99th percentile (at least the median).
    pub p99: Duration,
}

impl Latency {
    /// Draws one latency.
    pub fn sample(&self, rng: &mut impl Rng) -> Duration {
        let median = self.median.as_secs_f64();
        if median <= 0.0 {
            return Duration::ZERO;
        }
        // z of the 99th percentile of the standard normal distribution.
        const Z99: f64 = 2.326_347_874;
        let sigma = (self.p99.as_secs_f64().max(median) / median).ln() / Z99;
        // Box-Muller: a standard normal from two uniforms.
        let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = rng.gen_range(0.0..1.0);
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        Duration::from_secs_f64((median * (sigma * z).exp()).min(60.0))
    }
}

/// Simulated request latencies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyModel {
    /// PUT (and each multipart request).
    pub put: Latency,
    /// GET and HEAD, to the first byte.
    pub get: Latency,
    /// LIST, DELETE, COPY.
    pub other: Latency,
}

impl LatencyModel {
    /// Near S3 Standard in one region: PUT median 50 ms / p99 300 ms, GET first byte median
    /// 30 ms / p99 150 ms, others median 30 ms / p99 150 ms.
    pub const S3_STANDARD: LatencyModel = LatencyModel {
        put: Latency {
            median: Duration::from_millis(50),
            p99: Duration::from_millis(300),
        },
        get: Latency {
            median: Duration::from_millis(30),
            p99: Duration::from_millis(150),
        },
        other: Latency {
            median: Duration::from_millis(30),
            p99: Duration::from_millis(150),
        },
    };

    /// Parses `s3` (the [`S3_STANDARD`](Self::S3_STANDARD) preset) or
    /// `put=MEDIAN/P99,get=MEDIAN/P99,other=MEDIAN/P99` in ms (keys optional, others from the
    /// preset).
    pub fn parse(spec: &str) -> std::result::Result<LatencyModel, String> {
        let mut model = LatencyModel::S3_STANDARD;
        if spec.trim() == "s3" {
            return Ok(model);
        }
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not KEY=MEDIAN/P99"))?;
            let (median, p99) = value
                .split_once('/')
                .ok_or_else(|| format!("'{value}' is not MEDIAN/P99 (ms)"))?;
            let ms = |s: &str| {
                s.trim()
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| format!("'{s}' is not a number of ms"))
            };
            let latency = Latency {
                median: ms(median)?,
                p99: ms(p99)?,
            };
            if latency.p99 < latency.median {
                return Err(format!("{key}: p99 below the median"));
            }
            match key.trim() {
                "put" => model.put = latency,
                "get" => model.get = latency,
                "other" => model.other = latency,
                other => return Err(format!("unknown request kind '{other}' (put, get, other)")),
            }
        }
        Ok(model)
    }
}

/// Request and byte counts of one store.
#[derive(Debug, Default)]
pub struct StoreStats {
    puts: AtomicU64,
    put_bytes: AtomicU64,
    gets: AtomicU64,
    get_bytes: AtomicU64,
    lists: AtomicU64,
    deletes: AtomicU64,
    others: AtomicU64,
}

/// A copy of [`StoreStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounts {
    /// PUT requests (each part of a multipart upload counts).
    pub puts: u64,
    /// Bytes sent in PUTs.
    pub put_bytes: u64,
    /// GET and HEAD requests.
    pub gets: u64,
    /// Bytes received in GETs.
    pub get_bytes: u64,
    /// LIST requests.
    pub lists: u64,
    /// Objects deleted.
    pub deletes: u64,
    /// COPY, RENAME and multipart bookkeeping.
    pub others: u64,
}

impl StoreStats {
    /// The counts now.
    pub fn snapshot(&self) -> StoreCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StoreCounts {
            puts: get(&self.puts),
            put_bytes: get(&self.put_bytes),
            gets: get(&self.gets),
            get_bytes: get(&self.get_bytes),
            lists: get(&self.lists),
            deletes: get(&self.deletes),
            others: get(&self.others),
        }
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Counts (and optionally delays) every request to the store it wraps.
#[derive(Debug, Clone)]
pub struct InstrumentedStore {
    inner: Arc<dyn ObjectStore>,
    latency: Option<LatencyModel>,
    stats: Arc<StoreStats>,
}

impl InstrumentedStore {
    /// Wraps `inner`; `latency` adds simulated request latency.
    pub fn new(inner: Arc<dyn ObjectStore>, latency: Option<LatencyModel>) -> InstrumentedStore {
        InstrumentedStore {
            inner,
            latency,
            stats: Arc::new(StoreStats::default()),
        }
    }

    /// The counts, shared with this store.
    pub fn stats(&self) -> Arc<StoreStats> {
        self.stats.clone()
    }

    async fn delay(&self, pick: fn(&LatencyModel) -> Latency) {
        if let Some(model) = &self.latency {
            let wait = pick(model).sample(&mut rand::thread_rng());
            tokio::time::sleep(wait).await;
        }
    }
}

impl fmt::Display for InstrumentedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstrumentedStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for InstrumentedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        add(&self.stats.puts, 1);
        add(&self.stats.put_bytes, payload.content_length() as u64);
        self.delay(|m| m.put).await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        add(&self.stats.others, 1);
        self.delay(|m| m.other).await;
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(CountedUpload {
            upload,
            stats: self.stats.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        add(&self.stats.gets, 1);
        self.delay(|m| m.get).await;
        let result = self.inner.get_opts(location, options).await?;
        add(
            &self.stats.get_bytes,
            result.range.end.saturating_sub(result.range.start),
        );
        Ok(result)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        // Stores answer several ranges with one request per (coalesced) range; count each.
        add(&self.stats.gets, ranges.len() as u64);
        self.delay(|m| m.get).await;
        let parts = self.inner.get_ranges(location, ranges).await?;
        add(
            &self.stats.get_bytes,
            parts.iter().map(|p| p.len() as u64).sum(),
        );
        Ok(parts)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let stats = self.stats.clone();
        let counted = locations.inspect(move |_| add(&stats.deletes, 1)).boxed();
        self.inner.delete_stream(counted)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        add(&self.stats.lists, 1);
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        add(&self.stats.lists, 1);
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        add(&self.stats.lists, 1);
        self.delay(|m| m.other).await;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        add(&self.stats.others, 1);
        self.delay(|m| m.other).await;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        add(&self.stats.others, 1);
        self.delay(|m| m.other).await;
        self.inner.rename_opts(from, to, options).await
    }
}

/// A multipart upload whose parts count as PUTs.
#[derive(Debug)]
struct CountedUpload {
    upload: Box<dyn MultipartUpload>,
    stats: Arc<StoreStats>,
}

#[async_trait]
impl MultipartUpload for CountedUpload {
    fn put_part(&mut self, data: PutPayload) -> object_store::UploadPart {
        add(&self.stats.puts, 1);
        add(&self.stats.put_bytes, data.content_length() as u64);
        self.upload.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        add(&self.stats.others, 1);
        self.upload.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        add(&self.stats.others, 1);
        self.upload.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn counts_requests_and_bytes() {
        let store = InstrumentedStore::new(Arc::new(InMemory::new()), None);
        let stats = store.stats();
        let path = Path::from("a/b");
        store
            .put(&path, Bytes::from_static(b"hello world").into())
            .await
            .unwrap();
        let got = store.get_range(&path, 0..5).await.unwrap();
        assert_eq!(&got[..], b"hello");
        let listed: Vec<_> = store.list(None).collect().await;
        assert_eq!(listed.len(), 1);
        store.delete(&path).await.unwrap();
        let c = stats.snapshot();
        assert_eq!((c.puts, c.put_bytes), (1, 11));
        assert_eq!((c.gets, c.get_bytes), (1, 5));
        assert_eq!((c.lists, c.deletes), (1, 1));
    }

    #[test]
    fn latency_distribution_matches_its_median_and_p99() {
        let latency = Latency {
            median: Duration::from_millis(50),
            p99: Duration::from_millis(300),
        };
        let mut rng = rand::thread_rng();
        let mut samples: Vec<f64> = (0..20_000)
            .map(|_| latency.sample(&mut rng).as_secs_f64() * 1000.0)
            .collect();
        samples.sort_by(f64::total_cmp);
        let median = samples[samples.len() / 2];
        let p99 = samples[samples.len() * 99 / 100];
        assert!((45.0..55.0).contains(&median), "median {median}");
        assert!((250.0..360.0).contains(&p99), "p99 {p99}");
    }

    #[tokio::test]
    async fn latency_is_added() {
        let model = LatencyModel::parse("put=40/40,get=0/0").unwrap();
        let store = InstrumentedStore::new(Arc::new(InMemory::new()), Some(model));
        let started = std::time::Instant::now();
        store
            .put(&Path::from("x"), Bytes::from_static(b"1").into())
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(40));
    }

    #[test]
    fn parses_specs() {
        assert_eq!(LatencyModel::parse("s3"), Ok(LatencyModel::S3_STANDARD));
        let m = LatencyModel::parse("put=10/20").unwrap();
        assert_eq!(m.put.median, Duration::from_millis(10));
        assert_eq!(m.get, LatencyModel::S3_STANDARD.get);
        assert!(LatencyModel::parse("put=20/10").is_err());
        assert!(LatencyModel::parse("head=1/2").is_err());
        assert!(LatencyModel::parse("put=x/2").is_err());
    }
}
