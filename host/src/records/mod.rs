//! Small durable key/value records, such as a job's result for its producer
//! to find: one trait, SQLite locally, DynamoDB on AWS.

mod dynamodb;
mod sqlite;

pub use dynamodb::DynamoRecords;
pub use sqlite::SqliteRecords;

use async_trait::async_trait;

/// Longest table name and key accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Largest value accepted, in bytes (DynamoDB's item limit is 400 KB).
pub const MAX_VALUE_LEN: usize = 350 * 1024;

/// Why a record could not be read or written; the message names the table
/// and key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordsError {
    /// Permanent: the table, key or value is not acceptable.
    #[error("invalid: {0}")]
    Invalid(String),
    /// Permanent: the record belongs to another writer.
    #[error("denied: {0}")]
    Denied(String),
    /// Transient: worth trying again.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Who writes a record, and whether it may replace another writer's.
#[derive(Debug, Clone, Copy)]
pub struct PutOptions<'a> {
    /// The writer: a message (`QUEUE/MESSAGE_ID`), stored with the record.
    pub owner: &'a str,
    /// Whether a record another writer made may be replaced. Without it,
    /// a put over one is `denied` unless it holds the same value: a job
    /// cannot replace another job's result, and a rerun of the same job
    /// still finishes.
    pub overwrite: bool,
}

impl PutOptions<'_> {
    /// The host's own records, which it keys so that they never clash.
    pub const HOST: PutOptions<'static> = PutOptions {
        owner: "wasq",
        overwrite: true,
    };
}

/// The error for a record another writer holds.
pub fn taken(table: &str, key: &str) -> RecordsError {
    RecordsError::Denied(format!(
        "`{}` in table `{table}` was written by another message; this processor may not replace records (its manifest can allow it with `overwrite = true` under [records])",
        crate::text::escape(key)
    ))
}

/// A store of records, in tables of key → value.
#[async_trait]
pub trait Records: Send + Sync + 'static {
    /// Stores `value` under `key`: a new record, or one this writer (or one
    /// allowed to replace it) made, or one that already holds `value`.
    async fn put(
        &self,
        table: &str,
        key: &str,
        value: &str,
        options: PutOptions<'_>,
    ) -> Result<(), RecordsError>;
    /// The value under `key`, if any.
    async fn get(&self, table: &str, key: &str) -> Result<Option<String>, RecordsError>;
}

/// Table names are 1–255 characters of letters, digits, `_`, `-` and `.`
/// (DynamoDB's rule); keys are 1–255 bytes of anything but control
/// characters; values are bounded.
pub fn check(table: &str, key: &str, value: Option<&str>) -> Result<(), RecordsError> {
    let table_ok = !table.is_empty()
        && table.len() <= MAX_NAME_LEN
        && table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !table_ok {
        return Err(RecordsError::Invalid(format!(
            "table `{}`: names are 1-{MAX_NAME_LEN} letters, digits, `_`, `-` or `.`",
            crate::text::escape(table)
        )));
    }
    if key.is_empty() || key.len() > MAX_NAME_LEN || key.chars().any(char::is_control) {
        return Err(RecordsError::Invalid(format!(
            "key `{}` in table `{table}`: keys are 1-{MAX_NAME_LEN} bytes without control characters",
            key.escape_debug()
        )));
    }
    if let Some(value) = value
        && value.len() > MAX_VALUE_LEN
    {
        return Err(RecordsError::Invalid(format!(
            "value for `{key}` in table `{table}` is {} bytes; the limit is {MAX_VALUE_LEN}",
            value.len()
        )));
    }
    Ok(())
}
