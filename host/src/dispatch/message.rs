//! One message (or FIFO group) run: a fresh instance under the lease,
//! renewed by a heartbeat for as long as it runs, a panic caught and made
//! a retry.

use super::*;

impl BindingState {
    /// Runs a FIFO group's messages in order (a standard queue's "group" is
    /// one message). After a message that does not finish `done`, the rest
    /// are released unprocessed so that order holds.
    pub(super) async fn process_group(self: &Arc<Self>, group: Vec<Received>) {
        let mut rest: VecDeque<Received> = group.into();
        let mut first = true;
        while let Some(message) = rest.pop_front() {
            // A message that waited behind others of its group renews its
            // lease before it starts; if the lease is gone, so is the right
            // to run it (another receiver may hold it now).
            if !first && !self.renew(&message.receipt).await {
                warn!(message_id = %message.id, "lease lapsed while waiting for its group; leaving it and the rest of the group to the queue");
                break;
            }
            first = false;
            let succeeded = self.process(message).await;
            if (!succeeded || self.abort.is_cancelled()) && !rest.is_empty() {
                // Held back for the group's order: not run, so no attempt.
                self.give_back(rest.drain(..).collect()).await;
            }
        }
    }

    /// Renews a message's lease for a full visibility timeout.
    pub(super) async fn renew(&self, receipt: &str) -> bool {
        let renew = [(receipt.to_string(), self.config().visibility_timeout)];
        matches!(self.binding.queue.change_visibility_batch(&renew).await, Ok(failures) if failures.is_empty())
    }

    /// Runs one message and settles it. Returns whether it finished `done`.
    pub(super) async fn process(self: &Arc<Self>, received: Received) -> bool {
        // An error-level span, so that its fields reach every log line a
        // filter lets through, warnings included.
        let Some(plugin) = self.binding.plugin.current() else {
            warn!(message_id = %received.id, "the plugin was removed; giving the message back");
            self.give_back(vec![received]).await;
            return false;
        };
        let id = self.job_id(&received);
        let span = error_span!(
            "message",
            message_id = %id,
            queue = self.binding.queue.name(),
            plugin = %plugin.name(),
            receive_count = received.receive_count,
        );
        async {
            // The body the processor sees: the message's own, or the
            // payload its pointer names.
            let Some((body, attributes)) = self.resolve_payload(&received, &plugin).await else {
                return false;
            };
            if !self.admits(&received, &id, &plugin, &body, &attributes) {
                debug!("filtered out: deleted unprocessed");
                self.metrics.filtered_out.inc();
                self.finish(&received).await;
                return true;
            }
            self.metrics.in_flight.inc();
            let message = Message {
                id: id.clone(),
                body,
                attributes,
                receive_count: received.receive_count,
                sent_at_ms: received.sent_at_ms,
                group_id: received.group_id.clone(),
                queue: self.binding.queue.name().to_string(),
            };
            let log = LogSink::new(plugin.name().clone(), id.as_str().into(), false);
            // The lease is renewed until this guard drops: at the end of
            // the run, or while a panic unwinds.
            let heartbeat = self.heartbeat(vec![received.receipt.clone()]).drop_guard();
            let started = Instant::now();
            self.metrics.invoked.inc();
            // A panic anywhere in the run (the host's side of an import, a
            // backend) ends this message as a retry naming it, as the Lambda
            // runtime's CatchPanicService does; other messages go on.
            let running = std::panic::AssertUnwindSafe(self.runtime.run(
                &plugin,
                &self.services,
                &message,
                log,
            ))
            .catch_unwind();
            let run = tokio::select! {
                run = running => Some(run),
                _ = self.abort.cancelled() => None,
            };
            drop(heartbeat);
            self.metrics.in_flight.dec();
            let run = match run {
                Some(Ok(run)) => run,
                Some(Err(panic)) => {
                    let what = panic_text(panic.as_ref());
                    error!(panic = %what, "the host panicked while running the message");
                    crate::runtime::Run {
                        outcome: Outcome::Retry {
                            reason: format!("the host panicked while running the message: {what}"),
                            delay: None,
                        },
                        fault: None,
                        usage: Default::default(),
                        elapsed: started.elapsed(),
                    }
                }
                None => {
                    // It ran, with whatever it did meanwhile: an attempt,
                    // though cut short.
                    info!("released unfinished at shutdown");
                    self.change_visibility(&[(received.receipt.clone(), Duration::ZERO)])
                        .await;
                    return false;
                }
            };
            if !matches!(run.outcome, Outcome::Done(_)) {
                self.metrics.failed.inc();
            }
            self.metrics
                .handle_seconds
                .observe(run.elapsed.as_secs_f64());
            self.timeline.observe(run.elapsed);
            if let Some(fault) = &run.fault {
                warn!(%fault, "processor failed");
            }
            self.settle(&received, &plugin, run.outcome).await
        }
        .instrument(span)
        .await
    }

