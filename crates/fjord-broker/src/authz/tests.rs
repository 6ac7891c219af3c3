#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fjord_coordinator::clock::ManualClock;
use fjord_coordinator::embedded::EmbeddedCoordinator;

use super::*;
use crate::session::{Principal, SecurityProtocol};

fn session(user: &str, ip: &str) -> Session {
    Session {
        listener: Arc::from("SASL_SSL"),
        protocol: SecurityProtocol::SaslSsl,
        peer: Some(format!("{ip}:5000").parse().unwrap()),
        principal: Principal::user(user),
    }
}

fn acl(
    resource_type: ResourceType,
    name: &str,
    pattern_type: PatternType,
    principal: &str,
    operation: AclOperation,
    permission: AclPermission,
) -> AclBinding {
    AclBinding {
        resource_type,
        resource_name: name.into(),
        pattern_type,
        principal: principal.into(),
        host: "*".into(),
        operation,
        permission,
    }
}

fn topic(operation: AclOperation, name: &str) -> Action<'_> {
    Action {
        operation,
        resource_type: ResourceType::Topic,
        name,
    }
}

async fn authorizer(settings: AuthorizerSettings, bindings: Vec<AclBinding>) -> Authorizer {
    let store = Arc::new(EmbeddedCoordinator::in_memory(ManualClock::new(0)));
    if !bindings.is_empty() {
        store.create_acls(bindings).await.unwrap();
    }
    let a = Authorizer::new(
        AuthorizerSettings {
            enabled: true,
            ..settings
        },
        store,
    );
    a.refresh().await.unwrap();
    a
}

use AclOperation::*;
use AclPermission::*;
use PatternType::*;
use ResourceType::*;

#[tokio::test]
async fn prefixed_allows_and_deny_beats_allow() {
    let a = authorizer(
        AuthorizerSettings::default(),
        vec![
            acl(Topic, "orders.", Prefixed, "User:writer", Write, Allow),
            acl(Topic, "orders.secret", Literal, "User:writer", Write, Deny),
            acl(Group, "billing", Literal, "User:*", Read, Allow),
        ],
    )
    .await;
    let writer = session("writer", "10.0.0.1");
    assert!(a.authorize(&writer, topic(Write, "orders.eu")));
    assert!(
        a.authorize(&writer, topic(Describe, "orders.eu")),
        "WRITE implies DESCRIBE"
    );
    assert!(!a.authorize(&writer, topic(Read, "orders.eu")));
    assert!(
        !a.authorize(&writer, topic(Write, "orders.secret")),
        "DENY beats ALLOW"
    );
    assert!(
        !a.authorize(&writer, topic(Write, "payments")),
        "no binding names it"
    );
    let other = session("other", "10.0.0.1");
    assert!(!a.authorize(&other, topic(Write, "orders.eu")));
    let group = Action {
        operation: Read,
        resource_type: Group,
        name: "billing",
    };
    assert!(a.authorize(&other, group), "User:* names every user");
    assert_eq!(a.stats.denied.load(Ordering::Relaxed), 4);
}

#[tokio::test]
async fn hosts_super_users_and_the_no_acl_default() {
    let mut by_host = acl(Topic, "*", Literal, "User:app", All, Allow);
    by_host.host = "10.0.0.7".into();
    let a = authorizer(
        AuthorizerSettings {
            super_users: vec!["User:admin".into()],
            ..AuthorizerSettings::default()
        },
        vec![by_host],
    )
    .await;
    assert!(a.authorize(&session("app", "10.0.0.7"), topic(Read, "anything")));
    assert!(!a.authorize(&session("app", "10.0.0.8"), topic(Read, "anything")));
    assert!(a.authorize(&session("admin", "1.1.1.1"), topic(Delete, "anything")));
    let cluster = Action {
        operation: Alter,
        resource_type: Cluster,
        name: "kafka-cluster",
    };
    assert!(!a.authorize(&session("app", "10.0.0.7"), cluster));

    let open = authorizer(
        AuthorizerSettings {
            allow_everyone_if_no_acl_found: true,
            ..AuthorizerSettings::default()
        },
        vec![acl(Topic, "guarded", Literal, "User:owner", Read, Allow)],
    )
    .await;
    let anyone = session("anyone", "10.0.0.1");
    assert!(open.authorize(&anyone, topic(Read, "unguarded")));
    assert!(
        !open.authorize(&anyone, topic(Read, "guarded")),
        "a named resource is guarded"
    );
    assert!(
        open.authorize(&anyone, cluster),
        "no cluster bindings at all"
    );

    let off = Authorizer::disabled();
    assert!(off.authorize(&anyone, topic(Delete, "x")));
}

#[tokio::test]
async fn by_resource_type_and_reloads_follow_the_store() {
    let store = Arc::new(EmbeddedCoordinator::in_memory(ManualClock::new(0)));
    let a = Arc::new(Authorizer::new(
        AuthorizerSettings {
            enabled: true,
            refresh_interval: Duration::from_millis(10),
            ..AuthorizerSettings::default()
        },
        store.clone(),
    ));
    a.refresh().await.unwrap();
    let writer = session("writer", "10.0.0.1");
    assert!(!a.authorize_any(&writer, Write, Topic));
    let cancel = CancellationToken::new();
    let task = tokio::spawn(a.clone().run(cancel.clone()));
    store
        .create_acls(vec![acl(Topic, "t", Literal, "User:writer", Write, Allow)])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !a.can(&writer, topic(Write, "t")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the change was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(a.authorize_any(&writer, Write, Topic));
    store
        .create_acls(vec![acl(Topic, "*", Literal, "User:writer", Write, Deny)])
        .await
        .unwrap();
    while a.authorize_any(&writer, Write, Topic) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deny was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cancel.cancel();
    task.await.unwrap();
}
