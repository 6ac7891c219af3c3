//! SCRAM credentials and ACLs on PostgreSQL (`fjord_scram_credentials`, `fjord_acls` and the
//! one-row `fjord_acl_version`, see `migrations/postgres/0011_security.sql`).
//!
//! Credential calls are single statements. ACL changes are one transaction each that first locks
//! the version row (`SELECT ... FOR UPDATE`), so they serialize across brokers: `create_acls`
//! inserts with `ON CONFLICT DO NOTHING` and bumps the version only if a row was inserted;
//! `delete_acls` reads every binding, decides in Rust with [`AclFilter::matches`] (the same rule
//! as the embedded coordinator), deletes exactly those and bumps the version if any went. Reading
//! the bindings with their version is one repeatable-read transaction, so the two agree.
//!
//! Names and principals are `text`; enum columns hold Kafka's codes, and a code this build does
//! not know is [`CoordinatorError::Corrupt`]. Results are sorted in Rust (by the model's order,
//! not the database's collation).

use std::collections::BTreeMap;

use tokio_postgres::Row;

use super::db::{db, get};
use super::PostgresCoordinator;
use crate::security::{
    check_scram_credential, AclBinding, AclFilter, AclOperation, AclPermission, AclSnapshot,
    PatternType, ResourceType, ScramCredential, ScramCredentialInfo, ScramMechanism, ScramUser,
};
use crate::security_state::{check_bindings, match_filters};
use crate::{CoordinatorError, Result};

const UPSERT_CREDENTIAL: &str = "INSERT INTO fjord_scram_credentials
        (user_name, mechanism, iterations, salt, stored_key, server_key)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (user_name, mechanism) DO UPDATE SET
        iterations = EXCLUDED.iterations,
        salt = EXCLUDED.salt,
        stored_key = EXCLUDED.stored_key,
        server_key = EXCLUDED.server_key";

const DELETE_CREDENTIAL: &str =
    "DELETE FROM fjord_scram_credentials WHERE user_name = $1 AND mechanism = $2";

const CREDENTIAL: &str = "SELECT iterations, salt, stored_key, server_key
    FROM fjord_scram_credentials WHERE user_name = $1 AND mechanism = $2";

const SCRAM_USERS: &str = "SELECT user_name, mechanism, iterations FROM fjord_scram_credentials";

const LOCK_VERSION: &str = "SELECT version FROM fjord_acl_version FOR UPDATE";
const READ_VERSION: &str = "SELECT version FROM fjord_acl_version";
const BUMP_VERSION: &str = "UPDATE fjord_acl_version SET version = version + 1";

/// Columns an ACL query selects, in the order [`binding`] reads them.
const ACL_COLUMNS: &str =
    "resource_type, resource_name, pattern_type, principal, host, operation, permission";

const INSERT_ACLS: &str = "INSERT INTO fjord_acls
        (resource_type, resource_name, pattern_type, principal, host, operation, permission)
    SELECT * FROM UNNEST($1::int2[], $2::text[], $3::int2[], $4::text[], $5::text[], $6::int2[],
        $7::int2[])
    ON CONFLICT DO NOTHING";

const DELETE_ACLS: &str = "DELETE FROM fjord_acls
    WHERE (resource_type, resource_name, pattern_type, principal, host, operation, permission)
    IN (SELECT * FROM UNNEST($1::int2[], $2::text[], $3::int2[], $4::text[], $5::text[],
        $6::int2[], $7::int2[]))";

fn mechanism_code(m: ScramMechanism) -> i16 {
    i16::from(m.code())
}

/// A code read back, or `Corrupt` if this build does not know it.
fn decode<T>(code: i16, what: &str, from_code: impl FnOnce(i8) -> Option<T>) -> Result<T> {
    i8::try_from(code)
        .ok()
        .and_then(from_code)
        .ok_or_else(|| CoordinatorError::Corrupt(format!("postgres: unknown {what} code {code}")))
}

