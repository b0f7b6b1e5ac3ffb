//! Polling: pollers take permits for a batch, long-poll the queue, and hand
//! each message (or FIFO group) to a task of its own; pollers are added
//! while batches come back full and retire while they come back empty.

use super::*;

/// The longest wait after a failed receive.
const RECEIVE_BACKOFF_CAP: Duration = Duration::from_secs(30);

/// How long a poller holding some permits waits for more to come free
/// before it receives.
const PERMIT_GATHER: Duration = Duration::from_millis(5);

impl BindingState {
    /// One poller: take permits for a batch, receive, hand each message (or
    /// FIFO group) to a task. Pollers are added while batches come back full
    /// and retire while they come back empty.
    pub(super) async fn poll(self: Arc<Self>) {
        loop {
            // A binding whose plugin file was removed pauses here.
            let Some(plugin) = self.binding.plugin.available(&self.stop).await else {
                break;
            };
            // A batch processor takes a whole batch on one instance;
            // otherwise never more messages than can run at once.
            let batching = plugin.is_batch();
            drop(plugin);
            let batch_size = if batching {
                self.config().batch_size
            } else {
                self.config()
                    .batch_size
                    .min(self.config().max_concurrency)
                    .min(crate::queue::MAX_BATCH)
            };
            let wanted = if batching { 1 } else { batch_size };
            // A paused binding receives nothing until it is resumed.
            let mut paused = self.paused.clone();
            if *paused.borrow() {
                tokio::select! {
                    resumed = paused.wait_for(|p| !*p) => if resumed.is_err() { break },
                    _ = self.stop.cancelled() => break,
                }
            }
            // One permit is waited for; more are taken as they come free
            // within a moment, so a batch never asks for more messages than
            // can start at once, and messages that finish together are
            // replaced by one receive rather than one each.
            let mut permits = tokio::select! {
                permit = self.permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                _ = self.stop.cancelled() => break,
            };
            let gather_until = tokio::time::Instant::now() + PERMIT_GATHER;
            while permits.num_permits() < wanted {
                match tokio::time::timeout_at(gather_until, self.permits.clone().acquire_owned())
                    .await
                {
                    Ok(Ok(more)) => permits.merge(more),
                    _ => break,
                }
            }
            // A pause cuts a receive under way short, as a stop does.
            let receiving = self.stop.child_token();
            let batch = {
                let mut paused = self.paused.clone();
                let cut_at_pause = async {
                    let _ = paused.wait_for(|p| *p).await;
                    receiving.cancel();
                    std::future::pending::<()>().await
                };
                let size = if batching {
                    batch_size
                } else {
                    permits.num_permits()
                };
                tokio::select! {
                    batch = self.receive_batch(size, &receiving) => batch,
                    _ = cut_at_pause => unreachable!("it never finishes"),
                }
            };
            self.mark_ready();
            // A receive that returned as the pause came: its messages go
            // straight back, to wait with the rest.
            if *self.paused.borrow() && !self.stop.is_cancelled() && !batch.is_empty() {
                info!(
                    count = batch.len(),
                    "paused: giving back messages received at the last moment"
                );
                self.give_back(batch).await;
                continue;
            }
            // A receive that was under way at shutdown still returns what it
            // took: give it straight back rather than start it now.
            if self.stop.is_cancelled() && !batch.is_empty() {
                info!(
                    count = batch.len(),
                    "shutting down: giving back messages received at the last moment"
                );
                self.give_back(batch).await;
                break;
            }
            let received = batch.len();
            self.metrics.received.inc_by(received as u64);
            if batching {
                if !batch.is_empty() {
                    let state = self.clone();
                    self.tracker.spawn(async move {
                        state.process_batch(batch).await;
                        drop(permits);
                    });
                }
            } else {
                self.spawn_groups(batch, permits);
            }
            if self.stop.is_cancelled() {
                break;
            }
            // Scale: a full batch means more is waiting; an empty one means
            // this poller is not needed.
            let pollers = self.pollers.load(Ordering::Acquire);
            if received == batch_size && pollers < self.max_pollers {
                if self
                    .pollers
                    .compare_exchange(pollers, pollers + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.metrics.pollers.inc();
                    debug!(binding = %self.config().name, pollers = pollers + 1, "adding a poller");
                    self.clone().spawn_poller();
                }
            } else if received == 0
                && pollers > 1
                && self
                    .pollers
                    .compare_exchange(pollers, pollers - 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                debug!(binding = %self.config().name, pollers = pollers - 1, "retiring a poller");
                self.metrics.pollers.dec();
                return;
            }
        }
        self.pollers.fetch_sub(1, Ordering::AcqRel);
        self.metrics.pollers.dec();
    }

    /// Hands each message (or FIFO group) of a batch to a task of its own,
    /// each with its share of the permits.
    fn spawn_groups(
        self: &Arc<Self>,
        batch: Vec<Received>,
        mut permits: tokio::sync::OwnedSemaphorePermit,
    ) {
        for group in group_batch(batch, self.binding.queue.is_fifo()) {
            let Some(share) = permits.split(group.len()) else {
                break;
            };
            let state = self.clone();
            self.tracker.spawn(async move {
                state.process_group(group).await;
                drop(share);
            });
        }
        drop(permits);
    }

