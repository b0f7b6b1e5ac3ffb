//! Deletes and visibility changes: deletes gathered into batches of ten,
//! and both ridden through short queue outages.

use super::*;

/// How long deletes wait to be batched.
const DELETE_LINGER: Duration = Duration::from_millis(20);

impl BindingState {
    /// Deletes a message (in a batch, soon).
    pub(super) async fn delete(&self, receipt: String) {
        self.delete_with(receipt, None).await;
    }

    /// Deletes a message that is finished with for good (done, filtered
    /// out, dropped), and then its large payload, if it has one in the
    /// binding's payload bucket.
    pub(super) async fn finish(&self, received: &Received) {
        let payload = match crate::payload::pointer(&received.body, &received.attributes) {
            Some(Ok(pointer))
                if self.config().payloads.bucket.as_deref() == Some(pointer.uri.bucket()) =>
            {
                Some(pointer.uri)
            }
            _ => None,
        };
        self.delete_with(received.receipt.clone(), payload).await;
    }

    async fn delete_with(&self, receipt: String, payload: Option<BlobUri>) {
        if self.deletes.send((receipt, payload)).await.is_err() {
            error!("the delete batcher is gone; the message will be received again");
        }
    }

    /// Sets when messages come back. A queue that is briefly unreachable
    /// is tried again for a few seconds; after that the lease lapses on its
    /// own and the message comes back at the end of its visibility timeout.
    pub(super) async fn change_visibility(&self, entries: &[(String, Duration)]) {
        let changed = ride_out_outage(
            VISIBILITY_RETRY_LONGEST,
            "could not change visibility",
            || self.binding.queue.change_visibility_batch(entries),
        )
        .await;
        match changed {
            Ok(failures) => {
                for failure in failures {
                    warn!(reason = %failure.reason, "could not change visibility");
                }
            }
            Err(err) => {
                warn!(error = %err, "could not change visibility; the lease will lapse on its own")
            }
        }
    }
}