fn binding(row: &Row) -> Result<AclBinding> {
    Ok(AclBinding {
        resource_type: decode(get(row, 0)?, "resource type", ResourceType::from_code)?,
        resource_name: get(row, 1)?,
        pattern_type: decode(get(row, 2)?, "pattern type", PatternType::from_code)?,
        principal: get(row, 3)?,
        host: get(row, 4)?,
        operation: decode(get(row, 5)?, "ACL operation", AclOperation::from_code)?,
        permission: decode(get(row, 6)?, "ACL permission", AclPermission::from_code)?,
    })
}

/// The bindings as the seven column arrays [`INSERT_ACLS`] and [`DELETE_ACLS`] take.
struct Columns<'a> {
    resource_types: Vec<i16>,
    names: Vec<&'a str>,
    pattern_types: Vec<i16>,
    principals: Vec<&'a str>,
    hosts: Vec<&'a str>,
    operations: Vec<i16>,
    permissions: Vec<i16>,
}

impl<'a> Columns<'a> {
    fn of(bindings: &'a [AclBinding]) -> Self {
        Columns {
            resource_types: bindings
                .iter()
                .map(|b| i16::from(b.resource_type.code()))
                .collect(),
            names: bindings.iter().map(|b| b.resource_name.as_str()).collect(),
            pattern_types: bindings
                .iter()
                .map(|b| i16::from(b.pattern_type.code()))
                .collect(),
            principals: bindings.iter().map(|b| b.principal.as_str()).collect(),
            hosts: bindings.iter().map(|b| b.host.as_str()).collect(),
            operations: bindings
                .iter()
                .map(|b| i16::from(b.operation.code()))
                .collect(),
            permissions: bindings
                .iter()
                .map(|b| i16::from(b.permission.code()))
                .collect(),
        }
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 7] {
        [
            &self.resource_types,
            &self.names,
            &self.pattern_types,
            &self.principals,
            &self.hosts,
            &self.operations,
            &self.permissions,
        ]
    }
}

pub(super) async fn upsert_credential(
    c: &PostgresCoordinator,
    user: &str,
    credential: ScramCredential,
) -> Result<()> {
    check_scram_credential(user, &credential).map_err(CoordinatorError::Invalid)?;
    const WHAT: &str = "storing a SCRAM credential";
    let client = c.client().await?;
    let statement = client
        .prepare_cached(UPSERT_CREDENTIAL)
        .await
        .map_err(db(WHAT))?;
    client
        .execute(
            &statement,
            &[
                &user,
                &mechanism_code(credential.mechanism),
                &credential.iterations,
                &credential.salt,
                &credential.stored_key,
                &credential.server_key,
            ],
        )
        .await
        .map_err(db(WHAT))?;
    Ok(())
}

pub(super) async fn delete_credential(
    c: &PostgresCoordinator,
    user: &str,
    mechanism: ScramMechanism,
) -> Result<bool> {
    const WHAT: &str = "deleting a SCRAM credential";
    let client = c.client().await?;
    let statement = client
        .prepare_cached(DELETE_CREDENTIAL)
        .await
        .map_err(db(WHAT))?;
    let n = client
        .execute(&statement, &[&user, &mechanism_code(mechanism)])
        .await
        .map_err(db(WHAT))?;
    Ok(n > 0)
}

pub(super) async fn credential(
    c: &PostgresCoordinator,
    user: &str,
    mechanism: ScramMechanism,
) -> Result<Option<ScramCredential>> {
    let rows = c
        .query(
            CREDENTIAL,
            &[&user, &mechanism_code(mechanism)],
            "reading a SCRAM credential",
        )
        .await?;
    rows.first()
        .map(|row| {
            Ok(ScramCredential {
                mechanism,
                iterations: get(row, 0)?,
                salt: get(row, 1)?,
                stored_key: get(row, 2)?,
                server_key: get(row, 3)?,
            })
        })
        .transpose()
}