    pub(super) fn spawn_poller(self: Arc<Self>) {
        let tracker = self.tracker.clone();
        // Boxed as `dyn Send` so that a poller can start another.
        let poller: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(self.poll());
        tracker.spawn(poller);
    }

    /// One batch: a long poll, then, within the batching window, more
    /// receives to fill it.
    pub(super) async fn receive_batch(
        &self,
        size: usize,
        cancel: &CancellationToken,
    ) -> Vec<Received> {
        let config = self.config();
        let mut batch = Vec::new();
        let mut window_ends: Option<Instant> = None;
        // When the leases of what the batch holds were last taken or
        // renewed: a long window renews them as a heartbeat would.
        let mut leased_at = Instant::now();
        while batch.len() < size {
            if !batch.is_empty() && leased_at.elapsed() > config.visibility_timeout / 3 {
                self.renew_gathered(&mut batch).await;
                leased_at = Instant::now();
            }
            let (wait, cut_short) = match window_ends {
                None => (config.wait, false),
                // Short enough that the leases held are renewed in time;
                // an empty answer to a wait cut short is no end of the
                // window.
                Some(ends) => {
                    let left = ends.saturating_duration_since(Instant::now());
                    let lease = config.visibility_timeout / 3;
                    (left.min(lease), left > lease)
                }
            };
            if window_ends.is_some() && wait.is_zero() {
                break;
            }
            let want = (size - batch.len()).min(crate::queue::MAX_BATCH);
            match self
                .binding
                .queue
                .receive(want, wait, config.visibility_timeout, cancel)
                .await
            {
                Ok(messages) => {
                    self.receive_failures.store(0, Ordering::Release);
                    self.metrics.last_receive.set(unix_now().as_secs() as i64);
                    if let Some(oldest) = messages.iter().map(|m| m.sent_at_ms).min() {
                        self.oldest_received_ms.fetch_min(oldest, Ordering::AcqRel);
                    }
                    if messages.is_empty() {
                        if cut_short {
                            continue;
                        }
                        break;
                    }
                    if batch.is_empty() {
                        leased_at = Instant::now();
                    }
                    batch.extend(messages);
                }
                Err(err) => {
                    // A queue outage is logged and waited out, longer the
                    // longer it lasts (1 s doubling to 30 s); the loop goes on.
                    let failures = self.receive_failures.fetch_add(1, Ordering::AcqRel);
                    let pause = RECEIVE_BACKOFF_CAP.min(Duration::from_secs(1 << failures.min(5)));
                    warn!(binding = %config.name, queue = self.binding.queue.name(), error = %err, retry_in = ?pause, "receive failed; backing off");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.stop.cancelled() => {}
                    }
                    break;
                }
            }
            if config.batching_window.is_zero() {
                break;
            }
            window_ends.get_or_insert_with(|| Instant::now() + config.batching_window);
        }
        if !batch.is_empty() && leased_at.elapsed() > config.visibility_timeout / 3 {
            self.renew_gathered(&mut batch).await;
        }
        batch
    }
}

impl BindingState {
    /// Renews the leases of a batch still gathering. A message whose lease
    /// lapsed meanwhile is left to whoever holds it now; on a FIFO queue,
    /// so are the messages of its group after it (they must not run ahead
    /// of it), given back unstarted.
    async fn renew_gathered(&self, batch: &mut Vec<Received>) {
        let renew: Vec<_> = batch
            .iter()
            .map(|m| (m.receipt.clone(), self.config().visibility_timeout))
            .collect();
        let lapsed = match self.binding.queue.change_visibility_batch(&renew).await {
            Ok(failures) => failures,
            Err(err) => {
                warn!(error = %err, "could not renew the leases of a batch still gathering; they may lapse");
                return;
            }
        };
        if lapsed.is_empty() {
            return;
        }
        warn!(
            count = lapsed.len(),
            "leases lapsed while the batching window filled; leaving those messages"
        );
        let mut held_back = Vec::new();
        let mut stopped_groups: Vec<Option<String>> = Vec::new();
        let fifo = self.binding.queue.is_fifo();
        batch.retain(|m| {
            if lapsed.iter().any(|f| f.receipt == m.receipt) {
                if fifo {
                    stopped_groups.push(m.group_id.clone());
                }
                return false;
            }
            if fifo && stopped_groups.contains(&m.group_id) {
                held_back.push(m.clone());
                return false;
            }
            true
        });
        self.give_back(held_back).await;
    }
}

/// Splits a batch into the units that run concurrently: each message on its
/// own, or on FIFO queues each message group, in order.
pub(super) fn group_batch(batch: Vec<Received>, fifo: bool) -> Vec<Vec<Received>> {
    if !fifo {
        return batch.into_iter().map(|m| vec![m]).collect();
    }
    let mut groups: Vec<Vec<Received>> = Vec::new();
    for message in batch {
        match groups
            .iter_mut()
            .find(|g| g[0].group_id == message.group_id)
        {
            Some(group) => group.push(message),
            None => groups.push(vec![message]),
        }
    }
    groups
}
