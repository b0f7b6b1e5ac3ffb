//! Settling a run: done is deleted (its result recorded), retry comes back
//! after its backoff, reject and exhausted messages are dead-lettered.

use super::*;

impl BindingState {
    /// Ends a message in exactly one of: delete, retry with backoff,
    /// dead-letter.
    pub(super) async fn settle(
        &self,
        received: &Received,
        plugin: &Plugin,
        outcome: Outcome,
    ) -> bool {
        match outcome {
            Outcome::Done(result) => {
                if let Some(result) = result {
                    let key = format!("{}/{}", self.binding.queue.name(), self.job_id(received));
                    match self
                        .services
                        .records
                        .put(RESULTS_TABLE, &key, &result, PutOptions::HOST)
                        .await
                    {
                        Ok(()) => {}
                        // Too large (or otherwise refused): running again
                        // would give the same result. Dead-letter it now.
                        Err(err @ (RecordsError::Invalid(_) | RecordsError::Denied(_))) => {
                            let reason = format!("the result cannot be recorded: {err}");
                            self.metrics.rejected.inc();
                            self.dead_letter(received, plugin, &reason).await;
                            return false;
                        }
                        // The work is done but its result would be lost
                        // with the message: keep the message, and run it
                        // again once the records store is back.
                        Err(err) => {
                            let reason = format!("could not record the result: {err}");
                            self.retry(received, plugin, reason, None).await;
                            return false;
                        }
                    }
                }
                debug!("done");
                if !self.first_done.swap(true, Ordering::AcqRel) {
                    info!("first message done");
                }
                self.metrics.done.inc();
                self.timeline.count(timeline::Event::Done);
                self.finish(received).await;
                true
            }
            Outcome::Retry { reason, delay } => {
                self.retry(received, plugin, reason, delay).await;
                false
            }
            Outcome::Reject(reason) => {
                self.metrics.rejected.inc();
                self.dead_letter(received, plugin, &reason).await;
                false
            }
        }
    }

    /// Makes the message visible again after the backoff (or `delay`), or
    /// dead-letters it once it has had its receives.
    pub(super) async fn retry(
        &self,
        received: &Received,
        plugin: &Plugin,
        reason: String,
        delay: Option<Duration>,
    ) {
        let config = self.config();
        // Receives the host gave back were no attempts.
        let attempts = self.attempts(received);
        if attempts >= config.max_receive_count {
            let reason = if attempts == received.receive_count {
                format!("gave up after {attempts} receives; last: {reason}")
            } else {
                format!(
                    "gave up after {attempts} attempts ({} receives of this copy); last: {reason}",
                    received.receive_count
                )
            };
            self.dead_letter(received, plugin, &reason).await;
        } else {
            let delay = delay.unwrap_or_else(|| config.backoff.delay(attempts));
            info!(%reason, delay_secs = delay.as_secs_f64(), "retry");
            self.metrics.retried.inc();
            self.timeline.count(timeline::Event::Retried);
            if self.would_be_redriven(received, attempts)
                && self.requeue(received, attempts, delay).await
            {
                return;
            }
            self.change_visibility(&[(received.receipt.clone(), delay)])
                .await;
        }
    }

    /// The id a processor sees and results are recorded under: the queue's
    /// own, or for a redriven dead letter the id it had when it was sent,
    /// if this host sealed it.
    pub(super) fn job_id(&self, received: &Received) -> String {
        received
            .attributes
            .iter()
            .find(|(name, _)| name == MESSAGE_ID_ATTRIBUTE)
            .and_then(|(_, sealed)| self.seal.open(sealed, &self.sealed_as(received)))
            .map_or_else(|| received.id.clone(), str::to_string)
    }

    /// What a seal on `received` is bound to.
    pub(super) fn sealed_as<'a>(&'a self, received: &'a Received) -> seal::Of<'a> {
        seal::Of {
            queue: self.binding.queue.name(),
            body: &received.body,
            group: received.group_id.as_deref(),
        }
    }

