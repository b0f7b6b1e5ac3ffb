//! Poll → run → settle. Each binding ties a queue to a processor: pollers
//! long-poll for batches while permits are free, every message runs in a
//! fresh instance, and each ends in exactly one of delete, retry with
//! backoff, or dead-letter. Nothing here ends the loop but shutdown.

pub mod alarm;
pub mod backoff;
pub mod metrics;
pub mod seal;

pub use alarm::Webhook;
pub use backoff::Backoff;
pub use metrics::{BindingMetrics, Metrics};
pub use seal::IdSeal;

use crate::queue::{
    MAX_ATTRIBUTES, Moved, Outgoing, Queue, QueueError, Received, SOURCE_ATTRIBUTE,
};
use crate::records::{PutOptions, RecordsError};
use crate::runtime::{LogSink, Message, Outcome, Plugin, PluginSlot, Runtime, Services};
use futures_util::FutureExt as _;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, error_span, info, warn};

/// The table where results of `done` are recorded, under `QUEUE/MESSAGE_ID`.
pub const RESULTS_TABLE: &str = "results";
/// Attributes a dead letter carries.
pub const REASON_ATTRIBUTE: &str = "wasq-reason";
pub const PLUGIN_ATTRIBUTE: &str = "wasq-plugin";
pub const RECEIVE_COUNT_ATTRIBUTE: &str = "wasq-receive-count";
pub use crate::queue::MESSAGE_ID_ATTRIBUTE;
/// Longest reason kept on a dead letter.
const MAX_REASON: usize = 1024;
/// The longest wait after a failed receive.
const RECEIVE_BACKOFF_CAP: Duration = Duration::from_secs(30);

/// How long a poller holding some permits waits for more to come free
/// before it receives.
const PERMIT_GATHER: Duration = Duration::from_millis(5);

/// How long deletes wait to be batched.
const DELETE_LINGER: Duration = Duration::from_millis(20);

/// How one binding behaves; validated by the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingConfig {
    /// The name in logs and metrics.
    pub name: String,
    /// Messages per receive, 1–10.
    pub batch_size: usize,
    /// How long to gather a fuller batch after the first message.
    pub batching_window: Duration,
    /// Messages in flight at most.
    pub max_concurrency: usize,
    /// How long a received message stays hidden; heartbeats renew it.
    pub visibility_timeout: Duration,
    /// Long-poll wait per receive.
    pub wait: Duration,
    pub backoff: Backoff,
    /// Receives after which a failing message is dead-lettered.
    pub max_receive_count: u32,
    /// Warn when the dead-letter queue holds more than this many messages.
    pub dlq_alarm: Option<u64>,
}

impl Default for BindingConfig {
    fn default() -> Self {
        BindingConfig {
            name: "default".into(),
            batch_size: 10,
            batching_window: Duration::ZERO,
            max_concurrency: 8,
            visibility_timeout: Duration::from_secs(180),
            wait: Duration::from_secs(20),
            backoff: Backoff::default(),
            max_receive_count: 5,
            dlq_alarm: None,
        }
    }
}

/// A queue bound to a processor.
pub struct Binding {
    pub config: BindingConfig,
    pub queue: Arc<dyn Queue>,
    /// Where rejected and exhausted messages go; `None` only when the user
    /// opted in to dropping them.
    pub dlq: Option<Arc<dyn Queue>>,
    /// The plugin, read per message: a reload replaces it for the messages
    /// that start afterwards.
    pub plugin: PluginSlot,
}

/// Runs bindings until shutdown.
pub struct Dispatcher {
    pub runtime: Arc<Runtime>,
    pub services: Services,
    pub metrics: Arc<Metrics>,
    /// How long in-flight messages may take to finish after shutdown.
    pub grace: Duration,
    /// Where dead-letter alarms are POSTed, if anywhere.
    pub alarm_webhook: Option<Webhook>,
    /// Cancelled to cut the grace period short (a second SIGTERM).
    pub hurry: CancellationToken,
    /// Seals the id a dead letter carries, and opens it when the letter
    /// comes back redriven.
    pub seal: IdSeal,
}

/// Whether every binding's queue has answered at least once.
#[derive(Clone, Default)]
pub struct Readiness {
    pending: Arc<AtomicUsize>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }
}

