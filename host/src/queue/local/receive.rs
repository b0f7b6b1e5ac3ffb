//! How a receive picks its messages: in order, skipping FIFO groups with
//! a message in flight, moving messages out of receives to the
//! dead-letter queue on the way.

use super::rows::*;
use super::*;

/// What one receive attempt found.
pub(super) struct Attempt {
    pub(super) messages: Vec<Received>,
    /// When the next hidden or delayed message becomes visible, if any.
    pub(super) next_visible_ms: Option<i64>,
    /// Messages were moved to the dead-letter queue on the way.
    pub(super) redriven: bool,
}

impl LocalQueue {
    pub(super) fn try_receive(
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
        let fetch = candidates(max, fifo) as i64;
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
                        given_back: 0,
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

/// How many candidates one attempt reads to fill a batch of `max`. Some
/// candidates are out of receives and move to the dead-letter queue instead
/// of being delivered. A standard queue moves any number of them in one
/// attempt, so it reads twice the batch; if the moves still leave the batch
/// short, the attempt says it moved messages and the receive tries again at
/// once. A FIFO queue ends the attempt at its first move (the group's later
/// messages wait behind it), so one more than the batch is enough.
fn candidates(max: usize, fifo: bool) -> usize {
    if fifo { max + 1 } else { max * 2 }
}
