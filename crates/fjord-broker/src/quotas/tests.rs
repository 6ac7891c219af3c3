#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fjord_coordinator::clock::ManualClock;
use fjord_coordinator::embedded::EmbeddedCoordinator;
use fjord_coordinator::quotas::{QuotaAlteration, QuotaOp};

use super::*;

fn user(name: &str) -> QuotaEntityPart {
    QuotaEntityPart::named(QuotaEntityType::User, name)
}
fn client(name: &str) -> QuotaEntityPart {
    QuotaEntityPart::named(QuotaEntityType::ClientId, name)
}
fn default_user() -> QuotaEntityPart {
    QuotaEntityPart::default_of(QuotaEntityType::User)
}
fn default_client() -> QuotaEntityPart {
    QuotaEntityPart::default_of(QuotaEntityType::ClientId)
}

fn set(entity: QuotaEntity, value: Option<f64>) -> QuotaAlteration {
    QuotaAlteration {
        entity,
        ops: vec![QuotaOp {
            key: "producer_byte_rate".into(),
            value,
        }],
    }
}

async fn manager() -> (Arc<EmbeddedCoordinator>, Arc<ManualClock>, QuotaManager) {
    let clock = ManualClock::new(1_000_000);
    let store = Arc::new(EmbeddedCoordinator::in_memory(clock.clone()));
    let m = QuotaManager::new(QuotaSettings::default(), store.clone(), clock.clone());
    m.refresh().await.unwrap();
    (store, clock, m)
}

/// Each level of Kafka's precedence wins over every level below it; removing it uncovers the
/// next one.
#[tokio::test]
async fn resolution_follows_kafkas_precedence() {
    let (store, _clock, m) = manager().await;
    let levels: Vec<QuotaEntity> = vec![
        vec![user("alice"), client("app")],
        vec![user("alice"), default_client()],
        vec![user("alice")],
        vec![default_user(), client("app")],
        vec![default_user(), default_client()],
        vec![default_user()],
        vec![client("app")],
        vec![default_client()],
    ];
    assert_eq!(levels, precedence("alice", "app").to_vec());
    store
        .alter_client_quotas(
            levels
                .iter()
                .enumerate()
                .map(|(i, e)| set(e.clone(), Some((i + 1) as f64)))
                .collect(),
        )
        .await
        .unwrap();
    m.refresh().await.unwrap();
    let key = QuotaKey::ProducerByteRate;
    for (i, level) in levels.iter().enumerate() {
        assert_eq!(
            m.quota_for(key, "alice", "app"),
            Some((i + 1) as f64),
            "{level:?}"
        );
        store
            .alter_client_quotas(vec![set(level.clone(), None)])
            .await
            .unwrap();
        m.refresh().await.unwrap();
    }
    assert_eq!(m.quota_for(key, "alice", "app"), None);
    // Another key is not affected by producer quotas.
    assert_eq!(
        m.quota_for(QuotaKey::ConsumerByteRate, "alice", "app"),
        None
    );
}

#[tokio::test]
async fn defaults_apply_to_others_but_names_win() {
    let (store, _clock, m) = manager().await;
    store
        .alter_client_quotas(vec![
            set(vec![default_user()], Some(10.0)),
            set(vec![user("bob")], Some(20.0)),
            set(vec![client("app")], Some(30.0)),
        ])
        .await
        .unwrap();
    m.refresh().await.unwrap();
    let key = QuotaKey::ProducerByteRate;
    assert_eq!(m.quota_for(key, "bob", "app"), Some(20.0));
    assert_eq!(m.quota_for(key, "carol", "app"), Some(10.0));
    assert_eq!(m.quota_for(key, "ANONYMOUS", "x"), Some(10.0));
}

