//! DescribeCluster: the live brokers of the current view; the controller is the broker running
//! the cluster's background duties.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::metadata::controller;
use super::s;
use crate::dispatch::Client;
use crate::Broker;

/// Describes the cluster as clients of the request's listener reach it.
pub fn describe(
    broker: &Broker,
    _request: DescribeClusterRequest,
    client: &Client,
) -> DescribeClusterResponse {
    if !broker.authorizer.cluster(
        &client.session,
        fjord_coordinator::security::AclOperation::Describe,
    ) {
        return DescribeClusterResponse::default()
            .with_error_code(kafka_protocol::ResponseError::ClusterAuthorizationFailed.code())
            .with_error_message(Some(s("not authorized to describe the cluster")));
    }
    let all = broker.view();
    let view = all.serving(client.listener());
    DescribeClusterResponse::default()
        .with_cluster_id(s(broker.settings.cluster_id.clone()))
        .with_controller_id(BrokerId(controller(&view)))
        .with_brokers(
            view.members()
                .iter()
                .filter_map(|m| {
                    let (host, port) = m.endpoint(client.listener())?;
                    Some(
                        DescribeClusterBroker::default()
                            .with_broker_id(BrokerId(m.node_id))
                            .with_host(s(host.to_string()))
                            .with_port(port)
                            .with_rack(m.rack.clone().map(s)),
                    )
                })
                .collect(),
        )
}
