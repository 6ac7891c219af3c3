//! OffsetCommit, OffsetFetch and OffsetDelete: committed offsets of consumer groups, durable in
//! the coordinator store and fenced by the group's generation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use fjord_coordinator::security::AclOperation;

use fjord_coordinator::{CommittedOffset, CoordinatorError};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;

use super::groups::subscribed_topics;
use super::s;
use crate::dispatch::Client;
use crate::groups::group::GroupState;
use crate::groups::Slot;
use crate::Broker;

/// A partition index and its error, if any.
type PartitionResult = (i32, Option<ResponseError>);

/// Longest offset metadata accepted (Kafka's `offset.metadata.max.bytes`).
const MAX_METADATA: usize = 4096;

/// Whether a commit is accepted by the group as it is now, and the store version of that state
/// (the commit is written only if the store is still at it).
async fn validate_commit(
    broker: &Broker,
    group_id: &str,
    request: &OffsetCommitRequest,
    version: i16,
) -> Result<(Option<Arc<Slot>>, i64), ResponseError> {
    let Some(slot) = broker.groups.existing(group_id).await? else {
        // A group that exists nowhere is an empty group at version 0: only commits from outside
        // a group (simple consumers, admin tools) are accepted.
        let outside = request.generation_id_or_member_epoch < 0
            && request.member_id.is_empty()
            && request.group_instance_id.is_none();
        return if outside {
            Ok((None, 0))
        } else {
            Err(ResponseError::UnknownMemberId)
        };
    };
    let (error, fence) = slot.validate(|g, c| {
        if g.members.is_empty() && c.is_active() {
            // A consumer-protocol group: v9+ carries the member epoch.
            c.check_commit(
                request.member_id.as_str(),
                request.generation_id_or_member_epoch,
                version,
            )
        } else {
            g.check_commit(
                request.member_id.as_str(),
                request.group_instance_id.as_ref().map(|i| i.as_str()),
                request.generation_id_or_member_epoch,
            )
        }
    });
    match error {
        Some(e) => Err(e),
        None => Ok((Some(slot), fence)),
    }
}

/// Writes a validated commit, fenced with the group's store version. A write refused because the
/// group changed meanwhile is validated again against the newer state (a commit validated under
/// generation N must not land after generation N+1 was written, while one whose member is still
/// current may); refused twice, this broker's view of the group is stale (another broker wrote
/// it) and the client is sent to find the coordinator again.
async fn commit_fenced(
    broker: &Broker,
    group_id: &str,
    request: &OffsetCommitRequest,
    version: i16,
    offsets: Vec<CommittedOffset>,
) -> Result<(), ResponseError> {
    for attempt in 0..2 {
        let (slot, fence) = validate_commit(broker, group_id, request, version).await?;
        match broker
            .coordinator
            .commit_offsets(group_id, offsets.clone(), Some(fence))
            .await
        {
            Ok(()) => {
                tracing::debug!(
                    group = %group_id,
                    member = request.member_id.as_str(),
                    generation = request.generation_id_or_member_epoch,
                    fence,
                    attempt,
                    offsets = ?offsets.iter().map(|o| (o.partition, o.offset)).collect::<Vec<_>>(),
                    "offset commit accepted"
                );
                return Ok(());
            }
            Err(CoordinatorError::Fenced(reason)) => {
                tracing::debug!(group = %group_id, %reason, attempt, "offset commit fenced");
                match slot {
                    // A save of this slot may have been under way: let it finish, then decide
                    // again against the state it saved.
                    Some(slot) if attempt == 0 => slot.settle().await,
                    Some(slot) => broker.groups.retire(&slot),
                    None => {}
                }
            }
            Err(e) => {
                tracing::warn!(group = %group_id, error = %e, "offset commit failed");
                return Err(ResponseError::CoordinatorNotAvailable);
            }
        }
    }
    Err(ResponseError::NotCoordinator)
}

