//! The dispatcher's semantics, one test per row of the design's table:
//! done, retry with backoff, traps, dead letters, reject, FIFO, heartbeats,
//! scaling, shutdown. Each test body runs on the embedded queue and on SQS
//! (moto).

use crate::harness::{self, Env};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use wasq::dispatch::{Backoff, Binding, BindingConfig, Dispatcher, Metrics, Readiness};
use wasq::queue::{LocalQueues, Outgoing, Queue, QueueAdmin, Redrive, SqsQueues};
use wasq::queue::{Peeked, QueueOptions};
use wasq::runtime::Limits;

/// A queue `jobs` (or `jobs.fifo`) with its DLQ, on either backend, and a
/// dispatcher over the rogue processor.
struct Rig {
    env: Env,
    /// The queues' backend, to manage them as an operator would.
    admin: Arc<dyn QueueAdmin>,
    /// Moto, held for this test alone (SQS only).
    _moto: Option<tokio::sync::MutexGuard<'static, ()>>,
    queue: Arc<dyn Queue>,
    dlq: Arc<dyn Queue>,
    dlq_name: String,
    metrics: Arc<Metrics>,
    seal: wasq::dispatch::IdSeal,
}

fn fast_config(name: &str) -> BindingConfig {
    BindingConfig {
        name: name.into(),
        batch_size: 10,
        max_concurrency: 4,
        visibility_timeout: Duration::from_secs(30),
        wait: Duration::from_millis(200),
        backoff: Backoff {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(2),
            jitter: 0.0,
        },
        max_receive_count: 3,
        ..BindingConfig::default()
    }
}

fn options(name: &str) -> (String, QueueOptions) {
    let dlq_name = match name.strip_suffix(".fifo") {
        Some(stem) => format!("{stem}-dlq.fifo"),
        None => format!("{name}-dlq"),
    };
    let options = QueueOptions {
        visibility_timeout: Duration::from_secs(30),
        redrive: Some(Redrive {
            dlq: dlq_name.clone(),
            max_receive_count: 10,
        }),
    };
    (dlq_name, options)
}

impl Rig {
    async fn local(name: &str) -> Rig {
        let env = Env::new();
        let queues = LocalQueues::open(&env.dir.path().join("data")).unwrap();
        Rig::on(env, Arc::new(queues), None, name).await
    }

    async fn sqs(name: &str) -> Rig {
        let moto = harness::moto().await;
        let sqs = SqsQueues::connect(&harness::moto_aws()).await;
        Rig::on(Env::new(), Arc::new(sqs), Some(moto), name).await
    }

    async fn on(
        env: Env,
        admin: Arc<dyn QueueAdmin>,
        moto: Option<tokio::sync::MutexGuard<'static, ()>>,
        name: &str,
    ) -> Rig {
        let (dlq_name, options) = options(name);
        admin.create(name, options).await.unwrap();
        Rig {
            queue: admin.open(name).await.unwrap(),
            dlq: admin.open(&dlq_name).await.unwrap(),
            env,
            admin,
            _moto: moto,
            dlq_name,
            metrics: Arc::new(Metrics::default()),
            seal: wasq::dispatch::IdSeal::random().unwrap(),
        }
    }

    /// The binding settings for a test: fast backoff, and a receive wait
    /// the backend takes (SQS waits in whole seconds; a zero wait would be
    /// a busy loop of short polls).
    fn config(&self) -> BindingConfig {
        let mut config = fast_config(self.queue.name());
        if self._moto.is_some() {
            config.wait = Duration::from_secs(1);
        }
        config
    }

    async fn dead_letters(&self) -> Vec<Peeked> {
        self.admin.peek(&self.dlq_name, 10).await.unwrap()
    }

    /// Moves the dead letters back to the queue.
    async fn redrive(&self) {
        self.admin
            .redrive(&self.dlq_name, self.queue.name())
            .await
            .unwrap();
    }

    async fn send(&self, body: &str, group: Option<&str>) -> String {
        self.queue
            .send(Outgoing {
                body: body.into(),
                group_id: group.map(str::to_string),
                ..Outgoing::default()
            })
            .await
            .unwrap()
    }

    fn binding(&self, config: BindingConfig, limits: Limits, with_dlq: bool) -> Binding {
        Binding {
            config,
            queue: self.queue.clone(),
            dlq: with_dlq.then(|| self.dlq.clone()),
            plugin: wasq::runtime::PluginSlot::new(harness::rogue(limits)),
        }
    }

    fn dispatcher(&self, grace: Duration) -> Dispatcher {
        Dispatcher {
            runtime: harness::RUNTIME.clone(),
            services: self.env.services.clone(),
            metrics: self.metrics.clone(),
            grace,
            alarm_webhook: None,
            hurry: Default::default(),
            seal: self.seal.clone(),
            controls: Default::default(),
            timelines: Default::default(),
        }
    }

    /// Runs until the queue is empty (or `limit` passes).
    async fn drain(&self, binding: Binding, limit: Duration) {
        let queue = self.queue.clone();
        let stop = async move {
            tokio::select! {
                _ = wasq::run::drained(vec![queue]) => {}
                _ = tokio::time::sleep(limit) => {}
            }
        };
        self.dispatcher(Duration::from_secs(5))
            .run(vec![binding], Readiness::default(), stop)
            .await;
    }

    async fn result_of(&self, id: &str) -> Option<String> {
        self.env
            .services
            .records
            .get("results", &format!("{}/{id}", self.queue.name()))
            .await
            .unwrap()
    }
}

