//! Admin commands that speak the Kafka protocol, so they work against any Kafka cluster.

pub mod acl;
mod client;
pub mod group;
pub mod topic;
pub mod user;

pub use client::{configure, Client, Security};

use anyhow::{anyhow, Context};
use kafka_protocol::messages::{MetadataRequest, MetadataResponse};

/// Connects to the bootstrap broker and returns it with the cluster's metadata for `topics`
/// (`None`: all topics).
pub async fn metadata(
    bootstrap: &str,
    topics: Option<Vec<String>>,
) -> anyhow::Result<(Client, MetadataResponse)> {
    let mut client = Client::connect(bootstrap).await?;
    let request = MetadataRequest::default()
        .with_topics(topics.map(|names| {
            names
                .into_iter()
                .map(|n| {
                    kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                        .with_name(Some(kafka_protocol::messages::TopicName(
                            kafka_protocol::protocol::StrBytes::from_string(n),
                        )))
                })
                .collect()
        }))
        .with_allow_auto_topic_creation(false);
    let response = client.call(request).await.context("Metadata")?;
    Ok((client, response))
}

/// A connection to the cluster's controller (where topic changes must go on Apache Kafka).
pub async fn controller(bootstrap: &str) -> anyhow::Result<Client> {
    let (client, metadata) = metadata(bootstrap, Some(Vec::new())).await?;
    let controller = metadata.controller_id.0;
    let broker = metadata.brokers.iter().find(|b| b.node_id.0 == controller);
    match broker {
        Some(b) => {
            let address = format!("{}:{}", b.host.as_str(), b.port);
            if metadata.brokers.len() == 1 {
                Ok(client)
            } else {
                Client::connect(&address).await
            }
        }
        None if controller < 0 => Err(anyhow!("the cluster reports no controller")),
        None => Ok(client),
    }
}
