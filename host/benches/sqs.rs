//! wasq's own overhead on the SQS path, run with `cargo bench -p wasq
//! --bench sqs` after `tests/run.sh` has made `.venv` (or with
//! `WASQ_BENCH_AWS_ENDPOINT` pointing at a running SQS-compatible server).
//! Figures and method are recorded in docs/PERFORMANCE.md.
//!
//! The same number of messages is consumed three ways against the same
//! endpoint, in alternating rounds: a bare SDK loop (receive ten, delete
//! those ten in one batch, repeat) asking for no attributes; the same loop
//! asking for every system and message attribute, as wasq does (a consumer
//! needs the receive count, group id and attributes); and wasq's dispatcher
//! running a no-op processor on each message in a fresh instance, one
//! poller, batches of ten. The difference in wall time per message is
//! wasq's overhead.

#[path = "../../tests/shared.rs"]
#[allow(dead_code)]
mod shared;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasq::aws::AwsOptions;
use wasq::backends::LocalEnv;
use wasq::dispatch::{Binding, BindingConfig, Dispatcher, Metrics, Readiness};
use wasq::queue::QueueOptions;
use wasq::queue::{Outgoing, Queue, SqsQueues};
use wasq::runtime::{Limits, PluginSlot, Runtime};

const MESSAGES: usize = 400;
const ROUNDS: usize = 4;

/// A moto server of the bench's own, unless one is given.
struct Moto(Option<Child>, String);

impl Moto {
    fn start() -> anyhow::Result<Moto> {
        if let Ok(endpoint) = std::env::var("WASQ_BENCH_AWS_ENDPOINT") {
            return Ok(Moto(None, endpoint));
        }
        let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
        anyhow::ensure!(
            server.exists(),
            "{} is missing: run `bash tests/run.sh` once, or set WASQ_BENCH_AWS_ENDPOINT",
            server.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "moto did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Moto(Some(child), endpoint))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn main() -> anyhow::Result<()> {
    // moto checks no credentials; these keep the SDK from looking further.
    // SAFETY: set before any thread is started.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "bench");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "bench");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    }
    let moto = Moto::start()?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let aws = AwsOptions {
        endpoint_url: Some(moto.1.clone()),
        region: Some("us-east-1".into()),
        s3_path_style: true,
    };
    let runtime = Arc::new(shared::engine(128)?);
    let plugin = PluginSlot::new(shared::rogue_on(
        &runtime,
        Limits::default(),
        BTreeMap::new(),
    )?);

    tokio.block_on(async {
        let config = aws.load().await;
        let sqs = SqsQueues::new(&config);
        let client = aws_sdk_sqs::Client::new(&config);
        let mut plain = Vec::new();
        let mut full = Vec::new();
        let mut piped = Vec::new();
        let mut wasq = Vec::new();
        let rate = |d: Duration| MESSAGES as f64 / d.as_secs_f64();
        for round in 0..ROUNDS {
            let queue = fill(&sqs, &format!("bench-plain-{round}")).await?;
            plain.push(bare_loop(&client, &queue, false, false).await?);
            let queue = fill(&sqs, &format!("bench-full-{round}")).await?;
            full.push(bare_loop(&client, &queue, true, false).await?);
            let queue = fill(&sqs, &format!("bench-piped-{round}")).await?;
            piped.push(bare_loop(&client, &queue, true, true).await?);
            let queue = fill(&sqs, &format!("bench-wasq-{round}")).await?;
            wasq.push(dispatch(&runtime, &plugin, queue).await?);
            println!(
                "round {round}: bare {:.0} msg/s, with attributes {:.0} msg/s, pipelined {:.0} msg/s, wasq {:.0} msg/s",
                rate(plain[round]),
                rate(full[round]),
                rate(piped[round]),
                rate(wasq[round])
            );
        }
        let total = |v: &[Duration]| v.iter().sum::<Duration>().as_secs_f64();
        let n = (MESSAGES * ROUNDS) as f64;
        let line = |label: &str, secs: f64| {
            println!("{label}: {:.1} msg/s ({:.2} ms per message)", n / secs, secs / n * 1e3)
        };
        line("bare SDK loop", total(&plain));
        line("bare SDK loop with attributes", total(&full));
        line("bare SDK loop with attributes, deletes overlapping the next receive", total(&piped));
        line("wasq", total(&wasq));
        println!(
            "wasq overhead: {:+.1} % over the loop with attributes, {:+.1} % over the plain loop",
            (total(&wasq) / total(&full) - 1.0) * 100.0,
            (total(&wasq) / total(&plain) - 1.0) * 100.0
        );
        anyhow::Ok(())
    })?;
    drop(moto);
    Ok(())
}

async fn fill(sqs: &SqsQueues, name: &str) -> anyhow::Result<wasq::queue::sqs::SqsQueue> {
    sqs.create(name, QueueOptions::default()).await?;
    let queue = sqs.queue(name).await?;
    let message = Outgoing {
        body: "noop".into(),
        ..Outgoing::default()
    };
    for _ in 0..MESSAGES / 10 {
        queue.send_batch(vec![message.clone(); 10]).await?;
    }
    Ok(queue)
}

/// Receive ten, delete them in one batch, until the queue is empty; with
/// `pipelined`, each delete is sent while the next receive is under way.
async fn bare_loop(
    client: &aws_sdk_sqs::Client,
    queue: &wasq::queue::sqs::SqsQueue,
    attributes: bool,
    pipelined: bool,
) -> anyhow::Result<Duration> {
    use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
    let started = Instant::now();
    let mut deleted = 0;
    let mut deletes = tokio::task::JoinSet::new();
    while deleted < MESSAGES {
        let mut receive = client
            .receive_message()
            .queue_url(queue.url())
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(30);
        if attributes {
            receive = receive
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All");
        }
        let out = receive.send().await?;
        let entries: Vec<_> = out
            .messages()
            .iter()
            .enumerate()
            .map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()
            })
            .collect::<Result<_, _>>()?;
        if entries.is_empty() {
            continue;
        }
        deleted += entries.len();
        let delete = client
            .delete_message_batch()
            .queue_url(queue.url())
            .set_entries(Some(entries))
            .send();
        if pipelined {
            deletes.spawn(delete);
        } else {
            delete.await?;
        }
    }
    while let Some(done) = deletes.join_next().await {
        done??;
    }
    Ok(started.elapsed())
}

