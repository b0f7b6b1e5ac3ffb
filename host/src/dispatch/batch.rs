//! A batch processor's run: the batch's payloads read and filters applied,
//! one instance for all of it under leases renewed together, and each
//! message settled by its own outcome. On FIFO queues a group keeps its
//! order: after its first message that is not done, the rest of the group
//! is made visible again, their outcomes set aside.

use super::*;
use futures_util::StreamExt as _;

/// Messages settled at once after a batch.
const SETTLING: usize = 16;

impl BindingState {
    pub(super) async fn process_batch(self: &Arc<Self>, batch: Vec<Received>) {
        let Some(plugin) = self.binding.plugin.current() else {
            warn!(
                count = batch.len(),
                "the plugin was removed; giving the batch back"
            );
            self.give_back(batch).await;
            return;
        };
        if !plugin.is_batch() {
            // Replaced by a one-message processor since the receive: the
            // batch goes back, to be received as that processor wants.
            info!(
                count = batch.len(),
                "the plugin no longer takes batches; giving the batch back"
            );
            self.give_back(batch).await;
            return;
        }
        // Leases are kept from here: reading payloads takes time too.
        let heartbeat = self.heartbeat(batch.iter().map(|m| m.receipt.clone()).collect());
        let runs = self.prepare_batch(batch, &plugin).await;
        heartbeat.cancel();
        if runs.is_empty() {
            return;
        }
        let span = error_span!(
            "batch",
            first_message_id = %runs[0].1.id,
            queue = self.binding.queue.name(),
            plugin = %plugin.name(),
            size = runs.len(),
        );
        self.run_batch(runs, plugin).instrument(span).await;
    }

    /// The batch's messages as the processor is to see them: payloads
    /// read and filters applied. Within the batch's byte budget (half the
    /// processor's memory: the bodies are copied into it); what does not
    /// fit goes back unstarted, as does a second copy of one message (a
    /// queue may deliver one twice) and, on FIFO, a group's messages after
    /// one that could not be read.
    async fn prepare_batch(
        self: &Arc<Self>,
        batch: Vec<Received>,
        plugin: &Arc<Plugin>,
    ) -> Vec<(Received, Message)> {
        let fifo = self.binding.queue.is_fifo();
        let budget = plugin.limits().memory / 2;
        let mut used = 0u64;
        let mut seen = std::collections::HashSet::new();
        let mut stopped = std::collections::HashSet::new();
        let mut held_back = Vec::new();
        let mut runs: Vec<(Received, Message)> = Vec::with_capacity(batch.len());
        let mut rest = batch.into_iter();
        while let Some(received) = rest.next() {
            let id = self.job_id(&received);
            if (fifo && stopped.contains(&received.group_id)) || !seen.insert(id.clone()) {
                held_back.push(received);
                continue;
            }
            let declared = match crate::payload::pointer(&received.body, &received.attributes) {
                Some(Ok(pointer)) => pointer.size,
                _ => received.body.len() as u64,
            };
            if used + declared > budget && !runs.is_empty() {
                // The rest wait for the next batch.
                held_back.push(received);
                held_back.extend(rest.by_ref());
                break;
            }
            let Some((body, attributes)) = self.resolve_payload(&received, plugin).await else {
                stopped.insert(received.group_id.clone());
                continue;
            };
            if !self.admits(&received, &id, plugin, &body, &attributes) {
                self.metrics.filtered_out.inc();
                self.finish(&received).await;
                continue;
            }
            used += body.len() as u64;
            let message = Message {
                id,
                body,
                attributes,
                receive_count: received.receive_count,
                sent_at_ms: received.sent_at_ms,
                group_id: received.group_id.clone(),
                queue: self.binding.queue.name().to_string(),
            };
            runs.push((received, message));
        }
        if !held_back.is_empty() {
            debug!(
                count = held_back.len(),
                "giving back what this batch does not take"
            );
        }
        self.give_back(held_back).await;
        runs
    }

    async fn run_batch(self: &Arc<Self>, runs: Vec<(Received, Message)>, plugin: Arc<Plugin>) {
        let count = runs.len();
        let receipts: Vec<String> = runs.iter().map(|(r, _)| r.receipt.clone()).collect();
        let (receiveds, messages): (Vec<Received>, Vec<Message>) = runs.into_iter().unzip();
        self.metrics.invoked.inc_by(count as u64);
        self.metrics.in_flight.inc_by(count as i64);
        let log = LogSink::new(
            plugin.name().clone(),
            format!("batch-{}", messages[0].id).as_str().into(),
            false,
        );
        let heartbeat = self.heartbeat(receipts.clone()).drop_guard();
        let started = Instant::now();
        let running = std::panic::AssertUnwindSafe(self.runtime.run_batch(
            &plugin,
            &self.services,
            &messages,
            log,
        ))
        .catch_unwind();
        let run = tokio::select! {
            run = running => Some(run),
            _ = self.abort.cancelled() => None,
        };
        drop(heartbeat);
        self.metrics.in_flight.dec_by(count as i64);
        let outcomes = match run {
            Some(Ok(run)) => {
                if let Some(fault) = &run.fault {
                    warn!(%fault, "batch processor failed: every message of the batch is retried");
                }
                run.outcomes
            }
            Some(Err(panic)) => {
                let what = super::message::panic_text(panic.as_ref());
                error!(panic = %what, "the host panicked while running the batch");
                let reason = format!("the host panicked while running the batch: {what}");
                vec![
                    Outcome::Retry {
                        reason,
                        delay: None
                    };
                    count
                ]
            }
            None => {
                info!("batch released unfinished at shutdown");
                let release: Vec<_> = receipts.into_iter().map(|r| (r, Duration::ZERO)).collect();
                self.change_visibility(&release).await;
                return;
            }
        };
        let elapsed = started.elapsed();
        self.metrics.handle_seconds.observe(elapsed.as_secs_f64());
        self.timeline.observe(elapsed);
        // A FIFO group stops at its first message not done: the rest go
        // back, in order, their outcomes set aside.
        drop(messages);
        let fifo = self.binding.queue.is_fifo();
        let mut failed_groups = std::collections::HashSet::new();
        let mut settle = Vec::with_capacity(count);
        let mut set_aside = Vec::new();
        for (received, outcome) in receiveds.into_iter().zip(outcomes) {
            if fifo && failed_groups.contains(&received.group_id) {
                set_aside.push(received);
                continue;
            }
            if !matches!(outcome, Outcome::Done(_)) {
                self.metrics.failed.inc();
                if fifo {
                    failed_groups.insert(received.group_id.clone());
                }
            }
            settle.push((received, outcome));
        }
        if !set_aside.is_empty() {
            // Set aside for the group's order, by the host: no attempt.
            info!(
                count = set_aside.len(),
                "FIFO: giving back the messages after a group's first failure, their outcomes set aside"
            );
            self.give_back(set_aside).await;
        }
        let plugin = &plugin;
        futures_util::stream::iter(settle)
            .for_each_concurrent(SETTLING, |(received, outcome)| async move {
                let span = error_span!("message", message_id = %self.job_id(&received));
                self.settle(&received, plugin, outcome)
                    .instrument(span)
                    .await;
            })
            .await;
    }
}
