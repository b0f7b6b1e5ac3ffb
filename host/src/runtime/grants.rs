//! What a plugin may touch: blob URI prefixes it may read and write, and the
//! records tables it may use. Checked at the boundary, in the host side of
//! each interface; a denial is an error value naming the URI or table.
//!
//! Least privilege is the default: a plugin with no grants touches nothing.
//! A prefix matches whole key segments: `s3://docs/pub` covers the object
//! `docs/pub` and everything under `docs/pub/`, never `docs/public.txt`;
//! `s3://docs` (or `s3://docs/`) covers the bucket; `s3://` covers every
//! bucket the host reaches, and is reported as wide access at start.

use crate::blobs::{BlobError, BlobUri};
use std::fmt;

/// One granted prefix, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prefix {
    /// `s3://`: every bucket.
    Everything,
    /// `s3://bucket`, `s3://bucket/` or `s3://bucket/a/b`: the bucket, or
    /// the key `a/b` and everything under `a/b/` (`key` empty for the whole
    /// bucket).
    Under { bucket: String, key: String },
}

impl Prefix {
    /// Parses a prefix as a manifest writes it. Its key segments follow the
    /// rules of object keys (no empty, `.` or `..` segments), so a prefix
    /// always means what it says.
    pub fn parse(text: &str) -> anyhow::Result<Prefix> {
        let Some(rest) = text.strip_prefix("s3://") else {
            anyhow::bail!("`{text}` is not an s3:// URI prefix");
        };
        if rest.is_empty() {
            return Ok(Prefix::Everything);
        }
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        let key = key.strip_suffix('/').unwrap_or(key);
        // The bucket and key are checked as an object URI would be.
        let probe = if key.is_empty() {
            format!("s3://{bucket}/x")
        } else {
            format!("s3://{bucket}/{key}")
        };
        BlobUri::parse(&probe).map_err(|err| anyhow::anyhow!("prefix `{text}`: {err}"))?;
        Ok(Prefix::Under {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }

    /// Whether this prefix reaches into `bucket` at all.
    pub fn reaches(&self, bucket: &str) -> bool {
        match self {
            Prefix::Everything => true,
            Prefix::Under { bucket: b, .. } => b == bucket,
        }
    }

    /// Whether this prefix covers `uri`, segment by segment.
    pub fn covers(&self, uri: &BlobUri) -> bool {
        match self {
            Prefix::Everything => true,
            Prefix::Under { bucket, key } => {
                bucket == uri.bucket()
                    && (key.is_empty()
                        || uri.key() == key
                        || uri
                            .key()
                            .strip_prefix(key.as_str())
                            .is_some_and(|rest| rest.starts_with('/')))
            }
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Prefix::Everything => write!(f, "s3://"),
            Prefix::Under { bucket, key } if key.is_empty() => write!(f, "s3://{bucket}/"),
            Prefix::Under { bucket, key } => write!(f, "s3://{bucket}/{key}/"),
        }
    }
}

/// Which records tables a plugin may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tables {
    /// `tables = ["*"]`: every table.
    Every,
    Only(Vec<String>),
}

/// A plugin's capabilities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    /// Prefixes the plugin may stat, open and sign links for.
    pub read: Vec<Prefix>,
    /// Prefixes the plugin may create objects under.
    pub write: Vec<Prefix>,
    pub tables: Tables,
    /// Whether an object that already exists may be replaced. Off by
    /// default: a job cannot clobber another job's output (or its inputs).
    pub overwrite: bool,
    /// Whether a record another message wrote may be replaced. Off by
    /// default, for the same reason.
    pub overwrite_records: bool,
}

/// No grants: the plugin may touch nothing.
impl Default for Grants {
    fn default() -> Self {
        Grants {
            read: Vec::new(),
            write: Vec::new(),
            tables: Tables::Only(Vec::new()),
            overwrite: false,
            overwrite_records: false,
        }
    }
}

