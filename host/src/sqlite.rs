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
