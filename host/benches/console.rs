//! The console's dead-letter browser at scale, run with `cargo bench -p
//! wasq --bench console`. Figures and method are recorded in
//! docs/PERFORMANCE.md.
//!
//! 100,000 dead letters are put into an embedded dead-letter queue; a
//! release `wasq run` serves the console over it (its binding paused, so
//! redriven letters wait). Timed over plain HTTP on loopback, median of 7
//! after one warm-up: the first page of dead letters, rendered on the
//! server; the first page of a full-text search; then one redrive of all
//! the letters a search matches (10,000 of them), from the confirmed POST
//! to its answer.
//!
//! Then whether the console slows dispatch: 20,000 no-op messages through
//! a release `wasq run` (max concurrency 16), timed from the first message
//! done to the last by the host's own counter, with nobody looking and with
//! a client fetching the overview and its chart data every second (a
//! browser left open fetches the data every 15 s), alternately, five runs
//! each.

#[path = "../../tests/shared.rs"]
#[allow(dead_code)]
mod shared;
use shared::cpu_seconds;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wasq::queue::{LocalQueues, Outgoing, Queue, QueueOptions, Redrive};

const LETTERS: usize = 100_000;
/// Runs of the dispatch figure with and without the console polled.
const RUNS: usize = 5;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.0 exchange: status and body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no response head"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The median time of `runs` GETs of `path`, after one warm-up, each
/// checked to contain `expect`.
fn timed_get(addr: &str, path: &str, expect: &str, runs: usize) -> anyhow::Result<Duration> {
    let mut samples = Vec::new();
    for run in 0..=runs {
        let started = Instant::now();
        let (status, page) = http(addr, "GET", path, "")?;
        let took = started.elapsed();
        anyhow::ensure!(
            status == 200 && page.contains(expect),
            "GET {path}: {status}\n{page}"
        );
        if run > 0 {
            samples.push(took);
        }
    }
    Ok(median(samples))
}

/// A release `wasq run` of the no-op `rogue` processor on embedded queue
/// `queue`, its console on a free loopback port (returned).
fn noop_host(
    dir: &std::path::Path,
    data: &std::path::Path,
    queue: &str,
    extra: &[&str],
) -> anyhow::Result<(Child, String)> {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let host = Command::new(env!("CARGO_BIN_EXE_wasq"))
        .current_dir(dir)
        .env("WASQ_DATA_DIR", data)
        .env("WASQ_LOG", "warn")
        .args(["run", "--queue", &format!("local://{queue}"), "--no-dlq"])
        .args(["--plugin", wasq_test_guests::ROGUE, "--listen", &addr])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok((host, addr))
}

/// Messages per second through `wasq run` on `MESSAGES` no-op messages,
/// with the overview fetched every second when `watched`, and the host's
/// CPU time per message over the same stretch, in microseconds.
fn dispatch_rate(watched: bool) -> anyhow::Result<(f64, f64)> {
    const MESSAGES: usize = 20_000;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let runtime = tokio::runtime::Runtime::new()?;
    let queues = LocalQueues::open(&data)?;
    runtime.block_on(async {
        queues.create("noop", QueueOptions::default()).await?;
        let queue = queues.queue("noop").await?;
        for _ in 0..MESSAGES / 10 {
            queue
                .send_batch(
                    (0..10)
                        .map(|_| Outgoing {
                            body: "noop".into(),
                            ..Outgoing::default()
                        })
                        .collect(),
                )
                .await?;
        }
        anyhow::Ok(())
    })?;
    let (host, addr) = noop_host(dir.path(), &data, "noop", &["--max-concurrency", "16"])?;
    let pid = host.id().to_string();
    let _host = Killed(host);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = watched.then(|| {
        let (addr, stop) = (addr.clone(), stop.clone());
        std::thread::spawn(move || {
            let what = std::env::var("WASQ_BENCH_WATCH").unwrap_or_else(|_| "both".into());
            let mut slowest = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                if what != "json" {
                    let _ = http(&addr, "GET", "/", "");
                }
                if what != "page" {
                    let _ = http(&addr, "GET", "/overview.json", "");
                }
                slowest = slowest.max(started.elapsed());
                std::thread::sleep(Duration::from_secs(1));
            }
            eprintln!("  (slowest overview fetch: {slowest:?})");
        })
    });
    let done = |addr: &str| -> f64 {
        http(addr, "GET", "/metrics", "")
            .ok()
            .and_then(|(_, text)| {
                text.lines()
                    .find(|l| l.starts_with("wasq_messages_done_total"))
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0.0)
    };
    let started = Instant::now();
    let mut first = None;
    loop {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "the messages did not all run"
        );
        let count = done(&addr);
        if count >= 1.0 && first.is_none() {
            first = Some((Instant::now(), count, cpu_seconds(&pid)));
        }
        if count >= MESSAGES as f64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (at, counted, cpu_at) = first.expect("a first message was seen");
    let rate = (MESSAGES as f64 - counted) / at.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(&pid) - cpu_at) / (MESSAGES as f64 - counted) * 1e6;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(watcher) = watcher {
        let _ = watcher.join();
    }
    Ok((rate, cpu))
}

