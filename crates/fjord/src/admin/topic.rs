//! `fjord topic create|list|describe|delete|alter|trim`.

use anyhow::{bail, Context};
use clap::Subcommand;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{controller, metadata};
use fjord_broker::topic_config;

/// Topic commands.
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Number of partitions [default: the broker's default].
        #[arg(long, short)]
        partitions: Option<i32>,
        /// Replication factor [default: the broker's default].
        #[arg(long)]
        replication_factor: Option<i16>,
        /// Topic config KEY=VALUE (repeatable).
        #[arg(long = "config", short = 'c', value_parser = parse_kv)]
        configs: Vec<(String, String)>,
    },
    /// List topics.
    List,
    /// Show a topic's partitions, offsets and configs.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Delete a topic.
    Delete {
        /// Topic name.
        name: String,
    },
    /// Change a topic: more partitions, set or remove configs.
    Alter {
        /// Topic name.
        name: String,
        /// New (larger) partition count.
        #[arg(long, short)]
        partitions: Option<i32>,
        /// Set config KEY=VALUE (repeatable).
        #[arg(long = "config", short = 'c', value_parser = parse_kv)]
        configs: Vec<(String, String)>,
        /// Remove config KEY, back to its default (repeatable).
        #[arg(long = "delete-config")]
        delete_configs: Vec<String>,
    },
    /// Delete a partition's records before an offset (DeleteRecords): its log start moves there.
    Trim {
        /// Topic name.
        name: String,
        /// Partition index.
        #[arg(long, short)]
        partition: i32,
        /// The new log start: records before it are deleted (-1: all records, up to the high
        /// watermark).
        #[arg(long, allow_negative_numbers = true)]
        before: i64,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// Turns a Kafka error code into an error naming it.
pub(crate) fn check(code: i16, message: Option<&StrBytes>, what: &str) -> anyhow::Result<()> {
    if code == 0 {
        return Ok(());
    }
    let name = ResponseError::try_from_code(code)
        .map(|e| format!("{e:?}"))
        .unwrap_or_else(|| format!("error {code}"));
    match message {
        Some(m) => bail!("{what}: {name}: {}", m.as_str()),
        None => bail!("{what}: {name}"),
    }
}

/// Runs a topic command against `bootstrap`.
pub async fn run(bootstrap: &str, command: TopicCommand) -> anyhow::Result<()> {
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => {
            let mut client = controller(bootstrap).await?;
            let topic = CreatableTopic::default()
                .with_name(TopicName(sb(&name)))
                .with_num_partitions(partitions.unwrap_or(-1))
                .with_replication_factor(replication_factor.unwrap_or(-1))
                .with_configs(
                    configs
                        .iter()
                        .map(|(k, v)| {
                            CreatableTopicConfig::default()
                                .with_name(sb(k))
                                .with_value(Some(sb(v)))
                        })
                        .collect(),
                );
            let response = client
                .call(
                    CreateTopicsRequest::default()
                        .with_topics(vec![topic])
                        .with_timeout_ms(30_000),
                )
                .await?;
            for t in &response.topics {
                check(
                    t.error_code,
                    t.error_message.as_ref(),
                    &format!("creating topic '{name}'"),
                )?;
            }
            println!("created topic {name}");
        }
        TopicCommand::List => {
            let (_, md) = metadata(bootstrap, None).await?;
            let mut names: Vec<_> = md
                .topics
                .iter()
                .filter_map(|t| t.name.as_ref().map(|n| n.0.as_str().to_string()))
                .collect();
            names.sort();
            for n in names {
                println!("{n}");
            }
        }
        TopicCommand::Describe { name } => describe(bootstrap, &name).await?,
        TopicCommand::Trim {
            name,
            partition,
            before,
        } => {
            let low_watermark = trim(bootstrap, &name, partition, before).await?;
            println!("topic {name} partition {partition}: log start is now {low_watermark}");
        }
        TopicCommand::Delete { name } => {
            let mut client = controller(bootstrap).await?;
            let response = client
                .call(
                    DeleteTopicsRequest::default()
                        .with_topic_names(vec![TopicName(sb(&name))])
                        .with_topics(vec![
                            kafka_protocol::messages::delete_topics_request::DeleteTopicState::default()
                                .with_name(Some(TopicName(sb(&name)))),
                        ])
                        .with_timeout_ms(30_000),
                )
                .await;
            // v6+ carries `topics`, older versions `topic_names`; kafka-protocol encodes only the
            // field of the negotiated version, so setting both is safe.
            let response = response?;
            for r in &response.responses {
                check(
                    r.error_code,
                    r.error_message.as_ref(),
                    &format!("deleting topic '{name}'"),
                )?;
            }
            println!("deleted topic {name}");
        }
        TopicCommand::Alter {
            name,
            partitions,
            configs,
            delete_configs,
        } => {
            if partitions.is_none() && configs.is_empty() && delete_configs.is_empty() {
                bail!("nothing to change: give --partitions, --config or --delete-config");
            }
            let mut client = controller(bootstrap).await?;
            if let Some(count) = partitions {
                let response = client
                    .call(
                        CreatePartitionsRequest::default()
                            .with_topics(vec![CreatePartitionsTopic::default()
                                .with_name(TopicName(sb(&name)))
                                .with_count(count)])
                            .with_timeout_ms(30_000),
                    )
                    .await?;
                for r in &response.results {
                    check(r.error_code, r.error_message.as_ref(), "adding partitions")?;
                }
                println!("topic {name} now has {count} partitions");
            }
            if !configs.is_empty() || !delete_configs.is_empty() {
                let mut ops: Vec<AlterableConfig> = configs
                    .iter()
                    .map(|(k, v)| {
                        AlterableConfig::default()
                            .with_name(sb(k))
                            .with_config_operation(0)
                            .with_value(Some(sb(v)))
                    })
                    .collect();
                ops.extend(delete_configs.iter().map(|k| {
                    AlterableConfig::default()
                        .with_name(sb(k))
                        .with_config_operation(1)
                }));
                let response = client
                    .call(
                        IncrementalAlterConfigsRequest::default().with_resources(vec![
                            AlterConfigsResource::default()
                                .with_resource_type(2)
                                .with_resource_name(sb(&name))
                                .with_configs(ops),
                        ]),
                    )
                    .await?;
                for r in &response.responses {
                    check(r.error_code, r.error_message.as_ref(), "altering configs")?;
                }
                println!("topic {name} configs updated");
            }
        }
    }
    Ok(())
}

