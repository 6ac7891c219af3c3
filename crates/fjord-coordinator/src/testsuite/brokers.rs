//! Conformance of [`BrokerRegistry`]: registrations, leases and their races.

use std::future::Future;
use std::sync::Arc;

use super::is_invalid;
use crate::*;

pub(super) async fn run_all<F, Fut>(fresh: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Coordinator>>,
{
    brokers_register_and_renew(fresh().await).await;
    broker_leases_lapse(fresh().await).await;
    brokers_deregister(fresh().await).await;
    broker_registrations_race(fresh().await).await;
    listeners_are_registered_and_checked(fresh().await).await;
}

fn broker(node_id: i32, host: &str) -> BrokerRegistration {
    BrokerRegistration {
        node_id,
        host: host.into(),
        port: 9092,
        rack: None,
        incarnation: uuid::Uuid::new_v4(),
        listeners: Vec::new(),
    }
}

fn local_now_ms() -> i64 {
    use crate::clock::Clock;
    crate::clock::SystemClock.now_ms()
}

async fn live_ids(c: &Arc<dyn Coordinator>) -> Vec<i32> {
    c.live_brokers()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.registration.node_id)
        .collect()
}

const LONG_LEASE_MS: i64 = 60_000;

async fn brokers_register_and_renew(c: Arc<dyn Coordinator>) {
    assert!(c.live_brokers().await.unwrap().is_empty());
    let mut two = broker(2, "host-two");
    two.rack = Some("rack-a".into());
    let one = broker(1, "host-one");
    let before = local_now_ms();
    let live_two = c.register_broker(two.clone(), LONG_LEASE_MS).await.unwrap();
    let live_one = c.register_broker(one.clone(), LONG_LEASE_MS).await.unwrap();
    assert_eq!(live_two.registration, two);
    assert_eq!(live_one.registration, one);
    // Milliseconds since the epoch (the coordinator's clock may differ a little from ours).
    let slack = 30_000;
    assert!(
        (live_one.lease_expires_ms - (before + LONG_LEASE_MS)).abs() < slack,
        "lease ends at {} ms, expected about {}",
        live_one.lease_expires_ms,
        before + LONG_LEASE_MS
    );
    // Sorted by node id, whatever the registration order.
    assert_eq!(
        c.live_brokers().await.unwrap(),
        vec![live_one.clone(), live_two.clone()]
    );

    // Renewal extends the lease (and only the lease).
    let renewed = c
        .renew_broker(1, one.incarnation, 2 * LONG_LEASE_MS)
        .await
        .unwrap();
    assert_eq!(renewed.registration, one);
    assert!(renewed.lease_expires_ms >= live_one.lease_expires_ms + LONG_LEASE_MS - 1_000);
    assert_eq!(
        c.live_brokers().await.unwrap(),
        vec![renewed.clone(), live_two.clone()]
    );

    // The same incarnation may register again: new address, new lease.
    let mut moved = one.clone();
    moved.host = "host-one-b".into();
    moved.port = 19092;
    moved.rack = Some("rack-b".into());
    let again = c
        .register_broker(moved.clone(), LONG_LEASE_MS)
        .await
        .unwrap();
    assert_eq!(again.registration, moved);
    assert_eq!(c.live_brokers().await.unwrap()[0], again);

    // Renewals of unknown nodes or other incarnations fail.
    assert!(is_invalid(
        c.renew_broker(7, one.incarnation, LONG_LEASE_MS).await
    ));
    assert!(is_invalid(
        c.renew_broker(1, two.incarnation, LONG_LEASE_MS).await
    ));
    // Bad arguments.
    assert!(is_invalid(c.renew_broker(1, one.incarnation, 0).await));
    assert!(is_invalid(c.register_broker(broker(3, "h"), 0).await));
    assert!(is_invalid(c.register_broker(broker(3, "h"), -5).await));
    assert!(is_invalid(
        c.register_broker(broker(3, "h"), state::MAX_BROKER_LEASE_MS + 1)
            .await
    ));
    assert!(is_invalid(
        c.register_broker(broker(-1, "h"), LONG_LEASE_MS).await
    ));
    assert!(is_invalid(
        c.register_broker(broker(3, ""), LONG_LEASE_MS).await
    ));
    assert!(is_invalid(
        c.register_broker(broker(3, "a\0b"), LONG_LEASE_MS).await
    ));
    let mut bad_port = broker(3, "h");
    bad_port.port = 70_000;
    assert!(is_invalid(c.register_broker(bad_port, LONG_LEASE_MS).await));
    assert_eq!(live_ids(&c).await, vec![1, 2]);
}

