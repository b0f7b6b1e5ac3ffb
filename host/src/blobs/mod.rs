//! Object storage behind one small trait: objects addressed `s3://bucket/key`,
//! read and written as streams, with time-limited download links.

mod local;
mod s3;
pub mod sign;

pub use local::{DEFAULT_RESERVE, LocalBlobs};
pub use s3::{PART_SIZE, S3Blobs};

use async_trait::async_trait;
use std::fmt;
use std::time::Duration;

/// The longest a download link may live: 7 days, as S3 allows.
pub const MAX_LINK_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// An object address, `s3://bucket/key`: a valid bucket name and a safe,
/// non-empty key. A `BlobUri` that exists has passed these checks, so no
/// store or grant ever sees a key that could leave its bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobUri {
    bucket: String,
    key: String,
}

impl BlobUri {
    pub fn parse(text: &str) -> Result<Self, BlobError> {
        // The text as given is attacker-chosen: errors quote it escaped.
        let uri = crate::text::Escaped(text);
        let rest = text
            .strip_prefix("s3://")
            .ok_or_else(|| BlobError::Invalid(format!("`{uri}` is not an s3:// URI")))?;
        let (bucket, key) = rest
            .split_once('/')
            .ok_or_else(|| BlobError::Invalid(format!("`{uri}` has no key after the bucket")))?;
        check_bucket(bucket).map_err(|why| BlobError::Invalid(format!("`{uri}`: {why}")))?;
        if key.is_empty() {
            return Err(BlobError::Invalid(format!("`{uri}` has an empty key")));
        }
        if key.len() > 1024 {
            return Err(BlobError::Invalid(format!(
                "`{uri}`: keys are at most 1024 bytes"
            )));
        }
        check_key(key).map_err(|why| BlobError::Invalid(format!("`{uri}`: {why}")))?;
        Ok(BlobUri {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Refuses keys with empty, `.` or `..` segments (which covers absolute keys
/// and `//`) and control characters: a directory store would resolve them
/// out of place, an HTTP client may normalise them into another bucket's
/// path, and a control character in a key would reach logs and terminals.
/// Every store refuses the same keys.
fn check_key(key: &str) -> Result<(), &'static str> {
    if key.chars().any(char::is_control) {
        return Err("keys may not contain control characters");
    }
    for segment in key.split('/') {
        match segment {
            "" => return Err("keys may not have empty segments or start or end with `/`"),
            "." | ".." => return Err("keys may not have `.` or `..` segments"),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a link's lifetime: more than zero, at most 7 days.
pub fn check_link_lifetime(uri: &BlobUri, expires_in: Duration) -> Result<(), BlobError> {
    if expires_in.is_zero() || expires_in > MAX_LINK_LIFETIME {
        return Err(BlobError::Invalid(format!(
            "link lifetime of {}s for `{uri}` is outside 1s to 7 days",
            expires_in.as_secs()
        )));
    }
    Ok(())
}

impl fmt::Display for BlobUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// S3's bucket naming rules: 3–63 characters of lowercase letters, digits,
/// dots and hyphens, starting and ending with a letter or digit. Among other
/// things this keeps bucket names from ever being `.`, `..` or hidden.
fn check_bucket(bucket: &str) -> Result<(), String> {
    let ok_len = (3..=63).contains(&bucket.len());
    let ok_chars = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let ok_ends = bucket
        .bytes()
        .next()
        .zip(bucket.bytes().last())
        .is_some_and(|(first, last)| first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric());
    if ok_len && ok_chars && ok_ends && !bucket.contains("..") {
        Ok(())
    } else {
        Err(format!(
            "`{bucket}` is not a valid bucket name (3-63 lowercase letters, digits, dots or hyphens)"
        ))
    }
}

/// What a store knows of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub uri: BlobUri,
    pub size: u64,
    pub content_type: Option<String>,
    pub etag: Option<String>,
}

/// The expected ways a blob operation fails; each message names the URI.
/// These go back to the processor as values, never as traps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("denied: {0}")]
    Denied(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// How a new object is written.
#[derive(Debug, Clone, Copy)]
pub struct CreateOptions<'a> {
    pub content_type: Option<&'a str>,
    /// Whether an existing object at the URI may be replaced. Without it,
    /// `finish` makes the object only if none is there (S3's
    /// `If-None-Match: *`; a rename that never replaces, locally), and
    /// an existing one is `denied` unless `owner` wrote it.
    pub overwrite: bool,
    /// Who writes: the message (`QUEUE/MESSAGE_ID`), recorded with the
    /// object. A redelivered message finds its own earlier output and
    /// finishes on it, instead of being refused its own object.
    pub owner: &'a str,
    /// The host memory the message may hold in buffers.
    pub budget: &'a Budget,
}

/// The host memory one message may hold in blob buffers (S3 parts being
/// filled or uploaded, read-ahead). Buffers are reserved before they are
/// filled and released when dropped; a reservation the budget cannot cover
/// is refused at once, never waited for, since the processor holding the
/// rest may be the one waiting.
#[derive(Debug, Clone)]
pub struct Budget {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    /// Read-ahead may hold at most half of the budget, and parts being
    /// uploaded at most half, so that neither starves the other.
    reading: std::sync::Arc<tokio::sync::Semaphore>,
    uploading: std::sync::Arc<tokio::sync::Semaphore>,
    total: u64,
    /// Told whenever a reservation is dropped, for those waiting for room.
    freed: std::sync::Arc<tokio::sync::Notify>,
}

/// Budget permits are counted in KiB, so `u32` permits cover 4 TiB.
const BUDGET_UNIT: u64 = 1024;

/// What one message may hold by default: 64 MiB.
pub const DEFAULT_BUDGET: u64 = 64 << 20;

impl Budget {
    pub fn new(bytes: u64) -> Self {
        let units = (bytes / BUDGET_UNIT).min(u64::from(u32::MAX >> 3));
        Budget {
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(units as usize)),
            reading: std::sync::Arc::new(tokio::sync::Semaphore::new(units as usize / 2)),
            uploading: std::sync::Arc::new(tokio::sync::Semaphore::new(units as usize / 2)),
            total: units * BUDGET_UNIT,
            freed: Default::default(),
        }
    }

    /// Told whenever a reservation is given back: those waiting for room
    /// try again then.
    pub fn freed(&self) -> &tokio::sync::Notify {
        &self.freed
    }

    /// The budget in bytes.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// What is reserved now, in bytes.
    pub fn in_use(&self) -> u64 {
        self.total - self.permits.available_permits() as u64 * BUDGET_UNIT
    }

    /// Reserves `bytes` of read-ahead, within the half of the budget
    /// reading may hold; refused when there is no room (read-ahead is never
    /// needed, only faster, so callers go on without it).
    pub fn reserve_for_reading(&self, bytes: u64, what: &str) -> Result<Reservation, BlobError> {
        self.reserve_within(&self.reading, bytes, what)
    }

    /// Reserves `bytes` for a part being uploaded while the writer goes on,
    /// within the half of the budget uploads may hold; refused when there
    /// is no room (the writer then waits for a part to finish).
    pub fn reserve_for_upload(&self, bytes: u64, what: &str) -> Result<Reservation, BlobError> {
        self.reserve_within(&self.uploading, bytes, what)
    }

    fn reserve_within(
        &self,
        share: &std::sync::Arc<tokio::sync::Semaphore>,
        bytes: u64,
        what: &str,
    ) -> Result<Reservation, BlobError> {
        let units = u32::try_from(bytes.div_ceil(BUDGET_UNIT)).unwrap_or(u32::MAX);
        let share = share
            .clone()
            .try_acquire_many_owned(units)
            .map_err(|_| self.full(what))?;
        let mut held = self.reserve(bytes, what)?;
        held.share = Some(share);
        Ok(held)
    }

    fn full(&self, what: &str) -> BlobError {
        BlobError::Denied(format!(
            "{what}: the message's buffer budget of {} is in use ({} held); finish or drop a reader or writer first",
            crate::runtime::limits::Bytes(self.total),
            crate::runtime::limits::Bytes(self.in_use())
        ))
    }

    /// Reserves `bytes` for `what`, or refuses with an error naming the
    /// budget.
    pub fn reserve(&self, bytes: u64, what: &str) -> Result<Reservation, BlobError> {
        let units = u32::try_from(bytes.div_ceil(BUDGET_UNIT)).unwrap_or(u32::MAX);
        match self.permits.clone().try_acquire_many_owned(units) {
            Ok(permit) => Ok(Reservation {
                whole: Some(permit),
                share: None,
                freed: self.freed.clone(),
            }),
            Err(_) => Err(BlobError::Denied(format!(
                "{what}: the message's buffer budget of {} is in use ({} held); finish or drop a reader or writer first",
                crate::runtime::limits::Bytes(self.total),
                crate::runtime::limits::Bytes(self.in_use())
            ))),
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(DEFAULT_BUDGET)
    }
}

/// Budget held until dropped (with its share of read-ahead, for a read).
#[derive(Debug)]
pub struct Reservation {
    whole: Option<tokio::sync::OwnedSemaphorePermit>,
    share: Option<tokio::sync::OwnedSemaphorePermit>,
    freed: std::sync::Arc<tokio::sync::Notify>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // The room first, then the news.
        drop(self.share.take());
        drop(self.whole.take());
        self.freed.notify_waiters();
    }
}

/// An object store.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Describes an object without reading it.
    async fn stat(&self, uri: &BlobUri) -> Result<ObjectInfo, BlobError>;
    /// Opens an object for reading from its start.
    async fn open(&self, uri: &BlobUri, budget: &Budget) -> Result<Box<dyn BlobReader>, BlobError>;
    /// Starts a new object; nothing is visible until the writer finishes.
    async fn create(
        &self,
        uri: &BlobUri,
        options: CreateOptions<'_>,
    ) -> Result<Box<dyn BlobWriter>, BlobError>;
    /// A link that downloads the object with a plain GET until it expires.
    async fn presign_get(&self, uri: &BlobUri, expires_in: Duration) -> Result<String, BlobError>;
    /// Deletes the object; one already gone is no error, as on S3. Only
    /// the host calls it (processors have no delete): for the payloads of
    /// large messages, once their message is done.
    async fn delete(&self, uri: &BlobUri) -> Result<(), BlobError>;
    /// Waits for the clean-up the store started on its own (S3: aborts of
    /// uploads whose writer was dropped unfinished); the host calls it as
    /// it stops.
    async fn settle(&self) {}
}

/// A stream of one object's bytes.
#[async_trait]
pub trait BlobReader: Send + Sync {
    /// What the store said of the object when it was opened.
    fn info(&self) -> &ObjectInfo;
    /// Up to `max` bytes; empty at the end of the object.
    async fn read(&mut self, max: usize) -> Result<Vec<u8>, BlobError>;
    /// The CRC-32 of the whole object the store keeps for this version,
    /// with the size it covers; `None` when it keeps none.
    async fn checksum(&self) -> Result<Option<Checksum>, BlobError> {
        Ok(None)
    }
}

/// A whole object's CRC-32, as a store keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checksum {
    pub crc32: u32,
    pub size: u64,
}

/// A new object being written. Dropping it unfinished discards it.
#[async_trait]
pub trait BlobWriter: Send + Sync {
    async fn write(&mut self, chunk: Vec<u8>) -> Result<(), BlobError>;
    /// Appends `length` bytes of `source` (the version its ETag names) from
    /// byte `offset` on, copied inside the store; `Ok(false)` when this
    /// store cannot, and then nothing was appended. After an error the
    /// writer must be dropped.
    async fn copy_in(
        &mut self,
        _source: &ObjectInfo,
        _offset: u64,
        _length: u64,
    ) -> Result<bool, BlobError> {
        Ok(false)
    }
    /// Makes the object visible (see [`CreateOptions`] for what happens
    /// when one is already there).
    async fn finish(self: Box<Self>) -> Result<ObjectInfo, BlobError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_into_bucket_and_key() {
        let uri = BlobUri::parse("s3://docs/a/b.txt").unwrap();
        assert_eq!((uri.bucket(), uri.key()), ("docs", "a/b.txt"));
        assert_eq!(uri.to_string(), "s3://docs/a/b.txt");
    }

    #[test]
    fn malformed_uris_are_invalid_and_named() {
        for bad in [
            "http://docs/a",
            "s3://docs",
            "s3://docs/",
            "s3://Docs/a",
            "s3://../a",
            "s3://ab/a",
            "s3://.hidden/a",
            "s3://a..b/c",
            "s3://docs/../secret",
            "s3://docs/a/../../b",
            "s3://docs//etc/passwd",
            "s3://docs/a/./b",
            "s3://docs/a\0b",
            "s3://docs/trailing/",
        ] {
            match BlobUri::parse(bad) {
                Err(BlobError::Invalid(msg)) => {
                    assert!(msg.contains(&*crate::text::escape(bad)), "{msg}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5000))]

        /// Whatever the text, a URI that parses has a safe key and prints
        /// back as itself; one that does not is refused with an error that
        /// holds no control character.
        #[test]
        fn parsed_uris_are_safe_and_round_trip(text in "s3://[a-z0-9.-]{0,8}(/[a-z.\\x00\n\x1b]{0,4}){0,4}/?") {
            match BlobUri::parse(&text) {
                Ok(uri) => {
                    proptest::prop_assert_eq!(uri.to_string(), text.clone());
                    for segment in uri.key().split('/') {
                        proptest::prop_assert!(!matches!(segment, "" | "." | ".."));
                    }
                    proptest::prop_assert!(!uri.key().contains(char::is_control));
                }
                Err(err) => proptest::prop_assert!(!err.to_string().contains(char::is_control)),
            }
        }
    }
}