pub(super) async fn scram_users(c: &PostgresCoordinator) -> Result<Vec<ScramUser>> {
    let rows = c.query(SCRAM_USERS, &[], "listing SCRAM users").await?;
    let mut users: BTreeMap<String, Vec<ScramCredentialInfo>> = BTreeMap::new();
    for row in &rows {
        let mechanism = decode(get(row, 1)?, "SCRAM mechanism", ScramMechanism::from_code)?;
        users
            .entry(get(row, 0)?)
            .or_default()
            .push(ScramCredentialInfo {
                mechanism,
                iterations: get(row, 2)?,
            });
    }
    Ok(users
        .into_iter()
        .map(|(user, mut credentials)| {
            credentials.sort_by_key(|i| i.mechanism);
            ScramUser { user, credentials }
        })
        .collect())
}

pub(super) async fn create_acls(c: &PostgresCoordinator, bindings: Vec<AclBinding>) -> Result<()> {
    check_bindings(&bindings)?;
    if bindings.is_empty() {
        return Ok(());
    }
    let mut bindings = bindings;
    bindings.sort();
    bindings.dedup();
    const WHAT: &str = "creating ACLs";
    let mut client = c.client().await?;
    let tx = client.transaction().await.map_err(db(WHAT))?;
    tx.query_one(LOCK_VERSION, &[]).await.map_err(db(WHAT))?;
    let columns = Columns::of(&bindings);
    let statement = tx.prepare_cached(INSERT_ACLS).await.map_err(db(WHAT))?;
    let inserted = tx
        .execute(&statement, &columns.params())
        .await
        .map_err(db(WHAT))?;
    if inserted > 0 {
        tx.execute(BUMP_VERSION, &[]).await.map_err(db(WHAT))?;
    }
    tx.commit().await.map_err(db(WHAT))?;
    Ok(())
}

pub(super) async fn delete_acls(
    c: &PostgresCoordinator,
    filters: Vec<AclFilter>,
) -> Result<Vec<Vec<AclBinding>>> {
    const WHAT: &str = "deleting ACLs";
    let mut client = c.client().await?;
    let tx = client.transaction().await.map_err(db(WHAT))?;
    tx.query_one(LOCK_VERSION, &[]).await.map_err(db(WHAT))?;
    let rows = tx
        .query(&format!("SELECT {ACL_COLUMNS} FROM fjord_acls"), &[])
        .await
        .map_err(db(WHAT))?;
    let mut all = rows.iter().map(binding).collect::<Result<Vec<_>>>()?;
    all.sort();
    let matched = match_filters(all.iter(), &filters);
    let mut removed: Vec<AclBinding> = matched.iter().flatten().cloned().collect();
    removed.sort();
    removed.dedup();
    if !removed.is_empty() {
        let columns = Columns::of(&removed);
        let statement = tx.prepare_cached(DELETE_ACLS).await.map_err(db(WHAT))?;
        tx.execute(&statement, &columns.params())
            .await
            .map_err(db(WHAT))?;
        tx.execute(BUMP_VERSION, &[]).await.map_err(db(WHAT))?;
    }
    tx.commit().await.map_err(db(WHAT))?;
    Ok(matched)
}

pub(super) async fn acls(c: &PostgresCoordinator) -> Result<AclSnapshot> {
    const WHAT: &str = "reading ACLs";
    let mut client = c.client().await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db(WHAT))?;
    let version: i64 = get(&tx.query_one(READ_VERSION, &[]).await.map_err(db(WHAT))?, 0)?;
    let rows = tx
        .query(&format!("SELECT {ACL_COLUMNS} FROM fjord_acls"), &[])
        .await
        .map_err(db(WHAT))?;
    let mut bindings = rows.iter().map(binding).collect::<Result<Vec<_>>>()?;
    tx.commit().await.map_err(db(WHAT))?;
    bindings.sort();
    Ok(AclSnapshot { version, bindings })
}

pub(super) async fn acl_version(c: &PostgresCoordinator) -> Result<i64> {
    let rows = c
        .query(READ_VERSION, &[], "reading the ACL version")
        .await?;
    let row = rows
        .first()
        .ok_or_else(|| CoordinatorError::Corrupt("postgres: fjord_acl_version is empty".into()))?;
    get(row, 0)
}