impl Grants {
    /// Checks and parses what a manifest says.
    pub fn new(
        read: &[String],
        write: &[String],
        tables: &[String],
        overwrite: bool,
    ) -> anyhow::Result<Self> {
        let parse = |prefixes: &[String], what: &str| -> anyhow::Result<Vec<Prefix>> {
            prefixes
                .iter()
                .map(|p| Prefix::parse(p).map_err(|err| anyhow::anyhow!("blobs {what}: {err}")))
                .collect()
        };
        let tables = if tables.iter().any(|t| t == "*") {
            anyhow::ensure!(
                tables.len() == 1,
                "records tables: `*` grants every table and stands alone"
            );
            Tables::Every
        } else {
            for table in tables {
                crate::records::check(table, "k", None)
                    .map_err(|err| anyhow::anyhow!("records table: {err}"))?;
            }
            Tables::Only(tables.to_vec())
        };
        Ok(Grants {
            read: parse(read, "read")?,
            write: parse(write, "write")?,
            tables,
            overwrite,
            overwrite_records: false,
        })
    }

    /// Every bucket and table the host reaches: the explicit, wide choice.
    pub fn everything() -> Self {
        Grants {
            read: vec![Prefix::Everything],
            write: vec![Prefix::Everything],
            tables: Tables::Every,
            overwrite: false,
            overwrite_records: false,
        }
    }

    /// Whether nothing at all is granted.
    pub fn is_empty(&self) -> bool {
        self.read.is_empty() && self.write.is_empty() && self.tables == Tables::Only(Vec::new())
    }

    /// The grants that reach every bucket or every table, for the warning
    /// `wasq run` gives at start.
    pub fn wide(&self) -> Vec<&'static str> {
        let mut wide = Vec::new();
        if self.read.contains(&Prefix::Everything) {
            wide.push("read = [\"s3://\"] (every object)");
        }
        if self.write.contains(&Prefix::Everything) {
            wide.push("write = [\"s3://\"] (every object)");
        }
        if self.tables == Tables::Every {
            wide.push("tables = [\"*\"] (every records table)");
        }
        wide
    }

    pub fn check_read(&self, uri: &BlobUri) -> Result<(), BlobError> {
        check(&self.read, uri, "read")
    }

    pub fn check_write(&self, uri: &BlobUri) -> Result<(), BlobError> {
        check(&self.write, uri, "write")
    }

    pub fn check_table(&self, table: &str) -> Result<(), String> {
        match &self.tables {
            Tables::Every => Ok(()),
            Tables::Only(tables) if tables.iter().any(|t| t == table) => Ok(()),
            Tables::Only(tables) if tables.is_empty() => Err(format!(
                "denied: records table `{table}`: this processor may use no records table"
            )),
            Tables::Only(tables) => Err(format!(
                "denied: records table `{table}` is not granted to this processor (granted: {})",
                tables.join(", ")
            )),
        }
    }
}