impl Dispatcher {
    /// Runs `bindings` until `shutdown` resolves; then stops receiving, lets
    /// in-flight messages finish within the grace period, and releases the
    /// rest (visibility 0). Returns when everything is settled or released.
    pub async fn run(
        &self,
        bindings: Vec<Binding>,
        readiness: Readiness,
        shutdown: impl Future<Output = ()>,
    ) {
        let stop = CancellationToken::new();
        let abort = CancellationToken::new();
        let tracker = TaskTracker::new();
        readiness.pending.store(bindings.len(), Ordering::Release);
        let names: Vec<String> = bindings.iter().map(|b| b.config.name.clone()).collect();
        let first_done = Arc::new(AtomicBool::new(false));
        for binding in bindings {
            let (deletes, delete_rx) = mpsc::channel(1024);
            let metrics = self.metrics.binding(&binding.config.name);
            let alarm = binding.config.dlq_alarm.map(|threshold| {
                std::sync::Mutex::new(alarm::Alarm::new(
                    threshold,
                    metrics.dlq_alarm.clone(),
                    self.alarm_webhook.clone(),
                ))
            });
            let state = Arc::new(BindingState {
                metrics,
                alarm,
                newest_reason: std::sync::Mutex::new(None),
                oldest_received_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
                permits: Arc::new(Semaphore::new(binding.config.max_concurrency)),
                max_pollers: binding
                    .config
                    .max_concurrency
                    .div_ceil(binding.config.batch_size)
                    .max(1),
                pollers: AtomicUsize::new(1),
                receive_failures: AtomicU32::new(0),
                polled: AtomicBool::new(false),
                readiness: readiness.clone(),
                binding,
                runtime: self.runtime.clone(),
                services: self.services.clone(),
                seal: self.seal.clone(),
                deletes,
                first_done: first_done.clone(),
                stop: stop.clone(),
                abort: abort.clone(),
                tracker: tracker.clone(),
            });
            tracker.spawn(delete_loop(
                state.binding.queue.clone(),
                delete_rx,
                state.metrics.deleted.clone(),
            ));
            tracker.spawn(state.clone().depth_loop());
            state.metrics.pollers.inc();
            state.spawn_poller();
        }
        shutdown.await;
        info!("shutting down: no more receives; waiting for messages in flight");
        stop.cancel();
        tracker.close();
        tokio::select! {
            finished = tokio::time::timeout(self.grace, tracker.wait()) => {
                if finished.is_err() {
                    warn!(grace = ?self.grace, "grace period over: releasing unfinished messages");
                    abort.cancel();
                    tracker.wait().await;
                }
            }
            // A second signal: no more waiting.
            _ = self.hurry.cancelled() => {
                warn!("asked again to stop: releasing unfinished messages now");
                abort.cancel();
                tracker.wait().await;
            }
        }
        for name in names {
            let m = self.metrics.binding(&name);
            info!(
                binding = %name,
                received = m.received.get(),
                done = m.done.get(),
                retried = m.retried.get(),
                rejected = m.rejected.get(),
                dead_lettered = m.dead_lettered.get(),
                "binding stopped"
            );
        }
        info!("all messages settled or released");
    }
}

struct BindingState {
    binding: Binding,
    runtime: Arc<Runtime>,
    services: Services,
    seal: IdSeal,
    metrics: BindingMetrics,
    /// The alarm on the dead-letter queue's depth, if the binding has one.
    alarm: Option<std::sync::Mutex<alarm::Alarm>>,
    /// The reason this host last dead-lettered a message with.
    newest_reason: std::sync::Mutex<Option<String>>,
    /// When the oldest message received since the last stats tick was sent
    /// (Unix ms; `u64::MAX` for none).
    oldest_received_ms: std::sync::atomic::AtomicU64,
    permits: Arc<Semaphore>,
    max_pollers: usize,
    pollers: AtomicUsize,
    /// Receives that failed in a row; the wait before the next grows with
    /// them.
    receive_failures: AtomicU32,
    polled: AtomicBool,
    readiness: Readiness,
    /// Receipts of finished messages, for batched deletion.
    deletes: mpsc::Sender<String>,
    /// Set by the first message done in this run, of any binding.
    first_done: Arc<AtomicBool>,
    /// Stops receiving.
    stop: CancellationToken,
    /// Abandons messages still running after the grace period.
    abort: CancellationToken,
    tracker: TaskTracker,
}

impl BindingState {
    fn config(&self) -> &BindingConfig {
        &self.binding.config
    }