/// wasq's dispatcher on the same kind of queue, until every message is done
/// and deleted.
async fn dispatch(
    runtime: &Arc<Runtime>,
    plugin: &PluginSlot,
    queue: wasq::queue::sqs::SqsQueue,
) -> anyhow::Result<Duration> {
    let dir = tempfile::tempdir()?;
    let env = LocalEnv {
        data_dir: dir.path().join("data"),
        blobs_root: dir.path().join("blobs"),
        link_base: "http://127.0.0.1:8080".into(),
        reserve: wasq::blobs::DEFAULT_RESERVE,
    };
    let (_, services) = env.open()?;
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
    let queue: Arc<dyn Queue> = Arc::new(queue);
    let binding = Binding {
        config: BindingConfig {
            name: "bench".into(),
            batch_size: 10,
            max_concurrency: 10,
            wait: Duration::from_secs(1),
            ..BindingConfig::default()
        },
        queue: queue.clone(),
        dlq: None,
        plugin: plugin.clone(),
    };
    let started = Instant::now();
    let deleted = metrics.binding("bench").deleted;
    let finished = Arc::new(std::sync::Mutex::new(None));
    let mark = finished.clone();
    dispatcher
        .run(vec![binding], Readiness::default(), async move {
            // Done when every message is deleted; the shutdown after (a
            // poll under way is finished) is not part of the figure.
            while deleted.get() < MESSAGES as u64 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            *mark.lock().unwrap() = Some(started.elapsed());
        })
        .await;
    let took = finished.lock().unwrap().expect("the stop future ran");
    anyhow::ensure!(
        metrics.binding("bench").done.get() == MESSAGES as u64,
        "not every message was done"
    );
    Ok(took)
}
