//! `fjord group list|describe|delete|reset-offsets`, over the Kafka protocol (as Kafka's
//! kafka-consumer-groups tool does), so they work against any Kafka cluster.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};

use super::topic::check;
use super::{metadata, Client};

/// Consumer group commands.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List consumer groups with their state.
    List,
    /// Show a group's state, members, assignments, committed offsets and lag.
    Describe {
        /// Group id.
        group: String,
    },
    /// Delete an empty group and its committed offsets.
    Delete {
        /// Group id.
        group: String,
    },
    /// Move an inactive group's committed offsets (dry run unless --execute).
    ResetOffsets(ResetArgs),
}

/// Where `reset-offsets` moves a group.
#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Group id.
    group: String,
    /// The topic whose offsets move (all of its partitions).
    #[arg(long)]
    topic: String,
    /// To the log start offset.
    #[arg(long, group = "target")]
    to_earliest: bool,
    /// To the high watermark.
    #[arg(long, group = "target")]
    to_latest: bool,
    /// To this offset.
    #[arg(long, group = "target")]
    to_offset: Option<i64>,
    /// To the first offset at or after this timestamp (ms since the epoch).
    #[arg(long, group = "target")]
    to_timestamp: Option<i64>,
    /// Commit the new offsets (otherwise only print them).
    #[arg(long)]
    execute: bool,
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// Runs a group command against `bootstrap`.
pub async fn run(bootstrap: &str, command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::List => list(bootstrap).await,
        GroupCommand::Describe { group } => describe(bootstrap, &group).await,
        GroupCommand::Delete { group } => {
            let mut c = coordinator(bootstrap, &group).await?;
            let r = c
                .call(DeleteGroupsRequest::default().with_groups_names(vec![GroupId(sb(&group))]))
                .await?;
            for g in &r.results {
                check(g.error_code, None, &format!("deleting group '{group}'"))?;
            }
            println!("deleted group {group}");
            Ok(())
        }
        GroupCommand::ResetOffsets(args) => reset(bootstrap, args).await,
    }
}

/// Connects to the group's coordinator.
async fn coordinator(bootstrap: &str, group: &str) -> anyhow::Result<Client> {
    let mut c = Client::connect(bootstrap).await?;
    let version = c.version::<FindCoordinatorRequest>()?;
    let mut request = FindCoordinatorRequest::default();
    if version >= 4 {
        request.coordinator_keys = vec![sb(group)];
    } else {
        request.key = sb(group);
    }
    let r = c.call(request).await.context("FindCoordinator")?;
    let (code, host, port) = match r.coordinators.first() {
        Some(x) => (x.error_code, x.host.as_str().to_string(), x.port),
        None => (r.error_code, r.host.as_str().to_string(), r.port),
    };
    check(
        code,
        None,
        &format!("finding the coordinator of group '{group}'"),
    )?;
    Client::connect(&format!("{host}:{port}")).await
}

async fn list(bootstrap: &str) -> anyhow::Result<()> {
    let (_, md) = metadata(bootstrap, Some(Vec::new())).await?;
    let mut groups = BTreeMap::new();
    for b in &md.brokers {
        let mut c = Client::connect(&format!("{}:{}", b.host.as_str(), b.port)).await?;
        let r = c.call(ListGroupsRequest::default()).await?;
        check(r.error_code, None, "listing groups")?;
        for g in r.groups {
            groups.insert(
                g.group_id.0.as_str().to_string(),
                (
                    g.group_state.as_str().to_string(),
                    g.protocol_type.as_str().to_string(),
                ),
            );
        }
    }
    println!("{:<40} {:<20} PROTOCOL", "GROUP", "STATE");
    for (id, (state, protocol)) in groups {
        println!("{id:<40} {state:<20} {protocol}");
    }
    Ok(())
}

