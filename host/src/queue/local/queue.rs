//! One embedded queue behind the [`Queue`] trait.

use super::rows::*;
use super::*;

/// One local queue.
#[derive(Clone)]
pub struct LocalQueue {
    pub(super) name: String,
    pub(super) fifo: bool,
    pub(super) queues: LocalQueues,
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
                per_receipt(
                    conn,
                    receipts,
                    |receipt| receipt,
                    "the receipt is not current: the message was deleted or received again",
                    |tx, receipt| {
                        tx.execute(
                            "DELETE FROM messages WHERE queue = ?1 AND receipt = ?2",
                            params![name, receipt],
                        )
                    },
                )
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
                let now = now_ms();
                per_receipt(
                    conn,
                    entries,
                    |(receipt, _)| receipt,
                    "the receipt is not current: the message was deleted, received again, or its visibility lapsed",
                    // Only a message still in flight under this receipt.
                    |tx, (receipt, visibility)| {
                        tx.execute(
                            "UPDATE messages SET visible_ms = ?3 WHERE queue = ?1 AND receipt = ?2 AND visible_ms > ?4",
                            params![name, receipt, now + visibility.as_millis() as i64, now],
                        )
                    },
                )
            })
            .await?;
        self.queues.wake.notify(&self.name);
        Ok(failures)
    }

    /// Visible at once, and the receive taken back: the message was never
    /// started, so it keeps its attempts (and the queue's redrive policy,
    /// which counts receives, does not move it early).
    async fn give_back(&self, messages: &[Received]) -> Result<Vec<BatchFailure>, QueueError> {
        let receipts: Vec<String> = messages.iter().map(|m| m.receipt.clone()).collect();
        let name = self.name.clone();
        let failures = self
            .queues
            .with_db(move |conn| {
                let now = now_ms();
                per_receipt(
                    conn,
                    receipts,
                    |receipt| receipt,
                    "the receipt is not current: the message was deleted, received again, or its visibility lapsed",
                    |tx, receipt| {
                        tx.execute(
                            "UPDATE messages SET visible_ms = ?3, receipt = NULL, receive_count = MAX(receive_count - 1, 0)
                             WHERE queue = ?1 AND receipt = ?2 AND visible_ms > ?3",
                            params![name, receipt, now],
                        )
                    },
                )
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
            check_outgoing(&self.name, self.fifo, crate::queue::MAX_BODY, message)?;
        }
        let name = self.name.clone();
        let fifo = self.fifo;
        let ids = self
            .queues
            .with_db(move |conn| {
                // Synced to disk before it returns, so a send survives power
                // loss; the connection is this process's own, held for the
                // whole transaction, and goes back to NORMAL however the
                // send ends.
                let conn = SyncedFully::new(conn)?;
                insert_all(conn.0, &name, fifo, messages)
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
        check_outgoing(&to.name, to.fifo, crate::queue::MAX_BODY, &letter)?;
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

/// The queue connection with `synchronous = FULL` for as long as it lives.
struct SyncedFully<'a>(&'a mut Connection);

impl<'a> SyncedFully<'a> {
    fn new(conn: &'a mut Connection) -> Result<Self, QueueError> {
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
        Ok(SyncedFully(conn))
    }
}

impl Drop for SyncedFully<'_> {
    fn drop(&mut self) {
        if let Err(err) = self.0.pragma_update(None, "synchronous", "NORMAL") {
            tracing::warn!(error = %err, "could not set the queue database back to synchronous NORMAL");
        }
    }
}

/// Applies `change` to each entry of a batch in one transaction; an entry
/// it changes no row for fails, with `stale` as the reason.
fn per_receipt<T>(
    conn: &mut Connection,
    entries: Vec<T>,
    receipt: impl Fn(&T) -> &String,
    stale: &str,
    change: impl Fn(&rusqlite::Transaction<'_>, &T) -> rusqlite::Result<usize>,
) -> Result<Vec<BatchFailure>, QueueError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let mut failures = Vec::new();
    for entry in &entries {
        if change(&tx, entry).map_err(db_err)? == 0 {
            failures.push(BatchFailure {
                receipt: receipt(entry).clone(),
                reason: stale.to_string(),
            });
        }
    }
    tx.commit().map_err(db_err)?;
    Ok(failures)
}
