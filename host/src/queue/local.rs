//! The embedded queue: every queue of a data directory in one SQLite
//! database (WAL), with SQS's semantics. Several processes may share the
//! directory: each change is one immediate transaction, and a receiver
//! waiting on a long poll is woken through a Unix datagram as soon as any
//! process makes a message visible.

use super::{
    BatchFailure, DEDUP_WINDOW, MAX_BATCH, MAX_VISIBILITY, MAX_WAIT, Moved, Outgoing, Peeked,
    Queue, QueueAdmin, QueueError, QueueOptions, QueueStats, Received, Redrive, SOURCE_ATTRIBUTE,
    check_name, check_outgoing,
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

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    fifo INTEGER NOT NULL,
    visibility_ms INTEGER NOT NULL,
    dlq TEXT,
    max_receive_count INTEGER,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    attributes TEXT NOT NULL,
    group_id TEXT,
    dedup_id TEXT,
    sent_ms INTEGER NOT NULL,
    visible_ms INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT,
    source_queue TEXT
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, visible_ms, seq);
CREATE INDEX IF NOT EXISTS messages_group ON messages (queue, group_id, seq);
CREATE UNIQUE INDEX IF NOT EXISTS messages_receipt ON messages (receipt);
CREATE TABLE IF NOT EXISTS dedup (
    queue TEXT NOT NULL,
    dedup_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (queue, dedup_id)
) WITHOUT ROWID;
";

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

    /// Creates a queue, and its dead-letter queue if it names one that does
    /// not exist. As on SQS, creating a queue that exists with the same
    /// settings does nothing, and one that exists with other settings is
    /// refused: [`LocalQueues::set`] changes settings, never this.
    pub async fn create(&self, name: &str, options: QueueOptions) -> Result<(), QueueError> {
        let fifo = check_name(name)?;
        if let Some(redrive) = &options.redrive {
            if check_name(&redrive.dlq)? != fifo {
                return Err(QueueError::Invalid(format!(
                    "queue `{name}`: its dead-letter queue `{}` must be {} like it",
                    redrive.dlq,
                    if fifo { "FIFO" } else { "standard" }
                )));
            }
            if redrive.dlq == name {
                return Err(QueueError::Invalid(format!(
                    "queue `{name}` cannot be its own dead-letter queue"
                )));
            }
            if !(1..=1000).contains(&redrive.max_receive_count) {
                return Err(QueueError::Invalid(format!(
                    "queue `{name}`: max receive count must be 1-1000"
                )));
            }
        }
        if options.visibility_timeout > MAX_VISIBILITY {
            return Err(QueueError::Invalid(format!(
                "queue `{name}`: visibility timeout over 12 hours"
            )));
        }
        let name = name.to_string();
        self.with_db(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            if let Some(existing) = settings_of(&tx, &name)? {
                let wanted = (options.visibility_timeout, options.redrive.clone());
                if existing != wanted {
                    return Err(QueueError::Invalid(format!(
                        "queue `{name}` already exists with other settings ({}; asked for {}): `wasq queue set` changes a queue's settings",
                        describe(&existing),
                        describe(&wanted)
                    )));
                }
                return Ok(());
            }
            if let Some(redrive) = &options.redrive {
                insert_queue(&tx, &redrive.dlq, fifo, options.visibility_timeout, None)?;
            }
            insert_queue(
                &tx,
                &name,
                fifo,
                options.visibility_timeout,
                options.redrive.as_ref(),
            )?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    /// Changes an existing queue's visibility timeout or the receive count
    /// of its redrive policy: the one way a queue's settings change.
    pub async fn set(
        &self,
        name: &str,
        visibility_timeout: Option<Duration>,
        max_receive_count: Option<u32>,
    ) -> Result<QueueStats, QueueError> {
        if visibility_timeout.is_some_and(|v| v > MAX_VISIBILITY) {
            return Err(QueueError::Invalid(format!(
                "queue `{name}`: visibility timeout over 12 hours"
            )));
        }
        if max_receive_count.is_some_and(|n| !(1..=1000).contains(&n)) {
            return Err(QueueError::Invalid(format!(
                "queue `{name}`: max receive count must be 1-1000"
            )));
        }
        let queue = self.queue(name).await?;
        let queue_name = queue.name.clone();
        self.with_db(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let (_, redrive) = settings_of(&tx, &queue_name)?
                .ok_or_else(|| QueueError::NoSuchQueue(queue_name.clone()))?;
            if let Some(visibility) = visibility_timeout {
                tx.execute(
                    "UPDATE queues SET visibility_ms = ?2 WHERE name = ?1",
                    params![queue_name, visibility.as_millis() as i64],
                )
                .map_err(db_err)?;
            }
            if let Some(count) = max_receive_count {
                if redrive.is_none() {
                    return Err(QueueError::Invalid(format!(
                        "queue `{queue_name}` has no dead-letter queue, so no receive count to set"
                    )));
                }
                tx.execute(
                    "UPDATE queues SET max_receive_count = ?2 WHERE name = ?1",
                    params![queue_name, count],
                )
                .map_err(db_err)?;
            }
            tx.commit().map_err(db_err)
        })
        .await?;
        queue.stats().await
    }

    /// Every queue's name, sorted.
    pub async fn list(&self) -> Result<Vec<String>, QueueError> {
        self.with_db(|conn| {
            let mut stmt = conn
                .prepare("SELECT name FROM queues ORDER BY name")
                .map_err(db_err)?;
            let names = stmt
                .query_map([], |row| row.get(0))
                .map_err(db_err)?
                .collect::<Result<Vec<String>, _>>()
                .map_err(db_err)?;
            Ok(names)
        })
        .await
    }

    /// A handle on an existing queue.
    pub async fn queue(&self, name: &str) -> Result<LocalQueue, QueueError> {
        check_name(name)?;
        let owned = name.to_string();
        let fifo = self
            .with_db(move |conn| {
                conn.query_row("SELECT fifo FROM queues WHERE name = ?1", [&owned], |row| {
                    row.get::<_, bool>(0)
                })
                .optional()
                .map_err(db_err)?
                .ok_or(QueueError::NoSuchQueue(owned))
            })
            .await?;
        Ok(LocalQueue {
            name: name.to_string(),
            fifo,
            queues: self.clone(),
        })
    }

    /// Deletes every message in a queue; returns how many.
    pub async fn purge(&self, name: &str) -> Result<u64, QueueError> {
        let queue = self.queue(name).await?;
        self.with_db(move |conn| {
            let n = conn
                .execute("DELETE FROM messages WHERE queue = ?1", [&queue.name])
                .map_err(db_err)?;
            Ok(n as u64)
        })
        .await
    }

    /// Up to `max` messages of a queue, oldest first, without receiving them.
    pub async fn peek(&self, name: &str, max: usize) -> Result<Vec<Peeked>, QueueError> {
        let queue = self.queue(name).await?;
        self.with_db(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT id, body, attributes, receive_count, sent_ms, source_queue
                     FROM messages WHERE queue = ?1 ORDER BY seq LIMIT ?2",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![queue.name, max as i64], |row| {
                    Ok(Peeked {
                        id: row.get(0)?,
                        body: row.get(1)?,
                        attributes: decode_attributes(&row.get::<_, String>(2)?),
                        receive_count: row.get(3)?,
                        sent_at_ms: row.get::<_, i64>(4)? as u64,
                        moved_by_queue: row.get::<_, Option<String>>(5)?.is_some(),
                        source_queue: row.get(5)?,
                    })
                })
                .map_err(db_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    /// Moves every message of dead-letter queue `dlq` back to the queue it
    /// came from (or to `to`), as new deliveries; returns how many moved.
    /// A message's source is where the queue's redrive put it from, or the
    /// `wasq-source-queue` attribute the dispatcher adds.
    pub async fn redrive(&self, dlq: &str, to: Option<&str>) -> Result<u64, QueueError> {
        let dlq = self.queue(dlq).await?;
        let to = match to {
            Some(name) => Some(self.queue(name).await?.name),
            None => None,
        };
        let moved = self
            .with_db(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err)?;
                let rows: Vec<(i64, Option<String>, String)> = {
                    let mut stmt = tx
                        .prepare("SELECT seq, source_queue, attributes FROM messages WHERE queue = ?1 ORDER BY seq")
                        .map_err(db_err)?;
                    stmt.query_map([&dlq.name], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                        .map_err(db_err)?
                        .collect::<Result<_, _>>()
                        .map_err(db_err)?
                };
                let now = now_ms();
                let mut moved = 0;
                for (seq, source, attributes) in rows {
                    let source = source.or_else(|| {
                        decode_attributes(&attributes)
                            .into_iter()
                            .find(|(name, _)| name == SOURCE_ATTRIBUTE)
                            .map(|(_, value)| value)
                    });
                    let Some(target) = to.clone().or(source) else {
                        return Err(QueueError::Invalid(format!(
                            "a message in `{}` names no source queue to return to: give one",
                            dlq.name
                        )));
                    };
                    let exists: bool = tx
                        .query_row("SELECT EXISTS (SELECT 1 FROM queues WHERE name = ?1)", [&target], |row| row.get(0))
                        .map_err(db_err)?;
                    if !exists {
                        return Err(QueueError::NoSuchQueue(target));
                    }
                    tx.execute(
                        "UPDATE messages SET queue = ?2, receive_count = 0, receipt = NULL, visible_ms = ?3, source_queue = NULL
                         WHERE seq = ?1",
                        params![seq, target, now],
                    )
                    .map_err(db_err)?;
                    moved += 1;
                }
                tx.commit().map_err(db_err)?;
                Ok(moved)
            })
            .await?;
        self.wake.all();
        Ok(moved)
    }
}

