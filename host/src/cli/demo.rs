//! `wasq demo`: the whole flow on the embedded backends, start to finish.

use super::GlobalArgs;
use super::run::{BindingArgs, signal};
use crate::queue::QueueOptions;
use crate::queue::{Outgoing, Queue, Redrive};
use crate::records::{Records, SqliteRecords};
use crate::run::{Host, HostConfig, drained};
use crate::runtime::plugins::{Manifest, PluginSources};
use anyhow::Context as _;
use clap::Args;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to serve the download links.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// How long to keep serving the links once the jobs are done (Ctrl-C
    /// stops sooner; 0s exits at once).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub serve_for: Duration,
}

const QUEUE: &str = "demo-jobs";
/// What the demo lets `compress` touch, as a manifest says it. The demo
/// runs the same jobs each time it is run, so it lets them replace their
/// own archives and results from the last run; a real deployment leaves
/// `overwrite` off, so no job can replace another's.
const DEMO_GRANTS: &str = r#"
[blobs]
read = ["s3://docs/"]
write = ["s3://archives/"]
overwrite = true

[records]
tables = ["archives"]
overwrite = true
"#;
const DLQ: &str = "demo-jobs-dlq";

/// The bundled sample documents.
const SAMPLES: &[(&str, &[u8])] = &[
    (
        "report.txt",
        include_bytes!("../../../tests/fixtures/blobs/docs/report.txt"),
    ),
    (
        "data.csv",
        include_bytes!("../../../tests/fixtures/blobs/docs/data.csv"),
    ),
    (
        "notes.md",
        include_bytes!("../../../tests/fixtures/blobs/docs/notes.md"),
    ),
    (
        "logo.png",
        include_bytes!("../../../tests/fixtures/blobs/docs/logo.png"),
    ),
];

