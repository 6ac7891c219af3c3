//! Fjord's storage layer: how record batches get into object storage and back out.
//!
//! - [`batch`]: views over Kafka v2 record batch headers (validation, base-offset rewrite).
//! - [`compactor`]: object compaction, merging small flush objects into per-partition objects.
//! - [`object`]: the immutable object format (batches grouped by partition, self-describing
//!   footer).
//! - [`faults`]: a fault-injecting store decorator for tests.
//! - [`hedge`]: hedged requests (a second identical request when the first is slow).
//! - [`instrumented`]: a decorator counting requests and bytes (and adding simulated latency).
//! - [`store`]: building an `Arc<dyn ObjectStore>` from a URL.
//! - [`writer`]: the shared write buffer, flushes, uploads and ordered coordinator commits.
//! - [`writer_metrics`]: where the write path spends its time.
//! - [`reader`]: reading committed batches through a byte-bounded cache.
//! - [`records`]: the records inside a batch, scanned with bounded decompression.
//! - [`cleaner`]: log compaction's record-level rewrite (latest record per key).

pub mod batch;
pub mod cleaner;
pub mod compactor;
pub mod faults;
pub mod gc;
pub mod hedge;
pub mod instrumented;
pub mod object;
pub mod reader;
pub mod records;
pub mod store;
pub mod writer;
pub mod writer_metrics;