#[async_trait]
impl QueueAdmin for LocalQueues {
    async fn open(&self, name: &str) -> Result<Arc<dyn Queue>, QueueError> {
        Ok(Arc::new(self.queue(name).await?))
    }

    async fn create(&self, name: &str, options: QueueOptions) -> Result<String, QueueError> {
        LocalQueues::create(self, name, options).await?;
        Ok(format!("local://{name}"))
    }

    async fn set(
        &self,
        name: &str,
        visibility_timeout: Option<Duration>,
        max_receive_count: Option<u32>,
    ) -> Result<QueueStats, QueueError> {
        LocalQueues::set(self, name, visibility_timeout, max_receive_count).await
    }

    async fn list(&self) -> Result<Vec<String>, QueueError> {
        Ok(LocalQueues::list(self)
            .await?
            .into_iter()
            .map(|name| format!("local://{name}"))
            .collect())
    }

    async fn purge(&self, name: &str) -> Result<u64, QueueError> {
        LocalQueues::purge(self, name).await
    }

    async fn peek(&self, name: &str, max: usize) -> Result<Vec<Peeked>, QueueError> {
        LocalQueues::peek(self, name, max).await
    }

    async fn dead_letter_queue(&self, name: &str) -> Result<Option<String>, QueueError> {
        Ok(self
            .queue(name)
            .await?
            .stats()
            .await?
            .redrive
            .map(|r| r.dlq))
    }