/// Good jobs and bad ones: (job id, body).
fn jobs() -> Vec<(&'static str, String)> {
    let job = |id: &str, files: &[&str]| {
        serde_json::json!({
            "job_id": id,
            "files": files.iter().map(|f| format!("s3://docs/{f}")).collect::<Vec<_>>(),
            "output": format!("s3://archives/{id}.zip"),
            "expires_in": 3600,
        })
        .to_string()
    };
    vec![
        ("everything", job("everything", &["report.txt", "data.csv", "notes.md", "logo.png"])),
        ("tables", job("tables", &["data.csv"])),
        ("notes-and-logo", job("notes-and-logo", &["notes.md", "logo.png"])),
        ("missing-file", job("missing-file", &["report.txt", "budget.xlsx"])),
        ("not-s3", r#"{"job_id": "not-s3", "files": ["https://example.com/a.pdf"], "output": "s3://archives/not-s3.zip"}"#.to_string()),
        ("not-json", "please zip my files".to_string()),
    ]
}

pub async fn demo(args: DemoArgs, global: &GlobalArgs) -> anyhow::Result<bool> {
    let env = global.env(None);
    // The data directory first, owner-only, then the samples inside it.
    crate::secret::private_dir(&env.data_dir)
        .with_context(|| format!("opening data directory {}", env.data_dir.display()))?;
    let docs = env.blobs_root.join("docs");
    crate::secret::own_dir(&docs).with_context(|| format!("creating {}", docs.display()))?;
    for (name, bytes) in SAMPLES {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(docs.join(name))
            .and_then(|mut file| file.write_all(bytes))
            .with_context(|| format!("seeding {name}"))?;
    }
    println!(
        "1. seeded {} sample documents into {}",
        SAMPLES.len(),
        docs.display()
    );

    let binding = BindingArgs {
        queue: Some(format!("local://{QUEUE}")),
        limits: super::run::LimitArgs {
            timeout: Some("30s".into()),
            ..Default::default()
        },
        max_receive_count: Some(3),
        backoff_base: Some("1s".into()),
        ..BindingArgs::default()
    }
    .spec()?;
    // The demo's own grants: read the samples, write archives, record
    // results. Nothing else.
    let manifest: Manifest = toml::from_str(DEMO_GRANTS).expect("the demo's grants parse");
    let mut plugins = PluginSources::in_dir(global.plugins_dir());
    plugins.manifests.insert("compress".into(), manifest);
    let config = HostConfig {
        env: env.clone(),
        aws: Default::default(),
        blobs: Default::default(),
        records: Default::default(),
        engine: global.engine(),
        plugins,
        listen: Some(args.listen),
        links_follow_listen: global.link_base.is_none(),
        grace: Duration::from_secs(10),
        alarm_webhook: None,
        console_token: None,
        bindings: vec![binding],
    };
    let host = Host::start(config).await?;
    // A rerun starts from empty queues.
    let local_queues = host.backends.local_queues().await?.clone();
    local_queues
        .create(
            QUEUE,
            QueueOptions {
                visibility_timeout: Duration::from_secs(180),
                redrive: Some(Redrive {
                    dlq: DLQ.into(),
                    max_receive_count: 3,
                }),
            },
        )
        .await?;
    local_queues.purge(QUEUE).await?;
    local_queues.purge(DLQ).await?;
    let queue = local_queues.queue(QUEUE).await?;
    let all_jobs = jobs();
    for (_, body) in &all_jobs {
        queue
            .send(Outgoing {
                body: body.clone(),
                ..Outgoing::default()
            })
            .await?;
    }
    println!(
        "2. enqueued {} jobs on local://{QUEUE} (3 good, 3 bad)",
        all_jobs.len()
    );
    println!("3. running the host until the queue is drained");

    let metrics = host.metrics.binding(QUEUE);
    let progress = tokio::spawn({
        let metrics = metrics.clone();
        let total = all_jobs.len() as u64;
        async move {
            let mut last = u64::MAX;
            loop {
                let done = metrics.done.get();
                let dead = metrics.dead_lettered.get();
                if done + dead != last {
                    last = done + dead;
                    println!(
                        "   … {done} archived, {dead} dead-lettered, {} to go",
                        total.saturating_sub(done + dead)
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });

    let queues = host.bound.clone();
    let records = SqliteRecords::open(&env.data_dir.join("records.db"))?;
    let link_base = host.links_at().unwrap_or_else(|| args.listen.to_string());
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let serve_for = args.serve_for;
    let was_interrupted = interrupted.clone();
    let report = Box::pin(async move {
        progress.abort();
        println!("4. results");
        for (job_id, _) in all_jobs {
            match records.get("archives", job_id).await {
                Ok(Some(result)) => {
                    let result: serde_json::Value =
                        serde_json::from_str(&result).unwrap_or_default();
                    println!(
                        "   {job_id}: {} ({} bytes, {} files)",
                        result["archive"].as_str().unwrap_or("?"),
                        result["size"],
                        result["files"]
                    );
                    println!("      {}", result["url"].as_str().unwrap_or("?"));
                }
                Ok(None) => {}
                Err(err) => println!("   {job_id}: could not read its record: {err}"),
            }
        }
        match local_queues.peek(DLQ, 100).await {
            Ok(letters) => {
                println!("5. dead letters in local://{DLQ}: {}", letters.len());
                for letter in letters {
                    let reason = letter
                        .attributes
                        .iter()
                        .find(|(name, _)| name == crate::dispatch::REASON_ATTRIBUTE)
                        .map_or("(no reason)", |(_, value)| value.as_str());
                    println!(
                        "   {}: {}",
                        crate::text::Escaped(&letter.id),
                        crate::text::Escaped(reason)
                    );
                }
            }
            Err(err) => println!("5. could not list dead letters: {err}"),
        }
        if !serve_for.is_zero() && !was_interrupted.load(std::sync::atomic::Ordering::Acquire) {
            println!(
                "serving the links at {link_base}/ for {} (try curl -O on one); Ctrl-C to stop",
                humantime::format_duration(serve_for)
            );
            tokio::select! {
                _ = signal() => {}
                _ = tokio::time::sleep(serve_for) => {}
            }
        }
    });
    host.run(
        async move {
            tokio::select! {
                _ = drained(queues) => {}
                _ = signal() => interrupted.store(true, std::sync::atomic::Ordering::Release),
            }
        },
        Some(report),
    )
    .await?;
    Ok(true)
}
