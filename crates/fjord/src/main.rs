//! The `fjord` binary: `fjord serve` runs a broker; `fjord topic ...` administers topics over the
//! Kafka protocol (against Fjord or any Kafka cluster).

mod admin;
mod config;
mod jwks;
mod listeners;
mod metrics;
mod serve;
mod users;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Fjord: a diskless, Kafka-compatible streaming platform.
#[derive(Debug, Parser)]
#[command(name = "fjord", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where admin commands connect.
#[derive(Debug, clap::Args)]
struct Bootstrap {
    /// A broker to bootstrap from.
    #[arg(
        long,
        short,
        env = "FJORD_BOOTSTRAP",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    bootstrap: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a broker (embedded defaults: 127.0.0.1:9092, data under ./data).
    Serve(Box<config::ServeArgs>),
    /// Manage topics through the Kafka protocol.
    Topic {
        #[command(flatten)]
        bootstrap: Bootstrap,
        #[command(subcommand)]
        command: admin::topic::TopicCommand,
    },
    /// Inspect and manage consumer groups through the Kafka protocol.
    Group {
        #[command(flatten)]
        bootstrap: Bootstrap,
        #[command(subcommand)]
        command: admin::group::GroupCommand,
    },
    /// Push records of topics to a gRPC service (retries, dead-letter topics, parallelism).
    Forward(fjord_forwarder::ForwardArgs),
    /// Run the gRPC produce gateway in front of Kafka-compatible clusters.
    Gateway {
        /// The gateway's TOML file (clusters, groups, routes; reloaded on SIGHUP or change).
        #[arg(long, env = "FJORD_GATEWAY_CONFIG")]
        config: std::path::PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // Before the runtime's threads exist, so every thread and child process sees it.
    let open_files = fjord_server::fdlimit::raise();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args.resolve()?, open_files).await,
            Command::Topic { bootstrap, command } => {
                admin::topic::run(&bootstrap.bootstrap, command).await
            }
            Command::Group { bootstrap, command } => {
                admin::group::run(&bootstrap.bootstrap, command).await
            }
            Command::Forward(args) => Ok(fjord_forwarder::main(args).await?),
            Command::Gateway { config } => Ok(fjord_gateway::run(&config).await?),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
