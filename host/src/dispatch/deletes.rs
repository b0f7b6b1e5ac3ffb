//! Deletes and visibility changes: deletes gathered into batches of ten,
//! and both ridden through short queue outages.

use super::*;

/// How long deletes wait to be batched.
const DELETE_LINGER: Duration = Duration::from_millis(20);

impl BindingState {
    pub(super) async fn delete(&self, receipt: String) {
        if self.deletes.send(receipt).await.is_err() {
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
/// fill each batch. Ends when every sender is gone, after a last flush.
pub(super) async fn delete_loop(
    queue: Arc<dyn Queue>,
    mut receipts: mpsc::Receiver<String>,
    deleted: prometheus_client::metrics::counter::Counter,
) {
    let mut batch = Vec::with_capacity(crate::queue::MAX_BATCH);
    loop {
        let first = match receipts.recv().await {
            Some(receipt) => receipt,
            None => break,
        };
        batch.push(first);
        let linger = tokio::time::sleep(DELETE_LINGER);
        tokio::pin!(linger);
        while batch.len() < crate::queue::MAX_BATCH {
            tokio::select! {
                next = receipts.recv() => match next {
                    Some(receipt) => batch.push(receipt),
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
                for failure in failures {
                    warn!(queue = queue.name(), reason = %failure.reason, "delete failed; the message may be processed again");
                }
            }
            Err(err) => {
                warn!(queue = queue.name(), error = %err, count = batch.len(), "delete failed; the messages may be processed again")
            }
        }
        batch.clear();
    }
}
