//! `fjord user create|delete|list`: SCRAM users through AlterUserScramCredentials and
//! DescribeUserScramCredentials, so it works against Fjord and Kafka alike.
//!
//! The password is read from an environment variable (never a flag, which `ps` would show); the
//! salted password is computed here, as Kafka clients do, so the password never leaves this
//! process.

use anyhow::{bail, Context};
use clap::Subcommand;
use fjord_auth::scram::{self, Hash};
use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, DescribeUserScramCredentialsRequest,
};
use kafka_protocol::protocol::StrBytes;

use super::controller;

/// User commands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create or update a user's SCRAM credentials (password from an environment variable).
    Create {
        /// User name.
        name: String,
        /// The environment variable holding the password.
        #[arg(long, default_value = "FJORD_USER_PASSWORD")]
        password_env: String,
        /// Mechanisms (repeatable) [default: SCRAM-SHA-256 and SCRAM-SHA-512].
        #[arg(long = "mechanism")]
        mechanisms: Vec<String>,
        /// PBKDF2 iterations (4096 to 16384).
        #[arg(long, default_value_t = 8192)]
        iterations: u32,
    },
    /// Delete a user's credentials.
    Delete {
        /// User name.
        name: String,
        /// Mechanisms (repeatable) [default: both].
        #[arg(long = "mechanism")]
        mechanisms: Vec<String>,
    },
    /// List users and their mechanisms.
    List,
}

fn hashes(names: &[String]) -> anyhow::Result<Vec<Hash>> {
    if names.is_empty() {
        return Ok(vec![Hash::Sha256, Hash::Sha512]);
    }
    names
        .iter()
        .map(|n| match n.to_ascii_uppercase().as_str() {
            "SCRAM-SHA-256" => Ok(Hash::Sha256),
            "SCRAM-SHA-512" => Ok(Hash::Sha512),
            other => bail!("mechanism {other}: expected SCRAM-SHA-256 or SCRAM-SHA-512"),
        })
        .collect()
}

fn code(hash: Hash) -> i8 {
    match hash {
        Hash::Sha256 => 1,
        Hash::Sha512 => 2,
    }
}

/// Runs a user command against the cluster at `bootstrap`.
pub async fn run(bootstrap: &str, command: UserCommand) -> anyhow::Result<()> {
    let mut client = controller(bootstrap).await?;
    match command {
        UserCommand::Create {
            name,
            password_env,
            mechanisms,
            iterations,
        } => {
            let password = std::env::var(&password_env)
                .with_context(|| format!("the password is read from {password_env}"))?;
            if password.is_empty() {
                bail!("{password_env} is empty");
            }
            let iterations_i32 = i32::try_from(iterations).context("iterations")?;
            let upsertions = hashes(&mechanisms)?
                .into_iter()
                .map(|hash| {
                    let salt = scram::random_bytes::<24>();
                    let salted =
                        scram::salted_password(hash, password.as_bytes(), &salt, iterations);
                    ScramCredentialUpsertion::default()
                        .with_name(StrBytes::from_string(name.clone()))
                        .with_mechanism(code(hash))
                        .with_iterations(iterations_i32)
                        .with_salt(salt.to_vec().into())
                        .with_salted_password(salted.into())
                })
                .collect();
            let response = client
                .call(AlterUserScramCredentialsRequest::default().with_upsertions(upsertions))
                .await?;
            check(&response.results)?;
            println!("user {name}: credentials set");
        }
        UserCommand::Delete { name, mechanisms } => {
            let deletions = hashes(&mechanisms)?
                .into_iter()
                .map(|hash| {
                    ScramCredentialDeletion::default()
                        .with_name(StrBytes::from_string(name.clone()))
                        .with_mechanism(code(hash))
                })
                .collect();
            let response = client
                .call(AlterUserScramCredentialsRequest::default().with_deletions(deletions))
                .await?;
            check(&response.results)?;
            println!("user {name}: credentials deleted");
        }
        UserCommand::List => {
            let response = client
                .call(
                    DescribeUserScramCredentialsRequest::default()
                        .with_users(None::<Vec<UserName>>),
                )
                .await?;
            if response.error_code != 0 {
                bail!(
                    "DescribeUserScramCredentials failed (error {}): {}",
                    response.error_code,
                    response
                        .error_message
                        .as_ref()
                        .map(|m| m.as_str())
                        .unwrap_or("")
                );
            }
            for user in &response.results {
                let mechanisms: Vec<String> = user
                    .credential_infos
                    .iter()
                    .map(|c| {
                        let name = match c.mechanism {
                            1 => "SCRAM-SHA-256",
                            2 => "SCRAM-SHA-512",
                            _ => "unknown",
                        };
                        format!("{name} ({} iterations)", c.iterations)
                    })
                    .collect();
                println!("{}\t{}", user.user.as_str(), mechanisms.join(", "));
            }
        }
    }
    Ok(())
}

fn check(
    results: &[kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult],
) -> anyhow::Result<()> {
    for r in results {
        if r.error_code != 0 {
            bail!(
                "user {}: error {}: {}",
                r.user.as_str(),
                r.error_code,
                r.error_message.as_ref().map(|m| m.as_str()).unwrap_or("")
            );
        }
    }
    Ok(())
}