    async fn redrive(&self, dlq: &str, to: &str) -> Result<Option<u64>, QueueError> {
        Ok(Some(LocalQueues::redrive(self, dlq, Some(to)).await?))
    }
}

/// A queue's visibility timeout and redrive policy, if it exists.
fn settings_of(
    tx: &rusqlite::Transaction<'_>,
    name: &str,
) -> Result<Option<(Duration, Option<Redrive>)>, QueueError> {
    tx.query_row(
        "SELECT visibility_ms, dlq, max_receive_count FROM queues WHERE name = ?1",
        [name],
        |row| {
            let visibility: i64 = row.get(0)?;
            let dlq: Option<String> = row.get(1)?;
            let count: Option<u32> = row.get(2)?;
            Ok((
                Duration::from_millis(visibility as u64),
                dlq.zip(count).map(|(dlq, max_receive_count)| Redrive {
                    dlq,
                    max_receive_count,
                }),
            ))
        },
    )
    .optional()
    .map_err(db_err)
}

fn describe((visibility, redrive): &(Duration, Option<Redrive>)) -> String {
    let visibility = humantime::format_duration(*visibility);
    match redrive {
        Some(r) => format!(
            "visibility timeout {visibility}, dead letters to `{}` after {} receives",
            r.dlq, r.max_receive_count
        ),
        None => format!("visibility timeout {visibility}, no dead-letter queue"),
    }
}

