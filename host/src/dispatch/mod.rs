//! Poll → run → settle. Each binding ties a queue to a processor: pollers
//! long-poll for batches while permits are free, every message runs in a
//! fresh instance, and each ends in exactly one of delete, retry with
//! backoff, or dead-letter. Nothing here ends the loop but shutdown.
//!
//! - `poll`: pollers, receiving, FIFO grouping.
//! - `message`: one message's run under its lease; heartbeats, panics.
//! - `settle`: done, retry, reject; dead letters and results.
//! - `deletes`: the delete batcher, visibility changes, short outages.
//! - `depth`: depth gauges, readiness and the dead-letter alarm.

pub mod alarm;
pub mod backoff;
pub mod control;
pub mod metrics;
pub mod seal;
pub mod timeline;

mod batch;
mod deletes;
mod depth;
mod message;
mod poll;
mod settle;

pub use alarm::Webhook;
pub use backoff::Backoff;
pub use control::Controls;
pub use metrics::{BindingMetrics, Metrics};
pub use seal::IdSeal;
pub use timeline::Timelines;

use crate::blobs::BlobUri;
use crate::filter::{Filters, Subject};
use crate::payload::{PayloadError, PayloadPolicy};
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

/// The most messages one batch of a batch processor holds, as Lambda's.
pub const MAX_BATCH_SIZE: usize = 10_000;

/// The table where results of `done` are recorded, under `QUEUE/MESSAGE_ID`.
pub const RESULTS_TABLE: &str = "results";
/// Attributes a dead letter carries.
pub const RECEIVE_COUNT_ATTRIBUTE: &str = "wasq-receive-count";
/// On a message wasq sent again as a fresh copy (SQS), the attempts it had,
/// sealed like its id.
pub const ATTEMPTS_ATTRIBUTE: &str = "wasq-attempts";
pub use crate::queue::{MESSAGE_ID_ATTRIBUTE, PLUGIN_ATTRIBUTE, REASON_ATTRIBUTE};
/// How one binding behaves; validated by the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingConfig {
    /// The name in logs and metrics.
    pub name: String,
    /// Messages per receive, 1–10; for a batch processor, messages per
    /// batch, up to [`MAX_BATCH_SIZE`].
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
    /// The binding's filter criteria; `None` takes the plugin manifest's.
    pub filters: Option<Arc<Filters>>,
    /// Where large payloads (the SQS Extended Client's pointers) may be
    /// read from, and how large.
    pub payloads: PayloadPolicy,
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
            filters: None,
            payloads: PayloadPolicy::default(),
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
    /// Each binding's pause switch.
    pub controls: Controls,
    /// Each binding's last hours, for the console's charts.
    pub timelines: Timelines,
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
        let queues: Vec<Arc<dyn Queue>> = bindings.iter().map(|b| b.queue.clone()).collect();
        let first_done = Arc::new(AtomicBool::new(false));
        for binding in bindings {
            let (deletes, delete_rx) = mpsc::channel(1024);
            let metrics = self.metrics.binding(&binding.config.name);
            let paused = self
                .controls
                .watch(&binding.config.name, metrics.paused.clone());
            let timeline = self.timelines.binding(&binding.config.name);
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
                paused,
                timeline,
                stop: stop.clone(),
                abort: abort.clone(),
                tracker: tracker.clone(),
            });
            tracker.spawn(deletes::delete_loop(
                state.binding.queue.clone(),
                state.services.blobs.clone(),
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
        // A poll cut short by the stop still releases what it took; a
        // second signal does not wait for that either.
        for queue in queues {
            tokio::select! {
                _ = queue.close() => {}
                _ = self.hurry.cancelled() => break,
            }
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
    /// Receipts of finished messages, for batched deletion, with the
    /// payloads to delete after them.
    deletes: mpsc::Sender<(String, Option<BlobUri>)>,
    /// Set by the first message done in this run, of any binding.
    first_done: Arc<AtomicBool>,
    /// The binding's last hours, a minute at a time.
    timeline: Arc<timeline::Timeline>,
    /// Set while the binding is paused: no receives.
    paused: tokio::sync::watch::Receiver<bool>,
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
}

/// The time since the Unix epoch.
fn unix_now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
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
            given_back: 0,
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
        assert!(settle::fit_dead_letter(&mut letter, limit));
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
        assert!(settle::fit_dead_letter(&mut full, limit));
        assert_eq!(full.attributes.len(), 1);
        let mut hopeless = Outgoing {
            body: "b".repeat(limit + 1),
            ..Outgoing::default()
        };
        assert!(!settle::fit_dead_letter(&mut hopeless, limit));
    }

    #[test]
    fn fifo_batches_split_by_group_in_order() {
        let batch = vec![
            received("a1", Some("a")),
            received("b1", Some("b")),
            received("a2", Some("a")),
        ];
        let groups = poll::group_batch(batch.clone(), true);
        let ids: Vec<Vec<&str>> = groups
            .iter()
            .map(|g| g.iter().map(|m| m.id.as_str()).collect())
            .collect();
        assert_eq!(ids, [vec!["a1", "a2"], vec!["b1"]]);
        assert_eq!(poll::group_batch(batch, false).len(), 3);
    }
}
