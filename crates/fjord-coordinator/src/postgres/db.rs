//! Small helpers shared by the PostgreSQL coordinator's modules: mapping driver errors to
//! [`CoordinatorError`]s, reading typed columns, and the integer conversions between the model's
//! `u64` byte positions and PostgreSQL's signed `bigint`.
//!
//! Invariants: a driver or server error becomes [`CoordinatorError::Storage`] (retriable) unless
//! the caller maps a specific case first (e.g. a unique violation to `TopicExists`); a value read
//! back that the schema should have made impossible becomes [`CoordinatorError::Corrupt`].

use std::error::Error as _;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::FromSql;
use tokio_postgres::Row;

use crate::{CoordinatorError, IndexRow, TopicPartition};

/// A closure mapping a driver error met while doing `what` to a storage failure.
pub(super) fn db(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> CoordinatorError {
    move |e| CoordinatorError::Storage(format!("postgres: {what}: {}", describe(&e)))
}

/// A driver error with its cause chain (the driver's own `Display` omits the server's message).
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} [SQLSTATE {}]", db, db.code().code());
    }
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An error of the connection pool, with its causes (a TLS handshake's reason, say).
pub(super) fn describe_pool(e: &deadpool_postgres::PoolError) -> String {
    if let deadpool_postgres::PoolError::Backend(pg) = e {
        return describe(pg);
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether `e` is a unique violation of the constraint `constraint`.
pub(super) fn is_unique_violation(e: &tokio_postgres::Error, constraint: &str) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code() == &SqlState::UNIQUE_VIOLATION && db.constraint() == Some(constraint)
    })
}

/// Column `idx` of `row`, or `Corrupt` if it does not decode as `T`.
pub(super) fn get<'a, T: FromSql<'a>>(row: &'a Row, idx: usize) -> Result<T, CoordinatorError> {
    row.try_get(idx).map_err(|e| {
        CoordinatorError::Corrupt(format!("postgres: reading column {idx}: {}", describe(&e)))
    })
}

/// A byte position or length as stored (`bigint`).
pub(super) fn to_db(value: u64, what: &str) -> Result<i64, CoordinatorError> {
    i64::try_from(value)
        .map_err(|_| CoordinatorError::Invalid(format!("{what} {value} exceeds i64::MAX")))
}

/// A stored byte position or length.
pub(super) fn from_db(value: i64, what: &str) -> Result<u64, CoordinatorError> {
    u64::try_from(value)
        .map_err(|_| CoordinatorError::Corrupt(format!("negative {what} {value} in the index")))
}

/// Columns an index-row query selects, in the order [`index_row`] reads them.
pub(super) const INDEX_ROW_COLUMNS: &str =
    "base_offset, last_offset, object_key, position, length, max_timestamp";

/// An index row from a row whose first six columns are [`INDEX_ROW_COLUMNS`]; `None` when they
/// are NULL (an outer join that found no row).
pub(super) fn index_row(row: &Row) -> Result<Option<IndexRow>, CoordinatorError> {
    let Some(base_offset) = get::<Option<i64>>(row, 0)? else {
        return Ok(None);
    };
    Ok(Some(IndexRow {
        base_offset,
        last_offset: get(row, 1)?,
        object_key: get(row, 2)?,
        position: from_db(get(row, 3)?, "position")?,
        length: from_db(get(row, 4)?, "length")?,
        max_timestamp: get(row, 5)?,
    }))
}

/// The error for a partition that does not exist (the same text as the embedded coordinator's).
pub(super) fn unknown_partition(tp: TopicPartition) -> CoordinatorError {
    CoordinatorError::UnknownTopic(format!("{}/{}", tp.topic_id, tp.partition))
}