fn insert_queue(
    tx: &rusqlite::Transaction<'_>,
    name: &str,
    fifo: bool,
    visibility: Duration,
    redrive: Option<&Redrive>,
) -> Result<(), QueueError> {
    tx.execute(
        "INSERT INTO queues (name, fifo, visibility_ms, dlq, max_receive_count, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (name) DO NOTHING",
        params![
            name,
            fifo,
            visibility.as_millis() as i64,
            redrive.map(|r| r.dlq.as_str()),
            redrive.map(|r| r.max_receive_count),
            now_ms()
        ],
    )
    .map_err(db_err)?;
    Ok(())
}

/// A refused value is invalid for good; anything else about the database
/// (busy, locked, full) passes.
fn db_err(err: rusqlite::Error) -> QueueError {
    if crate::sqlite::is_permanent(&err) {
        QueueError::Invalid(format!("queue database: {err}"))
    } else {
        QueueError::Unavailable(format!("queue database: {err}"))
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

fn encode_attributes(attributes: &[(String, String)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = attributes
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

fn decode_attributes(text: &str) -> Vec<(String, String)> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
            .collect(),
        _ => Vec::new(),
    }
}

/// Inserts messages in one transaction.
fn insert_all(
    conn: &mut Connection,
    queue: &str,
    fifo: bool,
    messages: Vec<Outgoing>,
) -> Result<Vec<String>, QueueError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let now = now_ms();
    let mut ids = Vec::with_capacity(messages.len());
    for message in messages {
        ids.push(insert_message(&tx, queue, fifo, message, None, now)?);
    }
    tx.commit().map_err(db_err)?;
    Ok(ids)
}

/// Inserts one message, under `id` if given (a dead letter keeps its
/// message's id), or on a FIFO queue returns the id of the duplicate it
/// repeats within the deduplication window.
fn insert_message(
    tx: &rusqlite::Transaction<'_>,
    queue: &str,
    fifo: bool,
    message: Outgoing,
    id: Option<String>,
    now: i64,
) -> Result<String, QueueError> {
    let dedup_id = fifo.then(|| {
        message
            .dedup_id
            .clone()
            .unwrap_or_else(|| hex::encode(Sha256::digest(message.body.as_bytes())))
    });
    if let Some(dedup) = &dedup_id {
        tx.execute(
            "DELETE FROM dedup WHERE queue = ?1 AND expires_ms <= ?2",
            params![queue, now],
        )
        .map_err(db_err)?;
        let earlier: Option<String> = tx
            .query_row(
                "SELECT message_id FROM dedup WHERE queue = ?1 AND dedup_id = ?2",
                params![queue, dedup],
                |row| row.get(0),
            )
            .optional()
            .map_err(db_err)?;
        if let Some(earlier) = earlier {
            return Ok(earlier);
        }
    }
    let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    tx.prepare_cached(
        "INSERT INTO messages (id, queue, body, attributes, group_id, dedup_id, sent_ms, visible_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            id,
            queue,
            message.body,
            encode_attributes(&message.attributes),
            message.group_id,
            dedup_id,
            now,
            now + message.delay.as_millis() as i64
        ])
    })
    .map_err(db_err)?;
    if let Some(dedup) = &dedup_id {
        tx.execute(
            "INSERT INTO dedup (queue, dedup_id, message_id, expires_ms) VALUES (?1, ?2, ?3, ?4)",
            params![queue, dedup, id, now + DEDUP_WINDOW.as_millis() as i64],
        )
        .map_err(db_err)?;
    }
    Ok(id)
}