/// Runs a queue call again while the queue is unavailable, pausing 250 ms
/// and doubling up to `longest`; each retry is logged as `failed; retrying`.
/// Other errors, and the last unavailable one, are returned.
pub(super) async fn ride_out_outage<T, F>(
    longest: Duration,
    failed: &str,
    mut call: impl FnMut() -> F,
) -> Result<T, QueueError>
where
    F: Future<Output = Result<T, QueueError>>,
{
    let mut pause = Duration::from_millis(250);
    loop {
        match call().await {
            Err(QueueError::Unavailable(err)) if pause <= longest => {
                warn!(error = %err, retry_in = ?pause, "{failed}; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            other => return other,
        }
    }
}

/// The longest pause between attempts to change visibility while the queue
/// is unavailable; the attempts span about 15 s in all.
const VISIBILITY_RETRY_LONGEST: Duration = Duration::from_secs(8);

/// The longest pause between attempts to delete a batch while the queue is
/// unavailable; the attempts span about a minute in all.
const DELETE_RETRY_LONGEST: Duration = Duration::from_secs(32);

/// Deletes finished messages in batches of up to ten, waiting a moment to
/// fill each batch, and then the payloads of those deleted (never of one
/// whose delete failed: it will run again, and needs it). Ends when every
/// sender is gone, after a last flush.
pub(super) async fn delete_loop(
    queue: Arc<dyn Queue>,
    blobs: Arc<dyn crate::blobs::BlobStore>,
    mut finished: mpsc::Receiver<(String, Option<BlobUri>)>,
    deleted: prometheus_client::metrics::counter::Counter,
) {
    let mut payloads = Vec::new();
    let mut batch = Vec::with_capacity(crate::queue::MAX_BATCH);
    loop {
        let (first, payload) = match finished.recv().await {
            Some(next) => next,
            None => break,
        };
        payloads.extend(payload.map(|uri| (first.clone(), uri)));
        batch.push(first);
        let linger = tokio::time::sleep(DELETE_LINGER);
        tokio::pin!(linger);
        while batch.len() < crate::queue::MAX_BATCH {
            tokio::select! {
                next = finished.recv() => match next {
                    Some((receipt, payload)) => {
                        payloads.extend(payload.map(|uri| (receipt.clone(), uri)));
                        batch.push(receipt);
                    }
                    None => break,
                },
                _ = &mut linger => break,
            }
        }
        // A queue that is briefly unreachable is waited for: a message not
        // deleted would run again once its visibility timeout passes.
        let result = ride_out_outage(DELETE_RETRY_LONGEST, "delete failed", || {
            queue.delete_batch(&batch)
        })
        .await;
        match result {
            Ok(failures) => {
                deleted.inc_by((batch.len() - failures.len()) as u64);
                payloads.retain(|(receipt, _)| !failures.iter().any(|f| &f.receipt == receipt));
                for failure in failures {
                    warn!(queue = queue.name(), reason = %failure.reason, "delete failed; the message may be processed again");
                }
                let blobs = &blobs;
                let deleting = payloads.iter().map(|(_, uri)| async move {
                    if let Err(err) = blobs.delete(uri).await {
                        warn!(payload = %uri, error = %err, "could not delete a finished message's payload");
                    }
                });
                futures_util::future::join_all(deleting).await;
            }
            Err(err) => {
                warn!(queue = queue.name(), error = %err, count = batch.len(), "delete failed; the messages may be processed again")
            }
        }
        batch.clear();
        payloads.clear();
    }
}

impl BindingState {
    /// Returns messages the host took and could not start (a pause, a
    /// shutdown, a removed plugin, a FIFO group held back) without costing
    /// them an attempt (see [`Queue::give_back`]). SQS's redrive policy
    /// counts every receive, so it would move a message whose count has
    /// reached the limit at its next receive, attempts left or not: such a
    /// message goes back as a fresh copy instead, its id and attempts
    /// sealed into it.
    pub(super) async fn give_back(&self, messages: Vec<Received>) {
        if messages.is_empty() {
            return;
        }
        self.metrics.given_back.inc_by(messages.len() as u64);
        let mut back = Vec::with_capacity(messages.len());
        for message in messages {
            // This receive was no attempt.
            let attempts = self.attempts(&message).saturating_sub(1);
            if self.would_be_redriven(&message, attempts)
                && self.requeue(&message, attempts, Duration::ZERO).await
            {
                continue;
            }
            back.push(message);
        }
        if back.is_empty() {
            return;
        }
        let queue = &self.binding.queue;
        let given = ride_out_outage(
            VISIBILITY_RETRY_LONGEST,
            "could not give messages back",
            || queue.give_back(&back),
        )
        .await;
        match given {
            Ok(failures) => {
                for failure in failures {
                    warn!(reason = %failure.reason, "could not give a message back");
                }
            }
            Err(err) => {
                warn!(error = %err, "could not give messages back; they come back when their lease lapses")
            }
        }
    }

    /// Attempts the message has had, this receive included: the queue's
    /// receives less those given back unstarted, plus the attempts of the
    /// copy it was requeued from.
    pub(super) fn attempts(&self, received: &Received) -> u32 {
        let carried = received
            .attributes
            .iter()
            .find(|(name, _)| name == ATTEMPTS_ATTRIBUTE)
            .and_then(|(_, sealed)| self.seal.open_attempts(sealed, &self.sealed_as(received)))
            .unwrap_or(0);
        received
            .receive_count
            .saturating_sub(received.given_back)
            .saturating_add(carried)
    }

    /// Whether the queue's own redrive policy, counting given-back
    /// receives too, would move the message at its next receive while it
    /// has attempts left. FIFO messages are not requeued (a copy would go
    /// behind its group).
    pub(super) fn would_be_redriven(&self, received: &Received, attempts: u32) -> bool {
        let max = self.config().max_receive_count;
        self.binding.queue.counts_given_back()
            && !self.binding.queue.is_fifo()
            && received.receive_count >= max
            && attempts < max
    }

    /// Sends a fresh copy of the message, to be received after `delay`,
    /// carrying its id and the attempts it has had, sealed, and deletes the
    /// original. Returns false (the original left as it was) if the copy
    /// could not be made.
    pub(super) async fn requeue(
        &self,
        received: &Received,
        attempts: u32,
        delay: Duration,
    ) -> bool {
        let of = self.sealed_as(received);
        let mut attributes = vec![
            (
                MESSAGE_ID_ATTRIBUTE.to_string(),
                self.seal.seal(&self.job_id(received), &of),
            ),
            (
                ATTEMPTS_ATTRIBUTE.to_string(),
                self.seal.seal_attempts(attempts, &of),
            ),
        ];
        let room = MAX_ATTRIBUTES - attributes.len();
        let senders: Vec<_> = received
            .attributes
            .iter()
            .filter(|(name, _)| !name.starts_with("wasq-"))
            .cloned()
            .collect();
        if senders.len() > room {
            return false;
        }
        attributes.extend(senders);
        let copy = Outgoing {
            body: received.body.clone(),
            attributes,
            delay: delay.min(crate::queue::MAX_DELAY),
            group_id: None,
            dedup_id: None,
        };
        if crate::queue::message_size(&copy) > self.binding.queue.max_message_size() {
            return false;
        }
        let queue = self.binding.queue.as_ref();
        match queue.dead_letter(&received.receipt, queue, copy).await {
            Ok(Moved::Sent) => {
                info!(
                    attempts,
                    "requeued as a fresh copy: the queue's redrive policy would move it with attempts left"
                );
                self.delete(received.receipt.clone()).await;
                true
            }
            Ok(Moved::Moved) => {
                self.metrics.deleted.inc();
                true
            }
            Ok(Moved::Stale) => true,
            Err(err) => {
                warn!(error = %err, "could not requeue the message");
                false
            }
        }
    }
}