async fn broker_leases_lapse(c: Arc<dyn Coordinator>) {
    let one = broker(1, "h1");
    let two = broker(2, "h2");
    let three = broker(3, "h3");
    c.register_broker(one.clone(), 200).await.unwrap();
    c.register_broker(two.clone(), 200).await.unwrap();
    c.register_broker(three.clone(), LONG_LEASE_MS)
        .await
        .unwrap();
    // Renewing before the lapse keeps broker 2 live.
    c.renew_broker(2, two.incarnation, LONG_LEASE_MS)
        .await
        .unwrap();
    // A different incarnation cannot take a live node id.
    assert!(is_invalid(
        c.register_broker(broker(1, "h1"), LONG_LEASE_MS).await
    ));
    assert!(is_invalid(
        c.register_broker(broker(3, "h3"), LONG_LEASE_MS).await
    ));
    assert_eq!(live_ids(&c).await, vec![1, 2, 3]);

    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(live_ids(&c).await, vec![2, 3]);
    // The lapsed lease cannot be renewed: the broker must register again.
    assert!(is_invalid(
        c.renew_broker(1, one.incarnation, LONG_LEASE_MS).await
    ));
    assert_eq!(live_ids(&c).await, vec![2, 3]);

    // After the lapse a new incarnation may take the node id ...
    let one_again = broker(1, "h1-new");
    let live = c
        .register_broker(one_again.clone(), LONG_LEASE_MS)
        .await
        .unwrap();
    assert_eq!(live.registration, one_again);
    assert_eq!(c.live_brokers().await.unwrap()[0], live);
    // ... and then the old one can neither renew nor register.
    assert!(is_invalid(
        c.renew_broker(1, one.incarnation, LONG_LEASE_MS).await
    ));
    assert!(is_invalid(
        c.register_broker(one.clone(), LONG_LEASE_MS).await
    ));
    c.renew_broker(1, one_again.incarnation, LONG_LEASE_MS)
        .await
        .unwrap();

    // The old incarnation registering again after its own lapse also works (e.g. a broker
    // that was paused too long), as long as nobody else took the node id.
    let four = broker(4, "h4");
    c.register_broker(four.clone(), 100).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(is_invalid(
        c.renew_broker(4, four.incarnation, LONG_LEASE_MS).await
    ));
    c.register_broker(four.clone(), LONG_LEASE_MS)
        .await
        .unwrap();
    assert_eq!(live_ids(&c).await, vec![1, 2, 3, 4]);
}

