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

/// The authorizer settings of `c`; refuses ACL settings with no authorizer to apply them, so no
/// setting looks in force when it is not.
pub fn authorizer_settings(
    c: &crate::config::ServeConfig,
) -> anyhow::Result<fjord_broker::authz::AuthorizerSettings> {
    let enabled = match c.authorizer.trim().to_ascii_lowercase().as_str() {
        "acl" => true,
        "none" | "" => false,
        other => bail!("authorizer {other:?}: expected acl or none"),
    };
    let super_users: Vec<String> = c
        .super_users
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    for s in &super_users {
        match s.split_once(':') {
            Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {}
            _ => bail!("super user {s:?} is not Type:name (e.g. User:admin)"),
        }
    }
    if !enabled {
        if !super_users.is_empty() {
            bail!("super_users is set but no authorizer enforces ACLs (add --authorizer acl)");
        }
        if c.allow_everyone_if_no_acl_found {
            bail!("allow_everyone_if_no_acl_found is set but no authorizer enforces ACLs (add --authorizer acl)");
        }
    }
    if c.acl_refresh_interval_ms == 0 {
        bail!("acl_refresh_interval_ms must be positive");
    }
    Ok(fjord_broker::authz::AuthorizerSettings {
        enabled,
        super_users,
        allow_everyone_if_no_acl_found: c.allow_everyone_if_no_acl_found,
        refresh_interval: std::time::Duration::from_millis(c.acl_refresh_interval_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServeConfig;

    #[test]
    fn acl_settings_need_the_authorizer() {
        let mut c = ServeConfig::default();
        assert!(!authorizer_settings(&c).unwrap().enabled);
        c.super_users = "User:admin".into();
        assert!(authorizer_settings(&c).is_err());
        c.authorizer = "acl".into();
        let s = authorizer_settings(&c).unwrap();
        assert!(s.enabled);
        assert_eq!(s.super_users, vec!["User:admin".to_string()]);
        c.super_users = "admin".into();
        assert!(authorizer_settings(&c).is_err());
        c.super_users.clear();
        c.authorizer = "ranger".into();
        assert!(authorizer_settings(&c).is_err());
        let open = ServeConfig {
            allow_everyone_if_no_acl_found: true,
            ..ServeConfig::default()
        };
        assert!(authorizer_settings(&open).is_err());
    }
}
