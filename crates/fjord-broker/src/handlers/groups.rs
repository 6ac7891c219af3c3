//! The classic consumer-group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, ListGroups, DescribeGroups, DeleteGroups. The state machine is in
//! [`crate::groups`]; this module maps requests and responses.

use std::sync::Arc;

use fjord_coordinator::security::AclOperation;
use std::time::Duration;
use tokio::time::Instant;

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as FoundCoordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;

use super::s;
use crate::dispatch::Client;
use crate::groups::consumer::ConsumerGroup;
use crate::groups::group::{GroupState, JoinRequest, JoinResult, Reply, SyncResult};
use crate::Broker;

fn code(e: Option<ResponseError>) -> i16 {
    e.map_or(0, |e| e.code())
}

/// FindCoordinator: the live broker that the group id (or transactional id) hashes to, at its
/// address on the client's listener (COORDINATOR_NOT_AVAILABLE if it does not serve that one).
pub async fn find_coordinator(
    broker: Arc<Broker>,
    request: FindCoordinatorRequest,
    version: i16,
    client: Client,
) -> FindCoordinatorResponse {
    let view = broker.view();
    let refused = match request.key_type {
        0 | 1 => None,
        _ => Some(ResponseError::InvalidRequest),
    };
    // The coordinator of `key` (this broker when the key type is refused) and where the client
    // reaches it, or the error to answer.
    let locate = |key: &str| -> (i32, String, i32, Option<ResponseError>) {
        let denied = match request.key_type {
            0 if !broker
                .authorizer
                .group(&client.session, AclOperation::Describe, key) =>
            {
                Some(ResponseError::GroupAuthorizationFailed)
            }
            1 if !broker.authorizer.authorize(
                &client.session,
                crate::authz::Action {
                    operation: AclOperation::Describe,
                    resource_type: fjord_coordinator::security::ResourceType::TransactionalId,
                    name: key,
                },
            ) =>
            {
                Some(ResponseError::TransactionalIdAuthorizationFailed)
            }
            _ => None,
        };
        if denied.is_some() {
            return (-1, String::new(), -1, denied);
        }
        let id = match refused {
            None => view.group_coordinator(key),
            Some(_) => view.self_id(),
        };
        let endpoint = match view.member(id) {
            Some(m) => m
                .endpoint(client.listener())
                .map(|(host, port)| (host.to_string(), port)),
            None if id == view.self_id() => Some((
                broker.settings.advertised_host.clone(),
                broker.settings.advertised_port,
            )),
            None => None,
        };
        match endpoint {
            Some((host, port)) => (id, host, port, refused),
            None => (
                -1,
                String::new(),
                -1,
                Some(refused.unwrap_or(ResponseError::CoordinatorNotAvailable)),
            ),
        }
    };
    if version < 4 {
        let (id, host, port, error) = locate(request.key.as_str());
        let mut r = FindCoordinatorResponse::default()
            .with_error_code(code(error))
            .with_node_id(BrokerId(id))
            .with_host(s(host))
            .with_port(port);
        if version >= 1 {
            r.error_message = error.map(|e| s(message(e)));
        }
        return r;
    }
    let coordinators = request
        .coordinator_keys
        .into_iter()
        .map(|key| {
            let (id, host, port, error) = locate(key.as_str());
            FoundCoordinator::default()
                .with_key(key)
                .with_node_id(BrokerId(id))
                .with_host(s(host))
                .with_port(port)
                .with_error_code(code(error))
        })
        .collect();
    FindCoordinatorResponse::default().with_coordinators(coordinators)
}

fn message(error: ResponseError) -> &'static str {
    match error {
        ResponseError::InvalidRequest => "unsupported key type",
        ResponseError::GroupAuthorizationFailed => "not authorized to describe the group",
        ResponseError::TransactionalIdAuthorizationFailed => {
            "not authorized to describe the transactional id"
        }
        _ => "the coordinator does not serve this listener",
    }
}