/// One local queue.
#[derive(Clone)]
pub struct LocalQueue {
    name: String,
    fifo: bool,
    queues: LocalQueues,
}

/// What one receive attempt found.
struct Attempt {
    messages: Vec<Received>,
    /// When the next hidden or delayed message becomes visible, if any.
    next_visible_ms: Option<i64>,
    /// Messages were moved to the dead-letter queue on the way.
    redriven: bool,
}

impl LocalQueue {
    fn try_receive(
        conn: &mut Connection,
        queue: &str,
        fifo: bool,
        max: usize,
        visibility: Duration,
    ) -> Result<Attempt, QueueError> {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let now = now_ms();
        let (redrive_to, max_receives): (Option<String>, Option<u32>) = tx
            .query_row(
                "SELECT dlq, max_receive_count FROM queues WHERE name = ?1",
                [queue],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(db_err)?
            .ok_or_else(|| QueueError::NoSuchQueue(queue.to_string()))?;

        // Candidates in order. On FIFO queues, groups with a message in flight
        // are skipped, and a group's messages are taken only from its head.
        let sql = if fifo {
            "SELECT seq, id, body, attributes, receive_count, sent_ms, group_id, dedup_id, source_queue FROM messages m
             WHERE queue = ?1 AND visible_ms <= ?2
               AND NOT EXISTS (SELECT 1 FROM messages b WHERE b.queue = ?1 AND b.group_id = m.group_id
                               AND (b.seq < m.seq AND b.visible_ms > ?2))
             ORDER BY seq LIMIT ?3"
        } else {
            "SELECT seq, id, body, attributes, receive_count, sent_ms, group_id, dedup_id, source_queue FROM messages
             WHERE queue = ?1 AND visible_ms <= ?2 ORDER BY seq LIMIT ?3"
        };
        let fetch = if fifo {
            (max * 20) as i64
        } else {
            (max * 2) as i64
        };
        let candidates: Vec<(i64, Received)> = {
            let mut stmt = tx.prepare_cached(sql).map_err(db_err)?;
            stmt.query_map(params![queue, now, fetch], |row| {
                Ok((
                    row.get(0)?,
                    Received {
                        id: row.get(1)?,
                        receipt: String::new(),
                        body: row.get(2)?,
                        attributes: decode_attributes(&row.get::<_, String>(3)?),
                        receive_count: row.get(4)?,
                        sent_at_ms: row.get::<_, i64>(5)? as u64,
                        group_id: row.get(6)?,
                        dedup_id: row.get(7)?,
                        moved_from: row.get(8)?,
                    },
                ))
            })
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?
        };

        let mut taken = Vec::new();
        let mut redriven = false;
        for (seq, mut message) in candidates {
            if taken.len() >= max {
                break;
            }
            // Redrive: a message already received the maximum number of
            // times goes to the dead-letter queue instead of out again.
            if let (Some(dlq), Some(limit)) = (&redrive_to, max_receives)
                && message.receive_count >= limit
            {
                tx.execute(
                    "UPDATE messages SET queue = ?2, source_queue = ?3, receipt = NULL, visible_ms = ?4 WHERE seq = ?1",
                    params![seq, dlq, queue, now],
                )
                .map_err(db_err)?;
                redriven = true;
                if fifo {
                    // The group's later messages wait for the next receive,
                    // keeping their order behind the moved one.
                    break;
                }
                continue;
            }
            let receipt = uuid::Uuid::new_v4().simple().to_string();
            message.receive_count += 1;
            tx.execute(
                "UPDATE messages SET receive_count = receive_count + 1, receipt = ?2, visible_ms = ?3 WHERE seq = ?1",
                params![seq, receipt, now + visibility.as_millis() as i64],
            )
            .map_err(db_err)?;
            message.receipt = receipt;
            taken.push(message);
        }
        let next_visible_ms: Option<i64> = tx
            .query_row(
                "SELECT MIN(visible_ms) FROM messages WHERE queue = ?1 AND visible_ms > ?2",
                params![queue, now],
                |row| row.get(0),
            )
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(Attempt {
            messages: taken,
            next_visible_ms,
            redriven,
        })
    }
}

#[async_trait]
impl Queue for LocalQueue {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_fifo(&self) -> bool {
        self.fifo
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<Received>, QueueError> {
        if !(1..=MAX_BATCH).contains(&max) {
            return Err(QueueError::Invalid(format!(
                "queue `{}`: receive 1-{MAX_BATCH} messages, not {max}",
                self.name
            )));
        }
        if wait > MAX_WAIT || visibility > MAX_VISIBILITY {
            return Err(QueueError::Invalid(format!(
                "queue `{}`: wait is at most 20s and visibility at most 12h",
                self.name
            )));
        }
        let deadline = tokio::time::Instant::now() + wait;
        let notify = self.queues.wake.notify_for(&self.name);
        loop {
            // Registered before looking, so a send that lands between the
            // look and the wait still wakes this receiver.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let (name, fifo) = (self.name.clone(), self.fifo);
            let attempt = self
                .queues
                .with_db(move |conn| LocalQueue::try_receive(conn, &name, fifo, max, visibility))
                .await?;
            if attempt.redriven {
                self.queues.wake.all();
            }
            if !attempt.messages.is_empty() {
                return Ok(attempt.messages);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline || cancel.is_cancelled() {
                return Ok(Vec::new());
            }
            let mut until = deadline;
            if let Some(next) = attempt.next_visible_ms {
                let in_ms = (next - now_ms()).max(0) as u64;
                until = until.min(now + Duration::from_millis(in_ms));
            }
            // Only the wait is cut short by `cancel`: a transaction that took
            // messages always runs to its end and hands them back.
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(until) => {}
                _ = cancel.cancelled() => return Ok(Vec::new()),
            }
        }
    }

    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<BatchFailure>, QueueError> {
        let receipts = receipts.to_vec();
        let name = self.name.clone();
        self.queues
            .with_db(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err)?;
                let mut failures = Vec::new();
                for receipt in receipts {
                    let n = tx
                        .execute("DELETE FROM messages WHERE queue = ?1 AND receipt = ?2", params![name, receipt])
                        .map_err(db_err)?;
                    if n == 0 {
                        failures.push(BatchFailure {
                            receipt,
                            reason: "the receipt is not current: the message was deleted or received again".into(),
                        });
                    }
                }
                tx.commit().map_err(db_err)?;
                Ok(failures)
            })
            .await
    }

