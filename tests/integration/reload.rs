//! Hot reload: changing, breaking, removing and restoring a plugin while
//! `wasq run` is busy. New messages run the new version, a broken file (or
//! one whose timeout outgrows the binding) never replaces a working one, and
//! a removed plugin pauses its binding without losing messages.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use wasq::queue::{LocalQueues, Outgoing, Queue};
use wasq::records::{Records, SqliteRecords};

async fn result(records: &SqliteRecords, id: &str, within: Duration) -> Option<String> {
    let started = Instant::now();
    while started.elapsed() < within {
        if let Some(value) = records.get("results", &format!("jobs/{id}")).await.unwrap() {
            return Some(value);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

fn manifest(dir: &Path, greeting: &str) {
    manifest_with_timeout(dir, greeting, None);
}

fn manifest_with_timeout(dir: &Path, greeting: &str, timeout: Option<&str>) {
    let limits = timeout
        .map(|t| format!("[limits]\ntimeout = \"{t}\"\n"))
        .unwrap_or_default();
    std::fs::write(
        dir.join("rogue.toml"),
        format!("{limits}[config]\ngreeting = \"{greeting}\"\n"),
    )
    .unwrap();
}

/// Waits until the host's log says `what` for the `nth` time: the watcher
/// has taken (or refused) a change, so the next one is seen on its own.
async fn logged(log: &Path, what: &str, nth: usize) {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(what).count() >= nth {
            return;
        }
        // Generous: under load, compiling a new version takes a while.
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the host never logged `{what}` {nth} times:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

const RELOADED: &str = "plugin reloaded";
const REFUSED: &str = "plugin changed but cannot be used";
const REMOVED: &str = "plugin removed";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_reload_while_the_host_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(wasq_test_guests::ROGUE, plugins.join("rogue.wasm")).unwrap();
    manifest(&plugins, "one");

    let queues = LocalQueues::open(&data).unwrap();
    queues
        .create("jobs", crate::harness::with_dlq(5))
        .await
        .unwrap();
    let queue = queues.queue("jobs").await.unwrap();
    let log = dir.path().join("host.log");
    let mut child = crate::harness::wasq_run(&data, "rogue", &log, &[])
        .env("WASQ_PLUGINS_DIR", &plugins)
        .spawn()
        .unwrap();
    let records = SqliteRecords::open(&data.join("records.db")).unwrap();
    let ask = || async {
        queue
            .send(Outgoing {
                body: "config greeting".into(),
                ..Outgoing::default()
            })
            .await
            .unwrap()
    };
    let wait = Duration::from_secs(30);

    let first = ask().await;
    assert_eq!(result(&records, &first, wait).await.as_deref(), Some("one"));

    // Changed: the new version serves new messages.
    manifest(&plugins, "two");
    logged(&log, RELOADED, 1).await;
    let second = ask().await;
    assert_eq!(
        result(&records, &second, wait).await.as_deref(),
        Some("two")
    );

    // A timeout that reaches the binding's visibility timeout (3m by
    // default) could let a message run twice at once: refused.
    manifest_with_timeout(&plugins, "slow", Some("10m"));
    logged(&log, REFUSED, 1).await;
    let slow = ask().await;
    assert_eq!(result(&records, &slow, wait).await.as_deref(), Some("two"));

    // Broken: the working version stays.
    std::fs::write(plugins.join("rogue.wasm"), b"not a component").unwrap();
    logged(&log, REFUSED, 2).await;
    let third = ask().await;
    assert_eq!(result(&records, &third, wait).await.as_deref(), Some("two"));

    // Removed: the binding pauses and the message waits in the queue.
    std::fs::remove_file(plugins.join("rogue.wasm")).unwrap();
    logged(&log, REMOVED, 1).await;
    let fourth = ask().await;
    assert_eq!(
        result(&records, &fourth, Duration::from_secs(2)).await,
        None
    );
    assert_eq!(
        queue.stats().await.unwrap().visible + queue.stats().await.unwrap().in_flight,
        1
    );

    // Restored: the waiting message runs on the restored version.
    manifest(&plugins, "three");
    std::fs::copy(wasq_test_guests::ROGUE, plugins.join("rogue.wasm")).unwrap();
    assert_eq!(
        result(&records, &fourth, wait).await.as_deref(),
        Some("three")
    );

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("plugin changed but cannot be used; the previous version keeps running"),
        "{log}"
    );
    assert!(
        log.contains("the visibility timeout (3m) must exceed the processor timeout (10m)"),
        "{log}"
    );
    assert!(
        log.contains("plugin removed: its bindings pause until it returns"),
        "{log}"
    );
}

/// A new version of the file: the same code with a custom section
/// appended, so its bytes (and hash) differ.
fn new_version(path: &Path, mark: u8) {
    let mut wasm = std::fs::read(wasq_test_guests::ROGUE).unwrap();
    wasm.extend_from_slice(&[0, 2, 1, mark]);
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, wasm).unwrap();
    std::fs::rename(temp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_host_loses_nothing_while_its_plugin_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let wasm = plugins.join("rogue.wasm");
    new_version(&wasm, b'0');
    manifest(&plugins, "v0");

    let queues = LocalQueues::open(&data).unwrap();
    queues
        .create("jobs", crate::harness::with_dlq(5))
        .await
        .unwrap();
    let queue = queues.queue("jobs").await.unwrap();
    let log = dir.path().join("host.log");
    let mut child = crate::harness::wasq_run(&data, "rogue", &log, &["--max-concurrency", "4"])
        .env("WASQ_PLUGINS_DIR", &plugins)
        .spawn()
        .unwrap();

    // A steady stream of messages while versions come and go: new code,
    // a broken file, new settings.
    let sender = {
        let queue = queue.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..80 {
                let batch = vec![
                    Outgoing {
                        body: "config greeting".into(),
                        ..Outgoing::default()
                    };
                    5
                ];
                ids.extend(queue.send_batch(batch).await.unwrap());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ids
        })
    };
    // Each change once the watcher has dealt with the one before, so each
    // is taken on its own.
    logged(&log, "bound", 1).await;
    for step in 1..=5u8 {
        match step {
            2 => std::fs::write(&wasm, b"\0asm broken").unwrap(),
            4 => manifest(&plugins, "v4"),
            _ => new_version(&wasm, b'0' + step),
        }
        match step {
            1 => logged(&log, RELOADED, 1).await,
            2 => logged(&log, REFUSED, 1).await,
            n => logged(&log, RELOADED, usize::from(n) - 1).await,
        }
    }
    let ids = sender.await.unwrap();
    assert_eq!(ids.len(), 400);

    let records = SqliteRecords::open(&data.join("records.db")).unwrap();
    let mut versions = std::collections::BTreeSet::new();
    for id in &ids {
        let value = result(&records, id, Duration::from_secs(30)).await;
        let value = value.unwrap_or_else(|| panic!("message {id} was never done"));
        versions.insert(value);
    }
    // Every message ran on a working version, with the settings of its time.
    assert!(
        versions.iter().all(|v| v == "v0" || v == "v4"),
        "{versions:?}"
    );
    assert!(versions.contains("v4"), "{versions:?}");
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.visible + stats.in_flight + stats.delayed, 0);
    let dlq = queues.queue("jobs-dlq").await.unwrap();
    assert_eq!(dlq.stats().await.unwrap().visible, 0);

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{log}");
    assert!(log.matches("plugin reloaded").count() >= 3, "{log}");
    assert!(log.contains("plugin changed but cannot be used"), "{log}");
}

