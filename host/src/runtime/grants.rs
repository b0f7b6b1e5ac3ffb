//! What a plugin may touch: blob URI prefixes it may read and write, and the
//! records tables it may use. Checked at the boundary, in the host side of
//! each interface; a denial is an error value naming the URI or table.

use crate::blobs::{BlobError, BlobUri};

/// A plugin's capabilities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    /// URI prefixes the plugin may stat, open and sign links for.
    pub read: Vec<String>,
    /// URI prefixes the plugin may create objects under.
    pub write: Vec<String>,
    /// Records tables the plugin may use; `None` allows every table.
    pub tables: Option<Vec<String>>,
}

/// Without a manifest a plugin may use every bucket and table the host's
/// backends reach; a manifest narrows that.
impl Default for Grants {
    fn default() -> Self {
        Grants {
            read: vec!["s3://".into()],
            write: vec!["s3://".into()],
            tables: None,
        }
    }
}

impl Grants {
    /// Checks and normalises prefixes: each is an `s3://` URI, and a bare
    /// `s3://bucket` means the whole bucket (`s3://bucket/`), never other
    /// buckets whose names start the same.
    pub fn new(
        read: Vec<String>,
        write: Vec<String>,
        tables: Option<Vec<String>>,
    ) -> anyhow::Result<Self> {
        let normalise = |prefixes: Vec<String>, what: &str| -> anyhow::Result<Vec<String>> {
            prefixes
                .into_iter()
                .map(|prefix| {
                    let Some(rest) = prefix.strip_prefix("s3://") else {
                        anyhow::bail!("{what} prefix `{prefix}` is not an s3:// URI");
                    };
                    Ok(if rest.is_empty() || rest.contains('/') {
                        prefix
                    } else {
                        format!("{prefix}/")
                    })
                })
                .collect()
        };
        if let Some(tables) = &tables {
            for table in tables {
                crate::records::check(table, "k", None)
                    .map_err(|err| anyhow::anyhow!("records table: {err}"))?;
            }
        }
        Ok(Grants {
            read: normalise(read, "blobs read")?,
            write: normalise(write, "blobs write")?,
            tables,
        })
    }

    pub fn check_read(&self, uri: &BlobUri) -> Result<(), BlobError> {
        check(&self.read, uri, "read")
    }

    pub fn check_write(&self, uri: &BlobUri) -> Result<(), BlobError> {
        check(&self.write, uri, "write")
    }

    pub fn check_table(&self, table: &str) -> Result<(), String> {
        match &self.tables {
            Some(tables) if !tables.iter().any(|t| t == table) => Err(format!(
                "denied: records table `{table}` is not granted to this processor (granted: {})",
                tables.join(", ")
            )),
            _ => Ok(()),
        }
    }
}

fn check(prefixes: &[String], uri: &BlobUri, what: &str) -> Result<(), BlobError> {
    let text = uri.to_string();
    if prefixes
        .iter()
        .any(|prefix| text.starts_with(prefix.as_str()))
    {
        Ok(())
    } else if prefixes.is_empty() {
        Err(BlobError::Denied(format!(
            "`{uri}`: this processor may not {what} any object"
        )))
    } else {
        Err(BlobError::Denied(format!(
            "`{uri}`: this processor may {what} only under {}",
            prefixes.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> BlobUri {
        BlobUri::parse(s).unwrap()
    }

    #[test]
    fn prefixes_grant_what_they_cover_and_nothing_else() {
        let grants = Grants::new(
            vec!["s3://docs".into()],
            vec!["s3://archives/jobs/".into()],
            Some(vec!["archives".into()]),
        )
        .unwrap();
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

    #[test]
    fn no_prefix_denies_everything_and_the_default_allows_everything() {
        let none = Grants::new(Vec::new(), Vec::new(), Some(Vec::new())).unwrap();
        assert!(none.check_read(&uri("s3://docs/a")).is_err());
        assert!(none.check_table("t").is_err());
        let all = Grants::default();
        assert!(all.check_write(&uri("s3://any/thing")).is_ok());
        assert!(all.check_table("t").is_ok());
    }

    #[test]
    fn bad_prefixes_are_refused() {
        assert!(Grants::new(vec!["/etc".into()], Vec::new(), None).is_err());
        assert!(Grants::new(Vec::new(), Vec::new(), Some(vec!["bad table".into()])).is_err());
    }
}