/// OffsetCommit.
pub async fn offset_commit(
    broker: Arc<Broker>,
    request: OffsetCommitRequest,
    version: i16,
    client: Client,
) -> OffsetCommitResponse {
    let group_id = request.group_id.0.as_str().to_string();
    let group_error = if broker
        .authorizer
        .group(&client.session, AclOperation::Read, &group_id)
    {
        validate_commit(&broker, &group_id, &request, version)
            .await
            .err()
    } else {
        Some(ResponseError::GroupAuthorizationFailed)
    };
    if let Some(e) = group_error {
        tracing::debug!(
            group = %group_id,
            member = request.member_id.as_str(),
            generation = request.generation_id_or_member_epoch,
            error = ?e,
            "offset commit refused"
        );
    }
    let mut results: Vec<(TopicName, Vec<PartitionResult>)> = Vec::new();
    let mut offsets = Vec::new();
    let mut pending: Vec<(usize, usize)> = Vec::new();
    let timestamp = broker.clock.now_ms();
    for topic in &request.topics {
        let meta = match group_error {
            Some(_) => None,
            None => broker
                .coordinator
                .topic(topic.name.0.as_str())
                .await
                .ok()
                .flatten(),
        };
        let readable = group_error.is_some()
            || broker
                .authorizer
                .topic(&client.session, AclOperation::Read, topic.name.0.as_str());
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let error = if let Some(e) = group_error {
                Some(e)
            } else if !readable {
                Some(ResponseError::TopicAuthorizationFailed)
            } else if !meta
                .as_ref()
                .is_some_and(|m| p.partition_index >= 0 && p.partition_index < m.partitions)
            {
                Some(ResponseError::UnknownTopicOrPartition)
            } else if p
                .committed_metadata
                .as_ref()
                .is_some_and(|m| m.len() > MAX_METADATA)
            {
                Some(ResponseError::OffsetMetadataTooLarge)
            } else {
                offsets.push(CommittedOffset {
                    topic: topic.name.0.as_str().to_string(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: if version >= 6 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata: p
                        .committed_metadata
                        .as_ref()
                        .map(|m| m.as_str().to_string()),
                    commit_timestamp_ms: timestamp,
                });
                pending.push((results.len(), partitions.len()));
                None
            };
            partitions.push((p.partition_index, error));
        }
        results.push((topic.name.clone(), partitions));
    }
    if !offsets.is_empty() {
        if let Err(e) = commit_fenced(&broker, &group_id, &request, version, offsets).await {
            for (t, p) in pending {
                results[t].1[p].1 = Some(e);
            }
        }
    }
    OffsetCommitResponse::default().with_topics(
        results
            .into_iter()
            .map(|(name, partitions)| {
                OffsetCommitResponseTopic::default()
                    .with_name(name)
                    .with_partitions(
                        partitions
                            .into_iter()
                            .map(|(index, e)| {
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(index)
                                    .with_error_code(e.map_or(0, |e| e.code()))
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

/// The committed offsets of one group for the requested partitions (`None`: all it has).
async fn fetch_group(
    broker: &Broker,
    group: &str,
    wanted: Option<Vec<(String, Vec<i32>)>>,
) -> Result<Vec<(String, Vec<(i32, Option<CommittedOffset>)>)>, ResponseError> {
    if group.is_empty() {
        return Err(ResponseError::InvalidGroupId);
    }
    broker.groups.check_coordinator(group)?;
    let stored = broker.coordinator.fetch_offsets(group).await.map_err(|e| {
        tracing::warn!(group, error = %e, "offset fetch failed");
        ResponseError::CoordinatorNotAvailable
    })?;
    let mut by_topic: BTreeMap<String, Vec<(i32, Option<CommittedOffset>)>> = BTreeMap::new();
    match wanted {
        None => {
            for o in stored {
                by_topic
                    .entry(o.topic.clone())
                    .or_default()
                    .push((o.partition, Some(o)));
            }
        }
        Some(topics) => {
            // One pass over what is stored, one lookup per requested partition.
            let mut index: HashMap<(String, i32), CommittedOffset> = stored
                .into_iter()
                .map(|o| ((o.topic.clone(), o.partition), o))
                .collect();
            let mut out = Vec::with_capacity(topics.len());
            for (topic, partitions) in topics {
                let entries = partitions
                    .into_iter()
                    .map(|p| {
                        let found = index.remove(&(topic.clone(), p));
                        (p, found)
                    })
                    .collect();
                out.push((topic, entries));
            }
            return Ok(out);
        }
    }
    Ok(by_topic.into_iter().collect())
}

/// OffsetFetch v9+ from a member of a consumer-protocol group is checked against its member
/// epoch (UNKNOWN_MEMBER_ID, STALE_MEMBER_EPOCH); other fetches are not.
async fn check_fetch_member(
    broker: &Broker,
    group: &str,
    member_id: Option<&str>,
    epoch: i32,
) -> Result<(), ResponseError> {
    if group.is_empty() || member_id.is_none_or(str::is_empty) {
        return Ok(());
    }
    let Some(slot) = broker.groups.existing(group).await? else {
        return Err(ResponseError::UnknownMemberId);
    };
    let g = slot.group.lock();
    let c = slot.consumer.lock();
    if g.members.is_empty() && c.is_active() {
        if let Some(e) = c.check_fetch(member_id, epoch) {
            return Err(e);
        }
    }
    Ok(())
}

/// OffsetFetch: one group (v1-7) or several (v8+).
pub async fn offset_fetch(
    broker: Arc<Broker>,
    request: OffsetFetchRequest,
    version: i16,
    client: Client,
) -> OffsetFetchResponse {
    let may_describe = |group: &str| {
        broker
            .authorizer
            .group(&client.session, AclOperation::Describe, group)
    };
    // Topics the principal may not describe: left out of "all offsets", refused when named.
    let visible = |name: &str| {
        broker.authorizer.can(
            &client.session,
            crate::authz::Action {
                operation: AclOperation::Describe,
                resource_type: fjord_coordinator::security::ResourceType::Topic,
                name,
            },
        )
    };
    if version >= 8 {
        let mut groups = Vec::with_capacity(request.groups.len());
        for g in request.groups {
            let wanted = g.topics.map(|topics| {
                topics
                    .into_iter()
                    .map(|t| (t.name.0.as_str().to_string(), t.partition_indexes))
                    .collect()
            });
            let mut response =
                OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
            let explicit = wanted.is_some();
            let member = if !may_describe(g.group_id.0.as_str()) {
                Err(ResponseError::GroupAuthorizationFailed)
            } else if version >= 9 {
                check_fetch_member(
                    &broker,
                    g.group_id.0.as_str(),
                    g.member_id.as_ref().map(|m| m.as_str()),
                    g.member_epoch,
                )
                .await
            } else {
                Ok(())
            };
            let fetched = match member {
                Ok(()) => fetch_group(&broker, g.group_id.0.as_str(), wanted).await,
                Err(e) => Err(e),
            };
            match fetched {
                Err(e) => response.error_code = e.code(),
                Ok(topics) => {
                    response.topics = topics
                        .into_iter()
                        .filter(|(name, _)| explicit || visible(name))
                        .map(|(name, partitions)| {
                            let denied = !visible(&name);
                            OffsetFetchResponseTopics::default()
                                .with_name(TopicName(s(name)))
                                .with_partitions(
                                    partitions
                                        .into_iter()
                                        .map(|(p, o)| {
                                            let o = if denied { None } else { o };
                                            let (offset, epoch, metadata) = fields(o);
                                            let mut r = OffsetFetchResponsePartitions::default()
                                                .with_partition_index(p)
                                                .with_committed_offset(offset)
                                                .with_committed_leader_epoch(epoch)
                                                .with_metadata(Some(s(metadata)));
                                            if denied {
                                                r.error_code =
                                                    ResponseError::TopicAuthorizationFailed.code();
                                            }
                                            r
                                        })
                                        .collect(),
                                )
                        })
                        .collect();
                }
            }
            groups.push(response);
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let wanted = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.name.0.as_str().to_string(), t.partition_indexes))
            .collect()
    });
    let explicit = wanted.is_some();
    let fetched = if may_describe(request.group_id.0.as_str()) {
        fetch_group(&broker, request.group_id.0.as_str(), wanted).await
    } else {
        Err(ResponseError::GroupAuthorizationFailed)
    };
    match fetched {
        Err(e) => {
            let mut r = OffsetFetchResponse::default();
            if version >= 2 {
                r.error_code = e.code();
            }
            r
        }
        Ok(topics) => OffsetFetchResponse::default().with_topics(
            topics
                .into_iter()
                .filter(|(name, _)| explicit || visible(name))
                .map(|(name, partitions)| {
                    let denied = !visible(&name);
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(s(name)))
                        .with_partitions(
                            partitions
                                .into_iter()
                                .map(|(p, o)| {
                                    let o = if denied { None } else { o };
                                    let (offset, epoch, metadata) = fields(o);
                                    let mut r = OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(offset)
                                        .with_metadata(Some(s(metadata)));
                                    if denied {
                                        r.error_code =
                                            ResponseError::TopicAuthorizationFailed.code();
                                    }
                                    if version >= 5 {
                                        r.committed_leader_epoch = epoch;
                                    }
                                    r
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
    }
}

fn fields(o: Option<CommittedOffset>) -> (i64, i32, String) {
    match o {
        Some(o) => (o.offset, o.leader_epoch, o.metadata.unwrap_or_default()),
        None => (-1, -1, String::new()),
    }
}

/// OffsetDelete: removes offsets of partitions the group does not consume now.
pub async fn offset_delete(
    broker: Arc<Broker>,
    request: OffsetDeleteRequest,
    client: Client,
) -> OffsetDeleteResponse {
    let group_id = request.group_id.0.as_str().to_string();
    if !broker
        .authorizer
        .group(&client.session, AclOperation::Delete, &group_id)
    {
        return OffsetDeleteResponse::default()
            .with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    match broker.groups.exists(&group_id).await {
        Ok(true) => {}
        Ok(false) => {
            return OffsetDeleteResponse::default()
                .with_error_code(ResponseError::GroupIdNotFound.code())
        }
        Err(e) => return OffsetDeleteResponse::default().with_error_code(e.code()),
    }
    // The subscriptions as of a store version: deletions are fenced with it, so a partition a
    // member started to consume meanwhile (a newer generation) keeps its offset.
    let (subscribed, fence): (HashSet<String>, i64) = match broker.groups.existing(&group_id).await
    {
        Err(e) => return OffsetDeleteResponse::default().with_error_code(e.code()),
        Ok(None) => (HashSet::new(), 0),
        Ok(Some(slot)) => slot.validate(|g, c| {
            if g.members.is_empty() && c.is_active() {
                c.subscribed_topics().into_iter().collect()
            } else if g.state == GroupState::Empty || g.protocol_type.as_deref() != Some("consumer")
            {
                HashSet::new()
            } else {
                let protocol = g.protocol_name.clone().unwrap_or_default();
                g.members
                    .values()
                    .flat_map(|m| subscribed_topics(&m.metadata(&protocol)))
                    .collect()
            }
        }),
    };
    let mut deletions = Vec::new();
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.as_str().to_string();
        // As Kafka: READ on each topic, besides DELETE on the group.
        let refused = if !broker
            .authorizer
            .topic(&client.session, AclOperation::Read, &name)
        {
            Some(ResponseError::TopicAuthorizationFailed.code())
        } else if subscribed.contains(&name) {
            Some(ResponseError::GroupSubscribedToTopic.code())
        } else {
            None
        };
        let partitions = topic
            .partitions
            .iter()
            .map(|p| {
                if refused.is_none() {
                    deletions.push((name.clone(), p.partition_index));
                }
                OffsetDeleteResponsePartition::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(refused.unwrap_or(0))
            })
            .collect();
        topics.push(
            OffsetDeleteResponseTopic::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    if !deletions.is_empty() {
        match broker
            .coordinator
            .delete_offsets(&group_id, deletions, Some(fence))
            .await
        {
            Ok(()) => {}
            Err(CoordinatorError::Fenced(_)) => {
                // The group moved on while this was decided; the client asks again.
                return OffsetDeleteResponse::default()
                    .with_error_code(ResponseError::NotCoordinator.code());
            }
            Err(e) => {
                tracing::warn!(group = %group_id, error = %e, "offset delete failed");
                return OffsetDeleteResponse::default()
                    .with_error_code(ResponseError::CoordinatorNotAvailable.code());
            }
        }
    }
    OffsetDeleteResponse::default().with_topics(topics)
}