/// Deleting `plugins/NAME.toml` while `wasq run` ran once widened the
/// plugin to every grant. The last grants stay until the manifest returns
/// or the host restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_manifest_keeps_the_last_grants() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(wasq_test_guests::ROGUE, plugins.join("rogue.wasm")).unwrap();
    std::fs::write(
        plugins.join("rogue.toml"),
        "[blobs]\nread = [\"s3://docs/\"]\n",
    )
    .unwrap();
    for (path, bytes) in [("docs/a.txt", "public"), ("secrets/key.txt", "private")] {
        let file = data.join("blobs").join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, bytes).unwrap();
    }
    let queues = LocalQueues::open(&data).unwrap();
    queues
        .create("jobs", crate::harness::with_dlq(1))
        .await
        .unwrap();
    let queue = queues.queue("jobs").await.unwrap();
    let log = dir.path().join("host.log");
    let mut child = crate::harness::wasq_run(&data, "rogue", &log, &["--max-receive-count", "1"])
        .env("WASQ_PLUGINS_DIR", &plugins)
        .spawn()
        .unwrap();
    let records = SqliteRecords::open(&data.join("records.db")).unwrap();
    let wait = Duration::from_secs(30);
    let ask = |body: &'static str| {
        let queue = queue.clone();
        async move {
            queue
                .send(Outgoing {
                    body: body.into(),
                    ..Outgoing::default()
                })
                .await
                .unwrap()
        }
    };
    let dead_letters = || async {
        let started = Instant::now();
        loop {
            let n = match queues.queue("jobs-dlq").await {
                Ok(dlq) => dlq.stats().await.unwrap().visible,
                Err(_) => 0,
            };
            if n > 0 || started.elapsed() > Duration::from_secs(5) {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };

    let granted = ask("open s3://docs/a.txt").await;
    assert_eq!(result(&records, &granted, wait).await.as_deref(), Some("6"));
    let denied = ask("open s3://secrets/key.txt").await;
    assert_eq!(dead_letters().await, 1);
    assert_eq!(
        result(&records, &denied, Duration::from_millis(100)).await,
        None
    );

    std::fs::remove_file(plugins.join("rogue.toml")).unwrap();
    logged(&log, REFUSED, 1).await;
    let still_denied = ask("open s3://secrets/key.txt").await;
    let still_granted = ask("open s3://docs/a.txt").await;
    assert_eq!(
        result(&records, &still_granted, wait).await.as_deref(),
        Some("6")
    );
    assert_eq!(
        result(&records, &still_denied, Duration::from_secs(2)).await,
        None,
        "the plugin was widened when its manifest went"
    );

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains("rogue.toml was removed"), "{log}");
}