    async fn change_visibility_batch(
        &self,
        entries: &[(String, Duration)],
    ) -> Result<Vec<BatchFailure>, QueueError> {
        if let Some((_, too_long)) = entries.iter().find(|(_, d)| *d > MAX_VISIBILITY) {
            return Err(QueueError::Invalid(format!(
                "queue `{}`: visibility of {}s is over 12 hours",
                self.name,
                too_long.as_secs()
            )));
        }
        let entries = entries.to_vec();
        let name = self.name.clone();
        let failures = self
            .queues
            .with_db(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err)?;
                let now = now_ms();
                let mut failures = Vec::new();
                for (receipt, visibility) in entries {
                    // Only a message still in flight under this receipt.
                    let n = tx
                        .execute(
                            "UPDATE messages SET visible_ms = ?3 WHERE queue = ?1 AND receipt = ?2 AND visible_ms > ?4",
                            params![name, receipt, now + visibility.as_millis() as i64, now],
                        )
                        .map_err(db_err)?;
                    if n == 0 {
                        failures.push(BatchFailure {
                            receipt,
                            reason: "the receipt is not current: the message was deleted, received again, or its visibility lapsed".into(),
                        });
                    }
                }
                tx.commit().map_err(db_err)?;
                Ok(failures)
            })
            .await?;
        self.queues.wake.notify(&self.name);
        Ok(failures)
    }

    async fn send(&self, message: Outgoing) -> Result<String, QueueError> {
        let mut ids = self.send_batch(vec![message]).await?;
        Ok(ids.remove(0))
    }

    async fn send_batch(&self, messages: Vec<Outgoing>) -> Result<Vec<String>, QueueError> {
        if messages.len() > MAX_BATCH {
            return Err(QueueError::Invalid(format!(
                "queue `{}`: send at most {MAX_BATCH} messages at once, not {}",
                self.name,
                messages.len()
            )));
        }
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        for message in &messages {
            check_outgoing(&self.name, self.fifo, super::MAX_BODY, message)?;
        }
        let name = self.name.clone();
        let fifo = self.fifo;
        let ids = self
            .queues
            .with_db(move |conn| {
                conn.pragma_update(None, "synchronous", "FULL")
                    .map_err(db_err)?;
                let sent = insert_all(conn, &name, fifo, messages);
                conn.pragma_update(None, "synchronous", "NORMAL")
                    .map_err(db_err)?;
                sent
            })
            .await?;
        self.queues.wake.notify(&self.name);
        Ok(ids)
    }

    /// One transaction when `dlq` is in the same database: the message
    /// leaves its queue exactly when its dead letter arrives.
    async fn dead_letter(
        &self,
        receipt: &str,
        dlq: &dyn Queue,
        letter: Outgoing,
    ) -> Result<Moved, QueueError> {
        let Some(to) = dlq
            .as_any()
            .downcast_ref::<LocalQueue>()
            .filter(|to| Arc::ptr_eq(&to.queues.db, &self.queues.db))
        else {
            dlq.send(letter).await?;
            return Ok(Moved::Sent);
        };
        check_outgoing(&to.name, to.fifo, super::MAX_BODY, &letter)?;
        // The move is one transaction, so there is no duplicate to drop; a
        // deduplication id could only drop a redriven message that fails
        // again within the window.
        let mut letter = letter;
        if to.fifo {
            letter.dedup_id = Some(uuid::Uuid::new_v4().simple().to_string());
        }
        let (from, receipt) = (self.name.clone(), receipt.to_string());
        let (dlq_name, dlq_fifo) = (to.name.clone(), to.fifo);
        let moved = self
            .queues
            .with_db(move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(db_err)?;
                let id: Option<String> = tx
                    .query_row(
                        "DELETE FROM messages WHERE queue = ?1 AND receipt = ?2 RETURNING id",
                        params![from, receipt],
                        |row| row.get(0),
                    )
                    .optional()
                    .map_err(db_err)?;
                let Some(id) = id else {
                    return Ok(Moved::Stale);
                };
                // The dead letter keeps the message's id, and so does its
                // redrive: the job is the one `wasq send` named.
                insert_message(&tx, &dlq_name, dlq_fifo, letter, Some(id), now_ms())?;
                tx.commit().map_err(db_err)?;
                Ok(Moved::Moved)
            })
            .await?;
        if moved == Moved::Moved {
            self.queues.wake.notify(&to.name);
        }
        Ok(moved)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let name = self.name.clone();
        self.queues
            .with_db(move |conn| {
                let now = now_ms();
                let (fifo, visibility_ms, dlq, max_receive_count): (bool, i64, Option<String>, Option<u32>) = conn
                    .query_row(
                        "SELECT fifo, visibility_ms, dlq, max_receive_count FROM queues WHERE name = ?1",
                        [&name],
                        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                    )
                    .optional()
                    .map_err(db_err)?
                    .ok_or_else(|| QueueError::NoSuchQueue(name.clone()))?;
                let (visible, in_flight, delayed): (i64, i64, i64) = conn
                    .query_row(
                        "SELECT
                            COALESCE(SUM(visible_ms <= ?2), 0),
                            COALESCE(SUM(visible_ms > ?2 AND receipt IS NOT NULL), 0),
                            COALESCE(SUM(visible_ms > ?2 AND receipt IS NULL), 0)
                         FROM messages WHERE queue = ?1",
                        params![name, now],
                        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                    )
                    .map_err(db_err)?;
                Ok(QueueStats {
                    name,
                    fifo,
                    visibility_timeout: Duration::from_millis(visibility_ms as u64),
                    redrive: dlq.zip(max_receive_count).map(|(dlq, max_receive_count)| Redrive { dlq, max_receive_count }),
                    visible: visible as u64,
                    in_flight: in_flight as u64,
                    delayed: delayed as u64,
                })
            })
            .await
    }
}

