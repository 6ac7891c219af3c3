//! `fjord forward`: reads topics as a consumer group and pushes each record to a service's gRPC
//! endpoint (`fjord.forwarder.v1.RecordHandler/Deliver`), with retries, a retry topic, a
//! dead-letter topic, ordering modes and parallelism beyond the partition count. Works against
//! any Kafka-compatible cluster. docs/forwarder.md is the user's guide.
//!
//! | module | owns |
//! |---|---|
//! | `config` | the TOML settings, defaults, validation |
//! | `offsets` | per-partition offset tracker: commit only below the lowest unfinished record |
//! | `ordering` | per-partition scheduler: ordering modes none / key / partition |
//! | `retry` | retry policy: backoff with jitter, in memory → retry topic → dead-letter topic |
//! | `outcome` | the one table from gRPC replies and statuses to verdicts |
//! | `delivery` | the delivery client (trait + gRPC) |
//! | `envelope` | records, and the `fjord.*` headers of retry and dead-letter records |
//! | `sink` | one write to a retry / dead-letter topic, bounded; creating those topics |
//! | `parking` | a record leaving memory: retry topic, dead-letter topic, and what a failed write becomes |
//! | `ratelimit` | the per-subscription rate limit |
//! | `partition` | one assigned partition's unfinished records and backpressure state |
//! | `assignment` | a worker's assigned partitions and the rebalance callbacks (commit on revocation) |
//! | `subscription` | what the workers of a subscription share (limits, client, metrics) |
//! | `worker` | one consumer-group member per (subscription, cluster): the event loop |
//! | `metrics` | Prometheus metrics and their HTTP endpoint |

pub mod assignment;
pub mod config;
pub mod delivery;
pub mod envelope;
pub mod error;
pub mod metrics;
pub mod offsets;
pub mod ordering;
pub mod outcome;
pub mod parking;
pub mod partition;
pub mod ratelimit;
pub mod retry;
pub mod sink;
pub mod subscription;
pub mod worker;

/// Generated from `proto/fjord/forwarder/v1/forwarder.proto`.
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod proto {
    tonic::include_proto!("fjord.forwarder.v1");
}

use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::ForwarderConfig;
pub use error::{ConfigError, ForwardError};

use delivery::GrpcDeliverer;
use metrics::Metrics;
use subscription::Subscription;
use worker::Worker;

/// `fjord forward` arguments.
#[derive(Debug, clap::Args)]
pub struct ForwardArgs {
    /// The forwarder's TOML file (clusters, subscriptions; see docs/forwarder.md).
    #[arg(long, short, env = "FJORD_FORWARD_CONFIG")]
    pub config: PathBuf,
}

/// Runs the forwarder until SIGTERM or SIGINT, then drains and commits.
pub async fn main(args: ForwardArgs) -> Result<(), ForwardError> {
    let config = ForwarderConfig::load(&args.config)?;
    let cancel = CancellationToken::new();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ForwardError::Signal)?;
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("signal received: draining");
        on_signal.cancel();
    });
    run(config, cancel).await
}

/// Runs every subscription of `config` until `cancel`.
///
/// A subscription whose worker fails (a record that cannot leave memory without being lost, see
/// `parking.rs`) stops on all its clusters: its workers drain, commit and leave their groups, its
/// `fjord_forwarder_failed` gauge reads 1 and the error is logged; the others go on. Once no
/// subscription is left running, this returns the first failure. A panicking worker stops
/// everything.
pub async fn run(config: ForwarderConfig, cancel: CancellationToken) -> Result<(), ForwardError> {
    config.validate()?;
    for (name, cluster) in &config.clusters {
        for property in config::SECRET_PROPERTIES {
            if cluster.properties.contains_key(property) {
                tracing::warn!(cluster = %name, property,
                    "a secret is written in the config file; name an environment variable in \
                     properties_env instead");
            }
        }
    }
    let metrics = Arc::new(Metrics::new());
    let metrics_task = match &config.metrics_listen {
        Some(addr) => {
            let task = metrics::serve(metrics.clone(), addr, cancel.clone()).await?;
            tracing::info!(%addr, "metrics at http://{addr}/metrics");
            Some(task)
        }
        None => None,
    };
    let workers_cancel = CancellationToken::new();
    let mut workers = JoinSet::new();
    let mut subscriptions = Vec::new();
    for sub_config in &config.subscriptions {
        let endpoint_error = |message| ForwardError::Endpoint {
            subscription: sub_config.name.clone(),
            endpoint: sub_config.endpoint.to_string(),
            message,
        };
        let tls = sub_config
            .tls
            .as_ref()
            .map(delivery::client_tls)
            .transpose()
            .map_err(endpoint_error)?;
        let deliverer =
            GrpcDeliverer::new(sub_config.endpoint.urls(), tls.as_ref()).map_err(endpoint_error)?;
        let sub = Arc::new(Subscription::new(
            sub_config.clone(),
            Arc::new(deliverer),
            metrics.subscription(&sub_config.name),
        ));
        let sub_cancel = workers_cancel.child_token();
        let index = subscriptions.len();
        subscriptions.push((sub.clone(), sub_cancel.clone()));
        for cluster_name in &sub_config.clusters {
            let Some(cluster) = config.clusters.get(cluster_name) else {
                continue; // validate() refused this
            };
            let worker = Worker::start(sub.clone(), cluster_name, cluster, metrics.clone()).await?;
            let run = worker.run(sub_cancel.clone(), config.shutdown_timeout());
            workers.spawn(async move { (index, run.await) });
        }
    }
    let mut failure = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            ended = workers.join_next() => match ended {
                None => {
                    // Every subscription has stopped on a failure.
                    failure.get_or_insert(ForwardError::Task("every subscription stopped".into()));
                    break;
                }
                Some(Ok((_, Ok(())))) => {}
                Some(Ok((index, Err(e)))) => {
                    let (sub, sub_cancel) = &subscriptions[index];
                    if !sub_cancel.is_cancelled() {
                        tracing::error!(subscription = %sub.name(), error = %e,
                            "subscription stopped on a failure; the other subscriptions go on");
                        sub.metrics.failed.set(1);
                        sub_cancel.cancel();
                    }
                    failure.get_or_insert(e);
                }
                Some(Err(e)) => {
                    failure = Some(ForwardError::Task(format!("a worker failed: {e}")));
                    break;
                }
            },
        }
    }
    workers_cancel.cancel();
    while let Some(ended) = workers.join_next().await {
        match ended {
            Ok((_, Ok(()))) => {}
            Ok((_, Err(e))) => {
                failure.get_or_insert(e);
            }
            Err(e) => {
                failure.get_or_insert(ForwardError::Task(format!("worker failed: {e}")));
            }
        }
    }
    cancel.cancel();
    if let Some(task) = metrics_task {
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "the metrics endpoint task failed");
        }
    }
    tracing::info!("forwarder stopped");
    failure.map_or(Ok(()), Err)
}
