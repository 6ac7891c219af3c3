//! SCRAM users from the command line: the bootstrap administrator created at startup.
//!
//! `--sasl-bootstrap-user NAME` with the password in `FJORD_SASL_BOOTSTRAP_PASSWORD` creates the
//! user's SCRAM-SHA-256 and SCRAM-SHA-512 credentials when it has none, so the first
//! administrator exists before any client could create one. A user that already has credentials
//! is left as it is: changing a password is AlterUserScramCredentials' job (any AdminClient),
//! and a restart must not undo it.

use anyhow::{bail, Context};
use fjord_auth::scram::{self, Credential};
use fjord_coordinator::security::ScramMechanism;
use fjord_coordinator::CredentialStore;

/// Where the bootstrap user's password comes from (an environment variable, never a flag, so it
/// does not show in process listings).
pub const BOOTSTRAP_PASSWORD_ENV: &str = "FJORD_SASL_BOOTSTRAP_PASSWORD";

/// PBKDF2 iterations of credentials made here (Kafka's tools use 4096; twice that costs a
/// PLAIN login about 5 ms more and a password guesser twice as much).
pub const ITERATIONS: u32 = 8192;

/// The credential of `password` for `mechanism`, with a fresh random salt.
pub fn credential(
    mechanism: ScramMechanism,
    password: &[u8],
) -> fjord_coordinator::security::ScramCredential {
    let hash = match mechanism {
        ScramMechanism::Sha256 => scram::Hash::Sha256,
        ScramMechanism::Sha512 => scram::Hash::Sha512,
    };
    let salt = scram::random_bytes::<24>();
    fjord_broker::sasl::from_auth(Credential::from_password(hash, password, &salt, ITERATIONS))
}

/// Creates `user` from the environment's password unless it has credentials already.
pub async fn bootstrap(store: &dyn CredentialStore, user: &str) -> anyhow::Result<()> {
    let password = std::env::var(BOOTSTRAP_PASSWORD_ENV).with_context(|| {
        format!("sasl_bootstrap_user {user:?} needs its password in {BOOTSTRAP_PASSWORD_ENV}")
    })?;
    if password.is_empty() {
        bail!("{BOOTSTRAP_PASSWORD_ENV} is empty");
    }
    let mut exists = false;
    for mechanism in ScramMechanism::ALL {
        exists |= store
            .scram_credential(user, mechanism)
            .await
            .context("reading the bootstrap user's credentials")?
            .is_some();
    }
    if exists {
        tracing::info!(
            user,
            "bootstrap SASL user exists; its credentials are left as they are"
        );
        return Ok(());
    }
    for mechanism in ScramMechanism::ALL {
        store
            .upsert_scram_credential(user, credential(mechanism, password.as_bytes()))
            .await
            .with_context(|| format!("creating the bootstrap user's {mechanism} credential"))?;
    }
    tracing::info!(target: "fjord::audit", event = "bootstrap_user_created", user, "bootstrap SASL user created");
    Ok(())
}