/// Wakes long-polling receivers: in this process through a `Notify` per
/// queue, in other processes on the same data directory through a Unix
/// datagram socket each process binds in `DATA_DIR/wake/`.
struct Wake {
    dir: PathBuf,
    own: PathBuf,
    socket: UnixDatagram,
    notifies: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Wake {
    fn start(dir: &Path) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)?;
        let own = dir.join(format!(
            "{}-{}.sock",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let listener = UnixDatagram::bind(&own)?;
        listener.set_read_timeout(Some(Duration::from_secs(1)))?;
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        let wake = Arc::new(Wake {
            dir: dir.to_path_buf(),
            own,
            socket,
            notifies: Mutex::new(HashMap::new()),
        });
        let weak: Weak<Wake> = Arc::downgrade(&wake);
        std::thread::Builder::new()
            .name("wasq-queue-wake".into())
            .spawn(move || {
                let mut buf = [0u8; 256];
                loop {
                    let received = listener.recv(&mut buf);
                    let Some(wake) = weak.upgrade() else { break };
                    if let Ok(n) = received {
                        match std::str::from_utf8(&buf[..n]) {
                            Ok("*") => wake.local_all(),
                            Ok(queue) => wake.local(queue),
                            Err(_) => {}
                        }
                    }
                }
            })?;
        Ok(wake)
    }

    fn notify_for(&self, queue: &str) -> Arc<Notify> {
        let mut notifies = self.notifies.lock().unwrap_or_else(|p| p.into_inner());
        notifies.entry(queue.to_string()).or_default().clone()
    }

    fn local(&self, queue: &str) {
        let notifies = self.notifies.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(notify) = notifies.get(queue) {
            notify.notify_waiters();
        }
    }

    fn local_all(&self) {
        let notifies = self.notifies.lock().unwrap_or_else(|p| p.into_inner());
        for notify in notifies.values() {
            notify.notify_waiters();
        }
    }

    /// Wakes receivers of `queue` everywhere.
    fn notify(&self, queue: &str) {
        self.local(queue);
        self.broadcast(queue.as_bytes());
    }

    /// Wakes every receiver everywhere (after messages moved between queues).
    fn all(&self) {
        self.local_all();
        self.broadcast(b"*");
    }

    fn broadcast(&self, what: &[u8]) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path == self.own || path.extension().is_none_or(|e| e != "sock") {
                continue;
            }
            match self.socket.send_to(what, &path) {
                // A socket nobody listens on belongs to a process that died.
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                    let _ = std::fs::remove_file(&path);
                }
                _ => {}
            }
        }
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.own);
    }
}

#[cfg(test)]
mod tests;