#[test]
fn throttle_is_kafkas_formula_capped() {
    // At or under 100 B/s over 10 s: no throttle.
    assert_eq!(throttle_ms(1000.0, 100.0, 10_000, 11_000), 0);
    assert_eq!(throttle_ms(500.0, 100.0, 10_000, 11_000), 0);
    // 150 B/s, 50 % over a 10 s window: (150 - 100) / 100 × 10 s = 5 s.
    assert_eq!(throttle_ms(1500.0, 100.0, 10_000, 11_000), 5_000);
    // Within one second's worth over a one-sample window: none.
    assert_eq!(throttle_ms(100.0, 100.0, 1_000, 11_000), 0);
    assert_eq!(throttle_ms(1e9, 100.0, 10_000, 11_000), 11_000);
}

/// With a manual clock: a burst is throttled for exactly the time that brings the average back
/// to the quota; producing at the quota afterwards is not throttled; the window slides.
#[tokio::test]
async fn meters_slide_and_throttle_with_the_clock() {
    let (store, clock, m) = manager().await;
    store
        .alter_client_quotas(vec![set(vec![user("alice")], Some(1000.0))])
        .await
        .unwrap();
    m.refresh().await.unwrap();
    let key = QuotaKey::ProducerByteRate;
    // Unquoted: never throttled.
    assert_eq!(m.record(key, "bob", "app", (1u64 << 30) as f64), 0);
    // 5000 bytes at once: 5000 B/s over the shortest (one-sample) window, so
    // (5000 - 1000) / 1000 × 1 s = 4 s.
    assert_eq!(m.record(key, "alice", "app", 5000.0), 4000);
    // 4 s later the window spans 4 s: still 250 B over the quota, 1 s more.
    clock.advance(4000);
    assert_eq!(m.record(key, "alice", "app", 0.0), 1000);
    // After that the average is at the quota: 5000 bytes over 5 s.
    clock.advance(1000);
    assert_eq!(m.record(key, "alice", "app", 0.0), 0);
    // Another client of alice shares the user-level meter.
    clock.advance(1000);
    assert_eq!(m.record(key, "alice", "other", 1000.0), 0);
    let throttled = m.record(key, "alice", "other", 1000.0);
    // 7000 bytes over 6 s: (7000/6 - 1000) / 1000 × 6 s = 1 s.
    assert_eq!(throttled, 1000);
    // Once the window has slid past everything, a fresh start.
    clock.advance(20_000);
    assert_eq!(m.record(key, "alice", "app", 1000.0), 0);
    assert_eq!(m.stats.throttled.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_default_quota_meters_each_user_apart() {
    let (store, _clock, m) = manager().await;
    store
        .alter_client_quotas(vec![set(vec![default_user()], Some(1000.0))])
        .await
        .unwrap();
    m.refresh().await.unwrap();
    let key = QuotaKey::ProducerByteRate;
    assert_eq!(m.record(key, "a", "c", 1000.0), 0);
    assert_eq!(m.record(key, "b", "c", 1000.0), 0);
    assert!(m.record(key, "a", "c", 1000.0) > 0);
}

#[tokio::test]
async fn a_disabled_manager_never_throttles() {
    let m = QuotaManager::disabled(ManualClock::new(0));
    m.refresh().await.unwrap();
    assert_eq!(m.record(QuotaKey::ProducerByteRate, "a", "b", f64::MAX), 0);
}

#[tokio::test(start_paused = true)]
async fn holds_last_their_time_until_released_at_shutdown() {
    let quotas = Arc::new(QuotaManager::disabled(ManualClock::new(0)));
    let start = tokio::time::Instant::now();
    quotas.hold(0).await;
    quotas.hold(-5).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    quotas.hold(300).await;
    assert_eq!(start.elapsed(), Duration::from_millis(300));

    let held = tokio::spawn({
        let quotas = quotas.clone();
        async move { quotas.hold(11_000).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    quotas.release_holds();
    held.await.unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(400),
        "released at once"
    );
    quotas.hold(11_000).await;
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(400),
        "no new hold after release"
    );
}