    /// The body and attributes the processor is to see. For a pointer to
    /// a large payload, the payload read from the binding's bucket; a
    /// pointer that cannot be read is dead-lettered with the reason (or
    /// retried, if the store may answer later), and `None` returned.
    pub(super) async fn resolve_payload(
        &self,
        received: &Received,
        plugin: &Plugin,
    ) -> Option<(String, Vec<(String, String)>)> {
        let pointer = match crate::payload::pointer(&received.body, &received.attributes) {
            None => return Some((received.body.clone(), received.attributes.clone())),
            Some(Ok(pointer)) => pointer,
            Some(Err(what)) => {
                let reason = format!("a large-payload pointer that cannot be followed: {what}");
                self.dead_letter(received, plugin, &reason).await;
                return None;
            }
        };
        match crate::payload::fetch(
            self.services.blobs.as_ref(),
            &pointer,
            &self.config().payloads,
        )
        .await
        {
            Ok(body) => Some((body, crate::payload::without_size(&received.attributes))),
            Err(PayloadError::Refused(reason)) => {
                self.dead_letter(received, plugin, &reason).await;
                None
            }
            Err(PayloadError::Unavailable(reason)) => {
                self.retry(received, plugin, reason, None).await;
                None
            }
        }
    }

    /// Whether the binding's filters (or else its plugin's) admit the
    /// message, its payload read. `messageId` is the id the processor
    /// would see (kept through a redrive or a requeue), and
    /// `ApproximateReceiveCount` its attempts, this one included.
    pub(super) fn admits(
        &self,
        received: &Received,
        id: &str,
        plugin: &Plugin,
        body: &str,
        attributes: &[(String, String)],
    ) -> bool {
        let filters = match &self.config().filters {
            Some(filters) => filters,
            None => plugin.filters(),
        };
        if filters.is_empty() {
            return true;
        }
        filters.admits(&Subject {
            id,
            body,
            attributes,
            receive_count: self.attempts(received),
            sent_at_ms: received.sent_at_ms,
            group_id: received.group_id.as_deref(),
        })
    }

    /// Keeps the leases of a running message (or batch): every third of
    /// the visibility timeout, all of them are renewed in full, ten to a
    /// call.
    pub(super) fn heartbeat(self: &Arc<Self>, receipts: Vec<String>) -> CancellationToken {
        let done = CancellationToken::new();
        let token = done.clone();
        let state = self.clone();
        let every = (self.config().visibility_timeout / 3).max(Duration::from_millis(100));
        // Under the tracker, so shutdown waits for it, and in the message's
        // (or batch's) span, so its log lines say which.
        let span = tracing::Span::current();
        self.tracker.spawn(
            async move {
                let renew: Vec<_> = receipts
                    .into_iter()
                    .map(|r| (r, state.config().visibility_timeout))
                    .collect();
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    tokio::select! {
                        _ = ticks.tick() => {
                            match state.binding.queue.change_visibility_batch(&renew).await {
                                Ok(failures) if failures.is_empty() => debug!("visibility renewed"),
                                Ok(failures) => warn!(count = failures.len(), "could not renew visibility: the lease may lapse"),
                                Err(err) => warn!(error = %err, "could not renew visibility: the lease may lapse"),
                            }
                        }
                        _ = token.cancelled() => break,
                    }
                }
            }
            .instrument(span),
        );
        done
    }
}

/// What a panic said, when it said it with a string.
pub(super) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string());
    crate::text::truncate(&text, 1024).into_owned()
}
