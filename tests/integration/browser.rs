//! The console in a real browser: Debian's chromium, driven over WebDriver
//! by its chromedriver, both installed by `tests/run.sh`. The overview
//! draws its charts; a dead-letter search, a letter in full and a redrive
//! of the searched set work by clicking, and the queue's state is then
//! checked through the CLI; a binding pauses and resumes; bodies holding
//! `<script>` and `onerror=` stay text and never run; a POST from the page
//! without the CSRF token is refused. Screenshots of each page are saved
//! under the target directory (`console-screenshots/`). The dead-letter
//! pages are driven against SQS (moto) too.

use crate::cli::free_port;
use crate::harness::{Killed, wait_for_port};
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wasq::queue::{LocalQueues, Outgoing, Queue};

/// Chromium under chromedriver, headless, and a WebDriver session on it.
async fn browser() -> (Killed, Client) {
    let driver = std::env::var("WASQ_TEST_CHROMEDRIVER").expect(
        "WASQ_TEST_CHROMEDRIVER is not set: the browser tests need the chromium and chromedriver that `bash tests/run.sh` installs",
    );
    let chromium =
        std::env::var("WASQ_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let driver = Killed(child);
    wait_for_port(&format!("127.0.0.1:{port}"));
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("starting a chromium session");
    (driver, client)
}

fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shoot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

async fn wait_for_text(client: &Client, text: &str) {
    let started = Instant::now();
    loop {
        // A page being replaced answers with a stale element: try again.
        let body = match client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if body.contains(text) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the page never said {text:?}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn queue_stats(data: &std::path::Path, queue: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_wasq"))
        .env("WASQ_DATA_DIR", data)
        .args(["queue", "stats", queue, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver: `bash tests/run.sh` installs them and runs this"]
async fn the_console_works_in_a_browser_and_hostile_text_stays_text() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let queues = LocalQueues::open(&data).unwrap();
    queues
        .create("jobs", crate::harness::with_dlq(3))
        .await
        .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let host = crate::harness::wasq_run(
        &data,
        wasq_test_guests::ROGUE,
        &dir.path().join("host.log"),
        &["--listen", &addr],
    )
    .spawn()
    .unwrap();
    let _host = Killed(host);
    wait_for_port(&addr);
    let jobs = queues.queue("jobs").await.unwrap();
    let dlq = queues.queue("jobs-dlq").await.unwrap();
    // Work for the charts, and dead letters: the rogue processor rejects
    // what it does not know, its reason naming the body.
    let mut bodies: Vec<String> = vec!["noop".into(); 20];
    bodies.extend((0..3).map(|n| format!("{{\"job\": {n}, \"kind\": \"alpha\"}}")));
    bodies.push("<script>document.title='pwned'</script>".into());
    bodies.push("<img src=x onerror=\"document.title='pwned'\">".into());
    for chunk in bodies.chunks(10) {
        jobs.send_batch(
            chunk
                .iter()
                .map(|body| Outgoing {
                    body: body.clone(),
                    ..Outgoing::default()
                })
                .collect(),
        )
        .await
        .unwrap();
    }
    let started = Instant::now();
    while dlq.stats().await.unwrap().visible < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the letters were not dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (_driver, client) = browser().await;
    let base = format!("http://{addr}");

    // The overview draws its charts.
    client.goto(&format!("{base}/")).await.unwrap();
    client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#charts[data-drawn='2']"))
        .await
        .expect("the charts were not drawn");
    let canvases = client
        .find_all(Locator::Css("#charts canvas"))
        .await
        .unwrap();
    assert!(canvases.len() >= 2, "{} canvases", canvases.len());
    let (_, _, width, height) = canvases[0].rectangle().await.unwrap();
    assert!(width > 100.0 && height > 50.0, "{width}x{height}");
    shoot(&client, "overview").await;

    // Pause and resume by the buttons.
    client
        .find(Locator::Css("tr[data-binding='jobs'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(&client, "paused").await;
    client
        .find(Locator::Css("tr[data-binding='jobs'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(&client, "polling").await;

    // Hostile bodies and reasons show as text, and nothing ran.
    client
        .goto(&format!("{base}/dead-letters?queue=local%3A%2F%2Fjobs-dlq"))
        .await
        .unwrap();
    wait_for_text(&client, "5 letters match").await;
    wait_for_text(&client, "<script>document.title='pwned'</script>").await;
    wait_for_text(&client, "onerror=").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_ne!(client.title().await.unwrap(), "pwned");
    let images = client.find_all(Locator::Css("td img")).await.unwrap();
    assert!(images.is_empty(), "a body became an element");
    shoot(&client, "dead-letters").await;

    // A POST without the CSRF token, from the console's own page: refused.
    let status = client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/bindings/jobs/pause', {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: ''})
               .then(r => done(r.status), () => done(0));",
            vec![],
        )
        .await;
    // The page's CSP forbids scripts other than its own files; WebDriver's
    // own scripts still run. Either the fetch is refused by the server, or
    // the script could not run at all: both leave the binding running.
    if let Ok(status) = status {
        assert_eq!(status, 403);
    }

    // Search, open one, and redrive the searched set.
    let search = client.find(Locator::Css("input[name='q']")).await.unwrap();
    search.send_keys("alpha").await.unwrap();
    client
        .find(Locator::Css("form.search button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(&client, "3 letters match").await;
    client
        .find(Locator::Css("table.letters td a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(&client, "Written by wasq").await;
    wait_for_text(&client, "\"kind\": \"alpha\"").await;
    shoot(&client, "dead-letter").await;
    client.back().await.unwrap();
    wait_for_text(&client, "3 letters match").await;
    // Pause first, so the redriven letters wait where the CLI can see them.
    client.goto(&format!("{base}/")).await.unwrap();
    client
        .find(Locator::Css("tr[data-binding='jobs'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(&client, "paused").await;
    client
        .goto(&format!(
            "{base}/dead-letters?queue=local%3A%2F%2Fjobs-dlq&q=alpha"
        ))
        .await
        .unwrap();
    client
        .find(Locator::XPath(
            "//button[contains(., 'Redrive all 3 matching')]",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(&client, "Redrive 3 dead letters?").await;
    shoot(&client, "confirm").await;
    client
        .find(Locator::XPath("//button[contains(., 'Redrive 3')]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(&client, "Redrove 3 of the 3").await;
    assert_eq!(queue_stats(&data, "local://jobs")["visible"], 3);
    assert_eq!(queue_stats(&data, "local://jobs-dlq")["visible"], 2);

    client.goto(&format!("{base}/processors")).await.unwrap();
    wait_for_text(&client, "BLAKE3").await;
    shoot(&client, "processors").await;
    client.close().await.unwrap();
}

/// The dead-letter pages against SQS (moto), in the browser: the letters
/// a binding dead-lettered are listed and searched (each look receives
/// them with visibility 0), one is opened, and the searched set is
/// redriven; the queues' counts are then checked through the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium, chromedriver and the moto server: `bash tests/run.sh` starts them and runs this"]
async fn the_dead_letter_pages_work_on_sqs_in_a_browser() {
    let _moto = crate::harness::moto().await;
    let endpoint = crate::harness::moto_endpoint();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let wasq = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_wasq"))
            .env("WASQ_DATA_DIR", &data)
            .env("WASQ_CACHE_DIR", crate::harness::cache_dir())
            .args(["--endpoint-url", &endpoint])
            .args(args)
            .output()
            .unwrap()
    };
    let made = wasq(&["queue", "create", "sqs://jobs"]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    for n in 0..3 {
        let body = format!("{{\"job\": {n}, \"kind\": \"alpha\"}}");
        assert!(
            wasq(&["send", "sqs://jobs", "--body", &body])
                .status
                .success()
        );
    }
    assert!(
        wasq(&["send", "sqs://jobs", "--body", "{\"kind\": \"beta\"}"])
            .status
            .success()
    );

    let addr = format!("127.0.0.1:{}", free_port());
    let host = Command::new(env!("CARGO_BIN_EXE_wasq"))
        .env("WASQ_DATA_DIR", &data)
        .env("WASQ_CACHE_DIR", crate::harness::cache_dir())
        .env("WASQ_LOG", "info")
        .args(["--endpoint-url", &endpoint])
        .args([
            "run",
            "--queue",
            "sqs://jobs",
            "--plugin",
            wasq_test_guests::ROGUE,
        ])
        .args(["--listen", &addr, "--receive-wait", "1s"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("host.log")).unwrap())
        .spawn()
        .unwrap();
    let _host = Killed(host);
    wait_for_port(&addr);
    let stats = |queue: &str| {
        let out = wasq(&["queue", "stats", queue, "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let started = Instant::now();
    while stats("sqs://jobs-dlq")["visible"] != 4 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the letters were not dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (_driver, client) = browser().await;
    let base = format!("http://{addr}");
    // Paused, so that the redriven letters wait in the queue.
    client.goto(&format!("{base}/")).await.unwrap();
    client
        .find(Locator::Css("tr[data-binding='jobs'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(&client, "paused").await;
    client
        .find(Locator::Css("a[href*='dead-letters']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(&client, "4 letters match").await;
    wait_for_text(&client, "sqs://jobs-dlq").await;
    let search = client.find(Locator::Css("input[name='q']")).await.unwrap();
    search.send_keys("alpha").await.unwrap();
    client
        .find(Locator::Css("form.search button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(&client, "3 letters match").await;
    client
        .find(Locator::Css("table.letters td a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(&client, "\"kind\": \"alpha\"").await;
    wait_for_text(&client, "unknown command").await;
    shoot(&client, "dead-letter-sqs").await;
    client.back().await.unwrap();
    wait_for_text(&client, "3 letters match").await;
    client
        .find(Locator::XPath(
            "//button[contains(., 'Redrive all 3 matching')]",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(&client, "Redrive 3 dead letters?").await;
    client
        .find(Locator::XPath("//button[contains(., 'Redrive 3')]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(&client, "Redrove 3 of the 3").await;
    let started = Instant::now();
    while stats("sqs://jobs")["visible"] != 3 || stats("sqs://jobs-dlq")["visible"] != 1 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "jobs {} / dlq {}",
            stats("sqs://jobs"),
            stats("sqs://jobs-dlq")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client.close().await.unwrap();
}
