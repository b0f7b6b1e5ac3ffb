//! Records in a SQLite database in the data directory.

use super::{PutOptions, Records, RecordsError, check, taken};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Records in one SQLite file, safe to share between processes (WAL mode,
/// busy timeout).
#[derive(Clone)]
pub struct SqliteRecords {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteRecords {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let conn = crate::sqlite::open_shared(path, Duration::from_secs(10))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS records (
                tbl TEXT NOT NULL,
                key TEXT NOT NULL,
                value TEXT NOT NULL,
                updated_ms INTEGER NOT NULL,
                owner TEXT,
                PRIMARY KEY (tbl, key)
            ) WITHOUT ROWID;",
        )
        .with_context(|| format!("creating the records table in {}", path.display()))?;
        // Records made before writers were recorded have no owner: only
        // their own value, or a writer allowed to replace, may go over them.
        let has_owner: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM pragma_table_info('records') WHERE name = 'owner')",
                [],
                |row| row.get(0),
            )
            .with_context(|| format!("reading the records table in {}", path.display()))?;
        if !has_owner {
            match conn.execute_batch("ALTER TABLE records ADD COLUMN owner TEXT") {
                Ok(()) => {}
                // Another process sharing the data directory upgraded it
                // first.
                Err(err) if err.to_string().contains("duplicate column name") => {}
                Err(err) => {
                    return Err(err).with_context(|| {
                        format!("upgrading the records table in {}", path.display())
                    });
                }
            }
        }
        Ok(SqliteRecords {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with_conn<T: Send + 'static>(
        &self,
        what: String,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, RecordsError> {
        let conn = self.conn.clone();
        let run = move || {
            let conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&conn)
        };
        match tokio::task::spawn_blocking(run).await {
            Ok(Ok(value)) => Ok(value),
            // A value the database refuses (too big, the wrong type) stays
            // refused; a busy, locked or full database passes.
            Ok(Err(err)) if crate::sqlite::is_permanent(&err) => {
                Err(RecordsError::Invalid(format!("{what}: {err}")))
            }
            Ok(Err(err)) => Err(RecordsError::Unavailable(format!("{what}: {err}"))),
            Err(join) => Err(RecordsError::Unavailable(format!("{what}: {join}"))),
        }
    }
}

#[async_trait]
impl Records for SqliteRecords {
    async fn put(
        &self,
        table: &str,
        key: &str,
        value: &str,
        options: PutOptions<'_>,
    ) -> Result<(), RecordsError> {
        check(table, key, Some(value))?;
        let (table, key, value) = (table.to_string(), key.to_string(), value.to_string());
        let (owner, overwrite) = (options.owner.to_string(), options.overwrite);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        let what = format!("writing `{}` to table `{table}`", crate::text::escape(&key));
        let (t, k) = (table.clone(), key.clone());
        let written = self
            .with_conn(what, move |conn| {
                conn.execute(
                    "INSERT INTO records (tbl, key, value, updated_ms, owner) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (tbl, key) DO UPDATE
                     SET value = excluded.value, updated_ms = excluded.updated_ms, owner = excluded.owner
                     WHERE ?6 OR records.owner IS excluded.owner OR records.value = excluded.value",
                    params![t, k, value, now_ms, owner, overwrite],
                )
            })
            .await?;
        if written == 0 {
            return Err(taken(&table, &key));
        }
        Ok(())
    }

    async fn get(&self, table: &str, key: &str) -> Result<Option<String>, RecordsError> {
        check(table, key, None)?;
        let (table, key) = (table.to_string(), key.to_string());
        self.with_conn(
            format!("reading `{key}` from table `{table}`"),
            move |conn| {
                conn.query_row(
                    "SELECT value FROM records WHERE tbl = ?1 AND key = ?2",
                    params![table, key],
                    |row| row.get(0),
                )
                .optional()
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M1: PutOptions = PutOptions {
        owner: "q/m1",
        overwrite: false,
    };
    const M2: PutOptions = PutOptions {
        owner: "q/m2",
        overwrite: false,
    };

    #[tokio::test]
    async fn put_replaces_and_get_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let records = SqliteRecords::open(&dir.path().join("records.db")).unwrap();
        assert_eq!(records.get("archives", "j-1").await.unwrap(), None);
        records.put("archives", "j-1", "first", M1).await.unwrap();
        records.put("archives", "j-1", "second", M1).await.unwrap();
        records.put("other", "j-1", "elsewhere", M1).await.unwrap();
        assert_eq!(
            records.get("archives", "j-1").await.unwrap().as_deref(),
            Some("second")
        );

        let reopened = SqliteRecords::open(&dir.path().join("records.db")).unwrap();
        assert_eq!(
            reopened.get("other", "j-1").await.unwrap().as_deref(),
            Some("elsewhere")
        );
    }

    #[tokio::test]
    async fn bad_names_and_oversized_values_are_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let records = SqliteRecords::open(&dir.path().join("records.db")).unwrap();
        let big = "x".repeat(super::super::MAX_VALUE_LEN + 1);
        for (table, key, value) in [
            ("", "k", "v"),
            ("bad table", "k", "v"),
            ("t", "", "v"),
            ("t", "line\nbreak", "v"),
            ("t", "k", big.as_str()),
        ] {
            assert!(
                matches!(
                    records.put(table, key, value, M1).await,
                    Err(RecordsError::Invalid(_))
                ),
                "{table:?} {key:?}"
            );
        }
    }

    /// A job once replaced another job's result record: the job id, and so
    /// the key, is the sender's to choose.
    #[tokio::test]
    async fn another_writers_record_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let records = SqliteRecords::open(&dir.path().join("records.db")).unwrap();
        records.put("archives", "j", "victim", M1).await.unwrap();
        let err = records
            .put("archives", "j", "attacker", M2)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, RecordsError::Denied(m) if m.contains("`j` in table `archives`")),
            "{err:?}"
        );
        // The same value from another writer changes nothing, so it stands.
        records.put("archives", "j", "victim", M2).await.unwrap();
        let granted = PutOptions {
            overwrite: true,
            ..M2
        };
        records
            .put("archives", "j", "replaced", granted)
            .await
            .unwrap();
        assert_eq!(
            records.get("archives", "j").await.unwrap().as_deref(),
            Some("replaced")
        );
    }
}
