//! Authorization through the dispatcher, for checks that no Kafka client of the e2e tests can
//! reach (confluent-kafka, kafka-python and kafkajs have no OffsetDelete).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::*;
use fjord_broker::authz::{Authorizer, AuthorizerSettings};
use fjord_broker::session::{Principal, SecurityProtocol, Session};
use fjord_coordinator::security::{
    AclBinding, AclOperation, AclPermission, PatternType, ResourceType,
};
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;

fn allow(resource_type: ResourceType, name: &str, operation: AclOperation) -> AclBinding {
    AclBinding {
        resource_type,
        resource_name: name.into(),
        pattern_type: PatternType::Literal,
        principal: "User:reader".into(),
        host: "*".into(),
        operation,
        permission: AclPermission::Allow,
    }
}

fn offset_commit(topics: &[&str]) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(GroupId(sb("g")))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(
            topics
                .iter()
                .map(|t| {
                    offset_commit_request::OffsetCommitRequestTopic::default()
                        .with_name(TopicName(sb(t)))
                        .with_partitions(vec![
                            offset_commit_request::OffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(5),
                        ])
                })
                .collect(),
        )
}

fn offset_delete(topic: &str) -> OffsetDeleteRequest {
    OffsetDeleteRequest::default()
        .with_group_id(GroupId(sb("g")))
        .with_topics(vec![
            offset_delete_request::OffsetDeleteRequestTopic::default()
                .with_name(TopicName(sb(topic)))
                .with_partitions(vec![
                    offset_delete_request::OffsetDeleteRequestPartition::default()
                        .with_partition_index(0),
                ]),
        ])
}

#[tokio::test]
async fn offset_delete_needs_delete_on_the_group_and_read_on_each_topic() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, _writer) =
        fjord_broker::testkit::in_memory_broker(dir.path(), Default::default()).unwrap();
    create(&broker, "t", 1).await;
    create(&broker, "u", 1).await;
    let r = call(&broker, offset_commit(&["t", "u"]), 8).await;
    assert!(r
        .topics
        .iter()
        .all(|t| t.partitions.iter().all(|p| p.error_code == 0)));

    // ACLs on from here: the reader may READ the group and topic t.
    let store = broker.coordinator.clone();
    store
        .create_acls(vec![
            allow(ResourceType::Group, "g", AclOperation::Read),
            allow(ResourceType::Topic, "t", AclOperation::Read),
        ])
        .await
        .unwrap();
    let authorizer = Authorizer::new(
        AuthorizerSettings {
            enabled: true,
            // The test's own plaintext calls (`call`) stay allowed everything.
            super_users: vec!["User:ANONYMOUS".into()],
            ..AuthorizerSettings::default()
        },
        store.clone(),
    );
    authorizer.refresh().await.unwrap();
    Arc::get_mut(&mut broker)
        .expect("the test holds the only reference")
        .authorizer = Arc::new(authorizer);
    let reader = Arc::new(Session {
        listener: Arc::from("SASL_SSL"),
        protocol: SecurityProtocol::SaslSsl,
        peer: None,
        principal: Principal::user("reader"),
    });

    // Without DELETE on the group: refused as a whole.
    let r = call_as(&broker, &reader, offset_delete("t"), 0).await;
    assert_eq!(r.error_code, ResponseError::GroupAuthorizationFailed.code());

    store
        .create_acls(vec![allow(ResourceType::Group, "g", AclOperation::Delete)])
        .await
        .unwrap();
    broker.authorizer.refresh().await.unwrap();
    // DELETE on the group, but no READ on u: that topic's partitions are refused and keep
    // their offsets; t's are deleted.
    let r = call_as(&broker, &reader, offset_delete("u"), 0).await;
    assert_eq!(r.error_code, 0);
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        ResponseError::TopicAuthorizationFailed.code()
    );
    let r = call_as(&broker, &reader, offset_delete("t"), 0).await;
    assert_eq!(r.error_code, 0);
    assert_eq!(r.topics[0].partitions[0].error_code, 0);

    let fetched = call(
        &broker,
        OffsetFetchRequest::default()
            .with_group_id(GroupId(sb("g")))
            .with_topics(Some(
                ["t", "u"]
                    .iter()
                    .map(|t| {
                        offset_fetch_request::OffsetFetchRequestTopic::default()
                            .with_name(TopicName(sb(t)))
                            .with_partition_indexes(vec![0])
                    })
                    .collect(),
            )),
        7,
    )
    .await;
    let offsets: Vec<(String, i64)> = fetched
        .topics
        .iter()
        .map(|t| (t.name.to_string(), t.partitions[0].committed_offset))
        .collect();
    assert_eq!(offsets, vec![("t".into(), -1), ("u".into(), 5)]);
}
