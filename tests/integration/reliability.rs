//! The host as a process, abused: killed with SIGKILL mid-batch and
//! restarted, and two hosts sharing one data directory under load. Nothing
//! may be lost.

use crate::harness::wasq_run;
use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use wasq::queue::QueueOptions;
use wasq::queue::{LocalQueues, Outgoing, Queue, Redrive};
use wasq::records::{Records, SqliteRecords};

/// A host with its log going to a file beside the data directory (a pipe
/// nobody reads would fill and stall it).
fn host(data: &Path, extra: &[&str]) -> (Child, std::path::PathBuf) {
    let log = data.with_file_name(format!("host-{}.log", log_name()));
    let mut args = vec!["--until-empty"];
    args.extend_from_slice(extra);
    let child = wasq_run(data, wasq_test_guests::ROGUE, &log, &args)
        .spawn()
        .unwrap();
    (child, log)
}

fn log_name() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn setup(data: &Path, count: usize, body: &str) -> (LocalQueues, Vec<String>) {
    let queues = LocalQueues::open(data).unwrap();
    queues
        .create(
            "jobs",
            QueueOptions {
                visibility_timeout: Duration::from_secs(180),
                redrive: Some(Redrive {
                    dlq: "jobs-dlq".into(),
                    max_receive_count: 5,
                }),
            },
        )
        .await
        .unwrap();
    let queue = queues.queue("jobs").await.unwrap();
    let mut ids = Vec::with_capacity(count);
    let outgoing = Outgoing {
        body: body.into(),
        ..Outgoing::default()
    };
    for chunk in (0..count).collect::<Vec<_>>().chunks(10) {
        ids.extend(
            queue
                .send_batch(vec![outgoing.clone(); chunk.len()])
                .await
                .unwrap(),
        );
    }
    (queues, ids)
}

/// The ids among `ids` whose result is recorded.
async fn results(records: &SqliteRecords, ids: &[String]) -> HashSet<String> {
    let mut done = HashSet::new();
    for id in ids {
        if records
            .get("results", &format!("jobs/{id}"))
            .await
            .unwrap()
            .is_some()
        {
            done.insert(id.clone());
        }
    }
    done
}

