//! Managing the embedded queues: what `wasq queue` and `wasq dlq` do.

use super::rows::*;
use super::*;

impl LocalQueues {
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
    pub async fn set(&self, name: &str, changes: QueueChanges) -> Result<QueueStats, QueueError> {
        if changes
            .visibility_timeout
            .is_some_and(|v| v > MAX_VISIBILITY)
        {
            return Err(QueueError::Invalid(format!(
                "queue `{name}`: visibility timeout over 12 hours"
            )));
        }
        if changes
            .max_receive_count
            .is_some_and(|n| !(1..=1000).contains(&n))
        {
            return Err(QueueError::Invalid(format!(
                "queue `{name}`: max receive count must be 1-1000"
            )));
        }
        let queue = self.queue(name).await?;
        if let Some(dlq) = &changes.dlq {
            if check_name(dlq)? != queue.fifo {
                return Err(QueueError::Invalid(format!(
                    "queue `{name}`: its dead-letter queue `{dlq}` must be {} like it",
                    if queue.fifo { "FIFO" } else { "standard" }
                )));
            }
            if *dlq == queue.name {
                return Err(QueueError::Invalid(format!(
                    "queue `{name}` cannot be its own dead-letter queue"
                )));
            }
        }
        let (queue_name, fifo) = (queue.name.clone(), queue.fifo);
        self.with_db(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let (visibility, redrive) = settings_of(&tx, &queue_name)?
                .ok_or_else(|| QueueError::NoSuchQueue(queue_name.clone()))?;
            let visibility = changes.visibility_timeout.unwrap_or(visibility);
            let redrive = match (changes.dlq, redrive) {
                (Some(dlq), old) => {
                    insert_queue(&tx, &dlq, fifo, DEFAULT_VISIBILITY, None)?;
                    Some(Redrive {
                        dlq,
                        max_receive_count: changes
                            .max_receive_count
                            .or(old.map(|r| r.max_receive_count))
                            .unwrap_or(DEFAULT_MAX_RECEIVE_COUNT),
                    })
                }
                (None, Some(old)) => Some(Redrive {
                    max_receive_count: changes.max_receive_count.unwrap_or(old.max_receive_count),
                    ..old
                }),
                (None, None) if changes.max_receive_count.is_some() => {
                    return Err(QueueError::Invalid(format!(
                        "queue `{queue_name}` has no dead-letter queue, so no receive count to set (give one with --dlq)"
                    )));
                }
                (None, None) => None,
            };
            tx.execute(
                "UPDATE queues SET visibility_ms = ?2, dlq = ?3, max_receive_count = ?4 WHERE name = ?1",
                params![
                    queue_name,
                    visibility.as_millis() as i64,
                    redrive.as_ref().map(|r| r.dlq.as_str()),
                    redrive.as_ref().map(|r| r.max_receive_count)
                ],
            )
            .map_err(db_err)?;
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
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            forget_indexed(&tx, &queue.name, None)?;
            let n = tx
                .execute("DELETE FROM messages WHERE queue = ?1", [&queue.name])
                .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(n as u64)
        })
        .await
    }

    /// Brings the full-text index of `queue` up to date, a chunk per
    /// transaction, so that other work on the database goes on between.
    async fn catch_up_index(&self, queue: &str) -> Result<(), QueueError> {
        loop {
            let queue = queue.to_string();
            if self
                .with_db(move |conn| catch_up_index(conn, &queue))
                .await?
            {
                return Ok(());
            }
        }
    }

    /// The `WHERE` clause for `filter` on the letters of `name`, and its
    /// values, with the full-text index brought up to date if the clause
    /// uses it.
    async fn search_sql(
        &self,
        name: &str,
        filter: &LetterFilter,
    ) -> Result<(String, Vec<String>), QueueError> {
        let queue = self.queue(name).await?;
        if !text_query(filter).is_empty() {
            self.catch_up_index(&queue.name).await?;
        }
        Ok(filter_sql(&queue.name, filter))
    }

    /// A page of the letters of `name` that `filter` picks, oldest first,
    /// searched in place (every letter, no cap; words of three characters
    /// or more through the full-text index), and how many it picks.
    pub async fn browse(
        &self,
        name: &str,
        filter: &LetterFilter,
        offset: usize,
        limit: usize,
    ) -> Result<LetterPage, QueueError> {
        let (clause, values) = self.search_sql(name, filter).await?;
        self.with_db(move |conn| {
            let matched: i64 = conn
                .query_row(
                    &format!("SELECT count(*) FROM messages WHERE {clause}"),
                    rusqlite::params_from_iter(values.iter()),
                    |row| row.get(0),
                )
                .map_err(db_err)?;
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT id, body, attributes, receive_count, sent_ms, source_queue
                     FROM messages WHERE {clause} ORDER BY seq LIMIT {limit} OFFSET {offset}"
                ))
                .map_err(db_err)?;
            let letters = stmt
                .query_map(rusqlite::params_from_iter(values.iter()), peeked)
                .map_err(db_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_err)?;
            Ok(LetterPage {
                letters,
                matched: matched as u64,
                whole: true,
            })
        })
        .await
    }

    /// The ids of the letters of `name` that `filter` picks, oldest first,
    /// at most `cap`: ids alone, however large the letters.
    pub async fn matching_ids(
        &self,
        name: &str,
        filter: &LetterFilter,
        cap: usize,
    ) -> Result<Vec<String>, QueueError> {
        let (clause, values) = self.search_sql(name, filter).await?;
        self.with_db(move |conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT id FROM messages WHERE {clause} ORDER BY seq LIMIT {cap}"
                ))
                .map_err(db_err)?;
            stmt.query_map(rusqlite::params_from_iter(values.iter()), |row| row.get(0))
                .map_err(db_err)?
                .collect::<Result<Vec<String>, _>>()
                .map_err(db_err)
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
                .query_map(params![queue.name, max as i64], peeked)
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
        self.redrive_where(dlq, to, None).await
    }

    /// [`LocalQueues::redrive`] of only the letters with these ids, when
    /// given.
    async fn redrive_where(
        &self,
        dlq: &str,
        to: Option<&str>,
        ids: Option<std::collections::HashSet<String>>,
    ) -> Result<u64, QueueError> {
        let dlq = self.queue(dlq).await?;
        let to = match to {
            Some(name) => Some(self.queue(name).await?.name),
            None => None,
        };
        let moved = self
            .with_db(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err)?;
                let rows: Vec<(i64, String, Option<String>, String)> = {
                    let mut stmt = tx
                        .prepare("SELECT seq, id, source_queue, attributes FROM messages WHERE queue = ?1 ORDER BY seq")
                        .map_err(db_err)?;
                    stmt.query_map([&dlq.name], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))
                        .map_err(db_err)?
                        .collect::<Result<_, _>>()
                        .map_err(db_err)?
                };
                let now = now_ms();
                let mut moved = 0;
                for (seq, id, source, attributes) in rows {
                    if ids.as_ref().is_some_and(|ids| !ids.contains(&id)) {
                        continue;
                    }
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

/// A row of `id, body, attributes, receive_count, sent_ms, source_queue`.
fn peeked(row: &rusqlite::Row<'_>) -> rusqlite::Result<Peeked> {
    Ok(Peeked {
        id: row.get(0)?,
        body: row.get(1)?,
        attributes: decode_attributes(&row.get::<_, String>(2)?),
        receive_count: row.get(3)?,
        sent_at_ms: row.get::<_, i64>(4)? as u64,
        moved_by_queue: row.get::<_, Option<String>>(5)?.is_some(),
        source_queue: row.get(5)?,
    })
}

/// The full-text query for a filter's words: each word of three
/// characters or more, as a phrase (the trigram index finds it anywhere in
/// the body or the reason, case aside); shorter words, and words with
/// control characters (a NUL would end the query), are only checked in
/// the rows. Empty when no word can use the index.
fn text_query(filter: &LetterFilter) -> String {
    filter
        .words
        .iter()
        .filter(|word| word.chars().count() >= 3 && !word.chars().any(char::is_control))
        .map(|word| format!("\"{}\"", word.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Drops the full-text entries of the messages of `queue` (those with the
/// ids of the JSON list `ids`, when given) before they are deleted, if the
/// queue was ever searched. Deletes on the dispatch path do not come here:
/// what they leave in the index the search's join drops.
fn forget_indexed(
    tx: &rusqlite::Transaction<'_>,
    queue: &str,
    ids: Option<&str>,
) -> Result<(), QueueError> {
    let searched: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM letters_indexed WHERE queue = ?1)",
            [queue],
            |row| row.get(0),
        )
        .map_err(db_err)?;
    if !searched {
        return Ok(());
    }
    match ids {
        Some(ids) => tx.execute(
            "DELETE FROM letters_text WHERE rowid IN (SELECT seq FROM messages
             WHERE queue = ?1 AND id IN (SELECT value FROM json_each(?2)))",
            params![queue, ids],
        ),
        None => tx.execute(
            "DELETE FROM letters_text WHERE rowid IN (SELECT seq FROM messages WHERE queue = ?1)",
            [queue],
        ),
    }
    .map_err(db_err)?;
    Ok(())
}

/// Messages indexed in one transaction: the database is held meanwhile.
const INDEX_CHUNK: i64 = 5_000;

/// Adds to the full-text index up to [`INDEX_CHUNK`] of the messages of
/// `queue` that came since it was last searched; `true` once it is up to
/// date. A search of an index already up to date writes nothing.
fn catch_up_index(conn: &mut Connection, queue: &str) -> Result<bool, QueueError> {
    let marks = |conn: &Connection| -> Result<(i64, i64), QueueError> {
        conn.query_row(
            "SELECT coalesce((SELECT upto FROM letters_indexed WHERE queue = ?1), 0),
                    coalesce((SELECT max(seq) FROM messages WHERE queue = ?1), 0)",
            [queue],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .map_err(db_err)
    };
    let (upto, last) = marks(conn)?;
    if last <= upto {
        return Ok(true);
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    // Another search may have caught up meanwhile.
    let (upto, last) = marks(&tx)?;
    if last > upto {
        let end: i64 = tx
            .query_row(
                "SELECT coalesce(max(seq), ?2) FROM (SELECT seq FROM messages
                 WHERE queue = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3)",
                params![queue, upto, INDEX_CHUNK],
                |row| row.get(0),
            )
            .map_err(db_err)?;
        tx.execute(
            "INSERT OR REPLACE INTO letters_text (rowid, body, reason)
             SELECT seq, body, coalesce(json_extract(attributes, '$.\"wasq-reason\"'), '')
             FROM messages WHERE queue = ?1 AND seq > ?2 AND seq <= ?3",
            params![queue, upto, end],
        )
        .map_err(db_err)?;
        tx.execute(
            "INSERT OR REPLACE INTO letters_indexed (queue, upto) VALUES (?1, ?2)",
            params![queue, end],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        return Ok(end >= last);
    }
    tx.commit().map_err(db_err)?;
    Ok(true)
}

/// A `WHERE` clause picking the letters of `queue` that `filter` picks, as
/// [`LetterFilter::matches`] does, and its values in order. SQLite's
/// `lower` folds ASCII letters only, as the filter does.
fn filter_sql(queue: &str, filter: &LetterFilter) -> (String, Vec<String>) {
    // A letter the queue's own redrive moved has no wasq attributes.
    const REASON: &str = "(CASE WHEN source_queue IS NULL THEN lower(coalesce(json_extract(attributes, '$.\"wasq-reason\"'), '')) ELSE '' END)";
    let mut clause = vec!["queue = ?".to_string()];
    let mut values = vec![queue.to_string()];
    // The index narrows the rows to look at; each word is still checked
    // in them, as it is written here.
    let text = text_query(filter);
    if !text.is_empty() {
        clause.push("seq IN (SELECT rowid FROM letters_text WHERE letters_text MATCH ?)".into());
        values.push(text);
    }
    for word in &filter.words {
        clause.push(format!(
            "(instr(lower(body), ?) > 0 OR instr({REASON}, ?) > 0)"
        ));
        values.push(word.to_ascii_lowercase());
        values.push(word.to_ascii_lowercase());
    }
    if let Some(plugin) = &filter.plugin {
        clause.push(
            "(source_queue IS NULL AND json_extract(attributes, '$.\"wasq-plugin\"') = ?)"
                .to_string(),
        );
        values.push(plugin.clone());
    }
    if let Some(reason) = &filter.reason {
        clause.push(format!("instr({REASON}, ?) > 0"));
        values.push(reason.to_ascii_lowercase());
    }
    if let Some(id) = &filter.id {
        clause.push("id = ?".to_string());
        values.push(id.clone());
    }
    if let Some(from) = filter.sent_from_ms {
        clause.push("sent_ms >= CAST(? AS INTEGER)".to_string());
        values.push(from.to_string());
    }
    if let Some(before) = filter.sent_before_ms {
        clause.push("sent_ms < CAST(? AS INTEGER)".to_string());
        values.push(before.to_string());
    }
    (clause.join(" AND "), values)
}

#[async_trait]
impl QueueAdmin for LocalQueues {
    async fn browse(
        &self,
        name: &str,
        filter: &LetterFilter,
        offset: usize,
        limit: usize,
    ) -> Result<LetterPage, QueueError> {
        LocalQueues::browse(self, name, filter, offset, limit).await
    }

    async fn matching_ids(
        &self,
        name: &str,
        filter: &LetterFilter,
        cap: usize,
    ) -> Result<Vec<String>, QueueError> {
        LocalQueues::matching_ids(self, name, filter, cap).await
    }

    async fn open(&self, name: &str) -> Result<Arc<dyn Queue>, QueueError> {
        Ok(Arc::new(self.queue(name).await?))
    }

    async fn create(&self, name: &str, options: QueueOptions) -> Result<String, QueueError> {
        LocalQueues::create(self, name, options).await?;
        Ok(format!("local://{name}"))
    }

    async fn set(&self, name: &str, changes: QueueChanges) -> Result<QueueStats, QueueError> {
        LocalQueues::set(self, name, changes).await
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

    async fn settle_letters(
        &self,
        dlq: &str,
        ids: &[String],
        action: LetterAction,
        progress: &std::sync::atomic::AtomicU64,
    ) -> Result<u64, QueueError> {
        let chosen: std::collections::HashSet<String> = ids.iter().cloned().collect();
        let settled = match action {
            LetterAction::Redrive => self.redrive_where(dlq, None, Some(chosen)).await,
            LetterAction::Delete => {
                let dlq = self.queue(dlq).await?;
                self.with_db(move |conn| {
                    let tx = conn
                        .transaction_with_behavior(TransactionBehavior::Immediate)
                        .map_err(db_err)?;
                    // One pass over the queue's rows, the ids as one set.
                    let ids = serde_json::Value::from(chosen.into_iter().collect::<Vec<_>>());
                    forget_indexed(&tx, &dlq.name, Some(&ids.to_string()))?;
                    let deleted = tx
                        .execute(
                            "DELETE FROM messages WHERE queue = ?1 AND id IN (SELECT value FROM json_each(?2))",
                            params![dlq.name, ids.to_string()],
                        )
                        .map_err(db_err)? as u64;
                    tx.commit().map_err(db_err)?;
                    Ok(deleted)
                })
                .await
            }
        }?;
        progress.fetch_add(settled, std::sync::atomic::Ordering::Relaxed);
        Ok(settled)
    }
}
