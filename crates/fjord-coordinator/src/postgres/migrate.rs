//! Schema migrations of the PostgreSQL coordinator.
//!
//! Migrations are the numbered SQL files under `migrations/postgres/`, embedded at build time and
//! listed in [`MIGRATIONS`] in order. [`migrate`] applies the missing ones at open, all in one
//! transaction that first takes a transaction-level advisory lock, so brokers starting at once
//! apply each migration exactly once and never see a half-migrated schema.
//!
//! Invariants:
//! - `fjord_schema_migrations` records every applied version with the CRC32C of its SQL text; an
//!   applied migration whose text changed since, or a version this build does not know (the
//!   database was migrated by a newer Fjord), refuses the open with
//!   [`CoordinatorError::Corrupt`] rather than guessing.
//! - Versions are dense from 1 and files are never edited once released: a change is a new file.

use deadpool_postgres::Client;

use super::db::{db, get};
use crate::{CoordinatorError, Result};

/// One embedded migration.
pub(crate) struct Migration {
    /// Its version, the file's number.
    pub version: i32,
    /// Its file name without `.sql`.
    pub name: &'static str,
    /// Its SQL, run as one batch.
    pub sql: &'static str,
}

/// Every migration, by version.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_initial",
        sql: include_str!("../../migrations/postgres/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "0002_groups",
        sql: include_str!("../../migrations/postgres/0002_groups.sql"),
    },
    Migration {
        version: 3,
        name: "0003_brokers",
        sql: include_str!("../../migrations/postgres/0003_brokers.sql"),
    },
    Migration {
        version: 4,
        name: "0004_group_versions",
        sql: include_str!("../../migrations/postgres/0004_group_versions.sql"),
    },
    Migration {
        version: 5,
        name: "0005_commit_watermark",
        sql: include_str!("../../migrations/postgres/0005_commit_watermark.sql"),
    },
    Migration {
        version: 6,
        name: "0006_object_lifecycle",
        sql: include_str!("../../migrations/postgres/0006_object_lifecycle.sql"),
    },
    Migration {
        version: 7,
        name: "0007_timestamp_index",
        sql: include_str!("../../migrations/postgres/0007_timestamp_index.sql"),
    },
    Migration {
        version: 8,
        name: "0008_compaction",
        sql: include_str!("../../migrations/postgres/0008_compaction.sql"),
    },
    Migration {
        version: 9,
        name: "0009_producer_expiry",
        sql: include_str!("../../migrations/postgres/0009_producer_expiry.sql"),
    },
    Migration {
        version: 10,
        name: "0010_broker_listeners",
        sql: include_str!("../../migrations/postgres/0010_broker_listeners.sql"),
    },
    Migration {
        version: 11,
        name: "0011_security",
        sql: include_str!("../../migrations/postgres/0011_security.sql"),
    },
    Migration {
        version: 12,
        name: "0012_quotas",
        sql: include_str!("../../migrations/postgres/0012_quotas.sql"),
    },
];

/// The advisory lock key migrations hold ("fjord-mg" as eight bytes).
const MIGRATION_LOCK: i64 = 0x666a_6f72_642d_6d67;

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS fjord_schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   bigint NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

fn checksum(sql: &str) -> i64 {
    i64::from(crc32c::crc32c(sql.as_bytes()))
}

/// Brings the schema up to date; returns the versions it applied (empty when none was missing).
pub(crate) async fn migrate(client: &mut Client) -> Result<Vec<i32>> {
    let tx = client
        .transaction()
        .await
        .map_err(db("starting the migration transaction"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db("taking the migration lock"))?;
    tx.batch_execute(CREATE_TABLE)
        .await
        .map_err(db("creating fjord_schema_migrations"))?;
    let rows = tx
        .query(
            "SELECT version, name, checksum FROM fjord_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(db("reading fjord_schema_migrations"))?;
    let mut applied = std::collections::BTreeSet::new();
    for row in &rows {
        let version: i32 = get(row, 0)?;
        let name: String = get(row, 1)?;
        let sum: i64 = get(row, 2)?;
        let Some(known) = MIGRATIONS.iter().find(|m| m.version == version) else {
            return Err(CoordinatorError::Corrupt(format!(
                "the database has schema migration {version} ({name}), which this build of \
                 Fjord does not know (it knows up to {}); was it migrated by a newer version?",
                MIGRATIONS.len()
            )));
        };
        if checksum(known.sql) != sum {
            return Err(CoordinatorError::Corrupt(format!(
                "schema migration {version} ({name}) was applied from a different text than \
                 this build's {}.sql",
                known.name
            )));
        }
        applied.insert(version);
    }
    let mut done = Vec::new();
    for migration in MIGRATIONS {
        if applied.contains(&migration.version) {
            continue;
        }
        tx.batch_execute(migration.sql)
            .await
            .map_err(db("applying a schema migration"))?;
        tx.execute(
            "INSERT INTO fjord_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[
                &migration.version,
                &migration.name,
                &checksum(migration.sql),
            ],
        )
        .await
        .map_err(db("recording a schema migration"))?;
        done.push(migration.version);
    }
    tx.commit()
        .await
        .map_err(db("committing schema migrations"))?;
    if !done.is_empty() {
        tracing::info!(versions = ?done, "applied coordinator schema migrations");
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under migrations/postgres is listed, in order, with increasing versions that
    /// match their names, dense from 1.
    #[test]
    fn migrations_match_the_files() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{}.sql", m.name))
            .collect();
        assert_eq!(files, listed);
        for (i, m) in MIGRATIONS.iter().enumerate() {
            let version = i32::try_from(i + 1).unwrap();
            assert_eq!(m.version, version);
            assert!(m.name.starts_with(&format!("{version:04}_")), "{}", m.name);
            let on_disk = std::fs::read_to_string(format!("{dir}/{}.sql", m.name)).unwrap();
            assert_eq!(on_disk, m.sql);
        }
    }
}