fn check(prefixes: &[Prefix], uri: &BlobUri, what: &str) -> Result<(), BlobError> {
    if prefixes.iter().any(|prefix| prefix.covers(uri)) {
        Ok(())
    } else if prefixes.is_empty() {
        Err(BlobError::Denied(format!(
            "`{uri}`: this processor may not {what} any object"
        )))
    } else {
        let list: Vec<String> = prefixes.iter().map(Prefix::to_string).collect();
        Err(BlobError::Denied(format!(
            "`{uri}`: this processor may {what} only under {}",
            list.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn uri(s: &str) -> BlobUri {
        BlobUri::parse(s).unwrap()
    }

    fn grants(read: &[&str], write: &[&str], tables: &[&str]) -> Grants {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Grants::new(&own(read), &own(write), &own(tables), false).unwrap()
    }

    #[test]
    fn prefixes_grant_what_they_cover_and_nothing_else() {
        let grants = grants(&["s3://docs"], &["s3://archives/jobs/"], &["archives"]);
        assert!(grants.check_read(&uri("s3://docs/a/b.txt")).is_ok());
        assert!(
            matches!(grants.check_read(&uri("s3://docs2/a.txt")), Err(BlobError::Denied(m)) if m.contains("s3://docs2/a.txt") && m.contains("s3://docs/"))
        );
        assert!(grants.check_write(&uri("s3://archives/jobs/j.zip")).is_ok());
        assert!(grants.check_write(&uri("s3://archives/other.zip")).is_err());
        assert!(grants.check_write(&uri("s3://docs/a.txt")).is_err());
        assert!(grants.check_table("archives").is_ok());
        assert!(
            grants
                .check_table("secrets")
                .unwrap_err()
                .contains("`secrets`")
        );
    }

    /// `s3://docs/pub` once let a processor read `docs/public-secret.txt`.
    #[test]
    fn a_prefix_without_a_slash_matches_whole_segments() {
        let grants = grants(&["s3://docs/pub"], &[], &[]);
        assert!(grants.check_read(&uri("s3://docs/pub")).is_ok());
        assert!(grants.check_read(&uri("s3://docs/pub/a.txt")).is_ok());
        assert!(
            grants
                .check_read(&uri("s3://docs/public-secret.txt"))
                .is_err()
        );
        assert!(grants.check_read(&uri("s3://docs/pub-x/a")).is_err());
        let slash = self::grants(&["s3://docs/pub/"], &[], &[]);
        assert!(slash.check_read(&uri("s3://docs/pub/a.txt")).is_ok());
        assert!(
            slash
                .check_read(&uri("s3://docs/public-secret.txt"))
                .is_err()
        );
    }

    #[test]
    fn no_grants_deny_everything_and_wide_ones_are_named() {
        let none = Grants::default();
        assert!(none.is_empty());
        assert!(none.check_read(&uri("s3://docs/a")).is_err());
        assert!(none.check_write(&uri("s3://docs/a")).is_err());
        assert!(none.check_table("t").is_err());
        assert!(none.wide().is_empty());
        let all = grants(&["s3://"], &["s3://"], &["*"]);
        assert!(all.check_write(&uri("s3://any/thing")).is_ok());
        assert!(all.check_table("t").is_ok());
        assert_eq!(all.wide().len(), 3);
        assert_eq!(all, Grants::everything());
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for bad in [
            "/etc",
            "s3://docs/../x",
            "s3://docs//x",
            "s3://Docs/",
            "http://docs/",
        ] {
            assert!(
                Grants::new(&[bad.to_string()], &[], &[], false).is_err(),
                "{bad}"
            );
        }
        assert!(Grants::new(&[], &[], &["bad table".into()], false).is_err());
        assert!(Grants::new(&[], &[], &["*".into(), "t".into()], false).is_err());
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-c]{1,3}",
            Just("pub".to_string()),
            Just("public".to_string())
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// A grant covers a key exactly when the grant's segments are the
        /// key's first segments.
        #[test]
        fn coverage_is_segment_prefix(
            grant in proptest::collection::vec(segment(), 0..3),
            key in proptest::collection::vec(segment(), 1..4),
            slash in any::<bool>(),
            bucket in prop_oneof![Just("docs"), Just("docs2")],
        ) {
            let text = format!("s3://docs/{}{}", grant.join("/"), if slash && !grant.is_empty() { "/" } else { "" });
            let prefix = Prefix::parse(&text).unwrap();
            let target = uri(&format!("s3://{bucket}/{}", key.join("/")));
            let expected = bucket == "docs" && key.len() >= grant.len() && key[..grant.len()] == grant[..];
            prop_assert_eq!(prefix.covers(&target), expected, "{} vs {}", text, target);
        }

        /// No prefix text, however odd, panics or grants outside its bucket.
        #[test]
        fn any_prefix_text_is_parsed_or_refused(text in "s3://[a-z./-]{0,12}", key in "[a-z]{1,4}(/[a-z]{1,4}){0,2}") {
            if let Ok(Prefix::Under { bucket, .. }) = Prefix::parse(&text) {
                let other = uri(&format!("s3://zz-{}/{key}", bucket.len()));
                prop_assert!(!Prefix::parse(&text).unwrap().covers(&other));
            }
        }
    }
}
