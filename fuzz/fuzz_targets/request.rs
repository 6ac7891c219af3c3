//! Fuzzes the whole request path of a broker: any bytes as a request frame (without its length
//! prefix) go through `dispatch::start` and, when accepted, the handler runs to its response.
//! The runtime's clock is paused, so long-polling fetches finish at once.
#![no_main]

use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use fjord_broker::{dispatch, Broker, BrokerSettings};
use libfuzzer_sys::fuzz_target;

struct Harness {
    runtime: tokio::runtime::Runtime,
    broker: Arc<Broker>,
    _writer: fjord_storage::writer::WriterTask,
    _dir: tempfile::TempDir,
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, writer) = runtime
        .block_on(async {
            fjord_broker::testkit::in_memory_broker(dir.path(), BrokerSettings::default())
        })
        .expect("broker");
    Harness {
        runtime,
        broker,
        _writer: writer,
        _dir: dir,
    }
});

fuzz_target!(|data: &[u8]| {
    let h = &*HARNESS;
    h.runtime.block_on(async {
        if let Ok(started) = dispatch::start(&h.broker, Bytes::copy_from_slice(data)).await {
            let _ = started.reply.await;
        }
    });
});