/// One test body, run on the embedded queue and on SQS (moto).
macro_rules! on_both_backends {
    ($test:ident, $queue:literal) => {
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local() {
                super::$test(super::Rig::local($queue).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "needs the moto server: `bash tests/run.sh` starts it and runs this"]
            async fn sqs() {
                super::$test(super::Rig::sqs($queue).await).await;
            }
        }
    };
}

fn attribute<'a>(attributes: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attributes
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

on_both_backends!(done_messages_are_deleted_and_their_results_recorded, "jobs");
async fn done_messages_are_deleted_and_their_results_recorded(rig: Rig) {
    let mut ids = Vec::new();
    for _ in 0..25 {
        ids.push(rig.send("sleep 1", None).await);
    }
    rig.drain(
        rig.binding(rig.config(), Limits::default(), true),
        Duration::from_secs(60),
    )
    .await;
    let stats = rig.queue.stats().await.unwrap();
    assert_eq!((stats.visible, stats.in_flight), (0, 0));
    for id in &ids {
        assert_eq!(rig.result_of(id).await.as_deref(), Some("1"), "{id}");
    }
    let m = rig.metrics.binding("jobs");
    assert_eq!((m.received.get(), m.done.get()), (25, 25));
}

on_both_backends!(
    a_retry_comes_back_after_the_backoff_and_succeeds_on_the_third_receive,
    "jobs"
);
/// Fails on its first two receives, succeeds on the third; each retry waits
/// the backoff (200 ms, then 400 ms), not the 30 s visibility timeout.
async fn a_retry_comes_back_after_the_backoff_and_succeeds_on_the_third_receive(rig: Rig) {
    let id = rig.send("fail-until 3", None).await;
    let started = Instant::now();
    rig.drain(
        rig.binding(rig.config(), Limits::default(), true),
        Duration::from_secs(20),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(rig.result_of(&id).await.as_deref(), Some("3"));
    assert!(took >= Duration::from_millis(600), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(rig.metrics.binding("jobs").retried.get(), 2);
}

on_both_backends!(
    a_trap_on_every_receive_is_dead_lettered_after_max_receives,
    "jobs"
);
async fn a_trap_on_every_receive_is_dead_lettered_after_max_receives(rig: Rig) {
    let id = rig.send("trap", None).await;
    rig.drain(
        rig.binding(rig.config(), Limits::default(), true),
        Duration::from_secs(20),
    )
    .await;
    let dead = rig.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, "trap");
    let reason = attribute(&dead[0].attributes, "wasq-reason").unwrap();
    assert!(
        reason.starts_with("gave up after 3 receives; last: trap:"),
        "{reason}"
    );
    assert_eq!(
        attribute(&dead[0].attributes, "wasq-receive-count"),
        Some("3")
    );
    assert_eq!(
        attribute(&dead[0].attributes, "wasq-source-queue"),
        Some("jobs")
    );
    assert_eq!(rig.result_of(&id).await, None);
    assert_eq!(rig.queue.stats().await.unwrap().visible, 0);
    let m = rig.metrics.binding("jobs");
    assert_eq!(
        (m.received.get(), m.invoked.get(), m.failed.get()),
        (3, 3, 3)
    );
    assert_eq!(
        (m.dead_lettered.get(), m.dropped.get(), m.done.get()),
        (1, 0, 0)
    );
}

on_both_backends!(a_timeout_counts_as_a_retry, "jobs");
async fn a_timeout_counts_as_a_retry(rig: Rig) {
    rig.send("loop", None).await;
    let limits = Limits {
        timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let config = BindingConfig {
        max_receive_count: 2,
        ..rig.config()
    };
    rig.drain(rig.binding(config, limits, true), Duration::from_secs(20))
        .await;
    let dead = rig.dead_letters().await;
    let reason = attribute(&dead[0].attributes, "wasq-reason").unwrap();
    assert!(
        reason.contains("timeout: the processor ran past its wall-clock limit of 300ms"),
        "{reason}"
    );
}

on_both_backends!(
    a_reject_goes_to_the_dead_letter_queue_at_once_with_its_reason,
    "jobs"
);
async fn a_reject_goes_to_the_dead_letter_queue_at_once_with_its_reason(rig: Rig) {
    let id = rig
        .queue
        .send(Outgoing {
            body: "reject".into(),
            attributes: vec![("tenant".into(), "acme".into())],
            ..Outgoing::default()
        })
        .await
        .unwrap();
    rig.drain(
        rig.binding(rig.config(), Limits::default(), true),
        Duration::from_secs(20),
    )
    .await;
    let dead = rig.dead_letters().await;
    assert_eq!(dead.len(), 1);
    let attrs = &dead[0].attributes;
    assert_eq!(attribute(attrs, "wasq-reason"), Some("rejected on request"));
    assert_eq!(attribute(attrs, "wasq-plugin"), Some("rogue"));
    assert_eq!(attribute(attrs, "wasq-receive-count"), Some("1"));
    assert_eq!(attribute(attrs, "tenant"), Some("acme"));
    assert_eq!(
        attribute(attrs, "wasq-message-id").map(wasq::dispatch::seal::shown),
        Some(id.as_str())
    );
    let m = rig.metrics.binding("jobs");
    assert_eq!(
        (m.rejected.get(), m.dead_lettered.get(), m.retried.get()),
        (1, 1, 0)
    );

    // And it can be sent back.
    rig.redrive().await;
    let back = Instant::now();
    while rig.queue.stats().await.unwrap().visible != 1 {
        assert!(back.elapsed() < Duration::from_secs(10), "not redriven");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

on_both_backends!(a_redriven_message_keeps_the_id_it_was_sent_with, "jobs");
/// Dead-lettered on its first receive, redriven (on SQS that is a new
/// message with a new id), then done: the result is recorded under the id
/// the sender was given.
async fn a_redriven_message_keeps_the_id_it_was_sent_with(rig: Rig) {
    let id = rig.send("fail-until 2", None).await;
    let once = BindingConfig {
        max_receive_count: 1,
        ..rig.config()
    };
    rig.drain(
        rig.binding(once, Limits::default(), true),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(rig.dead_letters().await.len(), 1);
    rig.redrive().await;
    let back = Instant::now();
    while rig.queue.stats().await.unwrap().visible != 1 {
        assert!(back.elapsed() < Duration::from_secs(10), "not redriven");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rig.drain(
        rig.binding(rig.config(), Limits::default(), true),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(rig.result_of(&id).await.as_deref(), Some("2"), "{id}");
}

/// A sender cannot choose the id its message runs under: a
/// `wasq-message-id` this host did not seal is ignored.
#[tokio::test]
async fn a_forged_message_id_is_not_believed() {
    let rig = Rig::local("jobs").await;
    let id = rig
        .queue
        .send(Outgoing {
            body: "echo".into(),
            attributes: vec![("wasq-message-id".into(), "victim".into())],
            ..Outgoing::default()
        })
        .await
        .unwrap();
    rig.drain(
        rig.binding(rig.config(), Limits::default(), true),
        Duration::from_secs(20),
    )
    .await;
    assert!(rig.result_of(&id).await.is_some(), "{id}");
    assert_eq!(rig.result_of("victim").await, None);
}

on_both_backends!(
    without_a_dead_letter_queue_a_failing_message_is_still_not_retried_forever,
    "jobs"
);
async fn without_a_dead_letter_queue_a_failing_message_is_still_not_retried_forever(rig: Rig) {
    rig.send("fail-until 1000", None).await;
    let config = BindingConfig {
        max_receive_count: 2,
        ..rig.config()
    };
    rig.drain(
        rig.binding(config, Limits::default(), false),
        Duration::from_secs(20),
    )
    .await;
    let stats = rig.queue.stats().await.unwrap();
    assert_eq!((stats.visible, stats.in_flight, stats.delayed), (0, 0, 0));
    // Dropped, by the binding's choice: Lambda's DroppedEventCount.
    let m = rig.metrics.binding("jobs");
    assert_eq!((m.dropped.get(), m.dead_lettered.get()), (1, 0));
    assert_eq!((m.invoked.get(), m.failed.get()), (2, 2));
}

on_both_backends!(
    fifo_groups_run_in_order_and_a_failure_holds_its_group_back,
    "jobs.fifo"
);
async fn fifo_groups_run_in_order_and_a_failure_holds_its_group_back(rig: Rig) {
    // Group a's head fails once: a2..a5 must still come after it.
    rig.send("fail-until 2", Some("a")).await;
    for i in 1..=5 {
        rig.send(&format!("seq a a{i}"), Some("a")).await;
        rig.send(&format!("seq b b{i}"), Some("b")).await;
    }
    rig.drain(
        rig.binding(rig.config(), Limits::default(), true),
        Duration::from_secs(30),
    )
    .await;
    let order = |key: &str| {
        let records = rig.env.services.records.clone();
        let key = key.to_string();
        async move {
            records
                .get("order", &key)
                .await
                .unwrap()
                .unwrap_or_default()
        }
    };
    assert_eq!(order("a").await, "a1,a2,a3,a4,a5");
    assert_eq!(order("b").await, "b1,b2,b3,b4,b5");
    assert_eq!(rig.metrics.binding("jobs.fifo").retried.get(), 1);
}

on_both_backends!(heartbeats_keep_a_long_job_from_reappearing, "jobs");
/// A job longer than the visibility timeout keeps its lease through
/// heartbeats and is processed once.
async fn heartbeats_keep_a_long_job_from_reappearing(rig: Rig) {
    let id = rig.send("sleep 2500", None).await;
    let config = BindingConfig {
        visibility_timeout: Duration::from_millis(900),
        ..rig.config()
    };
    rig.drain(
        rig.binding(config, Limits::default(), true),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        rig.result_of(&id).await.as_deref(),
        Some("1"),
        "the message was received more than once"
    );
    assert_eq!(rig.metrics.binding("jobs").received.get(), 1);
}

on_both_backends!(
    pollers_scale_up_under_load_within_max_concurrency_and_back_down,
    "jobs"
);
async fn pollers_scale_up_under_load_within_max_concurrency_and_back_down(rig: Rig) {
    for _ in 0..40 {
        rig.send("sleep 200", None).await;
    }
    let config = BindingConfig {
        batch_size: 2,
        max_concurrency: 4,
        ..rig.config()
    };
    let metrics = rig.metrics.binding("jobs");
    let peak = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let peak_pollers = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let sampling = CancellationToken::new();
    let sampler = tokio::spawn({
        let (metrics, peak, peak_pollers, sampling) = (
            metrics.clone(),
            peak.clone(),
            peak_pollers.clone(),
            sampling.clone(),
        );
        async move {
            while !sampling.is_cancelled() {
                peak.fetch_max(
                    metrics.in_flight.get(),
                    std::sync::atomic::Ordering::Relaxed,
                );
                peak_pollers.fetch_max(metrics.pollers.get(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let started = Instant::now();
    let queue = rig.queue.clone();
    let dispatcher = rig.dispatcher(Duration::from_secs(5));
    let binding = rig.binding(config, Limits::default(), true);
    let stop = async {
        wasq::run::drained(vec![queue]).await;
        let took = started.elapsed();
        // Empty batches retire the extra pollers.
        let idle = Instant::now();
        while metrics.pollers.get() != 1 {
            assert!(
                idle.elapsed() < Duration::from_secs(30),
                "pollers did not scale back down: {}",
                metrics.pollers.get()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        took
    };
    let (took, ()) = {
        let stop_flag = CancellationToken::new();
        let flag = stop_flag.clone();
        let run = dispatcher.run(vec![binding], Readiness::default(), async move {
            flag.cancelled().await
        });
        let watch = async {
            let took = stop.await;
            stop_flag.cancel();
            took
        };
        tokio::join!(watch, run)
    };
    sampling.cancel();
    sampler.await.unwrap();
    assert_eq!(metrics.done.get(), 40);
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!(peak <= 4, "{peak} in flight with max concurrency 4");
    assert!(peak >= 3, "never scaled up: peak {peak}");
    assert!(peak_pollers.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    // 40 × 200 ms at 4 at a time is at least 2 s; one at a time would be 8 s.
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(7),
        "{took:?}"
    );
}

on_both_backends!(
    shutdown_releases_what_the_grace_period_cannot_finish,
    "jobs"
);
/// Shutdown: receiving stops, the message in flight gets the grace period,
/// and what is still running after it is released at once (visibility 0).
async fn shutdown_releases_what_the_grace_period_cannot_finish(rig: Rig) {
    for _ in 0..3 {
        rig.send("sleep 5000", None).await;
    }
    let config = BindingConfig {
        max_concurrency: 2,
        ..rig.config()
    };
    let binding = rig.binding(config, Limits::default(), true);
    let started = Instant::now();
    rig.dispatcher(Duration::from_millis(500))
        .run(
            vec![binding],
            Readiness::default(),
            tokio::time::sleep(Duration::from_millis(700)),
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let stats = rig.queue.stats().await.unwrap();
    assert_eq!(
        (stats.visible, stats.in_flight),
        (3, 0),
        "nothing lost, nothing left hidden"
    );
}

on_both_backends!(
    shutdown_lets_in_flight_messages_finish_within_the_grace_period,
    "jobs"
);
async fn shutdown_lets_in_flight_messages_finish_within_the_grace_period(rig: Rig) {
    let id = rig.send("sleep 600", None).await;
    rig.send("sleep 600", None).await;
    let config = BindingConfig {
        max_concurrency: 1,
        ..rig.config()
    };
    let binding = rig.binding(config, Limits::default(), true);
    let readiness = Readiness::default();
    rig.dispatcher(Duration::from_secs(10))
        .run(
            vec![binding],
            readiness.clone(),
            tokio::time::sleep(Duration::from_millis(200)),
        )
        .await;
    assert!(readiness.is_ready());
    assert_eq!(rig.result_of(&id).await.as_deref(), Some("1"));
    let stats = rig.queue.stats().await.unwrap();
    assert_eq!((stats.visible, stats.in_flight), (1, 0));
}

/// A blob store that panics on one URI, as a host bug would.
struct Panicking(Arc<dyn wasq::blobs::BlobStore>);

#[async_trait::async_trait]
impl wasq::blobs::BlobStore for Panicking {
    async fn stat(
        &self,
        uri: &wasq::blobs::BlobUri,
    ) -> Result<wasq::blobs::ObjectInfo, wasq::blobs::BlobError> {
        self.0.stat(uri).await
    }
    async fn open(
        &self,
        uri: &wasq::blobs::BlobUri,
        budget: &wasq::blobs::Budget,
    ) -> Result<Box<dyn wasq::blobs::BlobReader>, wasq::blobs::BlobError> {
        if uri.key() == "panic" {
            panic!("an injected host bug");
        }
        self.0.open(uri, budget).await
    }
    async fn create(
        &self,
        uri: &wasq::blobs::BlobUri,
        options: wasq::blobs::CreateOptions<'_>,
    ) -> Result<Box<dyn wasq::blobs::BlobWriter>, wasq::blobs::BlobError> {
        self.0.create(uri, options).await
    }
    async fn presign_get(
        &self,
        uri: &wasq::blobs::BlobUri,
        expires_in: Duration,
    ) -> Result<String, wasq::blobs::BlobError> {
        self.0.presign_get(uri, expires_in).await
    }
    async fn delete(&self, uri: &wasq::blobs::BlobUri) -> Result<(), wasq::blobs::BlobError> {
        self.0.delete(uri).await
    }
}

on_both_backends!(
    a_panic_while_a_message_runs_is_a_retry_and_hangs_nothing,
    "jobs"
);
/// A panic while a message ran once left its heartbeat renewing the lease
/// forever, so shutdown never finished.
async fn a_panic_while_a_message_runs_is_a_retry_and_hangs_nothing(rig: Rig) {
    rig.send("open s3://docs/panic", None).await;
    let fine = rig.send("echo", None).await;
    let config = BindingConfig {
        max_receive_count: 2,
        ..rig.config()
    };
    let mut dispatcher = rig.dispatcher(Duration::from_secs(2));
    dispatcher.services.blobs = Arc::new(Panicking(rig.env.services.blobs.clone()));
    let queue = rig.queue.clone();
    let started = Instant::now();
    dispatcher
        .run(
            vec![rig.binding(config, Limits::default(), true)],
            Readiness::default(),
            async move {
                tokio::select! {
                    _ = wasq::run::drained(vec![queue]) => {}
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
            },
        )
        .await;
    // Shutdown finished, within the grace period after draining.
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        rig.result_of(&fine).await.is_some(),
        "the other message did not run"
    );
    let letters = rig.dead_letters().await;
    assert_eq!(letters.len(), 1);
    let reason = letters[0]
        .attributes
        .iter()
        .find(|(n, _)| n == "wasq-reason")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(
        reason.contains("the host panicked while running the message: an injected host bug"),
        "{reason}"
    );
    assert_eq!(rig.metrics.binding("jobs").retried.get(), 1);
}

on_both_backends!(
    a_dead_letter_keeps_what_fits_and_names_what_does_not,
    "jobs"
);
/// A dead letter once kept only five of a message's attributes, silently.
async fn a_dead_letter_keeps_what_fits_and_names_what_does_not(rig: Rig) {
    let attributes: Vec<(String, String)> = (0..8)
        .map(|i| (format!("attr{i}"), format!("value {i}")))
        .collect();
    rig.queue
        .send(Outgoing {
            body: "reject".into(),
            attributes,
            ..Outgoing::default()
        })
        .await
        .unwrap();
    rig.drain(
        rig.binding(rig.config(), Limits::default(), true),
        Duration::from_secs(20),
    )
    .await;
    let letters = rig.dead_letters().await;
    assert_eq!(letters.len(), 1);
    let names: Vec<&str> = letters[0]
        .attributes
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(names.len(), 10, "{names:?}");
    let reason = &letters[0]
        .attributes
        .iter()
        .find(|(n, _)| n == "wasq-reason")
        .unwrap()
        .1;
    let dropped: Vec<String> = (0..8)
        .map(|i| format!("attr{i}"))
        .filter(|name| !names.contains(&name.as_str()))
        .collect();
    assert_eq!(dropped.len(), 3, "{names:?}");
    assert!(
        reason.contains(&format!(
            "attributes not kept, past SQS's ten: {}",
            dropped.join(", ")
        )),
        "{reason}"
    );
}

on_both_backends!(
    messages_matching_no_filter_are_deleted_unprocessed_and_counted,
    "jobs"
);
/// A binding's filters (Lambda's patterns, here on a message attribute
/// and on a plain-text body) run only the messages one of them admits;
/// the rest are deleted without running, not dead-lettered, and counted
/// as Lambda counts them.
async fn messages_matching_no_filter_are_deleted_unprocessed_and_counted(rig: Rig) {
    let send = |body: &'static str, tenant: Option<&'static str>| {
        let queue = rig.queue.clone();
        async move {
            queue
                .send(Outgoing {
                    body: body.into(),
                    attributes: tenant
                        .map(|t| vec![("tenant".to_string(), t.to_string())])
                        .unwrap_or_default(),
                    ..Outgoing::default()
                })
                .await
                .unwrap()
        }
    };
    let mut admitted = Vec::new();
    let mut filtered = Vec::new();
    for _ in 0..5 {
        admitted.push(send("sleep 1", Some("acme")).await);
        filtered.push(send("sleep 1", Some("globex")).await);
    }
    for _ in 0..2 {
        admitted.push(send("sleep 2", None).await);
        // Would be dead-lettered, were it run.
        filtered.push(send("reject", Some("globex")).await);
    }
    let mut config = rig.config();
    config.filters = Some(Arc::new(
        wasq::filter::Filters::parse(&[
            r#"{"messageAttributes": {"tenant": ["acme"]}}"#,
            r#"{"body": [{"prefix": "sleep 2"}]}"#,
        ])
        .unwrap(),
    ));
    rig.drain(
        rig.binding(config, Limits::default(), true),
        Duration::from_secs(60),
    )
    .await;
    let stats = rig.queue.stats().await.unwrap();
    assert_eq!((stats.visible, stats.in_flight), (0, 0));
    for id in &admitted {
        assert_eq!(rig.result_of(id).await.as_deref(), Some("1"), "{id}");
    }
    for id in &filtered {
        assert_eq!(rig.result_of(id).await, None, "{id} ran");
    }
    assert!(rig.dead_letters().await.is_empty());
    let m = rig.metrics.binding("jobs");
    assert_eq!(m.received.get(), 14);
    assert_eq!(m.filtered_out.get(), 7);
    assert_eq!(m.invoked.get(), 7);
    assert_eq!(m.failed.get(), 0);
    assert_eq!(m.done.get(), 7);
    assert_eq!(m.dead_lettered.get(), 0);
    // The batcher's count lags the run's end by its flush.
    let deadline = Instant::now() + Duration::from_secs(5);
    while m.deleted.get() < 14 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(m.deleted.get(), 14);
}

/// Runs `binding` until the queue is empty (or `limit`), pausing it for
/// 60 ms every 150 ms meanwhile: each pause may catch a receive under way,
/// whose messages the host then gives back unstarted.
async fn drain_while_pausing(rig: &Rig, binding: Binding, limit: Duration) {
    let dispatcher = rig.dispatcher(Duration::from_secs(5));
    let controls = dispatcher.controls.clone();
    let name = binding.config.name.clone();
    let toggling = CancellationToken::new();
    let toggler = {
        let toggling = toggling.clone();
        tokio::spawn(async move {
            while !toggling.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(90)).await;
                controls.set_paused(&name, true);
                tokio::time::sleep(Duration::from_millis(60)).await;
                controls.set_paused(&name, false);
            }
        })
    };
    let queue = rig.queue.clone();
    let stop = async move {
        tokio::select! {
            _ = wasq::run::drained(vec![queue]) => {}
            _ = tokio::time::sleep(limit) => {}
        }
    };
    dispatcher
        .run(vec![binding], Readiness::default(), stop)
        .await;
    toggling.cancel();
    toggler.await.unwrap();
}

/// The runs the processor counted for `key`.
async fn runs(rig: &Rig, key: &str) -> Option<String> {
    rig.env.services.records.get("attempts", key).await.unwrap()
}

on_both_backends!(
    under_ten_times_overload_every_dead_letter_had_all_its_attempts,
    "jobs"
);
/// Lambda's throttling spends receive counts, so messages reach the DLQ
/// without real attempts. Twenty always-failing messages against a
/// concurrency of two, with the binding paused and resumed all the while:
/// every dead letter was run exactly `max-receive-count` (3) times.
async fn under_ten_times_overload_every_dead_letter_had_all_its_attempts(rig: Rig) {
    let config = BindingConfig {
        max_concurrency: 2,
        batch_size: 2,
        backoff: Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(200),
            jitter: 0.0,
        },
        ..rig.config()
    };
    let keys: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    for key in &keys {
        rig.send(&format!("tally-fail {key} 20"), None).await;
    }
    drain_while_pausing(
        &rig,
        rig.binding(config, Limits::default(), true),
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(rig.dlq.stats().await.unwrap().visible, 20);
    for key in &keys {
        assert_eq!(runs(&rig, key).await.as_deref(), Some("3"), "{key}");
    }
    let m = rig.metrics.binding("jobs");
    assert_eq!((m.invoked.get(), m.dead_lettered.get()), (60, 20));
}

on_both_backends!(
    messages_a_fifo_group_holds_back_keep_their_attempts,
    "jobs.fifo"
);
/// After a FIFO group's head fails, the rest of its batch is given back
/// unstarted, again at every failure: the third message of a group is
/// received six times before it first runs. None of that costs an attempt;
/// each message still runs three times before it is dead-lettered. (On SQS
/// the queue counts those receives itself: its redrive count, 10, is above
/// the binding's, 3, which is the room the README advises for FIFO queues.)
async fn messages_a_fifo_group_holds_back_keep_their_attempts(rig: Rig) {
    let mut keys = Vec::new();
    for group in ["a", "b"] {
        for i in 0..3 {
            let key = format!("{group}{i}");
            rig.send(&format!("tally-fail {key} 0"), Some(group)).await;
            keys.push(key);
        }
    }
    let config = BindingConfig {
        backoff: Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(200),
            jitter: 0.0,
        },
        ..rig.config()
    };
    rig.drain(
        rig.binding(config, Limits::default(), true),
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(rig.dlq.stats().await.unwrap().visible, 6);
    for key in &keys {
        assert_eq!(runs(&rig, key).await.as_deref(), Some("3"), "{key}");
    }
    let m = rig.metrics.binding("jobs.fifo");
    assert!(m.given_back.get() >= 12, "{}", m.given_back.get());
    assert_eq!(m.invoked.get(), 18);
}

on_both_backends!(receives_given_back_are_no_attempts, "jobs");
/// A message received three times and given back each time, unstarted,
/// has had no attempt: it still runs `max-receive-count` (3) times. On SQS,
/// which counts those receives, the message reaches the count with
/// attempts left; it is sent again as a fresh copy carrying its id and
/// attempts (so the queue's redrive policy cannot move it early), and the
/// dead letter still names the id it was sent with.
async fn receives_given_back_are_no_attempts(rig: Rig) {
    let id = rig.send("tally-fail given 0", None).await;
    for _ in 0..3 {
        let got = rig
            .queue
            .receive(
                1,
                Duration::from_secs(1),
                Duration::from_secs(30),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert!(rig.queue.give_back(&got).await.unwrap().is_empty());
    }
    rig.drain(
        rig.binding(rig.config(), Limits::default(), true),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(runs(&rig, "given").await.as_deref(), Some("3"));
    let dead = rig.dead_letters().await;
    assert_eq!(dead.len(), 1);
    let reason = attribute(&dead[0].attributes, "wasq-reason").unwrap();
    if rig._moto.is_some() {
        // The copy was received twice: its first attempt was the second.
        assert!(
            reason.starts_with(
                "gave up after 3 attempts (2 receives of this copy); last: run 3 fails"
            ),
            "{reason}"
        );
    } else {
        assert!(
            reason.starts_with("gave up after 3 receives; last: run 3 fails"),
            "{reason}"
        );
    }
    let sealed = attribute(&dead[0].attributes, "wasq-message-id").unwrap();
    assert!(sealed.starts_with(&format!("{id}/")), "{sealed} for {id}");
    assert!(attribute(&dead[0].attributes, "wasq-attempts").is_none());
}

on_both_backends!(
    large_payloads_are_read_from_the_bindings_bucket_only,
    "jobs"
);
/// A message in the SQS Extended Client's format runs on its payload, read
/// from the binding's payload bucket, which is deleted once the message is
/// done; a pointer into another bucket, or to a payload too large, is
/// dead-lettered naming why, its payload kept.
async fn large_payloads_are_read_from_the_bindings_bucket_only(rig: Rig) {
    use wasq::payload::{PayloadPolicy, offload};
    let blobs = rig.env.services.blobs.clone();
    let body = format!("measure {}", "y".repeat(2 << 20));
    let message = |bucket: &'static str, body: String| {
        let blobs = blobs.clone();
        async move {
            offload(
                blobs.as_ref(),
                bucket,
                Outgoing {
                    body,
                    ..Outgoing::default()
                },
            )
            .await
            .unwrap()
        }
    };
    let big = message("payloads", body.clone()).await;
    let big_id = rig.queue.send(big.clone()).await.unwrap();
    let stray = message("elsewhere", "measure stray".into()).await;
    rig.queue.send(stray.clone()).await.unwrap();
    let huge = message("payloads", format!("measure {}", "z".repeat(5 << 20))).await;
    rig.queue.send(huge.clone()).await.unwrap();
    let config = BindingConfig {
        payloads: PayloadPolicy {
            bucket: Some("payloads".into()),
            max: 4 << 20,
        },
        ..rig.config()
    };
    rig.drain(
        rig.binding(config, Limits::default(), true),
        Duration::from_secs(60),
    )
    .await;
    let described = format!("{} {} {}", body.len(), "y".repeat(16), "y".repeat(16));
    assert_eq!(
        rig.result_of(&big_id).await.as_deref(),
        Some(described.as_str())
    );
    let uri_of = |m: &Outgoing| {
        wasq::payload::pointer(&m.body, &m.attributes)
            .unwrap()
            .unwrap()
            .uri
    };
    let budget = wasq::blobs::Budget::new(1 << 20);
    // The batcher deletes the payload just after the message.
    let deadline = Instant::now() + Duration::from_secs(5);
    while blobs.open(&uri_of(&big), &budget).await.is_ok() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        blobs.open(&uri_of(&big), &budget).await.is_err(),
        "the done message's payload stays"
    );
    let mut reasons: Vec<String> = rig
        .dead_letters()
        .await
        .iter()
        .map(|l| attribute(&l.attributes, "wasq-reason").unwrap().to_string())
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].contains("this binding reads payloads from bucket payloads only"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("over the binding's payload-max of 4194304 bytes"),
        "{reasons:?}"
    );
    // Dead letters keep their payloads, for a redrive.
    assert!(blobs.open(&uri_of(&stray), &budget).await.is_ok());
    assert!(blobs.open(&uri_of(&huge), &budget).await.is_ok());
}

on_both_backends!(a_batching_window_longer_than_the_lease_renews_it, "jobs");
/// A batching window of 3 s over a 1 s visibility timeout: the first
/// message waits in the batch while the window fills, and its lease is
/// renewed meanwhile, so it is neither received a second time nor run
/// twice.
async fn a_batching_window_longer_than_the_lease_renews_it(rig: Rig) {
    let config = BindingConfig {
        batching_window: Duration::from_secs(3),
        visibility_timeout: Duration::from_secs(1),
        ..rig.config()
    };
    rig.send("seq first run", None).await;
    let queue = rig.queue.clone();
    let later = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        queue
            .send(Outgoing {
                body: "seq second run".into(),
                ..Outgoing::default()
            })
            .await
            .unwrap();
    });
    let binding = rig.binding(config, Limits::default(), true);
    let stop = async {
        tokio::time::sleep(Duration::from_millis(2000)).await;
        wasq::run::drained(vec![rig.queue.clone()]).await;
    };
    rig.dispatcher(Duration::from_secs(5))
        .run(vec![binding], Readiness::default(), stop)
        .await;
    later.await.unwrap();
    for key in ["first", "second"] {
        let runs = rig.env.services.records.get("order", key).await.unwrap();
        assert_eq!(runs.as_deref(), Some("run"), "{key}");
    }
    assert_eq!(rig.metrics.binding("jobs").received.get(), 2);
}

impl Rig {
    fn batch_binding(&self, config: BindingConfig) -> Binding {
        Binding {
            config,
            queue: self.queue.clone(),
            dlq: Some(self.dlq.clone()),
            plugin: wasq::runtime::PluginSlot::new(harness::batcher(Limits::default())),
        }
    }
}

on_both_backends!(a_batch_processor_takes_many_receives_in_one_call, "jobs");
/// 250 messages to a batch processor with a batch size of 100 (filled by
/// several receives of ten within the batching window): each message is
/// settled by its own outcome, and the processor ran on batches of up to
/// 100, not one message at a time.
async fn a_batch_processor_takes_many_receives_in_one_call(rig: Rig) {
    let bodies: Vec<Outgoing> = (0..250)
        .map(|_| Outgoing {
            body: "size".into(),
            ..Outgoing::default()
        })
        .collect();
    let mut ids = Vec::new();
    for chunk in bodies.chunks(10) {
        ids.extend(rig.queue.send_batch(chunk.to_vec()).await.unwrap());
    }
    let config = BindingConfig {
        batch_size: 100,
        batching_window: Duration::from_secs(2),
        max_concurrency: 2,
        ..rig.config()
    };
    rig.drain(rig.batch_binding(config), Duration::from_secs(60))
        .await;
    let mut sizes = Vec::new();
    for id in &ids {
        let size: usize = rig.result_of(id).await.unwrap().parse().unwrap();
        sizes.push(size);
    }
    assert!(sizes.iter().all(|&s| s <= 100), "{sizes:?}");
    let biggest = *sizes.iter().max().unwrap();
    assert!(biggest >= 50, "batches of at most {biggest}");
    let m = rig.metrics.binding("jobs");
    assert_eq!(
        (m.received.get(), m.invoked.get(), m.done.get()),
        (250, 250, 250)
    );
    // Far fewer runs than messages: a batch of s gave each of its s
    // messages the result s.
    let runs: f64 = sizes.iter().map(|&s| 1.0 / s as f64).sum();
    assert!(runs.round() < 50.0, "{runs} runs");
}

on_both_backends!(
    each_message_of_a_batch_is_settled_by_its_own_outcome,
    "jobs"
);
/// Lambda's batchItemFailures, by id: done is deleted, a reject is
/// dead-lettered, a retry comes back; a message the processor gave no
/// outcome, or two, is retried; a trap retries the whole batch.
async fn each_message_of_a_batch_is_settled_by_its_own_outcome(rig: Rig) {
    let mut sent = Vec::new();
    for body in ["done a", "reject", "count r", "skip", "twice", "done b"] {
        sent.push((body, rig.send(body, None).await));
    }
    let config = BindingConfig {
        batch_size: 20,
        batching_window: Duration::from_millis(500),
        max_receive_count: 2,
        ..rig.config()
    };
    rig.drain(rig.batch_binding(config), Duration::from_secs(60))
        .await;
    let id = |body: &str| sent.iter().find(|(b, _)| *b == body).unwrap().1.clone();
    assert_eq!(rig.result_of(&id("done a")).await.as_deref(), Some("a"));
    assert_eq!(rig.result_of(&id("done b")).await.as_deref(), Some("b"));
    // `count r` ran once: the others' failures did not retry it.
    assert_eq!(rig.result_of(&id("count r")).await.as_deref(), Some("1"));
    let mut reasons: Vec<String> = rig
        .dead_letters()
        .await
        .iter()
        .map(|l| {
            format!(
                "{}: {}",
                l.body,
                attribute(&l.attributes, "wasq-reason").unwrap()
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert_eq!(reasons[0], "reject: rejected on request");
    assert!(
        reasons[1].starts_with("skip: gave up after 2 receives; last: the batch processor gave no outcome for this message"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].starts_with("twice: gave up after 2 receives; last: the batch processor gave 2 outcomes for this message, not one"),
        "{reasons:?}"
    );

    // A trap: every message of the batch is retried, then dead-lettered.
    let trapped = vec![rig.send("trap", None).await, rig.send("done c", None).await];
    let config = BindingConfig {
        batch_size: 20,
        batching_window: Duration::from_millis(500),
        max_receive_count: 1,
        ..rig.config()
    };
    rig.drain(rig.batch_binding(config), Duration::from_secs(60))
        .await;
    for id in &trapped {
        assert_eq!(rig.result_of(id).await, None);
    }
    let trap_reasons: Vec<String> = rig
        .dead_letters()
        .await
        .iter()
        .filter_map(|l| attribute(&l.attributes, "wasq-reason").map(str::to_string))
        .filter(|r| r.contains("trap"))
        .collect();
    assert_eq!(trap_reasons.len(), 2, "{trap_reasons:?}");
}

on_both_backends!(
    a_fifo_batch_stops_each_group_at_its_first_failure,
    "jobs.fifo"
);
/// In a FIFO batch, the messages of a group after its first failure are
/// set aside and come back, so the group keeps its order; other groups
/// go on.
async fn a_fifo_batch_stops_each_group_at_its_first_failure(rig: Rig) {
    let a1 = rig.send("done a1", Some("a")).await;
    let a2 = rig.send("retry", Some("a")).await;
    let a3 = rig.send("count a3", Some("a")).await;
    let b1 = rig.send("count b1", Some("b")).await;
    let config = BindingConfig {
        batch_size: 20,
        batching_window: Duration::from_millis(500),
        max_receive_count: 2,
        ..rig.config()
    };
    rig.drain(rig.batch_binding(config), Duration::from_secs(60))
        .await;
    assert_eq!(rig.result_of(&a1).await.as_deref(), Some("a1"));
    assert_eq!(rig.result_of(&b1).await.as_deref(), Some("1"));
    // a3 ran behind a2 in both of a2's batches, its outcome set aside each
    // time, and was settled only once a2 was dead-lettered: its third run.
    assert_eq!(rig.result_of(&a3).await.as_deref(), Some("3"));
    let dead = rig.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, "retry");
    assert_eq!(rig.result_of(&a2).await, None);
}

on_both_backends!(a_long_batch_keeps_its_leases, "jobs");
/// A batch that runs for 2.5 s over a 1 s visibility timeout: its leases
/// are renewed together while it runs, so none of its messages comes back
/// meanwhile to run a second time.
async fn a_long_batch_keeps_its_leases(rig: Rig) {
    let mut ids = Vec::new();
    for body in ["sleep 2500", "done x", "done y"] {
        ids.push(rig.send(body, None).await);
    }
    let config = BindingConfig {
        batch_size: 10,
        batching_window: Duration::from_millis(300),
        visibility_timeout: Duration::from_secs(1),
        ..rig.config()
    };
    rig.drain(rig.batch_binding(config), Duration::from_secs(30))
        .await;
    let m = rig.metrics.binding("jobs");
    assert_eq!((m.received.get(), m.done.get()), (3, 3));
    assert_eq!(rig.result_of(&ids[1]).await.as_deref(), Some("x"));
}

/// A batch holds at most half the processor's memory of bodies: twenty
/// bodies of about 900 KB against a 16 MiB processor run in batches of at
/// most nine, the rest given back for the next batch, none failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_holds_at_most_half_the_processors_memory_of_bodies() {
    let rig = Rig::local("jobs").await;
    let body = format!("size{}", " ".repeat(900_000));
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(rig.send(&body, None).await);
    }
    let config = BindingConfig {
        batch_size: 100,
        batching_window: Duration::from_secs(1),
        max_concurrency: 1,
        ..rig.config()
    };
    let binding = Binding {
        config,
        queue: rig.queue.clone(),
        dlq: Some(rig.dlq.clone()),
        plugin: wasq::runtime::PluginSlot::new(harness::batcher(Limits {
            memory: 16 << 20,
            ..Limits::default()
        })),
    };
    rig.drain(binding, Duration::from_secs(60)).await;
    for id in &ids {
        let size: usize = rig.result_of(id).await.unwrap().parse().unwrap();
        assert!((1..=9).contains(&size), "a batch of {size}");
    }
    let m = rig.metrics.binding("jobs");
    assert_eq!((m.done.get(), m.failed.get()), (20, 0));
    assert!(m.given_back.get() > 0);
}
