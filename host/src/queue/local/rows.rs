//! The tables of the queue database, and their rows.

use super::*;

pub(super) const SCHEMA: &str = "
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
-- The dead-letter browser's full-text index: trigrams of each indexed
-- message's body and wasq reason, by seq. It is a prefilter (the search
-- still checks every word in the rows it finds). A search fills it with
-- the queue's messages past `letters_indexed.upto` (seqs only grow); a
-- message moved into a searched queue at or below that mark is indexed by
-- `letters_moved`; one moved out of a searched queue loses its entry, and
-- so do letters deleted by a purge or a deletion of chosen letters. A
-- delete on the dispatch path costs nothing here: its entry stays, and
-- the search's join on `messages` drops it.
CREATE VIRTUAL TABLE IF NOT EXISTS letters_text USING fts5(
    body, reason, content='', contentless_delete=1, tokenize='trigram'
);
CREATE TABLE IF NOT EXISTS letters_indexed (
    queue TEXT PRIMARY KEY,
    upto INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS letters_moved AFTER UPDATE OF queue ON messages
WHEN NEW.queue IS NOT OLD.queue
    AND NEW.seq <= coalesce((SELECT upto FROM letters_indexed WHERE queue = NEW.queue), 0)
BEGIN
    INSERT OR REPLACE INTO letters_text (rowid, body, reason)
    VALUES (NEW.seq, NEW.body, coalesce(json_extract(NEW.attributes, '$.\"wasq-reason\"'), ''));
END;
CREATE TRIGGER IF NOT EXISTS letters_moved_out AFTER UPDATE OF queue ON messages
WHEN NEW.queue IS NOT OLD.queue
    AND OLD.queue IN (SELECT queue FROM letters_indexed)
    AND NEW.seq > coalesce((SELECT upto FROM letters_indexed WHERE queue = NEW.queue), 0)
BEGIN
    DELETE FROM letters_text WHERE rowid = OLD.seq;
END;
CREATE TABLE IF NOT EXISTS dedup (
    queue TEXT NOT NULL,
    dedup_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (queue, dedup_id)
) WITHOUT ROWID;
";

/// A queue's visibility timeout and redrive policy, if it exists.
pub(super) fn settings_of(
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

pub(super) fn describe((visibility, redrive): &(Duration, Option<Redrive>)) -> String {
    let visibility = humantime::format_duration(*visibility);
    match redrive {
        Some(r) => format!(
            "visibility timeout {visibility}, dead letters to `{}` after {} receives",
            r.dlq, r.max_receive_count
        ),
        None => format!("visibility timeout {visibility}, no dead-letter queue"),
    }
}

pub(super) fn insert_queue(
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
pub(super) fn db_err(err: rusqlite::Error) -> QueueError {
    if crate::sqlite::is_permanent(&err) {
        QueueError::Invalid(format!("queue database: {err}"))
    } else {
        QueueError::Unavailable(format!("queue database: {err}"))
    }
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

pub(super) fn encode_attributes(attributes: &[(String, String)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = attributes
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

pub(super) fn decode_attributes(text: &str) -> Vec<(String, String)> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
            .collect(),
        _ => Vec::new(),
    }
}

/// Inserts messages in one transaction.
pub(super) fn insert_all(
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
pub(super) fn insert_message(
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