fn assignment(bytes: &Bytes) -> Vec<(String, Vec<i32>)> {
    if bytes.len() < 2 {
        return Vec::new();
    }
    let version = i16::from_be_bytes([bytes[0], bytes[1]]);
    let mut body = bytes.slice(2..);
    match ConsumerProtocolAssignment::decode(&mut body, version) {
        Ok(a) => a
            .assigned_partitions
            .into_iter()
            .map(|tp| (tp.topic.0.as_str().to_string(), tp.partitions))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Committed offsets of a group: topic -> partition -> offset.
async fn committed(
    c: &mut Client,
    group: &str,
) -> anyhow::Result<BTreeMap<String, BTreeMap<i32, i64>>> {
    let version = c.version::<OffsetFetchRequest>()?;
    let mut out: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    if version >= 8 {
        let r = c
            .call(OffsetFetchRequest::default().with_groups(vec![
                    offset_fetch_request::OffsetFetchRequestGroup::default()
                        .with_group_id(GroupId(sb(group)))
                        .with_topics(None),
                ]))
            .await?;
        for g in r.groups {
            check(g.error_code, None, "fetching offsets")?;
            for t in g.topics {
                for p in t.partitions {
                    out.entry(t.name.0.as_str().to_string())
                        .or_default()
                        .insert(p.partition_index, p.committed_offset);
                }
            }
        }
    } else {
        let r = c
            .call(
                OffsetFetchRequest::default()
                    .with_group_id(GroupId(sb(group)))
                    .with_topics(None),
            )
            .await?;
        check(r.error_code, None, "fetching offsets")?;
        for t in r.topics {
            for p in t.partitions {
                out.entry(t.name.0.as_str().to_string())
                    .or_default()
                    .insert(p.partition_index, p.committed_offset);
            }
        }
    }
    Ok(out)
}

/// ListOffsets for every partition of `topics` at `timestamp` (-1 latest, -2 earliest).
async fn offsets(
    bootstrap: &str,
    topics: &[String],
    timestamp: i64,
) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let (_, md) = metadata(bootstrap, Some(topics.to_vec())).await?;
    // Ask each partition's leader, as Kafka requires.
    let mut by_leader: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
    for t in &md.topics {
        let name = t
            .name
            .as_ref()
            .map(|n| n.0.as_str().to_string())
            .unwrap_or_default();
        check(t.error_code, None, &format!("topic '{name}'"))?;
        for p in &t.partitions {
            by_leader
                .entry(p.leader_id.0)
                .or_default()
                .push((name.clone(), p.partition_index));
        }
    }
    let mut out = BTreeMap::new();
    for (leader, partitions) in by_leader {
        let broker = md
            .brokers
            .iter()
            .find(|b| b.node_id.0 == leader)
            .context("partition leader not in metadata")?;
        let mut c = Client::connect(&format!("{}:{}", broker.host.as_str(), broker.port)).await?;
        let mut topics: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for (t, p) in partitions {
            topics.entry(t).or_default().push(p);
        }
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        ListOffsetsTopic::default()
                            .with_name(TopicName(sb(&t)))
                            .with_partitions(
                                ps.into_iter()
                                    .map(|p| {
                                        ListOffsetsPartition::default()
                                            .with_partition_index(p)
                                            .with_timestamp(timestamp)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let r = c.call(request).await?;
        for t in r.topics {
            for p in t.partitions {
                check(p.error_code, None, "listing offsets")?;
                out.insert((t.name.0.as_str().to_string(), p.partition_index), p.offset);
            }
        }
    }
    Ok(out)
}

async fn describe(bootstrap: &str, group: &str) -> anyhow::Result<()> {
    let mut c = coordinator(bootstrap, group).await?;
    let r = c
        .call(DescribeGroupsRequest::default().with_groups(vec![GroupId(sb(group))]))
        .await?;
    let g = r.groups.first().context("no group in the response")?;
    check(
        g.error_code,
        g.error_message.as_ref(),
        &format!("group '{group}'"),
    )?;
    let owner = if g.group_state.as_str() == "Dead" {
        // Not a classic group: maybe a consumer-protocol (KIP-848) one.
        describe_consumer_group(&mut c, group).await?
    } else {
        print_classic(group, g)
    };
    let committed = committed(&mut c, group).await?;
    let topics: Vec<String> = committed.keys().cloned().collect();
    let ends = if topics.is_empty() {
        BTreeMap::new()
    } else {
        offsets(bootstrap, &topics, -1).await?
    };
    println!(
        "{:<30} {:>9} {:>15} {:>15} {:>10}  OWNER",
        "TOPIC", "PARTITION", "COMMITTED", "END", "LAG"
    );
    for (topic, partitions) in &committed {
        for (p, offset) in partitions {
            let end = ends.get(&(topic.clone(), *p)).copied().unwrap_or(-1);
            let lag = if *offset >= 0 && end >= 0 {
                (end - offset).to_string()
            } else {
                "-".into()
            };
            let who = owner
                .get(&(topic.clone(), *p))
                .map(String::as_str)
                .unwrap_or("-");
            println!("{topic:<30} {p:>9} {offset:>15} {end:>15} {lag:>10}  {who}");
        }
    }
    Ok(())
}

/// Prints a classic group's members; returns the owner of each assigned partition.
fn print_classic(
    group: &str,
    g: &kafka_protocol::messages::describe_groups_response::DescribedGroup,
) -> BTreeMap<(String, i32), String> {
    println!("group: {group}");
    println!("state: {}", g.group_state.as_str());
    println!(
        "protocol: {} {}",
        g.protocol_type.as_str(),
        g.protocol_data.as_str()
    );
    let mut owner: BTreeMap<(String, i32), String> = BTreeMap::new();
    println!("members: {}", g.members.len());
    for m in &g.members {
        let parts = assignment(&m.member_assignment);
        let shown: Vec<String> = parts.iter().map(|(t, ps)| format!("{t}{ps:?}")).collect();
        println!(
            "  {} client={} host={}{} assigned={}",
            m.member_id.as_str(),
            m.client_id.as_str(),
            m.client_host.as_str(),
            m.group_instance_id
                .as_ref()
                .map(|i| format!(" instance={}", i.as_str()))
                .unwrap_or_default(),
            shown.join(" ")
        );
        for (t, ps) in parts {
            for p in ps {
                owner.insert((t.clone(), p), m.member_id.as_str().to_string());
            }
        }
    }
    owner
}

/// Prints a consumer-protocol group's members (ConsumerGroupDescribe); returns the owner of
/// each assigned partition. A group the broker does not know is printed as Dead.
async fn describe_consumer_group(
    c: &mut Client,
    group: &str,
) -> anyhow::Result<BTreeMap<(String, i32), String>> {
    let mut owner = BTreeMap::new();
    let r = c
        .call(ConsumerGroupDescribeRequest::default().with_group_ids(vec![GroupId(sb(group))]))
        .await;
    let d = match r.as_ref().ok().and_then(|r| r.groups.first()) {
        Some(d) if d.error_code == 0 => d,
        _ => {
            println!("group: {group}");
            println!("state: Dead");
            println!("members: 0");
            return Ok(owner);
        }
    };
    println!("group: {group}");
    println!("state: {}", d.group_state.as_str());
    println!(
        "protocol: consumer (KIP-848) assignor={} group-epoch={} assignment-epoch={}",
        d.assignor_name.as_str(),
        d.group_epoch,
        d.assignment_epoch
    );
    println!("members: {}", d.members.len());
    for m in &d.members {
        let shown: Vec<String> = m
            .assignment
            .topic_partitions
            .iter()
            .map(|tp| format!("{}{:?}", tp.topic_name.0.as_str(), tp.partitions))
            .collect();
        println!(
            "  {} client={} host={}{} epoch={} assigned={}",
            m.member_id.as_str(),
            m.client_id.as_str(),
            m.client_host.as_str(),
            m.instance_id
                .as_ref()
                .map(|i| format!(" instance={}", i.as_str()))
                .unwrap_or_default(),
            m.member_epoch,
            shown.join(" ")
        );
        for tp in &m.assignment.topic_partitions {
            for p in &tp.partitions {
                owner.insert(
                    (tp.topic_name.0.as_str().to_string(), *p),
                    m.member_id.as_str().to_string(),
                );
            }
        }
    }
    Ok(owner)
}

async fn reset(bootstrap: &str, args: ResetArgs) -> anyhow::Result<()> {
    let target = match (
        args.to_earliest,
        args.to_latest,
        args.to_offset,
        args.to_timestamp,
    ) {
        (true, _, _, _) => -2,
        (_, true, _, _) => -1,
        (_, _, Some(offset), _) if offset >= 0 => offset,
        (_, _, Some(offset), _) => bail!("--to-offset must not be negative, got {offset}"),
        (_, _, _, Some(ts)) if ts >= 0 => ts,
        _ => bail!("give one of --to-earliest, --to-latest, --to-offset N, --to-timestamp MS"),
    };
    let topics = vec![args.topic.clone()];
    let plan: BTreeMap<(String, i32), i64> = match (args.to_offset, args.to_timestamp) {
        (Some(offset), _) => offsets(bootstrap, &topics, -1)
            .await?
            .into_keys()
            .map(|k| (k, offset))
            .collect(),
        (_, Some(_)) => {
            let at = offsets(bootstrap, &topics, target).await?;
            let latest = offsets(bootstrap, &topics, -1).await?;
            // No record at or after the time: the end of the partition.
            at.into_iter()
                .map(|(k, o)| {
                    let end = latest.get(&k).copied().unwrap_or(o);
                    (k, if o < 0 { end } else { o })
                })
                .collect()
        }
        _ => offsets(bootstrap, &topics, target).await?,
    };
    println!("{:<30} {:>9} {:>15}", "TOPIC", "PARTITION", "NEW OFFSET");
    for ((t, p), o) in &plan {
        println!("{t:<30} {p:>9} {o:>15}");
    }
    if !args.execute {
        println!("(dry run: add --execute to commit these offsets)");
        return Ok(());
    }
    let mut c = coordinator(bootstrap, &args.group).await?;
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(sb(&args.group)))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(sb(&args.topic)))
            .with_partitions(
                plan.iter()
                    .map(|((_, p), o)| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(*p)
                            .with_committed_offset(*o)
                    })
                    .collect(),
            )]);
    let r = c.call(request).await?;
    for t in &r.topics {
        for p in &t.partitions {
            if p.error_code == kafka_protocol::ResponseError::UnknownMemberId.code() {
                bail!(
                    "group '{}' has active members: stop its consumers before resetting offsets",
                    args.group
                );
            }
            check(
                p.error_code,
                None,
                &format!("committing partition {}", p.partition_index),
            )?;
        }
    }
    println!("offsets of group {} reset", args.group);
    Ok(())
}
