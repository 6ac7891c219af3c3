//! Where the write path spends a produce request's time, as Prometheus histograms.
//!
//! A produce request is answered once its flush is committed; its latency splits into stages the
//! writer measures for every flush:
//!
//! - `buffered`: from the flush's first batch to its seal (the flush interval, or less when the
//!   buffer fills; more when every upload slot is taken, which is group commit at work);
//! - `upload`: the PUT of the sealed object, retries and hedges included;
//! - `commit_queue`: from the end of the upload to the start of the commit (waiting for earlier
//!   flushes, which commit first);
//! - `commit`: the coordinator call that committed the flush (one call commits every uploaded
//!   flush that is next in order: group commit; `flushes_per_commit` counts them);
//! - `flush`: from the first batch to the answer, the sum of the above.
//!
//! The writer owns one [`WriterMetrics`]; the binary registers it with its registry. Recording
//! happens a few times per flush, not per record.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The write path's histograms and counters.
#[derive(Debug)]
pub struct WriterMetrics {
    /// First batch → seal.
    pub buffered: Histogram,
    /// Seal → object uploaded.
    pub upload: Histogram,
    /// Object uploaded → its commit starts.
    pub commit_queue: Histogram,
    /// One coordinator commit call.
    pub commit: Histogram,
    /// Flushes committed by one coordinator call.
    pub flushes_per_commit: Histogram,
    /// First batch → waiters answered.
    pub flush: Histogram,
    /// Object size per flush.
    pub flush_bytes: Histogram,
    /// Flushes whose upload or commit failed (their requests were answered with an error).
    pub failed_flushes: Counter,
    /// Uploads that got a second, hedged PUT.
    pub hedged_uploads: Counter,
}

fn seconds() -> Histogram {
    // 0.25 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

impl Default for WriterMetrics {
    fn default() -> Self {
        WriterMetrics {
            buffered: seconds(),
            upload: seconds(),
            commit_queue: seconds(),
            commit: seconds(),
            flushes_per_commit: Histogram::new(exponential_buckets(1.0, 2.0, 6)),
            flush: seconds(),
            flush_bytes: Histogram::new(exponential_buckets(1024.0, 4.0, 10)),
            failed_flushes: Counter::default(),
            hedged_uploads: Counter::default(),
        }
    }
}

impl WriterMetrics {
    /// Adds the metrics to `registry` (names prefixed `fjord_write_`).
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("fjord_write");
        for (name, help, h) in [
            (
                "buffered",
                "Time from a flush's first batch to its seal",
                &self.buffered,
            ),
            (
                "upload",
                "Time to upload a sealed flush (retries and hedges included)",
                &self.upload,
            ),
            (
                "commit_queue",
                "Time from a flush's upload to the start of its commit (earlier flushes commit first)",
                &self.commit_queue,
            ),
            ("commit", "Duration of one coordinator commit call", &self.commit),
            (
                "flush",
                "Time from a flush's first batch to its produce answers",
                &self.flush,
            ),
        ] {
            sub.register_with_unit(name, help, Unit::Seconds, h.clone());
        }
        sub.register_with_unit(
            "flush_size",
            "Object size per flush",
            Unit::Bytes,
            self.flush_bytes.clone(),
        );
        sub.register(
            "flushes_per_commit",
            "Flushes committed by one coordinator call (group commit)",
            self.flushes_per_commit.clone(),
        );
        sub.register(
            "failed_flushes",
            "Flushes whose upload or commit failed",
            self.failed_flushes.clone(),
        );
        sub.register(
            "hedged_uploads",
            "Uploads still running after upload_hedge_ms that got a second, identical PUT",
            self.hedged_uploads.clone(),
        );
    }
}

/// Records `d` in `h` as seconds.
pub(crate) fn observe(h: &Histogram, d: Duration) {
    h.observe(d.as_secs_f64());
}
