//! DescribeUserScramCredentials (API 50) and AlterUserScramCredentials (API 51): SCRAM users as
//! AdminClients, `kafka-configs --entity-type users` and Terraform providers manage them.
//!
//! An upsertion carries the salted password the client derived (PBKDF2 of the password, with
//! the salt and iterations it chose); the broker keeps only the StoredKey and ServerKey derived
//! from it, as Kafka does. Answers are per user, as in Kafka: a user named twice in one request
//! (for the same mechanism, or with no mechanism to tell the operations apart) is
//! DUPLICATE_RESOURCE and nothing is changed for them; an unknown mechanism is
//! UNSUPPORTED_SASL_MECHANISM; an empty name, iterations out of range or an empty salt or
//! password is UNACCEPTABLE_CREDENTIAL; deleting what does not exist is RESOURCE_NOT_FOUND.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fjord_auth::scram;
use fjord_coordinator::security::{ScramMechanism, MAX_SCRAM_ITERATIONS, MIN_SCRAM_ITERATIONS};
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};
use kafka_protocol::ResponseError;

use super::s;
use crate::dispatch::Client;
use crate::error::coordinator_code;
use crate::sasl::from_auth;
use crate::Broker;
use fjord_coordinator::security::AclOperation;

/// Answers DescribeUserScramCredentials.
pub async fn describe(
    broker: Arc<Broker>,
    request: DescribeUserScramCredentialsRequest,
    client: Client,
) -> DescribeUserScramCredentialsResponse {
    let response = DescribeUserScramCredentialsResponse::default();
    if !broker
        .authorizer
        .cluster(&client.session, AclOperation::Describe)
    {
        return response
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            .with_error_message(Some(s(
                "DESCRIBE on the cluster is needed to describe users",
            )));
    }
    let all = match broker.coordinator.scram_users().await {
        Ok(users) => users,
        Err(e) => {
            return response
                .with_error_code(coordinator_code(&e).code())
                .with_error_message(Some(s(e.to_string())));
        }
    };
    let by_name: BTreeMap<&str, _> = all.iter().map(|u| (u.user.as_str(), u)).collect();
    let result = |name: &str| {
        let r = DescribeUserScramCredentialsResult::default().with_user(s(name));
        match by_name.get(name) {
            Some(u) => r.with_credential_infos(
                u.credentials
                    .iter()
                    .map(|c| {
                        CredentialInfo::default()
                            .with_mechanism(c.mechanism.code())
                            .with_iterations(c.iterations)
                    })
                    .collect(),
            ),
            None => r
                .with_error_code(ResponseError::ResourceNotFound.code())
                .with_error_message(Some(s(format!("user {name:?} has no SCRAM credential")))),
        }
    };
    let results = match request.users {
        None => all.iter().map(|u| result(&u.user)).collect(),
        Some(users) if users.is_empty() => all.iter().map(|u| result(&u.user)).collect(),
        Some(users) => {
            let mut seen = BTreeMap::new();
            for u in &users {
                *seen.entry(u.name.as_str()).or_insert(0) += 1;
            }
            seen.into_iter()
                .map(|(name, count)| {
                    if count > 1 {
                        DescribeUserScramCredentialsResult::default()
                            .with_user(s(name))
                            .with_error_code(ResponseError::DuplicateResource.code())
                            .with_error_message(Some(s(format!(
                                "user {name:?} is named more than once"
                            ))))
                    } else {
                        result(name)
                    }
                })
                .collect()
        }
    };
    response.with_results(results)
}

/// One user's change.
enum Change {
    Delete(ScramMechanism),
    Upsert(fjord_coordinator::security::ScramCredential),
}