    /// One poller: take permits for a batch, receive, hand each message (or
    /// FIFO group) to a task. Pollers are added while batches come back full
    /// and retire while they come back empty.
    async fn poll(self: Arc<Self>) {
        // Never more than can run at once.
        let batch_size = self.config().batch_size.min(self.config().max_concurrency);
        loop {
            // A binding whose plugin file was removed pauses here.
            if self.binding.plugin.available(&self.stop).await.is_none() {
                break;
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
            while permits.num_permits() < batch_size {
                match tokio::time::timeout_at(gather_until, self.permits.clone().acquire_owned())
                    .await
                {
                    Ok(Ok(more)) => permits.merge(more),
                    _ => break,
                }
            }
            let batch = self.receive_batch(permits.num_permits()).await;
            self.mark_ready();
            // A receive that was under way at shutdown still returns what it
            // took: give it straight back rather than start it now.
            if self.stop.is_cancelled() && !batch.is_empty() {
                let release: Vec<_> = batch
                    .iter()
                    .map(|m| (m.receipt.clone(), Duration::ZERO))
                    .collect();
                info!(
                    count = release.len(),
                    "shutting down: releasing messages received at the last moment"
                );
                self.change_visibility(&release).await;
                break;
            }
            let received = batch.len();
            self.metrics.received.inc_by(received as u64);
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

    fn spawn_poller(self: Arc<Self>) {
        let tracker = self.tracker.clone();
        // Boxed as `dyn Send` so that a poller can start another.
        let poller: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(self.poll());
        tracker.spawn(poller);
    }

    /// One batch: a long poll, then, within the batching window, more
    /// receives to fill it.
    async fn receive_batch(&self, size: usize) -> Vec<Received> {
        let config = self.config();
        let mut batch = Vec::new();
        let mut window_ends: Option<Instant> = None;
        while batch.len() < size {
            let wait = match window_ends {
                None => config.wait,
                Some(ends) => ends.saturating_duration_since(Instant::now()),
            };
            if window_ends.is_some() && wait.is_zero() {
                break;
            }
            let want = size - batch.len();
            match self
                .binding
                .queue
                .receive(want, wait, config.visibility_timeout, &self.stop)
                .await
            {
                Ok(messages) => {
                    self.receive_failures.store(0, Ordering::Release);
                    self.metrics.last_receive.set(unix_now().as_secs() as i64);
                    if let Some(oldest) = messages.iter().map(|m| m.sent_at_ms).min() {
                        self.oldest_received_ms.fetch_min(oldest, Ordering::AcqRel);
                    }
                    if messages.is_empty() {
                        break;
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
        batch
    }

    /// Runs a FIFO group's messages in order (a standard queue's "group" is
    /// one message). After a message that does not finish `done`, the rest
    /// are released unprocessed so that order holds.
    async fn process_group(self: &Arc<Self>, group: Vec<Received>) {
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
                let release: Vec<_> = rest
                    .drain(..)
                    .map(|m| (m.receipt, Duration::ZERO))
                    .collect();
                self.change_visibility(&release).await;
            }
        }
    }

    /// Renews a message's lease for a full visibility timeout.
    async fn renew(&self, receipt: &str) -> bool {
        let renew = [(receipt.to_string(), self.config().visibility_timeout)];
        matches!(self.binding.queue.change_visibility_batch(&renew).await, Ok(failures) if failures.is_empty())
    }

    /// Runs one message and settles it. Returns whether it finished `done`.
    async fn process(self: &Arc<Self>, received: Received) -> bool {
        // An error-level span, so that its fields reach every log line a
        // filter lets through, warnings included.
        let Some(plugin) = self.binding.plugin.current() else {
            warn!(message_id = %received.id, "the plugin was removed; releasing the message");
            self.change_visibility(&[(received.receipt.clone(), Duration::ZERO)])
                .await;
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
            self.metrics.in_flight.inc();
            let message = Message {
                id: id.clone(),
                body: received.body.clone(),
                attributes: received.attributes.clone(),
                receive_count: received.receive_count,
                sent_at_ms: received.sent_at_ms,
                group_id: received.group_id.clone(),
                queue: self.binding.queue.name().to_string(),
            };
            let log = LogSink::new(plugin.name().clone(), id.as_str().into(), false);
            // The lease is renewed until this guard drops: at the end of
            // the run, or while a panic unwinds.
            let heartbeat = self.heartbeat(received.receipt.clone()).drop_guard();
            let started = Instant::now();
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
                    info!("released unfinished at shutdown");
                    self.change_visibility(&[(received.receipt.clone(), Duration::ZERO)])
                        .await;
                    return false;
                }
            };
            self.metrics
                .handle_seconds
                .observe(run.elapsed.as_secs_f64());
            if let Some(fault) = &run.fault {
                warn!(%fault, "processor failed");
            }
            self.settle(&received, &plugin, run.outcome).await
        }
        .instrument(span)
        .await
    }

    /// Keeps a running message's lease: every third of the visibility
    /// timeout, the timeout is renewed in full.
    fn heartbeat(self: &Arc<Self>, receipt: String) -> CancellationToken {
        let done = CancellationToken::new();
        let token = done.clone();
        let state = self.clone();
        let every = (self.config().visibility_timeout / 3).max(Duration::from_millis(100));
        // Under the tracker, so shutdown waits for it, and in the message's
        // span, so its log lines say which message.
        let span = tracing::Span::current();
        self.tracker.spawn(
            async move {
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    tokio::select! {
                        _ = ticks.tick() => {
                            if state.renew(&receipt).await {
                                debug!("visibility renewed");
                            } else {
                                warn!("could not renew visibility: the lease may lapse");
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

    /// Ends a message in exactly one of: delete, retry with backoff,
    /// dead-letter.
    async fn settle(&self, received: &Received, plugin: &Plugin, outcome: Outcome) -> bool {
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
                self.delete(received.receipt.clone()).await;
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
    async fn retry(
        &self,
        received: &Received,
        plugin: &Plugin,
        reason: String,
        delay: Option<Duration>,
    ) {
        let config = self.config();
        if received.receive_count >= config.max_receive_count {
            let reason = format!(
                "gave up after {} receives; last: {reason}",
                received.receive_count
            );
            self.dead_letter(received, plugin, &reason).await;
        } else {
            let delay = delay.unwrap_or_else(|| config.backoff.delay(received.receive_count));
            info!(%reason, delay_secs = delay.as_secs_f64(), "retry");
            self.metrics.retried.inc();
            self.change_visibility(&[(received.receipt.clone(), delay)])
                .await;
        }
    }

    /// The id a processor sees and results are recorded under: the queue's
    /// own, or for a redriven dead letter the id it had when it was sent,
    /// if this host sealed it.
    fn job_id(&self, received: &Received) -> String {
        received
            .attributes
            .iter()
            .find(|(name, _)| name == MESSAGE_ID_ATTRIBUTE)
            .and_then(|(_, sealed)| self.seal.open(sealed))
            .map_or_else(|| received.id.clone(), str::to_string)
    }

    /// Sends a message to the dead-letter queue with its reason, and
    /// deletes it (in one step where the backend can). If the send fails,
    /// the message stays (it will be received again): nothing is lost.
    async fn dead_letter(&self, received: &Received, plugin: &Plugin, reason: &str) {
        let reason: String = reason.chars().take(MAX_REASON).collect();
        let Some(dlq) = &self.binding.dlq else {
            error!(%reason, "no dead-letter queue (opted out): dropping the message");
            self.metrics.dead_lettered.inc();
            self.delete(received.receipt.clone()).await;
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
                self.seal.seal(&self.job_id(received)),
            ),
        ];
        let room = MAX_ATTRIBUTES - attributes.len();
        let original: Vec<_> = received
            .attributes
            .iter()
            .filter(|(name, _)| !name.starts_with("wasq-"))
            .cloned()
            .collect();
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
                if moved == Moved::Sent {
                    self.delete(received.receipt.clone()).await;
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

    async fn delete(&self, receipt: String) {
        if self.deletes.send(receipt).await.is_err() {
            error!("the delete batcher is gone; the message will be received again");
        }
    }

    /// Sets when messages come back. A queue that is briefly unreachable
    /// is tried again for a few seconds; after that the lease lapses on its
    /// own and the message comes back at the end of its visibility timeout.
    async fn change_visibility(&self, entries: &[(String, Duration)]) {
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

    /// Refreshes the queue and DLQ depth gauges until shutdown.
    /// The binding's queue has answered: the host is ready as far as this
    /// binding goes.
    fn mark_ready(&self) {
        if !self.polled.swap(true, Ordering::AcqRel) {
            self.readiness.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    async fn depth_loop(self: Arc<Self>) {
        loop {
            if let Ok(stats) = self.binding.queue.stats().await {
                // The queue answered (a long poll on an empty queue would
                // not for up to 20 s).
                self.mark_ready();
                self.metrics
                    .queue_depth
                    .set((stats.visible + stats.delayed) as i64);
            }
            if let Some(dlq) = &self.binding.dlq
                && let Ok(stats) = dlq.stats().await
            {
                let depth = stats.visible + stats.in_flight + stats.delayed;
                self.metrics.dlq_depth.set(depth as i64);
                if let Some(alarm) = &self.alarm {
                    let newest = self
                        .newest_reason
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    alarm.lock().unwrap_or_else(|p| p.into_inner()).observe(
                        &self.config().name,
                        dlq.name(),
                        depth,
                        newest.as_deref(),
                    );
                }
            }
            let oldest = self.oldest_received_ms.swap(u64::MAX, Ordering::AcqRel);
            let age = if oldest == u64::MAX {
                0
            } else {
                (unix_now().as_millis() as u64).saturating_sub(oldest) / 1000
            };
            self.metrics.oldest_received_age.set(age as i64);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = self.stop.cancelled() => break,
            }
        }
    }
}

/// What a panic said, when it said it with a string.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string());
    crate::text::truncate(&text, 1024).into_owned()
}

/// The time since the Unix epoch.
fn unix_now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Shrinks a dead letter until it fits a queue's size limit: the reason is
/// cut first (with a marker), then the sender's attributes are dropped,
/// last first. The body is never changed. Returns whether it fits; one
/// that cannot would be refused by the queue at every attempt.
fn fit_dead_letter(letter: &mut Outgoing, limit: usize) -> bool {
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

/// Splits a batch into the units that run concurrently: each message on its
/// own, or on FIFO queues each message group, in order.
fn group_batch(batch: Vec<Received>, fifo: bool) -> Vec<Vec<Received>> {
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

/// Runs a queue call again while the queue is unavailable, pausing 250 ms
/// and doubling up to `longest`; each retry is logged as `failed; retrying`.
/// Other errors, and the last unavailable one, are returned.
async fn ride_out_outage<T, F>(
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
async fn delete_loop(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn received(id: &str, group: Option<&str>) -> Received {
        Received {
            id: id.into(),
            receipt: format!("r-{id}"),
            body: String::new(),
            attributes: Vec::new(),
            receive_count: 1,
            sent_at_ms: 0,
            group_id: group.map(str::to_string),
            moved_from: None,
            dedup_id: None,
        }
    }

    /// A dead letter too large for its queue once failed to send at every
    /// attempt, looping until the queue's own redrive moved it.
    #[test]
    fn a_dead_letter_is_shrunk_to_fit_and_its_body_kept() {
        let body = "b".repeat(200_000);
        let mut letter = Outgoing {
            body: body.clone(),
            attributes: vec![
                (REASON_ATTRIBUTE.into(), "r".repeat(100_000)),
                (PLUGIN_ATTRIBUTE.into(), "p".into()),
                ("big".into(), "x".repeat(40_000)),
                ("small".into(), "y".into()),
            ],
            ..Outgoing::default()
        };
        let limit = 256 * 1024;
        assert!(fit_dead_letter(&mut letter, limit));
        assert!(crate::queue::message_size(&letter) <= limit);
        assert_eq!(letter.body, body);
        let reason = &letter.attributes[0].1;
        assert!(
            reason.ends_with("more bytes cut]"),
            "{}",
            &reason[reason.len() - 40..]
        );
        assert!(letter.attributes.iter().any(|(n, _)| n == PLUGIN_ATTRIBUTE));
        // A body at the limit leaves no room for the reason's detail, and
        // the sender's attributes go before wasq's own.
        let mut full = Outgoing {
            body: "b".repeat(limit - 200),
            attributes: vec![
                (REASON_ATTRIBUTE.into(), "r".repeat(1000)),
                ("big".into(), "x".repeat(500)),
            ],
            ..Outgoing::default()
        };
        assert!(fit_dead_letter(&mut full, limit));
        assert_eq!(full.attributes.len(), 1);
        let mut hopeless = Outgoing {
            body: "b".repeat(limit + 1),
            ..Outgoing::default()
        };
        assert!(!fit_dead_letter(&mut hopeless, limit));
    }

    #[test]
    fn fifo_batches_split_by_group_in_order() {
        let batch = vec![
            received("a1", Some("a")),
            received("b1", Some("b")),
            received("a2", Some("a")),
        ];
        let groups = group_batch(batch.clone(), true);
        let ids: Vec<Vec<&str>> = groups
            .iter()
            .map(|g| g.iter().map(|m| m.id.as_str()).collect())
            .collect();
        assert_eq!(ids, [vec!["a1", "a2"], vec!["b1"]]);
        assert_eq!(group_batch(batch, false).len(), 3);
    }
}
