//! DescribeCluster: this broker is the whole cluster (and its controller).

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::s;
use crate::Broker;

/// Describes the cluster.
pub fn describe(broker: &Broker, _request: DescribeClusterRequest) -> DescribeClusterResponse {
    let settings = &broker.settings;
    DescribeClusterResponse::default()
        .with_cluster_id(s(settings.cluster_id.clone()))
        .with_controller_id(BrokerId(settings.node_id))
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(BrokerId(settings.node_id))
            .with_host(s(settings.advertised_host.clone()))
            .with_port(settings.advertised_port)
            .with_rack(settings.rack.clone().map(s))])
}