/// JoinGroup.
pub async fn join_group(
    broker: Arc<Broker>,
    request: JoinGroupRequest,
    version: i16,
    client: Client,
) -> JoinGroupResponse {
    if !broker.authorizer.group(
        &client.session,
        AclOperation::Read,
        request.group_id.0.as_str(),
    ) {
        let mut denied = JoinGroupResponse::default()
            .with_error_code(ResponseError::GroupAuthorizationFailed.code())
            .with_generation_id(-1);
        if version < 7 {
            denied.protocol_name = Some(s(""));
        }
        return denied;
    }
    let respond = |r: JoinResult| {
        let mut response = JoinGroupResponse::default()
            .with_error_code(code(r.error))
            .with_generation_id(r.generation)
            .with_protocol_name(r.protocol_name.map(s))
            .with_leader(s(r.leader))
            .with_member_id(s(r.member_id))
            .with_members(
                r.members
                    .into_iter()
                    .map(|(id, instance, metadata)| {
                        let mut m = JoinGroupResponseMember::default()
                            .with_member_id(s(id))
                            .with_metadata(metadata);
                        if version >= 5 {
                            m.group_instance_id = instance.map(s);
                        }
                        m
                    })
                    .collect(),
            );
        if version >= 7 {
            response.protocol_type = r.protocol_type.map(s);
        }
        if version < 7 && response.protocol_name.is_none() {
            // Before v7 the protocol name is not nullable.
            response.protocol_name = Some(s(""));
        }
        response
    };
    let failed = |e: ResponseError| {
        respond(JoinResult {
            error: Some(e),
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: request.member_id.as_str().to_string(),
            members: Vec::new(),
        })
    };
    let slot = match broker.groups.slot(request.group_id.0.as_str()).await {
        Ok(slot) => slot,
        Err(e) => return failed(e),
    };
    let session_timeout = Duration::from_millis(request.session_timeout_ms.max(0) as u64);
    let join = JoinRequest {
        member_id: request.member_id.as_str().to_string(),
        instance_id: request
            .group_instance_id
            .as_ref()
            .map(|i| i.as_str().to_string()),
        client_id: client.client_id.clone(),
        client_host: client.host(),
        session_timeout,
        rebalance_timeout: if version >= 1 {
            Duration::from_millis(request.rebalance_timeout_ms.max(0) as u64)
        } else {
            session_timeout
        },
        protocol_type: request.protocol_type.as_str().to_string(),
        protocols: request
            .protocols
            .iter()
            .map(|p| (p.name.as_str().to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let reply = {
        let mut g = slot.group.lock();
        let mut c = slot.consumer.lock();
        if !c.members.is_empty() {
            // A consumer-protocol group: classic members cannot join it.
            return failed(ResponseError::InconsistentGroupProtocol);
        }
        if c.is_active() {
            // An empty consumer-protocol group becomes a classic group.
            let version = c.version;
            *c = ConsumerGroup::new(
                request.group_id.0.as_str(),
                broker.groups.settings().clone(),
            );
            c.version = version + 1;
        }
        drop(c);
        g.join(join, Instant::now()).0
    };
    let result = match reply {
        Reply::Now(r) => r,
        Reply::Later(rx) => match rx.await {
            Ok(r) => r,
            Err(_) => return failed(ResponseError::CoordinatorNotAvailable),
        },
    };
    // The member learns its generation only once it is durable.
    if result.error.is_none() {
        if let Err(e) = broker.groups.make_durable(&slot, slot.seen()).await {
            return failed(e);
        }
    }
    respond(result)
}

/// SyncGroup.
pub async fn sync_group(
    broker: Arc<Broker>,
    request: SyncGroupRequest,
    version: i16,
    client: Client,
) -> SyncGroupResponse {
    if !broker.authorizer.group(
        &client.session,
        AclOperation::Read,
        request.group_id.0.as_str(),
    ) {
        return SyncGroupResponse::default()
            .with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    let respond = |r: SyncResult| {
        let mut response = SyncGroupResponse::default()
            .with_error_code(code(r.error))
            .with_assignment(r.assignment);
        if version >= 5 {
            response.protocol_type = r.protocol_type.map(s);
            response.protocol_name = r.protocol_name.map(s);
        }
        response
    };
    let failed = |e: ResponseError| SyncGroupResponse::default().with_error_code(e.code());
    let slot = match broker.groups.existing(request.group_id.0.as_str()).await {
        Ok(Some(slot)) => slot,
        Ok(None) => return failed(ResponseError::UnknownMemberId),
        Err(e) => return failed(e),
    };
    let reply = {
        let mut g = slot.group.lock();
        if version >= 5 {
            let type_ok = request
                .protocol_type
                .as_ref()
                .is_none_or(|t| g.protocol_type.as_deref() == Some(t.as_str()));
            let name_ok = request
                .protocol_name
                .as_ref()
                .is_none_or(|n| g.protocol_name.as_deref() == Some(n.as_str()));
            if !(type_ok && name_ok) {
                return failed(ResponseError::InconsistentGroupProtocol);
            }
        }
        g.sync(
            request.member_id.as_str(),
            request.group_instance_id.as_ref().map(|i| i.as_str()),
            request.generation_id,
            request
                .assignments
                .iter()
                .map(|a| (a.member_id.as_str().to_string(), a.assignment.clone()))
                .collect(),
        )
        .0
    };
    let result = match reply {
        Reply::Now(r) => r,
        Reply::Later(rx) => match rx.await {
            Ok(r) => r,
            Err(_) => return failed(ResponseError::CoordinatorNotAvailable),
        },
    };
    // The member learns its assignment only once it is durable.
    if result.error.is_none() {
        if let Err(e) = broker.groups.make_durable(&slot, slot.seen()).await {
            return failed(e);
        }
    }
    respond(result)
}

/// Heartbeat.
pub async fn heartbeat(
    broker: Arc<Broker>,
    request: HeartbeatRequest,
    client: Client,
) -> HeartbeatResponse {
    if !broker.authorizer.group(
        &client.session,
        AclOperation::Read,
        request.group_id.0.as_str(),
    ) {
        return HeartbeatResponse::default()
            .with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    let error = match broker.groups.existing(request.group_id.0.as_str()).await {
        Ok(None) => Some(ResponseError::UnknownMemberId),
        Ok(Some(slot)) => slot.group.lock().heartbeat(
            request.member_id.as_str(),
            request.group_instance_id.as_ref().map(|i| i.as_str()),
            request.generation_id,
            Instant::now(),
        ),
        Err(e) => Some(e),
    };
    HeartbeatResponse::default().with_error_code(code(error))
}

/// LeaveGroup: one member (v0-2) or several (v3+).
pub async fn leave_group(
    broker: Arc<Broker>,
    request: LeaveGroupRequest,
    version: i16,
    client: Client,
) -> LeaveGroupResponse {
    if !broker.authorizer.group(
        &client.session,
        AclOperation::Read,
        request.group_id.0.as_str(),
    ) {
        return LeaveGroupResponse::default()
            .with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.as_str().to_string(),
                    m.group_instance_id.as_ref().map(|i| i.as_str().to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.as_str().to_string(), None)]
    };
    let (results, slot) = match broker.groups.existing(request.group_id.0.as_str()).await {
        Ok(Some(slot)) => {
            let results = slot.group.lock().leave(&members, Instant::now()).0;
            (results, Some(slot))
        }
        Ok(None) => (
            vec![Some(ResponseError::UnknownMemberId); members.len()],
            None,
        ),
        Err(e) => return LeaveGroupResponse::default().with_error_code(e.code()),
    };
    if let Some(slot) = slot {
        // The departure is saved before it is confirmed, so a new coordinator does not bring
        // the member back.
        if let Err(e) = broker.groups.make_durable(&slot, slot.seen()).await {
            return LeaveGroupResponse::default().with_error_code(e.code());
        }
    }
    if version >= 3 {
        LeaveGroupResponse::default().with_members(
            members
                .into_iter()
                .zip(results)
                .map(|((id, instance), e)| {
                    MemberResponse::default()
                        .with_member_id(s(id))
                        .with_group_instance_id(instance.map(s))
                        .with_error_code(code(e))
                })
                .collect(),
        )
    } else {
        LeaveGroupResponse::default().with_error_code(code(results.into_iter().next().flatten()))
    }
}

/// ListGroups, with state (v4+) and type (v5+) filters.
pub async fn list_groups(
    broker: Arc<Broker>,
    request: ListGroupsRequest,
    version: i16,
    client: Client,
) -> ListGroupsResponse {
    // DESCRIBE on the cluster lists every group; otherwise only those the principal may
    // describe (as Kafka does).
    let everything = broker.authorizer.can(
        &client.session,
        crate::authz::Action {
            operation: AclOperation::Describe,
            resource_type: fjord_coordinator::security::ResourceType::Cluster,
            name: fjord_coordinator::security::CLUSTER_RESOURCE,
        },
    );
    let visible = |id: &str| {
        everything
            || broker.authorizer.can(
                &client.session,
                crate::authz::Action {
                    operation: AclOperation::Describe,
                    resource_type: fjord_coordinator::security::ResourceType::Group,
                    name: id,
                },
            )
    };
    let groups = match broker.groups.list().await {
        Ok(groups) => groups,
        Err(e) => return ListGroupsResponse::default().with_error_code(e.code()),
    };
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.as_str().to_ascii_lowercase())
        .collect();
    let types: Vec<String> = request
        .types_filter
        .iter()
        .map(|t| t.as_str().to_ascii_lowercase())
        .collect();
    let listed = groups
        .into_iter()
        .filter(|g| states.is_empty() || states.contains(&g.state.to_ascii_lowercase()))
        .filter(|g| types.is_empty() || types.iter().any(|t| t == g.group_type))
        .filter(|g| visible(&g.id))
        .map(|g| {
            let mut l = ListedGroup::default()
                .with_group_id(GroupId(s(g.id)))
                .with_protocol_type(s(g.protocol_type));
            if version >= 4 {
                l.group_state = s(g.state);
            }
            if version >= 5 {
                l.group_type = s(g.group_type);
            }
            l
        })
        .collect();
    ListGroupsResponse::default().with_groups(listed)
}

/// DescribeGroups.
pub async fn describe_groups(
    broker: Arc<Broker>,
    request: DescribeGroupsRequest,
    version: i16,
    client: Client,
) -> DescribeGroupsResponse {
    let mut described = Vec::with_capacity(request.groups.len());
    for id in request.groups {
        let mut d = DescribedGroup::default().with_group_id(id.clone());
        if version < 3 {
            d.authorized_operations = i32::MIN;
        }
        if !broker
            .authorizer
            .group(&client.session, AclOperation::Describe, id.0.as_str())
        {
            d.error_code = ResponseError::GroupAuthorizationFailed.code();
            described.push(d);
            continue;
        }
        let slot = match broker.groups.existing(id.0.as_str()).await {
            Ok(Some(slot)) => Ok(slot),
            Ok(None) => match broker.groups.exists(id.0.as_str()).await {
                // Only committed offsets: an Empty group with nothing else to say.
                Ok(true) => {
                    d.group_state = s(GroupState::Empty.name());
                    described.push(d);
                    continue;
                }
                Ok(false) => Err(ResponseError::GroupIdNotFound),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        // A consumer-protocol group is not a classic group: Kafka answers GROUP_ID_NOT_FOUND
        // ("not a classic group"); ConsumerGroupDescribe describes it.
        let slot = slot.and_then(|slot| {
            let consumer = {
                let g = slot.group.lock();
                g.members.is_empty() && slot.consumer.lock().is_active()
            };
            if consumer {
                Err(ResponseError::GroupIdNotFound)
            } else {
                Ok(slot)
            }
        });
        match slot {
            Err(ResponseError::GroupIdNotFound) if version < 6 => {
                d.group_state = s(GroupState::Dead.name());
            }
            Err(e) => {
                d.error_code = e.code();
                if version >= 6 {
                    d.error_message = Some(s(format!("group '{}': {e:?}", id.0.as_str())));
                }
                d.group_state = s(GroupState::Dead.name());
            }
            Ok(slot) => {
                let g = slot.group.lock();
                let protocol = g.protocol_name.clone().unwrap_or_default();
                d.group_state = s(g.state.name());
                d.protocol_type = s(g.protocol_type.clone().unwrap_or_default());
                d.protocol_data = s(protocol.clone());
                d.members = g
                    .members
                    .values()
                    .map(|m| {
                        let mut dm = DescribedGroupMember::default()
                            .with_member_id(s(m.id.clone()))
                            .with_client_id(s(m.client_id.clone()))
                            .with_client_host(s(m.client_host.clone()))
                            .with_member_metadata(m.metadata(&protocol))
                            .with_member_assignment(m.assignment.clone());
                        if version >= 4 {
                            dm.group_instance_id = m.instance_id.clone().map(s);
                        }
                        dm
                    })
                    .collect();
            }
        }
        described.push(d);
    }
    DescribeGroupsResponse::default().with_groups(described)
}

/// DeleteGroups: only empty groups; their offsets go too.
pub async fn delete_groups(
    broker: Arc<Broker>,
    request: DeleteGroupsRequest,
    client: Client,
) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(request.groups_names.len());
    for id in request.groups_names {
        let error = if broker
            .authorizer
            .group(&client.session, AclOperation::Delete, id.0.as_str())
        {
            broker.groups.delete(id.0.as_str()).await.err()
        } else {
            Some(ResponseError::GroupAuthorizationFailed)
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(code(error)),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}

/// The topics a consumer member subscribes to, from its protocol metadata.
pub(crate) fn subscribed_topics(metadata: &Bytes) -> Vec<String> {
    use kafka_protocol::protocol::Decodable;
    if metadata.len() < 2 {
        return Vec::new();
    }
    let version = i16::from_be_bytes([metadata[0], metadata[1]]);
    let mut body = metadata.slice(2..);
    match ConsumerProtocolSubscription::decode(&mut body, version) {
        Ok(sub) => sub.topics.iter().map(|t| t.as_str().to_string()).collect(),
        Err(_) => Vec::new(),
    }
}