/// Every id has a recorded result or sits in the dead-letter queue.
async fn accounted(data: &Path, queues: &LocalQueues, ids: &[String]) -> (usize, usize) {
    let records = SqliteRecords::open(&data.join("records.db")).unwrap();
    let done = results(&records, ids).await;
    let dead: HashSet<String> = queues
        .peek("jobs-dlq", 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    for id in ids {
        assert!(
            done.contains(id) || dead.contains(id),
            "message {id} was lost: neither done nor dead-lettered"
        );
    }
    (done.len(), dead.len())
}

fn finished((mut child, log): (Child, std::path::PathBuf), limit: Duration) -> String {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let stderr = std::fs::read_to_string(&log).unwrap();
            assert!(status.success(), "the host failed: {status:?}\n{stderr}");
            return stderr;
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            panic!("the host did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `done=N` summed over the hosts' shutdown summaries.
fn done_count(logs: &[String]) -> u64 {
    logs.iter()
        .flat_map(|log| log.lines())
        .filter(|line| line.contains("binding stopped"))
        .filter_map(|line| {
            line.split("done=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_batch_loses_nothing_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (queues, ids) = setup(&data, 60, "sleep 100").await;
    let settings = [
        "--max-concurrency",
        "4",
        "--timeout",
        "1s",
        "--visibility-timeout",
        "2s",
    ];

    let (mut first, _) = host(&data, &settings);
    let records = SqliteRecords::open(&data.join("records.db")).unwrap();
    let started = Instant::now();
    loop {
        if results(&records, &ids).await.len() >= 8 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the first host made no progress"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill().unwrap(); // SIGKILL, with messages in flight
    first.wait().unwrap();
    let stats = queues.queue("jobs").await.unwrap().stats().await.unwrap();
    assert!(
        stats.visible + stats.in_flight > 0,
        "the kill came too late to test anything"
    );

    let second = host(&data, &settings);
    finished(second, Duration::from_secs(120));
    let (done, dead) = accounted(&data, &queues, &ids).await;
    assert_eq!(done + dead, ids.len());
    assert_eq!(dead, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_through_two_hosts_on_one_directory_lose_none() {
    const COUNT: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (queues, ids) = setup(&data, COUNT, "sleep 0").await;
    let settings = ["--max-concurrency", "8"];
    let started = Instant::now();
    let a = host(&data, &settings);
    let b = host(&data, &settings);
    let logs = [
        finished(a, Duration::from_secs(300)),
        finished(b, Duration::from_secs(300)),
    ];
    let took = started.elapsed();
    let (done, dead) = accounted(&data, &queues, &ids).await;
    assert_eq!((done, dead), (COUNT, 0));
    let processed = done_count(&logs);
    assert!(
        processed >= COUNT as u64,
        "{processed} < {COUNT}:\n{}",
        logs.join("\n")
    );
    eprintln!(
        "two hosts: {COUNT} messages in {:.1}s, {} processed more than once",
        took.as_secs_f64(),
        processed - COUNT as u64
    );
}

/// Rejected messages, with the host killed (SIGKILL) again and again while
/// it dead-letters them: each message is one dead letter, under the id it
/// was sent with, and a redrive brings each back under that id once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_survive_kills_once_each_under_their_ids() {
    const COUNT: usize = 1_500;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (queues, ids) = setup(&data, COUNT, "reject").await;
    let dlq = queues.queue("jobs-dlq").await.unwrap();
    let jobs = queues.queue("jobs").await.unwrap();
    let settings = [
        "--max-concurrency",
        "8",
        "--timeout",
        "1s",
        "--visibility-timeout",
        "2s",
    ];
    let mut kills = 0;
    let mut last_log = String::new();
    while kills < 5 {
        let (mut child, log) = host(&data, &settings);
        last_log = log.display().to_string();
        // Let it dead-letter a while, then kill it mid-stream.
        let before = dlq.stats().await.unwrap().visible;
        let started = Instant::now();
        while dlq.stats().await.unwrap().visible < before + 100 {
            if started.elapsed() > Duration::from_secs(60) || child.try_wait().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if child.try_wait().unwrap().is_some() {
            break; // it finished: nothing left to kill it over
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    assert!(
        kills >= 3,
        "only {kills} kills landed mid-stream:\n{}",
        std::fs::read_to_string(&last_log).unwrap_or_default()
    );
    // Visibility lapses, then a last host finishes the rest.
    finished(host(&data, &settings), Duration::from_secs(120));
    assert_eq!(jobs.stats().await.unwrap().visible, 0);

    let letters = queues.peek("jobs-dlq", 100_000).await.unwrap();
    // Which message each letter was: the id it names, or (moved by the
    // queue's own redrive policy) its own.
    let dead: Vec<&str> = letters
        .iter()
        .map(|m| {
            m.attributes
                .iter()
                .find(|(name, _)| name == "wasq-message-id" && !m.moved_by_queue)
                .map_or(m.id.as_str(), |(_, sealed)| {
                    wasq::dispatch::seal::shown(sealed)
                })
        })
        .collect();
    let unique: HashSet<&str> = dead.iter().copied().collect();
    assert_eq!(
        dead.len(),
        unique.len(),
        "{} duplicate dead letters after {kills} kills",
        dead.len() - unique.len()
    );
    let sent: HashSet<&str> = ids.iter().map(String::as_str).collect();
    assert!(unique == sent, "the dead letters are not the messages sent");
    let own: HashSet<&str> = letters.iter().map(|m| m.id.as_str()).collect();
    assert!(
        own == sent,
        "the dead letters do not keep their messages' ids"
    );

    // Redriven, each runs again under the id it was sent with.
    assert_eq!(
        queues.redrive("jobs-dlq", None).await.unwrap(),
        COUNT as u64
    );
    let again: HashSet<String> = queues
        .peek("jobs", 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(again, ids.iter().cloned().collect::<HashSet<_>>());
}

/// SIGTERM: receiving stops, the running message gets the grace period,
/// then is released; the process exits 0 and every message is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_unfinished_messages_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (queues, _ids) = setup(&data, 3, "sleep 5000").await;
    let log = dir.path().join("host.log");
    let mut child = wasq_run(
        &data,
        wasq_test_guests::ROGUE,
        &log,
        &["--max-concurrency", "1", "--grace", "500ms"],
    )
    .spawn()
    .unwrap();
    let queue = queues.queue("jobs").await.unwrap();
    let started = Instant::now();
    while queue.stats().await.unwrap().in_flight == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing was received"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let stopping = Instant::now();
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        stopping.elapsed() < Duration::from_secs(4),
        "{:?}",
        stopping.elapsed()
    );
    assert!(
        log.contains("grace period over: releasing unfinished messages"),
        "{log}"
    );
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.visible, stats.in_flight), (3, 0), "{log}");
}

/// A second SIGTERM was once ignored without a word: the host sat out the
/// whole grace period. Now it releases what still runs and exits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_cuts_the_grace_period_short() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (queues, _ids) = setup(&data, 2, "sleep 60000").await;
    let log = dir.path().join("host.log");
    let mut child = wasq_run(
        &data,
        wasq_test_guests::ROGUE,
        &log,
        &[
            "--max-concurrency",
            "1",
            "--grace",
            "60s",
            "--timeout",
            "2m",
        ],
    )
    .spawn()
    .unwrap();
    let queue = queues.queue("jobs").await.unwrap();
    let started = Instant::now();
    while queue.stats().await.unwrap().in_flight == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing was received"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let term = || {
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
    };
    assert!(term().success());
    // The second signal once the first has been taken.
    let asked = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("shutting down")
    {
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "the first signal was not taken"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(term().success());
    let stopping = Instant::now();
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopping.elapsed()
    );
    assert!(log.contains("asked again to stop"), "{log}");
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.visible, stats.in_flight), (2, 0), "{log}");
}

/// `/readyz` once stayed 503 for a whole long poll (up to 20 s) on an
/// empty queue, though the queue had answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_as_soon_as_the_queue_answers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_queues, _ids) = setup(&data, 0, "noop").await;
    let port = crate::cli::free_port();
    let listen = format!("127.0.0.1:{port}");
    let log = dir.path().join("host.log");
    let mut child = wasq_run(
        &data,
        wasq_test_guests::ROGUE,
        &log,
        &["--receive-wait", "20s", "--listen", &listen],
    )
    .spawn()
    .unwrap();
    let started = Instant::now();
    let ready = loop {
        let status = std::net::TcpStream::connect(&listen)
            .ok()
            .and_then(|mut s| {
                use std::io::{Read, Write};
                s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").ok()?;
                let mut out = String::new();
                s.read_to_string(&mut out).ok()?;
                out.split_whitespace().nth(1).map(str::to_string)
            });
        if status.as_deref() == Some("200") {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(15), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready < Duration::from_secs(10), "{ready:?}");
}

/// With its stderr pipe closed, `wasq run` once aborted (exit 134) and left
/// the message in flight. Logging must never stop the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stderr_never_stops_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (queues, ids) = setup(&data, 3, "echo").await;
    let log = dir.path().join("unused.log");
    let mut child = wasq_run(&data, wasq_test_guests::ROGUE, &log, &["--until-empty"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Nobody reads the host's log: close the pipe at once.
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let records = SqliteRecords::open(&data.join("records.db")).unwrap();
    assert_eq!(results(&records, &ids).await.len(), 3);
    let queue = queues.queue("jobs").await.unwrap();
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.visible, stats.in_flight), (0, 0));
}
