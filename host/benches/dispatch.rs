//! Benchmarks for `wasq run` on the embedded queue, run with
//! `cargo bench -p wasq --bench dispatch`. Figures and method are recorded
//! in docs/PERFORMANCE.md.
//!
//! 1. End-to-end throughput: no-op messages through the local queue and
//!    the dispatcher, send to delete.
//! 2. Per-message host overhead: wall time per message through a single
//!    sequential pipeline, less the processor's own run time.
//!
//! Start-up (spawn to first message done) is measured by the `startup`
//! benchmark.

#[path = "../../tests/shared.rs"]
#[allow(dead_code)]
mod shared;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasq::backends::LocalEnv;
use wasq::dispatch::{Binding, BindingConfig, Dispatcher, Metrics, Readiness};
use wasq::queue::QueueOptions;
use wasq::queue::{LocalQueues, Outgoing, Queue};
use wasq::runtime::{Limits, PluginSlot, Runtime};

fn main() -> anyhow::Result<()> {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let runtime = Arc::new(shared::engine(128)?);
    let plugin = PluginSlot::new(shared::rogue_on(
        &runtime,
        Limits::default(),
        BTreeMap::new(),
    )?);

    let count: usize = std::env::var("WASQ_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    for (label, concurrency) in [
        ("throughput, max concurrency 16", 16),
        ("sequential, max concurrency 1", 1),
    ] {
        let n = if concurrency == 1 { count / 4 } else { count };
        let (rate, send_rate, handle_mean) =
            tokio.block_on(throughput(&runtime, &plugin, n, concurrency))?;
        println!(
            "{label}: {rate:.0} messages/s end to end ({n} no-op messages; sends {send_rate:.0}/s in batches of 10; processor mean {:.1} µs)",
            handle_mean * 1e6
        );
        if concurrency == 1 {
            let per_message = 1.0 / rate;
            println!(
                "  per-message host overhead (sequential): {:.1} µs = {:.1} µs per message less {:.1} µs in the processor",
                (per_message - handle_mean) * 1e6,
                per_message * 1e6,
                handle_mean * 1e6
            );
        }
    }

    Ok(())
}

async fn throughput(
    runtime: &Arc<Runtime>,
    plugin: &PluginSlot,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let dir = tempfile::tempdir()?;
    let env = LocalEnv {
        data_dir: dir.path().join("data"),
        blobs_root: dir.path().join("blobs"),
        link_base: "http://127.0.0.1:8080".into(),
        reserve: wasq::blobs::DEFAULT_RESERVE,
    };
    let (_, services) = env.open()?;
    let queues = LocalQueues::open(&env.data_dir)?;
    queues.create("bench", QueueOptions::default()).await?;
    let queue = queues.queue("bench").await?;
    let message = Outgoing {
        body: "noop".into(),
        ..Outgoing::default()
    };
    let sending = Instant::now();
    for _ in 0..count / 10 {
        queue.send_batch(vec![message.clone(); 10]).await?;
    }
    let send_rate = count as f64 / sending.elapsed().as_secs_f64();

    let metrics = Arc::new(Metrics::default());
    let dispatcher = Dispatcher {
        runtime: runtime.clone(),
        services,
        metrics: metrics.clone(),
        grace: Duration::from_secs(10),
        alarm_webhook: None,
        hurry: Default::default(),
        seal: wasq::dispatch::IdSeal::random()?,
        controls: Default::default(),
        timelines: Default::default(),
    };
    let binding = Binding {
        config: BindingConfig {
            name: "bench".into(),
            batch_size: 10,
            max_concurrency: concurrency,
            wait: Duration::from_millis(100),
            ..BindingConfig::default()
        },
        queue: Arc::new(queue.clone()),
        dlq: None,
        plugin: plugin.clone(),
    };
    let done = metrics.binding("bench");
    let started = Instant::now();
    let target = count as u64;
    let watch = done.clone();
    dispatcher
        .run(vec![binding], Readiness::default(), async move {
            while watch.done.get() < target {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
    let took = started.elapsed();
    let stats = queue.stats().await?;
    anyhow::ensure!(
        stats.visible + stats.in_flight == 0,
        "messages left over: {stats:?}"
    );
    let mean = handle_mean(&metrics.render());
    Ok((count as f64 / took.as_secs_f64(), send_rate, mean))
}

/// Mean handle duration, from the Prometheus text.
fn handle_mean(text: &str) -> f64 {
    let value = |name: &str| {
        text.lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    value("wasq_handle_duration_seconds_sum") / value("wasq_handle_duration_seconds_count").max(1.0)
}
