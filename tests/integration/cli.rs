//! The `wasq` binary as a user runs it: `wasq test` on the shipped fixtures
//! (both fixture forms), unmet expectations, bad input, and `wasq demo`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// A scratch directory holding a copy of the fixture blobs.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&fixtures().join("blobs"), &dir.path().join("blobs"));
        Scratch { dir }
    }

    pub fn wasq(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_wasq"))
            .current_dir(self.dir.path())
            .env("WASQ_DATA_DIR", self.dir.path().join("data"))
            .env("WASQ_CACHE_DIR", crate::harness::cache_dir())
            .env("WASQ_PLUGINS_DIR", self.dir.path().join("plugins"))
            .args(args)
            .output()
            .unwrap()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The entry names of a zip file, in archive order.
pub fn zip_entries(path: &Path) -> Vec<String> {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    (0..zip.len())
        .map(|i| zip.by_index(i).unwrap().name().unwrap().to_string())
        .collect()
}

fn fixture(name: &str) -> String {
    fixtures().join(name).display().to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_shipped_fixture_meets_its_expectation() {
    let scratch = Scratch::new();
    let mut args = vec![
        "test".to_string(),
        "--manifest".to_string(),
        fixture("compress.toml"),
        "--blobs".to_string(),
        "blobs".to_string(),
    ];
    let mut names: Vec<_> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| p.display().to_string())
        .collect();
    names.sort();
    assert!(names.len() >= 4);
    args.extend(names);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = scratch.wasq(&args);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("fixtures: 9 met, 0 unmet"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(scratch.dir.path().join("blobs/archives/ok.zip").is_file());
}

#[test]
fn a_sam_event_runs_unchanged_and_json_output_has_one_object_per_message() {
    let scratch = Scratch::new();
    let out = scratch.wasq(&[
        "test",
        "--json",
        "--manifest",
        &fixture("compress.toml"),
        "--blobs",
        "blobs",
        &fixture("sam-event.json"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], "19dd0b57-b21e-4ac1-bd88-01bbb068cb78");
    assert_eq!(lines[0]["outcome"], "done");
    assert_eq!(lines[0]["result"]["archive"], "s3://archives/sam-1.zip");
    assert_eq!(lines[0]["result"]["files"], 2);
    assert_eq!(lines[1]["outcome"], "reject");
    assert!(
        lines[1]["reason"]
            .as_str()
            .unwrap()
            .contains("s3://docs/gone.pdf")
    );
    let entries = zip_entries(&scratch.dir.path().join("blobs/archives/sam-1.zip"));
    assert_eq!(entries, ["notes.md", "data.csv"]);
}

#[test]
fn an_unmet_expectation_fails_the_run() {
    let scratch = Scratch::new();
    let wrong = scratch.dir.path().join("wrong.json");
    std::fs::write(
        &wrong,
        r#"{"id": "wrong", "body": {"job_id": "w", "files": ["s3://docs/notes.md"], "output": "s3://archives/w.zip"},
            "expect": {"outcome": "done", "entries": ["something-else.md"]}}"#,
    )
    .unwrap();
    let out = scratch.wasq(&[
        "test",
        "--manifest",
        &fixture("compress.toml"),
        "--blobs",
        "blobs",
        wrong.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("FAIL wrong"), "{stdout}");
    assert!(
        stdout.contains(r#"expected archive entries ["something-else.md"], got ["notes.md"]"#),
        "{stdout}"
    );
}

/// `wasq test` takes every limit `wasq run` does, the byte limits too.
#[test]
fn wasq_test_applies_the_byte_limits() {
    let scratch = Scratch::new();
    let job = scratch.dir.path().join("job.json");
    std::fs::write(
        &job,
        r#"{"id": "small", "body": {"job_id": "s", "files": ["s3://docs/notes.md"], "output": "s3://archives/s.zip"},
            "expect": {"outcome": "done"}}"#,
    )
    .unwrap();
    let run = |limit: &str| {
        scratch.wasq(&[
            "test",
            "--manifest",
            &fixture("compress.toml"),
            "--blobs",
            "blobs",
            "--bytes-read",
            limit,
            job.to_str().unwrap(),
        ])
    };
    let roomy = run("1MiB");
    assert!(roomy.status.success(), "{}", text(&roomy.stdout));
    let tight = run("10B");
    let stdout = text(&tight.stdout);
    assert!(!tight.status.success(), "{stdout}");
    assert!(stdout.contains("FAIL small"), "{stdout}");
}

#[test]
fn bad_input_is_named() {
    let scratch = Scratch::new();
    let broken = scratch.dir.path().join("broken.json");
    std::fs::write(&broken, "{ not json").unwrap();
    let out = scratch.wasq(&["test", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("error: fixture")
            && stderr.contains("broken.json")
            && stderr.contains("not valid JSON"),
        "{stderr}"
    );

    let out = scratch.wasq(&["test", "--plugin", "nope", &fixture("job-ok.json")]);
    assert!(
        text(&out.stderr).contains("no plugin `nope`"),
        "{}",
        text(&out.stderr)
    );

    std::fs::create_dir_all(scratch.dir.path().join("plugins")).unwrap();
    std::fs::write(
        scratch.dir.path().join("plugins/junk.wasm"),
        b"not wasm at all",
    )
    .unwrap();
    let out = scratch.wasq(&["test", "--plugin", "junk", &fixture("job-ok.json")]);
    assert!(
        text(&out.stderr).contains("plugin `junk`")
            && text(&out.stderr).contains("not a valid component"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_plugin_file_replaces_the_built_in_of_its_name() {
    let scratch = Scratch::new();
    std::fs::create_dir_all(scratch.dir.path().join("plugins")).unwrap();
    std::fs::copy(
        wasq_test_guests::ROGUE,
        scratch.dir.path().join("plugins/compress.wasm"),
    )
    .unwrap();
    let job = scratch.dir.path().join("noop.json");
    std::fs::write(
        &job,
        r#"{"id": "n", "body": "noop", "expect": {"outcome": "done"}}"#,
    )
    .unwrap();
    let out = scratch.wasq(&["test", job.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 GET; returns the status code and the body.
pub fn http_get(url: &str, headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    let mut request = format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, response[split + 4..].to_vec())
}

#[test]
fn the_demo_runs_the_whole_flow_and_serves_working_links() {
    use std::io::{BufRead, BufReader};
    let scratch = Scratch::new();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wasq"))
        .current_dir(scratch.dir.path())
        .env("WASQ_DATA_DIR", scratch.dir.path().join("data"))
        .env("WASQ_CACHE_DIR", crate::harness::cache_dir())
        // No --link-base: links follow --listen (they once pointed at the
        // default :8080 whatever the demo listened on).
        .env_remove("WASQ_LINK_BASE")
        .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(120) {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        lines.push(line.trim_end().to_string());
        if line.starts_with("serving the links") {
            break;
        }
    }
    let output = lines.join("\n");
    assert!(
        output.contains("3 archived, 3 dead-lettered, 0 to go"),
        "{output}"
    );
    assert!(
        output.contains("everything: s3://archives/everything.zip"),
        "{output}"
    );
    assert!(
        output.contains("dead letters in local://demo-jobs-dlq: 3"),
        "{output}"
    );
    assert!(
        output.contains("`s3://docs/budget.xlsx`: not found"),
        "{output}"
    );
    assert!(output.contains("job is not valid JSON"), "{output}");

    // The link downloads the archive while the host serves; a byte range
    // and a tampered link behave.
    let link = lines
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with(&format!("{base}/blobs/archives/everything.zip")))
        .unwrap()
        .to_string();
    let (status, body) = http_get(&link, &[]);
    assert_eq!(status, 200);
    let on_disk = std::fs::read(
        scratch
            .dir
            .path()
            .join("data/blobs/archives/everything.zip"),
    )
    .unwrap();
    assert_eq!(body, on_disk);
    let (status, part) = http_get(&link, &[("Range", "bytes=0-3")]);
    assert_eq!((status, part.as_slice()), (206, &b"PK\x03\x04"[..]));
    let (status, _) = http_get(&link.replace("everything.zip", "tables.zip"), &[]);
    assert_eq!(status, 403);

    // Health, readiness and metrics from the same server.
    assert_eq!(http_get(&format!("{base}/healthz"), &[]).0, 200);
    assert_eq!(http_get(&format!("{base}/readyz"), &[]).0, 200);
    let (status, metrics) = http_get(&format!("{base}/metrics"), &[]);
    let metrics = String::from_utf8(metrics).unwrap();
    assert_eq!(status, 200);
    for line in [
        "wasq_messages_received_total{binding=\"demo-jobs\"} 6",
        "wasq_messages_done_total{binding=\"demo-jobs\"} 3",
        "wasq_messages_rejected_total{binding=\"demo-jobs\"} 3",
        "wasq_messages_dead_lettered_total{binding=\"demo-jobs\"} 3",
        "wasq_handle_duration_seconds_count{binding=\"demo-jobs\"} 6",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }

    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn producers_and_operators_manage_queues_and_dead_letters() {
    let scratch = Scratch::new();
    let ok = |args: &[&str]| {
        let out = scratch.wasq(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let created = ok(&["queue", "create", "jobs", "--max-receive-count", "2"]);
    assert!(
        created.contains("local://jobs (dead letters to local://jobs-dlq after 2 receives)"),
        "{created}"
    );
    ok(&["queue", "create", "orders.fifo"]);
    assert_eq!(
        ok(&["queue", "list"]),
        "local://jobs\nlocal://jobs-dlq\nlocal://orders-dlq.fifo\nlocal://orders.fifo\n"
    );

    let job = scratch.dir.path().join("job.json");
    std::fs::write(&job, "reject").unwrap();
    let id = ok(&[
        "send",
        "local://jobs",
        "--file",
        job.to_str().unwrap(),
        "--attr",
        "tenant=acme",
    ]);
    ok(&["send", "jobs", "--body", "noop"]);
    assert!(ok(&["queue", "stats", "jobs"]).contains("visible:            2"));
    let out = scratch.wasq(&["send", "local://orders.fifo", "--body", "x"]);
    assert!(
        text(&out.stderr).contains("FIFO queues need a message group id"),
        "{}",
        text(&out.stderr)
    );
    let out = scratch.wasq(&["send", "local://nowhere", "--body", "x"]);
    assert!(
        text(&out.stderr).contains("queue local://nowhere does not exist: create it"),
        "{}",
        text(&out.stderr)
    );

    // The host dead-letters the reject and finishes the no-op, then stops.
    ok(&[
        "run",
        "--queue",
        "local://jobs",
        "--plugin",
        wasq_test_guests::ROGUE,
        "--until-empty",
        "--listen",
        "127.0.0.1:0",
        "--max-receive-count",
        "2",
    ]);
    let listed = ok(&["dlq", "list", "jobs"]);
    assert!(
        listed.contains("1 dead letters in local://jobs-dlq"),
        "{listed}"
    );
    assert!(
        listed.contains(id.trim())
            && listed.contains("reason: rejected on request")
            && listed.contains("plugin: rogue"),
        "{listed}"
    );
    assert!(
        ok(&["dlq", "redrive", "jobs"])
            .contains("moved 1 messages from local://jobs-dlq back to local://jobs")
    );
    assert!(ok(&["queue", "stats", "jobs"]).contains("visible:            1"));
    assert!(ok(&["queue", "purge", "jobs"]).contains("purged 1 messages"));

    let out = scratch.wasq(&[
        "run",
        "--queue",
        "local://jobs",
        "--timeout",
        "60s",
        "--visibility-timeout",
        "30s",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("must exceed the processor timeout"),
        "{}",
        text(&out.stderr)
    );
}

/// What `queue create` and `queue stats` say is what `wasq run` does: a
/// binding follows its queue's visibility timeout and receive count, a
/// queue's settings change only through `queue set`, and creating a queue
/// again with other settings is refused.
#[test]
fn a_queue_says_one_truth_and_is_never_rewritten_silently() {
    let scratch = Scratch::new();
    let ok = |args: &[&str]| {
        let out = scratch.wasq(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--queue",
            "local://jobs",
            "--plugin",
            wasq_test_guests::ROGUE,
            "--until-empty",
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        scratch.wasq(&args)
    };
    ok(&["queue", "create", "jobs", "--visibility-timeout", "10s"]);
    // The same settings again: nothing to do. Others: refused, unchanged.
    ok(&["queue", "create", "jobs", "--visibility-timeout", "10s"]);
    let again = scratch.wasq(&["queue", "create", "jobs", "--visibility-timeout", "20s"]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already exists with other settings")
            && text(&again.stderr).contains("wasq queue set"),
        "{}",
        text(&again.stderr)
    );
    assert!(ok(&["queue", "stats", "jobs"]).contains("visibility timeout: 10s"));

    // 10 s does not cover the processor's 30 s: the host says so and how to
    // fix it, instead of quietly hiding messages for longer.
    let short = run(&[]);
    assert_eq!(short.status.code(), Some(2));
    assert!(
        text(&short.stderr).contains(
            "the queue's visibility timeout (10s) must exceed the processor timeout (30s)"
        ) && text(&short.stderr).contains("wasq queue set local://jobs --visibility-timeout 3m"),
        "{}",
        text(&short.stderr)
    );
    let set = ok(&["queue", "set", "jobs", "--visibility-timeout", "3m"]);
    assert!(set.contains("visibility timeout: 3m"), "{set}");

    // Bound, the host uses the queue's settings, and says which.
    ok(&["send", "jobs", "--body", "noop"]);
    let bound = run(&[]);
    assert!(bound.status.success(), "{}", text(&bound.stderr));
    assert!(
        text(&bound.stderr).contains("visibility_timeout=3m max_receive_count=5"),
        "{}",
        text(&bound.stderr)
    );

    // A receive count above the queue's is refused (the queue would move
    // messages first), not written over the queue every host on this
    // directory shares; one below it is the binding's own.
    let other = run(&["--max-receive-count", "7"]);
    assert_eq!(other.status.code(), Some(2));
    assert!(
        text(&other.stderr).contains("max receive count 7 is above the queue's")
            && text(&other.stderr).contains("wasq queue set local://jobs --max-receive-count 7"),
        "{}",
        text(&other.stderr)
    );
    let fewer = run(&["--max-receive-count", "3"]);
    assert!(fewer.status.success(), "{}", text(&fewer.stderr));
    assert!(
        text(&fewer.stderr).contains("binding=3 queue_policy=5"),
        "{}",
        text(&fewer.stderr)
    );
    assert!(ok(&["queue", "stats", "jobs"]).contains("after 5 receives"));
    ok(&["queue", "set", "jobs", "--max-receive-count", "2"]);
    assert!(run(&["--max-receive-count", "2"]).status.success());
    assert!(ok(&["queue", "stats", "jobs"]).contains("after 2 receives"));

    // A queue made without a dead-letter queue: binding it would retry a
    // failing message forever, so it is refused until the queue gets one
    // (or the binding names one, or opts out).
    ok(&["queue", "create", "bare", "--no-dlq"]);
    let bare = scratch.wasq(&[
        "run",
        "--queue",
        "local://bare",
        "--until-empty",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(bare.status.code(), Some(2));
    assert!(
        text(&bare.stderr).contains("the queue has no dead-letter queue")
            && text(&bare.stderr).contains("wasq queue set local://bare --dlq local://bare-dlq"),
        "{}",
        text(&bare.stderr)
    );
    let set = ok(&["queue", "set", "bare", "--dlq", "bare-dlq"]);
    assert!(set.contains("bare-dlq after 5 receives"), "{set}");
    assert!(ok(&["queue", "list"]).contains("local://bare-dlq"));
}

#[test]
fn plugins_are_listed_checked_and_inspected() {
    let scratch = Scratch::new();
    let plugins = scratch.dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(wasq_test_guests::ROGUE, plugins.join("rogue.wasm")).unwrap();
    std::fs::write(
        plugins.join("rogue.toml"),
        "[blobs]\nread = [\"s3://docs/\"]\n[config]\ngreeting = \"hi\"\n",
    )
    .unwrap();

    let out = scratch.wasq(&["plugins", "list"]);
    let listed = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        listed.contains("compress") && listed.contains("built-in"),
        "{listed}"
    );
    assert!(
        listed.contains("rogue")
            && listed.contains("(with manifest)")
            && listed.contains("ok  sha256:"),
        "{listed}"
    );

    let out = scratch.wasq(&["plugins", "inspect", "rogue"]);
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("fits:     the processor world"), "{shown}");
    assert!(
        shown.contains("  wasq:processor/blobs@0.1.0") && shown.contains("  handle"),
        "{shown}"
    );
    assert!(
        shown.contains("read:     s3://docs/") && shown.contains("write:    nothing\n"),
        "{shown}"
    );
    assert!(shown.contains("greeting = hi"), "{shown}");

    std::fs::write(plugins.join("broken.wasm"), b"junk").unwrap();
    let out = scratch.wasq(&["plugins", "check"]);
    let checked = text(&out.stdout);
    assert!(!out.status.success(), "{checked}");
    assert!(
        checked.contains("FAIL  broken") && checked.contains("not a valid component"),
        "{checked}"
    );
    assert!(
        checked.contains("ok    rogue") && checked.contains("ok    compress"),
        "{checked}"
    );
}

/// A message the queue's own redrive moved once showed `wasq-reason` and
/// `wasq-plugin` values its sender chose, and escape sequences in a body
/// reached the terminal raw.
#[tokio::test]
async fn dlq_list_tells_wasqs_reasons_from_a_senders_attributes() {
    use wasq::queue::QueueOptions;
    use wasq::queue::{LocalQueues, Outgoing, Queue, Redrive};
    let scratch = Scratch::new();
    let queues = LocalQueues::open(&scratch.dir.path().join("data")).unwrap();
    queues
        .create(
            "jobs",
            QueueOptions {
                visibility_timeout: Duration::from_secs(30),
                redrive: Some(Redrive {
                    dlq: "jobs-dlq".into(),
                    max_receive_count: 1,
                }),
            },
        )
        .await
        .unwrap();
    let queue = queues.queue("jobs").await.unwrap();
    queue
        .send(Outgoing {
            body: "job \x1b]0;pwned\x07 body".into(),
            attributes: vec![
                (
                    "wasq-reason".into(),
                    "all fine, redrive me\nreason: ok".into(),
                ),
                ("tenant".into(), "acme".into()),
            ],
            ..Outgoing::default()
        })
        .await
        .unwrap();
    // Received once and never settled: the next receive moves it.
    let cancel = tokio_util::sync::CancellationToken::new();
    let taken = queue
        .receive(1, Duration::ZERO, Duration::from_millis(1), &cancel)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = queue
        .receive(1, Duration::ZERO, Duration::from_secs(30), &cancel)
        .await
        .unwrap();
    assert!(again.is_empty());
    let out = scratch.wasq(&["dlq", "list", "jobs"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("moved by the queue's redrive policy after too many receives, not by wasq"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "set by its sender: tenant=acme, wasq-reason=all fine, redrive me\\nreason: ok"
        ) || stdout.contains(
            "set by its sender: wasq-reason=all fine, redrive me\\nreason: ok, tenant=acme"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("reason: all fine"), "{stdout}");
    assert!(!out.stdout.contains(&0x1b) && !out.stdout.contains(&0x07));
}

/// A pre-planted, world-readable `link-secret` was once used without a
/// word, so anyone who could read it could forge links.
#[test]
fn a_secret_others_can_read_is_refused_by_name() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new();
    let data = scratch.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let secret = data.join("link-secret");
    std::fs::write(&secret, [9u8; 32]).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = scratch.wasq(&[
        "test",
        "--manifest",
        &fixture("compress.toml"),
        "--blobs",
        "blobs",
        &fixture("job-ok.json"),
    ]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("link-secret") && stderr.contains("chmod 600"),
        "{stderr}"
    );
}

/// The data directory and what wasq writes in it are owner-only whatever
/// the umask: records hold links, which are bearer tokens.
#[test]
fn the_data_directory_is_owner_only_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new();
    let wasq = |args: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umask 000; exec {} {args}",
                env!("CARGO_BIN_EXE_wasq")
            ))
            .current_dir(scratch.dir.path())
            .env("WASQ_DATA_DIR", scratch.dir.path().join("data"))
            .env("WASQ_CACHE_DIR", crate::harness::cache_dir())
            .env("WASQ_PLUGINS_DIR", scratch.dir.path().join("plugins"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{args}: {}", text(&out.stderr));
    };
    wasq("queue create jobs");
    wasq(&format!(
        "test --manifest {} --blobs blobs {}",
        fixture("compress.toml"),
        fixture("job-ok.json")
    ));
    let mode = |path: &str| {
        std::fs::metadata(scratch.dir.path().join(path))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("data"), 0o700);
    for file in ["data/queues.db", "data/records.db", "data/link-secret"] {
        assert_eq!(mode(file), 0o600, "{file}");
    }
    assert_eq!(mode("blobs/archives"), 0o700);
    assert_eq!(mode("blobs/archives/ok.zip"), 0o600);
}

/// Amazon SQS takes messages of up to 1 MiB since August 2025; the
/// embedded queue and `wasq send` took 256 KiB.
#[test]
fn messages_of_up_to_one_mib_are_sent_and_one_byte_more_refused() {
    let scratch = Scratch::new();
    let out = scratch.wasq(&["queue", "create", "jobs"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let big = scratch.dir.path().join("big.txt");
    std::fs::write(&big, "x".repeat(1024 * 1024)).unwrap();
    let out = scratch.wasq(&["send", "local://jobs", "--file", big.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::write(&big, "x".repeat(1024 * 1024 + 1)).unwrap();
    let out = scratch.wasq(&["send", "local://jobs", "--file", big.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("the queue takes at most 1048576"),
        "{}",
        text(&out.stderr)
    );
}

/// `wasq send` one message per process managed about 120 messages a
/// second; producers expect a bulk form. And scripts read JSON, not text.
#[test]
fn bulk_sends_and_json_output_for_scripts() {
    let scratch = Scratch::new();
    assert!(scratch.wasq(&["queue", "create", "jobs"]).status.success());
    let lines = scratch.dir.path().join("jobs.txt");
    let bodies: Vec<String> = (0..25).map(|i| format!("job {i}")).collect();
    std::fs::write(&lines, format!("{}\n\n", bodies.join("\n"))).unwrap();
    let out = scratch.wasq(&["send", "local://jobs", "--lines", lines.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 25);
    let out = scratch.wasq(&[
        "send",
        "local://jobs",
        "--json",
        "--lines",
        lines.to_str().unwrap(),
    ]);
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sent["sent"], 25);
    assert_eq!(sent["ids"].as_array().unwrap().len(), 25);
    let out = scratch.wasq(&["send", "local://jobs", "--json", "--body", "one more"]);
    let one: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(one["id"].is_string());

    let out = scratch.wasq(&["queue", "stats", "local://jobs", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["visible"], 51);
    assert_eq!(stats["dlq"], "jobs-dlq");
    let out = scratch.wasq(&["queue", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .contains(&serde_json::json!("local://jobs")),
        "{list}"
    );
    let out = scratch.wasq(&["dlq", "list", "jobs", "--json"]);
    let dlq: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dlq["total"], 0);
    assert_eq!(dlq["letters"], serde_json::json!([]));
}

/// Log pipelines (CloudWatch, Loki) want one JSON object per line, with the
/// message's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_can_be_json_lines_with_the_message_span() {
    use wasq::queue::Queue;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let queues = wasq::queue::LocalQueues::open(&data).unwrap();
    queues
        .create("jobs", crate::harness::with_dlq(5))
        .await
        .unwrap();
    let id = queues
        .queue("jobs")
        .await
        .unwrap()
        .send(wasq::queue::Outgoing {
            body: "reject".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let log = dir.path().join("host.log");
    let status = crate::harness::wasq_run(
        &data,
        wasq_test_guests::ROGUE,
        &log,
        &["--until-empty", "--log-format", "json"],
    )
    .status()
    .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let dead = records
        .iter()
        .find(|r| r["fields"]["message"] == "dead-lettered")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(dead["level"], "WARN");
    assert_eq!(dead["span"]["message_id"], id);
    assert_eq!(dead["span"]["queue"], "jobs");
    assert_eq!(dead["fields"]["reason"], "rejected on request");
}

/// `wasq test` applies filters as `wasq run` would: given with `--filter`,
/// taken from a `[[binding]]` of the config file, or from the manifest. A
/// message they keep back is reported `filtered`, is not run, and meets an
/// expectation of `filtered`.
#[test]
fn wasq_test_applies_a_bindings_filters() {
    let scratch = Scratch::new();
    let tenants = fixture("filters/tenants.json");
    let patterns = [
        r#"{"messageAttributes": {"tenant": ["acme"]}}"#,
        r#"{"body": {"expires_in": [{"numeric": ["<", 120]}]}}"#,
    ];
    let run = |extra: &[&str]| {
        let mut args = vec!["test", "--json", "--blobs", "blobs"];
        args.extend_from_slice(extra);
        args.push(&tenants);
        let out = scratch.wasq(&args);
        let lines: Vec<serde_json::Value> = text(&out.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        (out, lines)
    };
    let outcomes = |lines: &[serde_json::Value]| -> Vec<String> {
        lines
            .iter()
            .map(|l| {
                format!(
                    "{}={}",
                    l["id"].as_str().unwrap(),
                    l["outcome"].as_str().unwrap()
                )
            })
            .collect()
    };
    let want = [
        "acme-job=done",
        "globex-job=filtered",
        "urgent-job=done",
        "plain-text=filtered",
    ];

    // Flags.
    let manifest = fixture("compress.toml");
    let (out, lines) = run(&[
        "--manifest",
        &manifest,
        "--filter",
        patterns[0],
        "--filter",
        patterns[1],
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(outcomes(&lines), want);
    assert!(
        !scratch
            .dir
            .path()
            .join("blobs/archives/globex.zip")
            .exists()
    );
    assert!(scratch.dir.path().join("blobs/archives/acme.zip").is_file());

    // The binding of a config file.
    let config = scratch.dir.path().join("ops.toml");
    std::fs::write(
        &config,
        format!(
            "[[binding]]\nqueue = \"local://orders\"\nfilters = [{}, {}]\n",
            toml::Value::from(patterns[0]),
            toml::Value::from(patterns[1])
        ),
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let (out, lines) = run(&[
        "--manifest",
        &manifest,
        "--binding",
        "local://orders",
        "--config-file",
        &config_arg,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(outcomes(&lines), want);

    // The manifest's, and an expectation the filter does not meet.
    let with_filters = scratch.dir.path().join("filtered.toml");
    std::fs::write(
        &with_filters,
        format!(
            "filters = [{}]\n\n{}",
            toml::Value::from(patterns[0]),
            std::fs::read_to_string(&manifest).unwrap()
        ),
    )
    .unwrap();
    let manifest_arg = with_filters.display().to_string();
    let (out, lines) = run(&["--manifest", &manifest_arg]);
    assert!(!out.status.success(), "urgent-job is filtered, not done");
    assert_eq!(
        outcomes(&lines),
        [
            "acme-job=done",
            "globex-job=filtered",
            "urgent-job=filtered",
            "plain-text=filtered"
        ]
    );
    let unmet = lines[2]["expectation"]["unmet"][0].as_str().unwrap();
    assert!(
        unmet.contains("expected outcome `done`, got `filtered`"),
        "{unmet}"
    );
}

/// A pattern that cannot be used stops the start, naming the pattern and
/// the place in it, before any message is received.
#[test]
fn a_bad_filter_is_refused_at_start_by_position() {
    let scratch = Scratch::new();
    let out = scratch.wasq(&[
        "run",
        "--queue",
        "local://orders",
        "--listen",
        "127.0.0.1:0",
        "--filter",
        r#"{"body": {"kind": ["order"]}}"#,
        "--filter",
        r#"{"body": {"total": [{"numeric": [">", "ten"]}]}}"#,
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("binding local://orders: filter 2: at body.total[0]: \"ten\" is not a number"),
        "{err}"
    );
    let out = scratch.wasq(&[
        "run",
        "--queue",
        "local://orders",
        "--filter",
        "{\"body\": ",
    ]);
    let err = text(&out.stderr);
    assert!(
        err.contains("filter 1: is not JSON: EOF while parsing a value at line 1 column 9"),
        "{err}"
    );
}

/// The host deletes the payloads senders name in a binding's payload
/// bucket, so a processor that may write there is refused at start: a
/// sender could otherwise have its outputs deleted.
#[test]
fn a_payload_bucket_the_processor_may_write_to_is_refused() {
    let scratch = Scratch::new();
    let config = scratch.dir.path().join("wasq.toml");
    std::fs::write(
        &config,
        "[[binding]]\nqueue = \"local://jobs\"\npayload-bucket = \"archives\"\n\n[plugins.compress.blobs]\nread = [\"s3://docs/\"]\nwrite = [\"s3://archives/\"]\n",
    )
    .unwrap();
    let out = scratch.wasq(&[
        "run",
        "--config-file",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "payload-bucket archives is one plugin `compress` may write to (s3://archives/)"
        ),
        "{err}"
    );
}

/// A payload is copied into the processor whole: a payload-max that is not
/// below the processor's memory limit is refused at start.
#[test]
fn a_payload_max_past_the_processors_memory_is_refused() {
    let scratch = Scratch::new();
    let out = scratch.wasq(&[
        "run",
        "--queue",
        "local://jobs",
        "--payload-bucket",
        "payloads",
        "--payload-max",
        "256MiB",
        "--memory",
        "128MiB",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "payload-max (256 MiB) must be below the memory limit of plugin `compress` (128 MiB)"
        ),
        "{err}"
    );
}

/// `wasq send --payload-bucket` to an embedded queue stores the body in the
/// local store, but only when it is over the queue's limit, unless
/// `--payload-always`; the message then carries the extended client's
/// pointer and size.
#[tokio::test]
async fn wasq_send_offloads_a_body_to_the_payload_bucket() {
    let scratch = Scratch::new();
    assert!(scratch.wasq(&["queue", "create", "jobs"]).status.success());
    let send = |extra: &[&str]| {
        let mut args = vec![
            "send",
            "local://jobs",
            "--body",
            "small",
            "--payload-bucket",
            "payloads",
        ];
        args.extend_from_slice(extra);
        let out = scratch.wasq(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    send(&[]);
    send(&["--payload-always"]);
    let queues = wasq::queue::LocalQueues::open(&scratch.dir.path().join("data")).unwrap();
    let letters = queues.peek("jobs", 10).await.unwrap();
    assert_eq!(letters.len(), 2);
    // Under the limit: sent as it is.
    assert_eq!(letters[0].body, "small");
    // Always: a pointer, and the body in the local store.
    let pointer = wasq::payload::pointer(&letters[1].body, &letters[1].attributes)
        .expect("a pointer")
        .unwrap();
    assert_eq!(pointer.size, 5);
    assert_eq!(pointer.uri.bucket(), "payloads");
    let stored = scratch
        .dir
        .path()
        .join("data/blobs/payloads")
        .join(pointer.uri.key());
    assert_eq!(std::fs::read_to_string(stored).unwrap(), "small");
}

/// A host started with a low soft limit on open files lifts it to the hard
/// limit: messages reading from S3 hold many sockets at once.
#[test]
fn a_running_host_lifts_its_open_files_limit_to_the_hard_one() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    use std::os::unix::process::CommandExt as _;
    let hard = getrlimit(Resource::Nofile)
        .maximum
        .expect("an open files limit");
    assert!(hard > 256, "the hard limit ({hard}) leaves nothing to lift");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("host.log");
    let mut command = crate::harness::wasq_run(&dir.path().join("data"), "compress", &log, &[]);
    // SAFETY: only a system call between fork and exec.
    unsafe {
        command.pre_exec(move || {
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(256),
                    maximum: Some(hard),
                },
            )
            .map_err(std::io::Error::from)
        });
    }
    let mut host = command.spawn().unwrap();
    let soft = || {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", host.id())).ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line.split_whitespace().nth(3)?.parse::<u64>().ok()
    };
    let started = std::time::Instant::now();
    let mut seen = soft();
    while seen != Some(hard) && started.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(50));
        seen = soft();
    }
    let _ = host.kill();
    let _ = host.wait();
    assert_eq!(
        seen,
        Some(hard),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
}
