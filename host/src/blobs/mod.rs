//! Object storage behind one small trait: objects addressed `s3://bucket/key`,
//! read and written as streams, with time-limited download links.

mod local;
mod s3;
pub mod sign;

pub use local::LocalBlobs;
pub use s3::S3Blobs;

use async_trait::async_trait;
use std::fmt;
use std::time::Duration;

/// The longest a download link may live: 7 days, as S3 allows.
pub const MAX_LINK_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// An object address, `s3://bucket/key`, checked for shape: a valid bucket
/// name and a non-empty key. Whether a key is safe for a given store is the
/// store's to decide.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobUri {
    bucket: String,
    key: String,
}

impl BlobUri {
    pub fn parse(uri: &str) -> Result<Self, BlobError> {
        let rest = uri
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

    /// Refuses keys with empty, `.` or `..` segments (which covers absolute
    /// keys and `//`) and NUL bytes: a directory store would resolve them
    /// out of place, and an HTTP client may normalise them into another
    /// bucket's path. Every store refuses the same keys.
    pub fn check_segments(&self) -> Result<(), BlobError> {
        let unsafe_key = |why: &str| BlobError::Invalid(format!("`{self}`: {why}"));
        if self.key.contains('\0') {
            return Err(unsafe_key("keys may not contain NUL"));
        }
        for segment in self.key.split('/') {
            match segment {
                "" => {
                    return Err(unsafe_key(
                        "keys may not have empty segments or start with `/`",
                    ));
                }
                "." | ".." => return Err(unsafe_key("keys may not have `.` or `..` segments")),
                _ => {}
            }
        }
        Ok(())
    }
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

/// An object store.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Describes an object without reading it.
    async fn stat(&self, uri: &BlobUri) -> Result<ObjectInfo, BlobError>;
    /// Opens an object for reading from its start.
    async fn open(&self, uri: &BlobUri) -> Result<Box<dyn BlobReader>, BlobError>;
    /// Starts a new object; nothing is visible until the writer finishes.
    async fn create(
        &self,
        uri: &BlobUri,
        content_type: Option<&str>,
    ) -> Result<Box<dyn BlobWriter>, BlobError>;
    /// A link that downloads the object with a plain GET until it expires.
    async fn presign_get(&self, uri: &BlobUri, expires_in: Duration) -> Result<String, BlobError>;
}

/// A stream of one object's bytes.
#[async_trait]
pub trait BlobReader: Send + Sync {
    /// Up to `max` bytes; empty at the end of the object.
    async fn read(&mut self, max: usize) -> Result<Vec<u8>, BlobError>;
}

/// A new object being written. Dropping it unfinished discards it.
#[async_trait]
pub trait BlobWriter: Send + Sync {
    async fn write(&mut self, chunk: Vec<u8>) -> Result<(), BlobError>;
    /// Makes the object visible, replacing any object at the same URI.
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
        ] {
            match BlobUri::parse(bad) {
                Err(BlobError::Invalid(msg)) => assert!(msg.contains(bad), "{msg}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
