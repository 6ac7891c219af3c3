//! The `fjord` binary: `fjord serve` runs a broker; `fjord topic ...` administers topics over the
//! Kafka protocol (against Fjord or any Kafka cluster).

mod admin;
mod config;
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
    /// How to reach the brokers: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.
    #[arg(
        long,
        env = "FJORD_SECURITY_PROTOCOL",
        default_value = "PLAINTEXT",
        global = true
    )]
    security_protocol: String,
    /// CA certificates (PEM) the brokers' certificates must chain to (SSL, SASL_SSL).
    #[arg(long, env = "FJORD_SSL_CA_FILE", global = true)]
    ssl_ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, env = "FJORD_SSL_CERTIFICATE_FILE", global = true)]
    ssl_certificate_file: Option<std::path::PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long, env = "FJORD_SSL_KEY_FILE", global = true)]
    ssl_key_file: Option<std::path::PathBuf>,
    /// SASL mechanism: SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN.
    #[arg(
        long,
        env = "FJORD_SASL_MECHANISM",
        default_value = "SCRAM-SHA-512",
        global = true
    )]
    sasl_mechanism: String,
    /// SASL user; the password is read from FJORD_SASL_PASSWORD (never a flag).
    #[arg(long, env = "FJORD_SASL_USERNAME", global = true)]
    sasl_username: Option<String>,
}

impl Bootstrap {
    /// Applies the connection security flags to this process's admin connections.
    fn configure(&self) -> anyhow::Result<()> {
        use anyhow::{bail, Context};
        let protocol: fjord_broker::session::SecurityProtocol = self
            .security_protocol
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?;
        let tls = if protocol.uses_tls() {
            let ca = self
                .ssl_ca_file
                .clone()
                .context("--ssl-ca-file is needed for SSL and SASL_SSL")?;
            let identity = match (&self.ssl_certificate_file, &self.ssl_key_file) {
                (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                (None, None) => None,
                _ => bail!("--ssl-certificate-file and --ssl-key-file go together"),
            };
            Some((ca, identity))
        } else {
            None
        };
        let sasl = match protocol {
            fjord_broker::session::SecurityProtocol::SaslPlaintext
            | fjord_broker::session::SecurityProtocol::SaslSsl => {
                let user = self
                    .sasl_username
                    .clone()
                    .context("--sasl-username is needed for SASL_PLAINTEXT and SASL_SSL")?;
                let password = std::env::var("FJORD_SASL_PASSWORD")
                    .context("the SASL password is read from FJORD_SASL_PASSWORD")?;
                Some((self.sasl_mechanism.clone(), user, password))
            }
            _ => None,
        };
        admin::configure(admin::Security { tls, sasl })
    }
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
    /// Manage SCRAM users through the Kafka protocol (AlterUserScramCredentials).
    User {
        #[command(flatten)]
        bootstrap: Bootstrap,
        #[command(subcommand)]
        command: admin::user::UserCommand,
    },
    /// Manage ACLs through the Kafka protocol (CreateAcls, DescribeAcls, DeleteAcls).
    Acl {
        #[command(flatten)]
        bootstrap: Bootstrap,
        #[command(subcommand)]
        command: admin::acl::AclCommand,
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
                bootstrap.configure()?;
                admin::topic::run(&bootstrap.bootstrap, command).await
            }
            Command::Group { bootstrap, command } => {
                bootstrap.configure()?;
                admin::group::run(&bootstrap.bootstrap, command).await
            }
            Command::User { bootstrap, command } => {
                bootstrap.configure()?;
                admin::user::run(&bootstrap.bootstrap, command).await
            }
            Command::Acl { bootstrap, command } => {
                bootstrap.configure()?;
                admin::acl::run(&bootstrap.bootstrap, command).await
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
