//! The embedded queue: every queue of a data directory in one SQLite
//! database (WAL), with SQS's semantics. Several processes may share the
//! directory: each change is one immediate transaction, and a receiver
//! waiting on a long poll is woken through a Unix datagram as soon as any
//! process makes a message visible.
//!
//! - `rows`: the tables, and reading and writing their rows.
//! - `admin`: creating, changing, listing, purging, peeking at and
//!   redriving queues.
//! - `queue`: one queue, behind the [`Queue`] trait.
//! - `receive`: how a receive picks its messages.
//! - `wake`: waking long polls across processes.

mod admin;
mod queue;
mod receive;
mod rows;
mod wake;

pub use queue::LocalQueue;

use super::{
    BatchFailure, DEDUP_WINDOW, DEFAULT_MAX_RECEIVE_COUNT, DEFAULT_VISIBILITY, LetterAction,
    LetterFilter, LetterPage, MAX_BATCH, MAX_VISIBILITY, MAX_WAIT, Moved, Outgoing, Peeked, Queue,
    QueueAdmin, QueueChanges, QueueError, QueueOptions, QueueStats, Received, Redrive,
    SOURCE_ATTRIBUTE, check_name, check_outgoing,
};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use rows::SCHEMA;
use wake::Wake;

/// The local queues of one data directory.
#[derive(Clone)]
pub struct LocalQueues {
    db: Arc<Mutex<Connection>>,
    wake: Arc<Wake>,
}

impl LocalQueues {
    /// Opens (creating if needed) `DATA_DIR/queues.db`.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        crate::secret::private_dir(data_dir)
            .with_context(|| format!("opening data directory {}", data_dir.display()))?;
        let path = data_dir.join("queues.db");
        // Every commit survives a crash of the process (WAL, synchronous
        // NORMAL). Sends are also synced to disk before they return (see
        // `send_batch`), so they survive power loss; a receive or delete
        // lost that way only means a message is delivered again.
        let conn = crate::sqlite::open_shared(&path, Duration::from_secs(30))?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("creating the queue tables in {}", path.display()))?;
        let wake = Wake::start(&data_dir.join("wake"))
            .with_context(|| format!("setting up queue wake-ups in {}", data_dir.display()))?;
        Ok(LocalQueues {
            db: Arc::new(Mutex::new(conn)),
            wake,
        })
    }

    async fn with_db<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = db.lock().unwrap_or_else(|p| p.into_inner());
            work(&mut conn)
        })
        .await
        .map_err(|err| QueueError::Unavailable(format!("queue database task: {err}")))?
    }
}

#[cfg(test)]
mod tests;
