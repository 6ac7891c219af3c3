//! Conformance of [`QuotaStore`]: setting and removing keys, validation that changes nothing,
//! defaults as entity parts, and the quota version.

use std::future::Future;
use std::sync::Arc;

use super::is_invalid;
use crate::quotas::*;
use crate::*;

pub(super) async fn run_all<F, Fut>(fresh: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Coordinator>>,
{
    quotas_are_set_replaced_and_removed(fresh().await).await;
    invalid_alterations_change_nothing(fresh().await).await;
    defaults_and_pairs_are_distinct_entities(fresh().await).await;
}

fn user(name: &str) -> QuotaEntityPart {
    QuotaEntityPart::named(QuotaEntityType::User, name)
}

fn client(name: &str) -> QuotaEntityPart {
    QuotaEntityPart::named(QuotaEntityType::ClientId, name)
}

fn alter(entity: QuotaEntity, ops: &[(&str, Option<f64>)]) -> QuotaAlteration {
    QuotaAlteration {
        entity,
        ops: ops
            .iter()
            .map(|(key, value)| QuotaOp {
                key: (*key).into(),
                value: *value,
            })
            .collect(),
    }
}

async fn quotas_are_set_replaced_and_removed(c: Arc<dyn Coordinator>) {
    let v0 = c.quota_version().await.unwrap();
    assert_eq!(c.client_quotas().await.unwrap().entries, vec![]);
    c.alter_client_quotas(vec![alter(
        vec![user("alice")],
        &[
            ("producer_byte_rate", Some(1000.0)),
            ("consumer_byte_rate", Some(2000.0)),
        ],
    )])
    .await
    .unwrap();
    let v1 = c.quota_version().await.unwrap();
    assert!(v1 > v0);
    let snap = c.client_quotas().await.unwrap();
    assert_eq!(snap.version, v1);
    assert_eq!(snap.entries.len(), 1);
    assert_eq!(snap.entries[0].entity, vec![user("alice")]);
    assert_eq!(snap.entries[0].values[&QuotaKey::ProducerByteRate], 1000.0);
    assert_eq!(snap.entries[0].values[&QuotaKey::ConsumerByteRate], 2000.0);

    // The same values again: no change, the version stays.
    c.alter_client_quotas(vec![alter(
        vec![user("alice")],
        &[("producer_byte_rate", Some(1000.0))],
    )])
    .await
    .unwrap();
    assert_eq!(c.quota_version().await.unwrap(), v1);

    // Replace one, remove the other.
    c.alter_client_quotas(vec![alter(
        vec![user("alice")],
        &[
            ("producer_byte_rate", Some(1500.5)),
            ("consumer_byte_rate", None),
        ],
    )])
    .await
    .unwrap();
    let v2 = c.quota_version().await.unwrap();
    assert!(v2 > v1);
    let snap = c.client_quotas().await.unwrap();
    assert_eq!(snap.entries.len(), 1);
    assert_eq!(
        snap.entries[0]
            .values
            .clone()
            .into_iter()
            .collect::<Vec<_>>(),
        vec![(QuotaKey::ProducerByteRate, 1500.5)]
    );

    // Removing the last key removes the entity.
    c.alter_client_quotas(vec![alter(
        vec![user("alice")],
        &[("producer_byte_rate", None)],
    )])
    .await
    .unwrap();
    assert!(c.quota_version().await.unwrap() > v2);
    assert_eq!(c.client_quotas().await.unwrap().entries, vec![]);
}

async fn invalid_alterations_change_nothing(c: Arc<dyn Coordinator>) {
    let v0 = c.quota_version().await.unwrap();
    let good = alter(vec![user("bob")], &[("producer_byte_rate", Some(10.0))]);
    for bad in [
        alter(vec![user("x")], &[("no_such_key", Some(1.0))]),
        alter(vec![user("x")], &[("producer_byte_rate", Some(0.0))]),
        alter(vec![user("x")], &[("consumer_byte_rate", Some(-5.0))]),
        alter(
            vec![user("x")],
            &[("request_percentage", Some(f64::INFINITY))],
        ),
        alter(vec![], &[("producer_byte_rate", Some(1.0))]),
        alter(
            vec![user("x"), user("y")],
            &[("producer_byte_rate", Some(1.0))],
        ),
    ] {
        let r = c.alter_client_quotas(vec![good.clone(), bad.clone()]).await;
        assert!(is_invalid(r), "{bad:?}");
    }
    // The same entity twice in one call.
    assert!(is_invalid(
        c.alter_client_quotas(vec![good.clone(), good.clone()])
            .await
    ));
    assert_eq!(c.quota_version().await.unwrap(), v0);
    assert_eq!(c.client_quotas().await.unwrap().entries, vec![]);
}

async fn defaults_and_pairs_are_distinct_entities(c: Arc<dyn Coordinator>) {
    let default_user = QuotaEntityPart::default_of(QuotaEntityType::User);
    let default_client = QuotaEntityPart::default_of(QuotaEntityType::ClientId);
    c.alter_client_quotas(vec![
        alter(
            vec![default_user.clone()],
            &[("producer_byte_rate", Some(1.0))],
        ),
        // Given client first: stored normalized, user first.
        alter(
            vec![client("app"), user("alice")],
            &[("producer_byte_rate", Some(2.0))],
        ),
        alter(
            vec![default_user.clone(), default_client.clone()],
            &[("producer_byte_rate", Some(3.0))],
        ),
        alter(vec![client("app")], &[("request_percentage", Some(50.0))]),
    ])
    .await
    .unwrap();
    let snap = c.client_quotas().await.unwrap();
    let entities: Vec<QuotaEntity> = snap.entries.iter().map(|e| e.entity.clone()).collect();
    let mut want = vec![
        vec![default_user.clone()],
        vec![user("alice"), client("app")],
        vec![default_user, default_client],
        vec![client("app")],
    ];
    want.sort();
    assert_eq!(entities, want);
    // Altering by the other part order addresses the same entity.
    c.alter_client_quotas(vec![alter(
        vec![user("alice"), client("app")],
        &[("producer_byte_rate", None)],
    )])
    .await
    .unwrap();
    assert_eq!(c.client_quotas().await.unwrap().entries.len(), 3);
}
