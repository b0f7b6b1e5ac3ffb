//! Opening the SQLite databases several wasq processes share.

use rusqlite::{Connection, ErrorCode};
use std::path::Path;
use std::time::{Duration, Instant};

/// Opens `path` in WAL mode with a busy timeout. Switching a new file to
/// WAL while another process does the same can fail with "database is
/// locked" without waiting on the busy timeout, so that step is retried
/// for as long as the timeout.
pub fn open_shared(path: &Path, busy: Duration) -> anyhow::Result<Connection> {
    use anyhow::Context as _;
    // Records hold links, which are bearer tokens: owner-only, whatever
    // the umask.
    crate::secret::private_file(path)
        .with_context(|| format!("creating database {}", path.display()))?;
    let conn =
        Connection::open(path).with_context(|| format!("opening database {}", path.display()))?;
    conn.busy_timeout(busy)?;
    let started = Instant::now();
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Ok(()) => break,
            Err(rusqlite::Error::SqliteFailure(err, _))
                if err.code == ErrorCode::DatabaseBusy && started.elapsed() < busy =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("switching database {} to WAL mode", path.display()));
            }
        }
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// Whether an SQLite error is the request's own fault, which no retry
/// mends (a value too big, a broken constraint, a value of the wrong
/// type), rather than the database's (busy, locked, a full disk, an I/O
/// error), which passes.
pub fn is_permanent(err: &rusqlite::Error) -> bool {
    use rusqlite::Error;
    match err {
        Error::SqliteFailure(failure, _) => matches!(
            failure.code,
            ErrorCode::TooBig | ErrorCode::ConstraintViolation | ErrorCode::TypeMismatch
        ),
        Error::ToSqlConversionFailure(_)
        | Error::FromSqlConversionFailure(..)
        | Error::IntegralValueOutOfRange(..)
        | Error::Utf8Error(..)
        | Error::NulError(_)
        | Error::InvalidColumnType(..) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_big_and_constraints_are_permanent_and_a_lock_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_shared(&dir.path().join("t.db"), Duration::from_millis(50)).unwrap();
        conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
            .unwrap();
        conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, 1000)
            .unwrap();
        let too_big = conn
            .execute("INSERT INTO t VALUES ('a', ?1)", ["x".repeat(2000)])
            .unwrap_err();
        assert!(is_permanent(&too_big), "{too_big}");
        let constraint = conn
            .execute("INSERT INTO t VALUES ('a', NULL)", [])
            .unwrap_err();
        assert!(is_permanent(&constraint), "{constraint}");

        // Another connection holds the write lock: busy, which passes.
        let other = Connection::open(dir.path().join("t.db")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let busy = conn
            .execute("INSERT INTO t VALUES ('b', 'v')", [])
            .unwrap_err();
        assert!(!is_permanent(&busy), "{busy}");
    }
}
