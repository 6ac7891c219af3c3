//! Replays the fuzzer's inputs through the broker's request path, as the fuzz target does
//! (fuzz/fuzz_targets/request.rs): every file in fuzz/regressions/request (inputs that once
//! crashed or hung the broker) and fuzz/seeds/request. Each must be answered or refused without a panic,
//! within a bounded (paused-clock) time. This runs with the ordinary tests; `scripts/fuzz.sh`
//! searches for new inputs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use fjord_broker::{dispatch, BrokerSettings};

fn corpus() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files = Vec::new();
    for dir in ["regressions/request", "seeds/request"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[tokio::test(start_paused = true)]
async fn fuzz_regressions_and_seeds_are_answered_without_a_panic() {
    let files = corpus();
    assert!(
        files
            .iter()
            .any(|f| f.to_string_lossy().contains("regressions")),
        "no regression inputs found: {files:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (broker, _writer) =
        fjord_broker::testkit::in_memory_broker(dir.path(), BrokerSettings::default()).unwrap();
    for file in files {
        let data = Bytes::from(std::fs::read(&file).unwrap());
        // Virtual time: a request may long-poll, but not forever.
        let handled = tokio::time::timeout(Duration::from_secs(24 * 3600), async {
            if let Ok(started) = dispatch::start(&broker, data).await {
                let _ = started.reply.await;
            }
        })
        .await;
        assert!(handled.is_ok(), "{} was never answered", file.display());
    }
}
