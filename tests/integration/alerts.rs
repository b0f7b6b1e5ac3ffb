//! The dead-letter alarm, end to end: `wasq run --dlq-alarm 1` fills its
//! dead-letter queue; the host logs the alarm once, sets `wasq_dlq_alarm`,
//! POSTs the webhook; and a real Prometheus (Debian's package, installed by
//! `tests/run.sh`), scraping the host with the rules shipped in
//! `deploy/prometheus/`, fires the alert. Also: the metric names the
//! README lists, the rules and the dashboard use, and `/metrics` serves are
//! one set.

use crate::harness::Killed;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wasq::queue::{LocalQueues, Outgoing, Queue};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn free_port() -> u16 {
    crate::cli::free_port()
}

/// A plain HTTP/1.0 GET; the body, or `None` when nothing answers.
fn get(addr: &str, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// Every `wasq_*` name in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("wasq_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len().max(1)..];
        if name.len() > "wasq_".len() {
            names.insert(name);
        }
    }
    names
}

/// The names `/metrics` serves, histogram parts folded into their metric.
fn served() -> BTreeSet<String> {
    wasq::dispatch::metrics::NAMES
        .iter()
        .map(|(name, _)| name.to_string())
        .collect()
}

fn fold(name: &str) -> String {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
        .to_string()
}

/// The README listed metrics the host never served (`pollers`).
#[test]
fn the_readme_rules_and_dashboard_name_the_metrics_served() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split("<!-- metrics -->")
        .nth(1)
        .expect("the README's metrics table is marked <!-- metrics -->");
    assert_eq!(names_in(section), served(), "README vs /metrics");
    // What /metrics really serves, read off a live registry.
    let metrics = wasq::dispatch::Metrics::default();
    metrics.binding("b");
    let samples: String = metrics
        .render()
        .lines()
        .filter(|line| !line.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let exposed: BTreeSet<String> = names_in(&samples).into_iter().map(|n| fold(&n)).collect();
    assert_eq!(exposed, served(), "/metrics vs the declared table");
    for file in [
        "deploy/prometheus/wasq-rules.yml",
        "deploy/prometheus/wasq-dashboard.json",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        for name in names_in(&text) {
            assert!(
                served().contains(&fold(&name)),
                "{file} uses {name}, which /metrics does not serve"
            );
        }
    }
}

/// A webhook receiver: every body POSTed to it.
fn receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Head and body: read until the body's length is in.
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        kept.lock().unwrap().push(body.to_string());
                        break;
                    }
                }
            }
            let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
        }
    });
    (format!("http://{addr}/hook"), bodies)
}

/// `--dlq-alarm` was once parsed and never read: three dead letters over a
/// threshold of one logged nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Prometheus: `bash tests/run.sh` installs it and runs this"]
async fn a_full_dead_letter_queue_fires_the_alarm_through_prometheus() {
    let prometheus = std::env::var("WASQ_TEST_PROMETHEUS").expect(
        "WASQ_TEST_PROMETHEUS is not set: this test needs the Prometheus server that `bash tests/run.sh` installs",
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let queues = LocalQueues::open(&data).unwrap();
    queues
        .create("jobs", crate::harness::with_dlq(5))
        .await
        .unwrap();
    let queue = queues.queue("jobs").await.unwrap();
    for _ in 0..3 {
        queue
            .send(Outgoing {
                body: "reject".into(),
                ..Outgoing::default()
            })
            .await
            .unwrap();
    }
    let (hook, posted) = receiver();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let log = dir.path().join("host.log");
    let _host = Killed(
        crate::harness::wasq_run(
            &data,
            wasq_test_guests::ROGUE,
            &log,
            &[
                "--dlq-alarm",
                "1",
                "--alarm-webhook",
                &hook,
                "--listen",
                &listen,
            ],
        )
        .spawn()
        .unwrap(),
    );

    let prom_port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: wasq\n    static_configs:\n      - targets: ['{listen}']\n",
            repo().join("deploy/prometheus/wasq-rules.yml").display()
        ),
    )
    .unwrap();
    let _prometheus = Killed(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );

    let prom = format!("127.0.0.1:{prom_port}");
    let started = Instant::now();
    let firing = loop {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the alert never fired; host log:\n{}\nprometheus log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(body) = get(&prom, "/api/v1/alerts") else {
            continue;
        };
        let Ok(answer) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        let alerts = answer["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(alert) = alerts.into_iter().find(|a| {
            a["labels"]["alertname"] == "WasqDeadLettersOverThreshold" && a["state"] == "firing"
        }) {
            break alert;
        }
    };
    assert_eq!(firing["labels"]["binding"], "jobs", "{firing}");

    // The host said so once, naming the queue, the depth and the reason.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("dead-letter alarm: the dead-letter queue holds more"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].contains("dlq=\"jobs-dlq\"")
            && lines[0].contains("depth=")
            && lines[0].contains("rejected on request"),
        "{}",
        lines[0]
    );
    let metrics = get(&listen, "/metrics").unwrap();
    assert!(
        metrics.contains("wasq_dlq_alarm{binding=\"jobs\"} 1"),
        "{metrics}"
    );
    // And the webhook heard it.
    let started = Instant::now();
    loop {
        let bodies = posted.lock().unwrap().clone();
        if let Some(body) = bodies.first() {
            let note: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(note["state"], "firing");
            assert_eq!(note["binding"], "jobs");
            assert!(note["depth"].as_u64().unwrap() >= 2, "{note}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no webhook notification"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Emptied, the alarm clears, once.
    queues.purge("jobs-dlq").await.unwrap();
    let started = Instant::now();
    loop {
        let metrics = get(&listen, "/metrics").unwrap_or_default();
        if metrics.contains("wasq_dlq_alarm{binding=\"jobs\"} 0") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the alarm never cleared"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("dead-letter alarm cleared").count(),
        1,
        "{text}"
    );
}