    /// Sends a message to the dead-letter queue with its reason, and
    /// deletes it (in one step where the backend can). If the send fails,
    /// the message stays (it will be received again): nothing is lost.
    pub(super) async fn dead_letter(&self, received: &Received, plugin: &Plugin, reason: &str) {
        // Every reason is cut at the same length with the same marker,
        // wherever it came from (a processor's are cut already).
        let reason = crate::text::truncate(reason, crate::runtime::MAX_REASON).into_owned();
        let Some(dlq) = &self.binding.dlq else {
            error!(%reason, "no dead-letter queue (opted out): dropping the message");
            self.metrics.dropped.inc();
            self.timeline.count(timeline::Event::DeadLettered);
            self.finish(received).await;
            return;
        };
        let mut attributes = vec![
            (REASON_ATTRIBUTE.to_string(), reason.clone()),
            (PLUGIN_ATTRIBUTE.to_string(), plugin.name().to_string()),
            (
                RECEIVE_COUNT_ATTRIBUTE.to_string(),
                received.receive_count.to_string(),
            ),
            (
                SOURCE_ATTRIBUTE.to_string(),
                self.binding.queue.name().to_string(),
            ),
            (
                MESSAGE_ID_ATTRIBUTE.to_string(),
                self.seal
                    .seal(&self.job_id(received), &self.sealed_as(received)),
            ),
        ];
        let room = MAX_ATTRIBUTES - attributes.len();
        let mut original: Vec<_> = received
            .attributes
            .iter()
            .filter(|(name, _)| !name.starts_with("wasq-"))
            .cloned()
            .collect();
        // A large payload's size first: without it the letter's body would
        // no longer be taken for a pointer.
        original.sort_by_key(|(name, _)| {
            name != crate::payload::SIZE_ATTRIBUTE && name != crate::payload::LEGACY_SIZE_ATTRIBUTE
        });
        if original.len() > room {
            // SQS takes ten attributes; wasq's own come first. The reason
            // names what did not fit, so nobody wonders where it went.
            let dropped: Vec<&str> = original[room..].iter().map(|(n, _)| n.as_str()).collect();
            warn!(
                kept = room,
                dropped = %dropped.join(", "),
                "dead letter keeps only the attributes that fit beside wasq's"
            );
            attributes[0].1 = format!(
                "{} [attributes not kept, past SQS's ten: {}]",
                attributes[0].1,
                dropped.join(", ")
            );
        }
        attributes.extend(original.into_iter().take(room));
        let mut letter = Outgoing {
            body: received.body.clone(),
            attributes,
            delay: Duration::ZERO,
            group_id: received.group_id.clone(),
            // The queue's own id: the same message dead-lettered twice (a
            // crash between the send and the delete) is one dead letter on
            // a FIFO queue, while a redriven one that fails again is new.
            dedup_id: received.group_id.as_ref().map(|_| received.id.clone()),
        };
        if !fit_dead_letter(&mut letter, dlq.max_message_size()) {
            // Its body alone is larger than the dead-letter queue takes: no
            // send could ever succeed, so retrying would only loop. Keep
            // the message where it is, hidden for the longest backoff, and
            // say so; the operator decides (a larger DLQ limit, or a purge).
            error!(
                size = crate::queue::message_size(&letter),
                limit = dlq.max_message_size(),
                "the message is larger than its dead-letter queue takes; it stays in its queue"
            );
            self.change_visibility(&[(received.receipt.clone(), self.config().backoff.cap)])
                .await;
            return;
        }
        match self
            .binding
            .queue
            .dead_letter(&received.receipt, dlq.as_ref(), letter)
            .await
        {
            Ok(moved @ (Moved::Moved | Moved::Sent)) => {
                *self.newest_reason.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(reason.clone());
                warn!(%reason, dlq = dlq.name(), "dead-lettered");
                self.metrics.dead_lettered.inc();
                self.timeline.count(timeline::Event::DeadLettered);
                if moved == Moved::Sent {
                    self.delete(received.receipt.clone()).await;
                } else {
                    // Moved with the send, in one transaction: deleted too.
                    self.metrics.deleted.inc();
                }
            }
            Ok(Moved::Stale) => {
                warn!("not dead-lettered: the message was received again or deleted meanwhile");
            }
            Err(err) => {
                error!(error = %err, "could not send to the dead-letter queue; the message will be received again");
                let delay = self.config().backoff.delay(received.receive_count);
                self.change_visibility(&[(received.receipt.clone(), delay)])
                    .await;
            }
        }
    }
}

/// Shrinks a dead letter until it fits a queue's size limit: the reason is
/// cut first (with a marker), then the sender's attributes are dropped,
/// last first. The body is never changed. Returns whether it fits; one
/// that cannot would be refused by the queue at every attempt.
pub(super) fn fit_dead_letter(letter: &mut Outgoing, limit: usize) -> bool {
    let size = crate::queue::message_size(letter);
    if size <= limit {
        return true;
    }
    if let Some((_, reason)) = letter
        .attributes
        .iter_mut()
        .find(|(name, _)| name == REASON_ATTRIBUTE)
    {
        let keep = reason.len().saturating_sub(size - limit).max(80);
        *reason = crate::text::truncate(reason, keep).into_owned();
    }
    while crate::queue::message_size(letter) > limit {
        match letter
            .attributes
            .iter()
            .rposition(|(name, _)| !name.starts_with("wasq-"))
        {
            Some(last) => {
                letter.attributes.remove(last);
            }
            None => return false,
        }
    }
    true
}