async fn brokers_deregister(c: Arc<dyn Coordinator>) {
    let one = broker(1, "h1");
    let two = broker(2, "h2");
    c.register_broker(one.clone(), LONG_LEASE_MS).await.unwrap();
    c.register_broker(two.clone(), LONG_LEASE_MS).await.unwrap();
    // Another incarnation's deregistration, or an unknown node's, changes nothing.
    c.deregister_broker(1, two.incarnation).await.unwrap();
    c.deregister_broker(9, one.incarnation).await.unwrap();
    assert_eq!(live_ids(&c).await, vec![1, 2]);

    // Gone at once, and idempotent.
    c.deregister_broker(1, one.incarnation).await.unwrap();
    assert_eq!(live_ids(&c).await, vec![2]);
    c.deregister_broker(1, one.incarnation).await.unwrap();
    assert_eq!(live_ids(&c).await, vec![2]);
    assert!(is_invalid(
        c.renew_broker(1, one.incarnation, LONG_LEASE_MS).await
    ));

    // The node id is free for a new incarnation at once; the old one's late deregistration
    // leaves the new one in place.
    let one_again = broker(1, "h1-new");
    c.register_broker(one_again.clone(), LONG_LEASE_MS)
        .await
        .unwrap();
    c.deregister_broker(1, one.incarnation).await.unwrap();
    let live = c.live_brokers().await.unwrap();
    assert_eq!(live.len(), 2);
    assert_eq!(live[0].registration, one_again);

    c.deregister_broker(1, one_again.incarnation).await.unwrap();
    c.deregister_broker(2, two.incarnation).await.unwrap();
    assert!(c.live_brokers().await.unwrap().is_empty());
}

/// Of concurrent registrations of one node id by different incarnations, exactly one wins.
async fn broker_registrations_race(c: Arc<dyn Coordinator>) {
    let contenders: Vec<BrokerRegistration> = (0..8).map(|i| broker(5, &format!("h{i}"))).collect();
    let results = futures::future::join_all(
        contenders
            .iter()
            .map(|r| c.register_broker(r.clone(), LONG_LEASE_MS)),
    )
    .await;
    let winners: Vec<&LiveBroker> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(results
        .iter()
        .all(|r| r.is_ok() || matches!(r, Err(CoordinatorError::Invalid(_)))));
    assert_eq!(c.live_brokers().await.unwrap(), vec![winners[0].clone()]);
}

fn endpoint(name: &str, host: &str, port: i32, protocol: &str) -> ListenerEndpoint {
    ListenerEndpoint {
        name: name.into(),
        host: host.into(),
        port,
        security_protocol: protocol.into(),
    }
}

async fn listeners_are_registered_and_checked(c: Arc<dyn Coordinator>) {
    let mut b = broker(4, "10.0.0.4");
    b.listeners = vec![
        endpoint("INTERNAL", "10.0.0.4", 9092, "PLAINTEXT"),
        endpoint("EXTERNAL", "broker-4.example.com", 9093, "SSL"),
    ];
    let live = c.register_broker(b.clone(), LONG_LEASE_MS).await.unwrap();
    assert_eq!(live.registration, b);
    assert_eq!(c.live_brokers().await.unwrap()[0].registration, b);
    let renewed = c
        .renew_broker(4, b.incarnation, LONG_LEASE_MS)
        .await
        .unwrap();
    assert_eq!(renewed.registration.listeners, b.listeners);
    // Registering again replaces them.
    b.listeners.pop();
    let again = c.register_broker(b.clone(), LONG_LEASE_MS).await.unwrap();
    assert_eq!(again.registration.listeners, b.listeners);

    let refused = [
        vec![endpoint("", "h", 1, "SSL")],
        vec![endpoint("A B", "h", 1, "SSL")],
        vec![endpoint("A", "", 1, "SSL")],
        vec![endpoint("A", "h", 70_000, "SSL")],
        vec![endpoint("A", "h", 1, "TLS")],
        vec![endpoint("A", "h", 1, "SSL"), endpoint("A", "h", 2, "SSL")],
        (0..17)
            .map(|i| endpoint(&format!("L{i}"), "h", 1, "SSL"))
            .collect(),
    ];
    for listeners in refused {
        let mut bad = broker(5, "h");
        bad.listeners = listeners.clone();
        let result = c.register_broker(bad, LONG_LEASE_MS).await;
        let shown = format!("{listeners:?}: {result:?}");
        assert!(is_invalid(result), "{shown}");
    }
    assert_eq!(live_ids(&c).await, vec![4]);
}
