//! Conformance of [`CredentialStore`] and [`AclStore`]: SCRAM credentials, ACL bindings, filters
//! and the ACL version.

use std::future::Future;
use std::sync::Arc;

use super::is_invalid;
use crate::security::*;
use crate::*;

pub(super) async fn run_all<F, Fut>(fresh: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Coordinator>>,
{
    credentials_are_stored_replaced_and_deleted(fresh().await).await;
    scram_users_are_sorted(fresh().await).await;
    invalid_credentials_are_refused(fresh().await).await;
    create_acls_is_idempotent_and_versioned(fresh().await).await;
    delete_acls_reports_per_filter(fresh().await).await;
    match_filters_delete_what_applies_to_a_name(fresh().await).await;
    invalid_bindings_are_refused(fresh().await).await;
}

pub(super) fn credential(mechanism: ScramMechanism, iterations: i32, fill: u8) -> ScramCredential {
    let len = match mechanism {
        ScramMechanism::Sha256 => 32,
        ScramMechanism::Sha512 => 64,
    };
    ScramCredential {
        mechanism,
        iterations,
        salt: vec![fill; 16],
        stored_key: vec![fill.wrapping_add(1); len],
        server_key: vec![fill.wrapping_add(2); len],
    }
}

pub(super) fn binding(name: &str, pattern_type: PatternType, principal: &str) -> AclBinding {
    AclBinding {
        resource_type: ResourceType::Topic,
        resource_name: name.into(),
        pattern_type,
        principal: principal.into(),
        host: "*".into(),
        operation: AclOperation::Read,
        permission: AclPermission::Allow,
    }
}

fn sorted(mut v: Vec<AclBinding>) -> Vec<AclBinding> {
    v.sort();
    v
}

async fn credentials_are_stored_replaced_and_deleted(c: Arc<dyn Coordinator>) {
    use ScramMechanism::*;
    assert_eq!(c.scram_credential("alice", Sha256).await.unwrap(), None);
    let first = credential(Sha256, 4096, 1);
    c.upsert_scram_credential("alice", first.clone())
        .await
        .unwrap();
    assert_eq!(
        c.scram_credential("alice", Sha256).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(c.scram_credential("alice", Sha512).await.unwrap(), None);
    assert_eq!(c.scram_credential("bob", Sha256).await.unwrap(), None);
    // An upsert replaces.
    let second = credential(Sha256, 8192, 7);
    c.upsert_scram_credential("alice", second.clone())
        .await
        .unwrap();
    assert_eq!(
        c.scram_credential("alice", Sha256).await.unwrap(),
        Some(second.clone())
    );
    // Upserting the same again is fine.
    c.upsert_scram_credential("alice", second.clone())
        .await
        .unwrap();
    // Two mechanisms per user, independent.
    let strong = credential(Sha512, 4096, 9);
    c.upsert_scram_credential("alice", strong.clone())
        .await
        .unwrap();
    assert_eq!(
        c.scram_credential("alice", Sha512).await.unwrap(),
        Some(strong.clone())
    );
    assert_eq!(
        c.scram_credential("alice", Sha256).await.unwrap(),
        Some(second)
    );
    // Deleting one mechanism leaves the other.
    assert!(c.delete_scram_credential("alice", Sha256).await.unwrap());
    assert!(!c.delete_scram_credential("alice", Sha256).await.unwrap());
    assert!(!c.delete_scram_credential("nobody", Sha512).await.unwrap());
    assert_eq!(c.scram_credential("alice", Sha256).await.unwrap(), None);
    assert_eq!(
        c.scram_credential("alice", Sha512).await.unwrap(),
        Some(strong)
    );
    assert!(c.delete_scram_credential("alice", Sha512).await.unwrap());
    assert!(c.scram_users().await.unwrap().is_empty());
}

async fn scram_users_are_sorted(c: Arc<dyn Coordinator>) {
    use ScramMechanism::*;
    assert!(c.scram_users().await.unwrap().is_empty());
    c.upsert_scram_credential("carol", credential(Sha512, 5000, 1))
        .await
        .unwrap();
    c.upsert_scram_credential("alice", credential(Sha512, 4096, 1))
        .await
        .unwrap();
    c.upsert_scram_credential("alice", credential(Sha256, 16384, 1))
        .await
        .unwrap();
    c.upsert_scram_credential("Bob", credential(Sha256, 4100, 1))
        .await
        .unwrap();
    let info = |mechanism, iterations| ScramCredentialInfo {
        mechanism,
        iterations,
    };
    assert_eq!(
        c.scram_users().await.unwrap(),
        vec![
            ScramUser {
                user: "Bob".into(),
                credentials: vec![info(Sha256, 4100)],
            },
            ScramUser {
                user: "alice".into(),
                credentials: vec![info(Sha256, 16384), info(Sha512, 4096)],
            },
            ScramUser {
                user: "carol".into(),
                credentials: vec![info(Sha512, 5000)],
            },
        ]
    );
}

async fn invalid_credentials_are_refused(c: Arc<dyn Coordinator>) {
    use ScramMechanism::*;
    let good = credential(Sha256, 4096, 1);
    assert!(is_invalid(
        c.upsert_scram_credential("", good.clone()).await
    ));
    let mut few = good.clone();
    few.iterations = 100;
    assert!(is_invalid(c.upsert_scram_credential("alice", few).await));
    let mut many = good.clone();
    many.iterations = MAX_SCRAM_ITERATIONS + 1;
    assert!(is_invalid(c.upsert_scram_credential("alice", many).await));
    let mut short = good.clone();
    short.mechanism = Sha512;
    assert!(is_invalid(c.upsert_scram_credential("alice", short).await));
    let mut unsalted = good.clone();
    unsalted.salt.clear();
    assert!(is_invalid(
        c.upsert_scram_credential("alice", unsalted).await
    ));
    assert!(c.scram_users().await.unwrap().is_empty());
    assert_eq!(c.scram_credential("alice", Sha256).await.unwrap(), None);
    assert_eq!(c.scram_credential("alice", Sha512).await.unwrap(), None);
    // A refused replacement leaves the stored credential alone.
    c.upsert_scram_credential("alice", good.clone())
        .await
        .unwrap();
    let mut bad = good.clone();
    bad.stored_key.pop();
    assert!(is_invalid(c.upsert_scram_credential("alice", bad).await));
    assert_eq!(
        c.scram_credential("alice", Sha256).await.unwrap(),
        Some(good)
    );
}

async fn create_acls_is_idempotent_and_versioned(c: Arc<dyn Coordinator>) {
    let empty = c.acls().await.unwrap();
    assert!(empty.bindings.is_empty());
    let v0 = c.acl_version().await.unwrap();
    assert_eq!(empty.version, v0);

    let a = binding("a", PatternType::Literal, "User:alice");
    let b = binding("b", PatternType::Prefixed, "User:bob");
    // Duplicates within one call are stored once.
    c.create_acls(vec![b.clone(), a.clone(), b.clone()])
        .await
        .unwrap();
    let v1 = c.acl_version().await.unwrap();
    assert!(v1 > v0, "{v1} after {v0}");
    let snapshot = c.acls().await.unwrap();
    assert_eq!(snapshot.version, v1);
    assert_eq!(snapshot.bindings, sorted(vec![a.clone(), b.clone()]));

    // Creating existing bindings changes nothing, version included.
    c.create_acls(vec![a.clone()]).await.unwrap();
    c.create_acls(vec![b.clone(), a.clone()]).await.unwrap();
    c.create_acls(vec![]).await.unwrap();
    assert_eq!(c.acl_version().await.unwrap(), v1);
    assert_eq!(c.acls().await.unwrap(), snapshot);

    // One new binding among old ones is added, and the version moves.
    let mut d = a.clone();
    d.permission = AclPermission::Deny;
    c.create_acls(vec![a.clone(), d.clone()]).await.unwrap();
    let v2 = c.acl_version().await.unwrap();
    assert!(v2 > v1, "{v2} after {v1}");
    assert_eq!(
        c.acls().await.unwrap().bindings,
        sorted(vec![a.clone(), b.clone(), d.clone()])
    );

    // A delete that matches nothing changes nothing.
    let none = AclFilter {
        principal: Some("User:nobody".into()),
        ..AclFilter::any()
    };
    assert_eq!(
        c.delete_acls(vec![none]).await.unwrap(),
        vec![Vec::<AclBinding>::new()]
    );
    assert_eq!(c.acl_version().await.unwrap(), v2);

    // A delete that removes something moves the version.
    let by_name = AclFilter {
        resource_name: Some("b".into()),
        ..AclFilter::any()
    };
    assert_eq!(
        c.delete_acls(vec![by_name.clone()]).await.unwrap(),
        vec![vec![b.clone()]]
    );
    let v3 = c.acl_version().await.unwrap();
    assert!(v3 > v2, "{v3} after {v2}");
    // Deleting again: nothing, same version.
    assert_eq!(
        c.delete_acls(vec![by_name]).await.unwrap(),
        vec![Vec::<AclBinding>::new()]
    );
    assert_eq!(c.acl_version().await.unwrap(), v3);
    // Re-creating a deleted binding moves it again.
    c.create_acls(vec![b.clone()]).await.unwrap();
    let v4 = c.acl_version().await.unwrap();
    assert!(v4 > v3, "{v4} after {v3}");
    let snapshot = c.acls().await.unwrap();
    assert_eq!(snapshot.version, v4);
    assert_eq!(snapshot.bindings, sorted(vec![a, b, d]));
}

async fn delete_acls_reports_per_filter(c: Arc<dyn Coordinator>) {
    let alice_a = binding("a", PatternType::Literal, "User:alice");
    let alice_b = binding("b", PatternType::Literal, "User:alice");
    let bob_a = binding("a", PatternType::Literal, "User:bob");
    let bob_c = binding("c", PatternType::Prefixed, "User:bob");
    let mut group = binding("g", PatternType::Literal, "User:carol");
    group.resource_type = ResourceType::Group;
    let all = vec![
        alice_a.clone(),
        alice_b.clone(),
        bob_a.clone(),
        bob_c.clone(),
        group.clone(),
    ];
    c.create_acls(all.clone()).await.unwrap();
    let before = c.acl_version().await.unwrap();

    let by_alice = AclFilter {
        principal: Some("User:alice".into()),
        ..AclFilter::any()
    };
    let named_a = AclFilter {
        resource_type: Some(ResourceType::Topic),
        resource_name: Some("a".into()),
        pattern: PatternFilter::Exactly(PatternType::Literal),
        ..AclFilter::any()
    };
    let nothing = AclFilter {
        operation: Some(AclOperation::Write),
        ..AclFilter::any()
    };
    let deleted = c
        .delete_acls(vec![by_alice, named_a, nothing])
        .await
        .unwrap();
    assert_eq!(deleted.len(), 3);
    // alice_a is matched by both filters and listed under both.
    assert_eq!(
        sorted(deleted[0].clone()),
        sorted(vec![alice_a.clone(), alice_b.clone()])
    );
    assert_eq!(
        sorted(deleted[1].clone()),
        sorted(vec![alice_a.clone(), bob_a.clone()])
    );
    assert!(deleted[2].is_empty());
    let after = c.acls().await.unwrap();
    assert_eq!(after.bindings, sorted(vec![bob_c.clone(), group.clone()]));
    assert!(after.version > before);

    // No filters: nothing deleted.
    assert!(c.delete_acls(vec![]).await.unwrap().is_empty());
    assert_eq!(c.acl_version().await.unwrap(), after.version);

    // A filter matching everything removes the rest.
    let deleted = c.delete_acls(vec![AclFilter::any()]).await.unwrap();
    assert_eq!(sorted(deleted[0].clone()), sorted(vec![bob_c, group]));
    let empty = c.acls().await.unwrap();
    assert!(empty.bindings.is_empty());
    assert!(empty.version > after.version);
}

async fn match_filters_delete_what_applies_to_a_name(c: Arc<dyn Coordinator>) {
    let literal = binding("orders", PatternType::Literal, "User:alice");
    let wildcard = binding("*", PatternType::Literal, "User:alice");
    let prefix = binding("ord", PatternType::Prefixed, "User:alice");
    let other = binding("payments", PatternType::Literal, "User:alice");
    let longer_prefix = binding("orders-eu", PatternType::Prefixed, "User:alice");
    c.create_acls(vec![
        literal.clone(),
        wildcard.clone(),
        prefix.clone(),
        other.clone(),
        longer_prefix.clone(),
    ])
    .await
    .unwrap();
    let filter = AclFilter {
        resource_type: Some(ResourceType::Topic),
        resource_name: Some("orders".into()),
        pattern: PatternFilter::Match,
        ..AclFilter::any()
    };
    let deleted = c.delete_acls(vec![filter]).await.unwrap();
    assert_eq!(
        sorted(deleted[0].clone()),
        sorted(vec![literal, wildcard, prefix])
    );
    assert_eq!(
        c.acls().await.unwrap().bindings,
        sorted(vec![other, longer_prefix])
    );
}

async fn invalid_bindings_are_refused(c: Arc<dyn Coordinator>) {
    let good = binding("orders", PatternType::Literal, "User:alice");
    let v0 = c.acl_version().await.unwrap();
    let bad = [
        binding("*", PatternType::Prefixed, "User:alice"),
        binding("", PatternType::Literal, "User:alice"),
        binding("orders", PatternType::Literal, "alice"),
        AclBinding {
            resource_type: ResourceType::Cluster,
            ..good.clone()
        },
        AclBinding {
            host: String::new(),
            ..good.clone()
        },
    ];
    for b in bad {
        // With a valid binding in the same call: nothing of it is added.
        assert!(
            is_invalid(c.create_acls(vec![good.clone(), b.clone()]).await),
            "{b:?}"
        );
    }
    let snapshot = c.acls().await.unwrap();
    assert!(snapshot.bindings.is_empty());
    assert_eq!(snapshot.version, v0);
    assert_eq!(c.acl_version().await.unwrap(), v0);
    // The cluster resource under its own name is fine.
    let cluster = AclBinding {
        resource_type: ResourceType::Cluster,
        resource_name: CLUSTER_RESOURCE.into(),
        operation: AclOperation::ClusterAction,
        ..good.clone()
    };
    c.create_acls(vec![good.clone(), cluster.clone()])
        .await
        .unwrap();
    assert_eq!(
        c.acls().await.unwrap().bindings,
        sorted(vec![good, cluster])
    );
}

/// Writes credentials and ACLs, for [`check_durable`] after a reopen.
pub(super) async fn write_durable(c: &Arc<dyn Coordinator>) -> i64 {
    use ScramMechanism::*;
    c.upsert_scram_credential("durable-user", credential(Sha256, 4096, 3))
        .await
        .unwrap();
    c.upsert_scram_credential("durable-user", credential(Sha512, 8192, 4))
        .await
        .unwrap();
    c.upsert_scram_credential("gone-user", credential(Sha256, 4096, 5))
        .await
        .unwrap();
    assert!(c
        .delete_scram_credential("gone-user", Sha256)
        .await
        .unwrap());
    c.create_acls(vec![
        binding("kept", PatternType::Literal, "User:durable"),
        binding("kept-", PatternType::Prefixed, "User:durable"),
        binding("removed", PatternType::Literal, "User:durable"),
    ])
    .await
    .unwrap();
    let removed = AclFilter {
        resource_name: Some("removed".into()),
        ..AclFilter::any()
    };
    assert_eq!(c.delete_acls(vec![removed]).await.unwrap()[0].len(), 1);
    c.acl_version().await.unwrap()
}

/// Checks what [`write_durable`] wrote, `version` being the ACL version it returned.
pub(super) async fn check_durable(c: &Arc<dyn Coordinator>, version: i64) {
    use ScramMechanism::*;
    assert_eq!(
        c.scram_credential("durable-user", Sha256).await.unwrap(),
        Some(credential(Sha256, 4096, 3))
    );
    assert_eq!(
        c.scram_credential("durable-user", Sha512).await.unwrap(),
        Some(credential(Sha512, 8192, 4))
    );
    assert_eq!(c.scram_credential("gone-user", Sha256).await.unwrap(), None);
    let users: Vec<String> = c
        .scram_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.user)
        .collect();
    assert_eq!(users, vec!["durable-user"]);
    let snapshot = c.acls().await.unwrap();
    assert_eq!(snapshot.version, version);
    assert_eq!(
        snapshot.bindings,
        sorted(vec![
            binding("kept", PatternType::Literal, "User:durable"),
            binding("kept-", PatternType::Prefixed, "User:durable"),
        ])
    );
    // The version goes on rising from where it was.
    c.create_acls(vec![binding("new", PatternType::Literal, "User:durable")])
        .await
        .unwrap();
    assert!(c.acl_version().await.unwrap() > version);
}
