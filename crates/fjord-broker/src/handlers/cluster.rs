//! DescribeCluster: the live brokers of the current view; the controller is the broker running
//! the cluster's background duties.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::metadata::controller;
use super::s;
use crate::Broker;

/// Describes the cluster.
pub fn describe(broker: &Broker, _request: DescribeClusterRequest) -> DescribeClusterResponse {
    let view = broker.view();
    DescribeClusterResponse::default()
        .with_cluster_id(s(broker.settings.cluster_id.clone()))
        .with_controller_id(BrokerId(controller(&view)))
        .with_brokers(
            view.members()
                .iter()
                .map(|m| {
                    DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(m.node_id))
                        .with_host(s(m.host.clone()))
                        .with_port(m.port)
                        .with_rack(m.rack.clone().map(s))
                })
                .collect(),
        )
}
