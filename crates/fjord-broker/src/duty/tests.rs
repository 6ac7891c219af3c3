#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::*;

/// What the test duty's passes do, in order (the last one repeats).
#[derive(Clone, Copy, Debug)]
enum Script {
    /// Done; nothing to report.
    Idle,
    /// Stopped at its budget: go again at once.
    Behind,
    /// Failed as a whole.
    Fail,
    /// Never finishes.
    Hang,
}

struct Probe {
    script: Vec<Script>,
    passes: mpsc::UnboundedSender<(Instant, &'static str)>,
    stood_by: Arc<AtomicU64>,
}

impl Duty for Probe {
    type Report = bool;
    type Error = String;

    fn name(&self) -> &'static str {
        "probe"
    }

    async fn pass(&mut self) -> Result<bool, String> {
        let step = if self.script.len() > 1 {
            self.script.remove(0)
        } else {
            self.script[0]
        };
        let _ = self.passes.send((Instant::now(), "pass"));
        match step {
            Script::Idle => Ok(false),
            Script::Behind => Ok(true),
            Script::Fail => Err("the store is down".into()),
            Script::Hang => std::future::pending().await,
        }
    }

    fn noteworthy(&self, behind: &bool) -> bool {
        *behind
    }

    fn again_at_once(&self, behind: &bool) -> bool {
        *behind
    }

    fn stand_by(&mut self) {
        self.stood_by.fetch_add(1, Ordering::Relaxed);
    }
}

fn probe(script: Vec<Script>) -> (Probe, mpsc::UnboundedReceiver<(Instant, &'static str)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Probe {
            script,
            passes: tx,
            stood_by: Arc::new(AtomicU64::new(0)),
        },
        rx,
    )
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn passes_run_every_interval_after_the_first_and_failures_are_retried() {
    let (duty, mut passes) = probe(vec![Script::Fail, Script::Idle]);
    let cancel = CancellationToken::new();
    let start = Instant::now();
    let task = tokio::spawn(run(duty, SECOND, || true, cancel.clone()));
    for n in 1..=3u32 {
        let (at, _) = passes.recv().await.unwrap();
        assert_eq!(
            at - start,
            SECOND * n,
            "pass {n}: the failed first pass changes nothing"
        );
    }
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_pass_behind_its_budget_is_followed_at_once() {
    let (duty, mut passes) = probe(vec![Script::Behind, Script::Behind, Script::Idle]);
    let cancel = CancellationToken::new();
    let start = Instant::now();
    let task = tokio::spawn(run(duty, SECOND, || true, cancel.clone()));
    let mut times = Vec::new();
    for _ in 0..4 {
        times.push(passes.recv().await.unwrap().0 - start);
    }
    assert_eq!(times, vec![SECOND, SECOND, SECOND, SECOND * 2]);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_broker_not_running_the_duties_stands_by_until_it_does() {
    let (duty, mut passes) = probe(vec![Script::Idle]);
    let stood_by = duty.stood_by.clone();
    let here = Arc::new(AtomicBool::new(false));
    let cancel = CancellationToken::new();
    let start = Instant::now();
    let gate = here.clone();
    let task = tokio::spawn(run(
        duty,
        SECOND,
        move || gate.load(Ordering::Relaxed),
        cancel.clone(),
    ));
    tokio::time::sleep(SECOND * 3 + SECOND / 2).await;
    assert!(
        passes.try_recv().is_err(),
        "no pass while another broker runs them"
    );
    assert_eq!(stood_by.load(Ordering::Relaxed), 3);
    here.store(true, Ordering::Relaxed);
    let (at, _) = passes.recv().await.unwrap();
    assert_eq!(at - start, SECOND * 4);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn cancellation_stops_a_pass_in_the_middle() {
    let (duty, mut passes) = probe(vec![Script::Hang]);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(duty, SECOND, || true, cancel.clone()));
    passes.recv().await.unwrap();
    cancel.cancel();
    tokio::time::timeout(SECOND, task)
        .await
        .expect("the loop ends at once")
        .unwrap();
}