/// The host's CPU time for one look at the overview (the page and its
/// chart data), in milliseconds: 200 looks at an idle host bound to an
/// empty queue, less what it spends idle over as long.
fn overview_cost() -> anyhow::Result<f64> {
    const LOOKS: u32 = 200;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let runtime = tokio::runtime::Runtime::new()?;
    let queues = LocalQueues::open(&data)?;
    runtime.block_on(queues.create("idle", QueueOptions::default()))?;
    let (host, addr) = noop_host(dir.path(), &data, "idle", &[])?;
    let pid = host.id().to_string();
    let _host = Killed(host);
    let started = Instant::now();
    while http(&addr, "GET", "/overview.json", "").is_err() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the host did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (idle_at, idle_cpu) = (Instant::now(), cpu_seconds(&pid));
    std::thread::sleep(Duration::from_secs(2));
    let idle_rate = (cpu_seconds(&pid) - idle_cpu) / idle_at.elapsed().as_secs_f64();
    let (at, cpu) = (Instant::now(), cpu_seconds(&pid));
    for _ in 0..LOOKS {
        let (status, _) = http(&addr, "GET", "/", "")?;
        anyhow::ensure!(status == 200, "the overview answered {status}");
        http(&addr, "GET", "/overview.json", "")?;
    }
    let spent = cpu_seconds(&pid) - cpu - idle_rate * at.elapsed().as_secs_f64();
    Ok(spent / f64::from(LOOKS) * 1e3)
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let runtime = tokio::runtime::Runtime::new()?;
    let queues = LocalQueues::open(&data)?;
    let filling = Instant::now();
    runtime.block_on(async {
        queues
            .create(
                "jobs",
                QueueOptions {
                    redrive: Some(Redrive {
                        dlq: "jobs-dlq".into(),
                        max_receive_count: 3,
                    }),
                    ..QueueOptions::default()
                },
            )
            .await?;
        let dlq = queues.queue("jobs-dlq").await?;
        let kinds = ["resize", "archive", "index", "notify", "export", "render", "sync", "bill", "audit", "alpha"];
        let mut batch = Vec::new();
        for i in 0..LETTERS {
            batch.push(Outgoing {
                body: format!(
                    "{{\"job_id\": \"job-{i:06}\", \"customer\": \"customer-{}\", \"kind\": \"{}\", \"files\": [\"s3://docs/{i}/a.pdf\", \"s3://docs/{i}/b.png\"]}}",
                    i % 997,
                    kinds[i % kinds.len()]
                ),
                attributes: vec![
                    ("wasq-reason".into(), format!("trap: wasm trap: out of bounds memory access in step {}", i % 53)),
                    ("wasq-plugin".into(), if i % 3 == 0 { "wordcount" } else { "compress" }.into()),
                    ("wasq-source-queue".into(), "jobs".into()),
                ],
                ..Outgoing::default()
            });
            if batch.len() == 10 {
                dlq.send_batch(std::mem::take(&mut batch)).await?;
            }
        }
        anyhow::Ok(())
    })?;
    println!(
        "{LETTERS} dead letters put in {:.1} s",
        filling.elapsed().as_secs_f64()
    );

    let addr = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let wasq = env!("CARGO_BIN_EXE_wasq");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(wasq_test_guests::ROGUE, plugins.join("rogue.wasm"))?;
    let host = Command::new(wasq)
        .current_dir(dir.path())
        .env("WASQ_DATA_DIR", &data)
        .env("WASQ_PLUGINS_DIR", &plugins)
        .env("WASQ_LOG", "warn")
        .args([
            "run",
            "--queue",
            "local://jobs",
            "--plugin",
            "rogue",
            "--listen",
            &addr,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let _host = Killed(host);
    let started = Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the host did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, overview) = http(&addr, "GET", "/", "")?;
    let at = overview
        .find("name=\"csrf\" value=\"")
        .ok_or_else(|| anyhow::anyhow!("no CSRF token on the overview"))?
        + 19;
    let csrf = overview[at..at + 64].to_string();
    let (status, _) = http(
        &addr,
        "POST",
        "/bindings/jobs/pause",
        &format!("csrf={csrf}"),
    )?;
    anyhow::ensure!(status == 303, "pausing: {status}");

    let first = timed_get(
        &addr,
        "/dead-letters?queue=local%3A%2F%2Fjobs-dlq",
        "100000 letters match",
        7,
    )?;
    // The first search of the queue indexes its 100,000 letters.
    let stored = || -> u64 {
        ["queues.db", "queues.db-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(data.join(f)).ok())
            .map(|m| m.len())
            .sum()
    };
    let size_before = stored();
    let started = Instant::now();
    let (status, page) = http(
        &addr,
        "GET",
        "/dead-letters?queue=local%3A%2F%2Fjobs-dlq&q=beta+customer-7",
        "",
    )?;
    let indexing = started.elapsed();
    anyhow::ensure!(status == 200 && page.contains("letters match"), "{page}");
    let size_after = stored();
    let search = timed_get(
        &addr,
        "/dead-letters?queue=local%3A%2F%2Fjobs-dlq&q=alpha+customer-42",
        "letters match",
        7,
    )?;
    let wide = timed_get(
        &addr,
        "/dead-letters?queue=local%3A%2F%2Fjobs-dlq&q=alpha",
        "10000 letters match",
        7,
    )?;
    let last_page = timed_get(
        &addr,
        "/dead-letters?queue=local%3A%2F%2Fjobs-dlq&q=alpha&page=199",
        "10000 letters match",
        7,
    )?;

    let redrive = serde_urlencoded::to_string([
        ("csrf", csrf.as_str()),
        ("queue", "local://jobs-dlq"),
        ("action", "redrive"),
        ("all", "1"),
        ("q", "alpha"),
    ])?;
    let started = Instant::now();
    let (status, answer) = http(&addr, "POST", "/dead-letters/act", &redrive)?;
    let took = started.elapsed();
    anyhow::ensure!(
        status == 200 && answer.contains("Redrove 10000 of the 10000"),
        "redrive: {status}\n{answer}"
    );
    let jobs = runtime.block_on(queues.queue("jobs"))?;
    let waiting = runtime.block_on(jobs.stats())?.visible;
    anyhow::ensure!(waiting == 10_000, "{waiting} letters back in the queue");

    println!("\nconsole over {LETTERS} dead letters (median of 7, over HTTP on loopback):");
    println!(
        "  first page of dead letters           {:>8.1} ms",
        first.as_secs_f64() * 1e3
    );
    println!(
        "  search, first page (two words)       {:>8.1} ms",
        search.as_secs_f64() * 1e3
    );
    println!(
        "  first search (indexes the letters)   {:>8.1} ms; queues.db and its WAL {:.1} -> {:.1} MB",
        indexing.as_secs_f64() * 1e3,
        size_before as f64 / 1e6,
        size_after as f64 / 1e6
    );
    println!(
        "  search, first page (10,000 matches)  {:>8.1} ms",
        wide.as_secs_f64() * 1e3
    );
    println!(
        "  search, page 200 of 200              {:>8.1} ms",
        last_page.as_secs_f64() * 1e3
    );
    println!(
        "  redrive of 10,000 matching letters   {:>8.1} ms, {:.0} letters/s",
        took.as_secs_f64() * 1e3,
        10_000.0 / took.as_secs_f64()
    );

    let (mut alone, mut watched) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        alone.push(dispatch_rate(false)?);
        watched.push(dispatch_rate(true)?);
    }
    type Pick = fn(&(f64, f64)) -> f64;
    let mean =
        |runs: &[(f64, f64)], pick: Pick| runs.iter().map(pick).sum::<f64>() / runs.len() as f64;
    let (rate, cpu): (Pick, Pick) = (|r| r.0, |r| r.1);
    println!("\nno-op dispatch, 20,000 messages, concurrency 16 ({RUNS} runs each, alternating):");
    for (what, runs) in [
        ("nobody looking", &alone),
        ("overview fetched every 1 s", &watched),
    ] {
        println!(
            "  {what:<27}{:>8.0} messages/s, host CPU {:>5.1} µs/message  {:.0?} {:.1?}",
            mean(runs, rate),
            mean(runs, cpu),
            runs.iter().map(rate).collect::<Vec<_>>(),
            runs.iter().map(cpu).collect::<Vec<_>>(),
        );
    }
    let look = overview_cost()?;
    println!(
        "  one look at the overview (page and chart data): {look:.2} ms of the host's CPU, {:.2} % of the CPU dispatch used per second",
        look / 1e3 / (mean(&alone, rate) * mean(&alone, cpu) / 1e6) * 100.0
    );
    println!(
        "  change with the console polled: throughput {:+.1} %, host CPU per message {:+.1} %",
        (mean(&watched, rate) / mean(&alone, rate) - 1.0) * 100.0,
        (mean(&watched, cpu) / mean(&alone, cpu) - 1.0) * 100.0
    );
    Ok(())
}