/// Sends DeleteRecords for one partition to its leader (any broker on Fjord; the leader on Apache
/// Kafka) and returns the new low watermark.
async fn trim(bootstrap: &str, name: &str, partition: i32, before: i64) -> anyhow::Result<i64> {
    let (client, md) = metadata(bootstrap, Some(vec![name.to_string()])).await?;
    let topic = md.topics.first().context("the broker returned no topic")?;
    check(topic.error_code, None, &format!("topic '{name}'"))?;
    let leader = topic
        .partitions
        .iter()
        .find(|p| p.partition_index == partition)
        .with_context(|| format!("topic '{name}' has no partition {partition}"))?
        .leader_id
        .0;
    let mut client = match md.brokers.iter().find(|b| b.node_id.0 == leader) {
        Some(b) if md.brokers.len() > 1 => {
            super::Client::connect(&format!("{}:{}", b.host.as_str(), b.port)).await?
        }
        _ => client,
    };
    let response = client
        .call(
            DeleteRecordsRequest::default()
                .with_timeout_ms(30_000)
                .with_topics(vec![delete_records_request::DeleteRecordsTopic::default()
                    .with_name(TopicName(sb(name)))
                    .with_partitions(vec![
                        delete_records_request::DeleteRecordsPartition::default()
                            .with_partition_index(partition)
                            .with_offset(before),
                    ])]),
        )
        .await
        .context("DeleteRecords")?;
    let result = response
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.partition_index == partition)
        .context("the broker answered DeleteRecords without the partition")?;
    check(
        result.error_code,
        None,
        &format!("trimming topic '{name}' partition {partition} before {before}"),
    )?;
    Ok(result.low_watermark)
}

async fn describe(bootstrap: &str, name: &str) -> anyhow::Result<()> {
    let (mut client, md) = metadata(bootstrap, Some(vec![name.to_string()])).await?;
    let topic = md.topics.first().context("the broker returned no topic")?;
    check(topic.error_code, None, &format!("topic '{name}'"))?;
    println!("topic: {name}");
    println!("id: {}", topic.topic_id);
    println!("partitions: {}", topic.partitions.len());

    let offsets = |ts: i64| {
        ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(sb(name)))
                .with_partitions(
                    topic
                        .partitions
                        .iter()
                        .map(|p| {
                            ListOffsetsPartition::default()
                                .with_partition_index(p.partition_index)
                                .with_timestamp(ts)
                        })
                        .collect(),
                )])
    };
    let earliest = client.call(offsets(-2)).await?;
    let latest = client.call(offsets(-1)).await?;
    let find = |r: &ListOffsetsResponse, p: i32| {
        r.topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .find(|x| x.partition_index == p)
            .map(|x| x.offset)
            .unwrap_or(-1)
    };
    println!(
        "{:>9}  {:>6}  {:>14}  {:>14}",
        "partition", "leader", "log start", "high watermark"
    );
    let mut parts: Vec<_> = topic.partitions.iter().collect();
    parts.sort_by_key(|p| p.partition_index);
    for p in parts {
        println!(
            "{:>9}  {:>6}  {:>14}  {:>14}",
            p.partition_index,
            p.leader_id.0,
            find(&earliest, p.partition_index),
            find(&latest, p.partition_index)
        );
    }
    let configs = client
        .call(DescribeConfigsRequest::default().with_resources(
            vec![DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(sb(name))],
        ))
        .await?;
    for r in &configs.results {
        check(r.error_code, r.error_message.as_ref(), "describing configs")?;
        println!("configs:");
        let policy = r
            .configs
            .iter()
            .find(|c| c.name.as_str() == "cleanup.policy")
            .map_or("delete", config_value);
        for c in &r.configs {
            let value = config_value(c);
            // Kafka's DescribeConfigs config_source: 1 the topic's, 4 a broker flag, 5 default.
            let set = c.config_source == 1;
            let source = match c.config_source {
                1 => "set",
                4 => "broker flag",
                _ => "default",
            };
            // A stored setting is never shown as one in force (only those set: the defaults of
            // the rest are what Fjord does anyway).
            match topic_config::not_in_force(c.name.as_str(), value, policy).filter(|_| set) {
                Some(why) => println!(
                    "  {} = {value} ({source}; not in force: {why})",
                    c.name.as_str()
                ),
                None => println!("  {} = {value} ({source})", c.name.as_str()),
            }
        }
    }
    Ok(())
}

/// A described config's value, `(null)` when it has none.
fn config_value(c: &describe_configs_response::DescribeConfigsResourceResult) -> &str {
    c.value.as_ref().map_or("(null)", |v| v.as_str())
}