/// Answers AlterUserScramCredentials.
pub async fn alter(
    broker: Arc<Broker>,
    request: AlterUserScramCredentialsRequest,
    client: Client,
) -> AlterUserScramCredentialsResponse {
    if !broker
        .authorizer
        .cluster(&client.session, AclOperation::Alter)
    {
        let users: BTreeSet<&str> = request
            .deletions
            .iter()
            .map(|d| d.name.as_str())
            .chain(request.upsertions.iter().map(|u| u.name.as_str()))
            .collect();
        let results = users
            .into_iter()
            .map(|user| {
                AlterUserScramCredentialsResult::default()
                    .with_user(s(user))
                    .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
                    .with_error_message(Some(s("ALTER on the cluster is needed to change users")))
            })
            .collect();
        return AlterUserScramCredentialsResponse::default().with_results(results);
    }
    // Per user: the changes, or the first reason to refuse them all.
    let mut users: BTreeMap<String, Result<Vec<Change>, (ResponseError, String)>> = BTreeMap::new();
    let mut seen: BTreeSet<(String, i8)> = BTreeSet::new();
    let mut note =
        |user: &str,
         mechanism: i8,
         change: Result<Change, (ResponseError, String)>,
         users: &mut BTreeMap<String, Result<Vec<Change>, (ResponseError, String)>>| {
            let entry = users.entry(user.to_string()).or_insert(Ok(Vec::new()));
            if !seen.insert((user.to_string(), mechanism)) {
                *entry = Err((
                    ResponseError::DuplicateResource,
                    format!("user {user:?} has more than one change for mechanism {mechanism}"),
                ));
                return;
            }
            if let Ok(changes) = entry {
                match change {
                    Ok(c) => changes.push(c),
                    Err(e) => *entry = Err(e),
                }
            }
        };
    for d in &request.deletions {
        let user = d.name.as_str();
        note(
            user,
            d.mechanism,
            checked(user, d.mechanism).map(Change::Delete),
            &mut users,
        );
    }
    for u in &request.upsertions {
        let user = u.name.as_str();
        let change = checked(user, u.mechanism).and_then(|mechanism| {
            if !(MIN_SCRAM_ITERATIONS..=MAX_SCRAM_ITERATIONS).contains(&u.iterations) {
                return Err((
                    ResponseError::UnacceptableCredential,
                    format!(
                        "{} iterations: must be from {MIN_SCRAM_ITERATIONS} to {MAX_SCRAM_ITERATIONS}",
                        u.iterations
                    ),
                ));
            }
            if u.salt.is_empty() || u.salted_password.is_empty() {
                return Err((
                    ResponseError::UnacceptableCredential,
                    "the salt and the salted password must not be empty".into(),
                ));
            }
            let hash = match mechanism {
                ScramMechanism::Sha256 => scram::Hash::Sha256,
                ScramMechanism::Sha512 => scram::Hash::Sha512,
            };
            Ok(Change::Upsert(from_auth(scram::Credential::from_salted_password(
                hash,
                &u.salted_password,
                &u.salt,
                u.iterations.unsigned_abs(),
            ))))
        });
        note(user, u.mechanism, change, &mut users);
    }
    let mut results = Vec::with_capacity(users.len());
    for (user, changes) in users {
        let outcome = match changes {
            Err(e) => Err(e),
            Ok(changes) => apply(&broker, &user, changes).await,
        };
        let r = AlterUserScramCredentialsResult::default().with_user(s(user.as_str()));
        results.push(match outcome {
            Ok(()) => {
                tracing::info!(target: "fjord::audit", event = "scram_credentials_altered", user, "SCRAM credentials changed");
                r
            }
            Err((code, message)) => r
                .with_error_code(code.code())
                .with_error_message(Some(s(message))),
        });
    }
    AlterUserScramCredentialsResponse::default().with_results(results)
}

fn checked(user: &str, mechanism: i8) -> Result<ScramMechanism, (ResponseError, String)> {
    if user.is_empty() {
        return Err((
            ResponseError::UnacceptableCredential,
            "the user name must not be empty".into(),
        ));
    }
    ScramMechanism::from_code(mechanism).ok_or_else(|| {
        (
            ResponseError::UnsupportedSaslMechanism,
            format!("unknown SCRAM mechanism {mechanism}"),
        )
    })
}

async fn apply(
    broker: &Broker,
    user: &str,
    changes: Vec<Change>,
) -> Result<(), (ResponseError, String)> {
    // Deletions of what does not exist are refused before anything changes.
    for change in &changes {
        if let Change::Delete(mechanism) = change {
            match broker.coordinator.scram_credential(user, *mechanism).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err((
                        ResponseError::ResourceNotFound,
                        format!("user {user:?} has no {mechanism} credential to delete"),
                    ))
                }
                Err(e) => return Err((coordinator_code(&e), e.to_string())),
            }
        }
    }
    for change in changes {
        let done = match change {
            Change::Delete(mechanism) => broker
                .coordinator
                .delete_scram_credential(user, mechanism)
                .await
                .map(|_| ()),
            Change::Upsert(credential) => {
                broker
                    .coordinator
                    .upsert_scram_credential(user, credential)
                    .await
            }
        };
        done.map_err(|e| (coordinator_code(&e), e.to_string()))?;
    }
    Ok(())
}
