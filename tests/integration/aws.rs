//! The AWS backends against a real SQS/S3/DynamoDB API (moto on loopback,
//! started by `tests/run.sh`): DynamoDB records, an independent producer
//! (boto3), two hosts on one queue, an endpoint outage in the middle of a
//! run, and the buffer budget of S3 writers. (The S3 blob store's own
//! tests, on moto and on a signature-checking server, are in `s3.rs`.)

use crate::harness::{self, moto, moto_aws};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use wasq::blobs::{BlobUri, S3Blobs};
use wasq::queue::QueueOptions;
use wasq::queue::{LetterAction, Outgoing, Queue, Redrive, SqsQueues};
use wasq::records::{DynamoRecords, PutOptions, Records};
use wasq::runtime::{Limits, Services};

async fn s3_client() -> aws_sdk_s3::Client {
    let config = moto_aws().load().await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    )
}

async fn make_bucket(client: &aws_sdk_s3::Client, bucket: &str) {
    client.create_bucket().bucket(bucket).send().await.unwrap();
}

async fn put(client: &aws_sdk_s3::Client, uri: &str, bytes: Vec<u8>) {
    let uri = BlobUri::parse(uri).unwrap();
    client
        .put_object()
        .bucket(uri.bucket())
        .key(uri.key())
        .body(bytes.into())
        .send()
        .await
        .unwrap();
}

async fn records(table: &str) -> DynamoRecords {
    let records = DynamoRecords::connect(&moto_aws(), table).await;
    records.create_table().await.unwrap();
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the moto server: `bash tests/run.sh` starts it and runs this"]
async fn dynamodb_records_read_back_and_a_missing_table_is_named() {
    let _moto = moto().await;
    let records = records("wasq-records").await;
    assert_eq!(records.get("jobs", "a").await.unwrap(), None);
    let mine = PutOptions {
        owner: "q/m1",
        overwrite: false,
    };
    records.put("jobs", "a", "one", mine).await.unwrap();
    records.put("jobs", "a", "two", mine).await.unwrap();
    records.put("other", "a", "three", mine).await.unwrap();
    // Another message may not replace the record; the same value stands,
    // and a writer allowed to replace does.
    let theirs = PutOptions {
        owner: "q/m2",
        overwrite: false,
    };
    assert!(matches!(
        records.put("jobs", "a", "stolen", theirs).await,
        Err(wasq::records::RecordsError::Denied(_))
    ));
    records.put("jobs", "a", "two", theirs).await.unwrap();
    records
        .put(
            "jobs",
            "b",
            "x",
            PutOptions {
                overwrite: true,
                ..theirs
            },
        )
        .await
        .unwrap();
    assert_eq!(
        records.get("jobs", "a").await.unwrap().as_deref(),
        Some("two")
    );
    assert_eq!(
        records.get("other", "a").await.unwrap().as_deref(),
        Some("three")
    );
    assert!(records.put("bad table!", "a", "x", mine).await.is_err());

    let missing = DynamoRecords::connect(&moto_aws(), "no-such-table").await;
    let err = missing.check_table().await.unwrap_err().to_string();
    assert!(
        err.contains("DynamoDB table `no-such-table`: the table does not exist"),
        "{err}"
    );

    // Through `wasq run`, the table is named once in one readable line.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wasq"))
        .env("WASQ_DATA_DIR", dir.path().join("data"))
        .env("WASQ_CACHE_DIR", harness::cache_dir())
        .args(["--endpoint-url", &harness::moto_endpoint()])
        .args(["run", "--queue", "local://jobs", "--listen", "127.0.0.1:0"])
        .args(["--records", "dynamodb://no-such-table"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let told = text(&out);
    let line = told
        .lines()
        .find(|line| line.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line:\n{told}"));
    assert_eq!(line.matches("no-such-table").count(), 1, "{line}");
    assert!(line.contains("does not exist"), "{line}");
}

/// With the endpoint down, `wasq run` fails with one readable line: the
/// causes in words, no `Debug` dump of the SDK's error.
#[test]
fn an_unreachable_endpoint_is_one_readable_line() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_wasq"))
        .env("WASQ_DATA_DIR", dir.path().join("data"))
        .env("WASQ_CACHE_DIR", harness::cache_dir())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .args(["--endpoint-url", &format!("http://127.0.0.1:{port}")])
        .args(["run", "--queue", "sqs://jobs", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let told = text(&out);
    let line = told
        .lines()
        .find(|line| line.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line:\n{told}"));
    assert!(
        line.contains("queue `jobs`") && line.contains("Connection refused"),
        "{line}"
    );
    for dump in ["DispatchFailure(", "ConnectorError", "{ ", "Os {"] {
        assert!(
            !told.contains(dump),
            "a Debug dump reached the user: {told}"
        );
    }
}

/// A dead letter sent twice (a host killed between sending it and deleting
/// its message) is moved back once by a redrive; a letter with another id,
/// or none, is moved as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the moto server: `bash tests/run.sh` starts it and runs this"]
async fn a_redrive_moves_each_dead_letter_once() {
    let _moto = moto().await;
    let sqs = SqsQueues::connect(&moto_aws()).await;
    for name in ["again", "again-dlq"] {
        sqs.create(name, QueueOptions::default()).await.unwrap();
    }
    let dlq = sqs.queue("again-dlq").await.unwrap();
    let letter = |id: &str| Outgoing {
        body: format!("job {id}"),
        attributes: vec![("wasq-message-id".into(), format!("{id}/seal"))],
        ..Outgoing::default()
    };
    // Another body under a's id (a sender to the DLQ copying the
    // attribute): not a repeat, so it cannot get a's letter deleted.
    let copied = Outgoing {
        body: "another job".into(),
        ..letter("a")
    };
    for message in [
        copied,
        letter("a"),
        letter("a"),
        letter("b"),
        Outgoing {
            body: "plain".into(),
            ..Outgoing::default()
        },
    ] {
        dlq.send(message).await.unwrap();
    }
    // SQS stamps whole milliseconds: let the letters be older than the move.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let moved = sqs
        .redrive_settled("again-dlq", "again", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(moved, Some(4));
    let back = sqs.peek("again", 10).await.unwrap();
    let mut bodies: Vec<&str> = back.iter().map(|m| m.body.as_str()).collect();
    bodies.sort();
    assert_eq!(bodies, ["another job", "job a", "job b", "plain"]);
    assert_eq!(dlq.stats().await.unwrap().visible, 0);

    // A letter younger than the settling time is never taken for a repeat.
    dlq.send(letter("c")).await.unwrap();
    dlq.send(letter("c")).await.unwrap();
    let moved = sqs.redrive("again-dlq", "again").await.unwrap();
    assert_eq!(moved, Some(2));
}

/// Chosen dead letters on SQS: found by receiving through the queue,
/// redriven to the queue each names or deleted; the others are visible
/// again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the moto server: `bash tests/run.sh` starts it and runs this"]
async fn chosen_dead_letters_are_redriven_or_deleted_and_the_rest_stay() {
    let _moto = moto().await;
    let sqs = SqsQueues::connect(&moto_aws()).await;
    for name in ["chosen", "chosen-dlq"] {
        sqs.create(name, QueueOptions::default()).await.unwrap();
    }
    let dlq = sqs.queue("chosen-dlq").await.unwrap();
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(
            dlq.send(Outgoing {
                body: format!("job {n}"),
                attributes: vec![("wasq-source-queue".into(), "chosen".into())],
                ..Outgoing::default()
            })
            .await
            .unwrap(),
        );
    }
    let progress = std::sync::atomic::AtomicU64::new(0);
    let redriven = sqs
        .settle_letters("chosen-dlq", &ids[..2], LetterAction::Redrive, &progress)
        .await
        .unwrap();
    assert_eq!(redriven, 2);
    let deleted = sqs
        .settle_letters(
            "chosen-dlq",
            &[ids[2].clone(), "no-such-id".into()],
            LetterAction::Delete,
            &progress,
        )
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    // Each letter acted on was counted as it went.
    assert_eq!(progress.load(std::sync::atomic::Ordering::Relaxed), 3);
    let mut back: Vec<String> = sqs
        .peek("chosen", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    back.sort();
    assert_eq!(back, ["job 0", "job 1"]);
    // The three left are visible now, not hidden for a visibility timeout.
    let mut left: Vec<String> = sqs
        .peek("chosen-dlq", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    left.sort();
    assert_eq!(left, ["job 3", "job 4", "job 5"]);
}

/// A cancelled SQS receive returns at once, and what its abandoned poll
/// takes afterwards is made visible again, not hidden for the visibility
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the moto server: `bash tests/run.sh` starts it and runs this"]
async fn a_cancelled_sqs_receive_returns_at_once_and_loses_nothing() {
    let _moto = moto().await;
    let sqs = SqsQueues::connect(&moto_aws()).await;
    sqs.create("cancelled", QueueOptions::default())
        .await
        .unwrap();
    let queue = sqs.queue("cancelled").await.unwrap();
    // Empty batches do nothing, as on the embedded queue.
    assert!(queue.send_batch(Vec::new()).await.unwrap().is_empty());
    assert!(queue.delete_batch(&[]).await.unwrap().is_empty());
    assert!(queue.change_visibility_batch(&[]).await.unwrap().is_empty());
    let cancel = tokio_util::sync::CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        trigger.cancel();
    });
    let started = Instant::now();
    let visibility = Duration::from_secs(60);
    let got = queue
        .receive(10, Duration::from_secs(20), visibility, &cancel)
        .await
        .unwrap();
    assert!(got.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the receive ran {:?} past its cancel",
        started.elapsed()
    );

    // The abandoned poll is still open: a message sent now may go to it.
    queue
        .send(Outgoing {
            body: "late".into(),
            ..Outgoing::default()
        })
        .await
        .unwrap();
    let fresh = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    loop {
        let got = queue
            .receive(1, Duration::from_secs(2), visibility, &fresh)
            .await
            .unwrap();
        if let Some(message) = got.first() {
            assert_eq!(message.body, "late");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the message taken by the abandoned poll stayed hidden"
        );
    }
}

/// Starts `wasq run` against moto's SQS, S3 and DynamoDB. `compress` gets
/// the least-privilege manifest the docs show; other plugins every grant.
fn wasq_on_aws(dir: &Path, endpoint: &str, plugin: &str, log: &Path, extra: &[&str]) -> Command {
    let plugins = dir.join("plugins");
    if plugin == "compress" {
        std::fs::create_dir_all(&plugins).unwrap();
        std::fs::write(
            plugins.join("compress.toml"),
            "[blobs]\nread = [\"s3://docs/\"]\nwrite = [\"s3://archives/\"]\n[records]\ntables = [\"archives\"]\n",
        )
        .unwrap();
    } else {
        harness::grant_all(&plugins, plugin);
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasq"));
    command
        .env("WASQ_DATA_DIR", dir.join("data"))
        .env("WASQ_CACHE_DIR", harness::cache_dir())
        .env("WASQ_PLUGINS_DIR", dir.join("plugins"))
        .env("WASQ_LOG", "info")
        .args(["--endpoint-url", endpoint, "--s3-path-style"])
        .args(["run", "--queue", "sqs://jobs", "--plugin", plugin])
        .args(["--blob-store", "s3", "--records", "dynamodb://wasq-records"])
        .args(["--listen", "127.0.0.1:0", "--receive-wait", "2s"])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    command
}

async fn jobs_queue() -> (SqsQueues, wasq::queue::sqs::SqsQueue) {
    let sqs = SqsQueues::connect(&moto_aws()).await;
    sqs.create(
        "jobs",
        QueueOptions {
            visibility_timeout: Duration::from_secs(180),
            redrive: Some(Redrive {
                dlq: "jobs-dlq".into(),
                max_receive_count: 3,
            }),
        },
    )
    .await
    .unwrap();
    let queue = sqs.queue("jobs").await.unwrap();
    (sqs, queue)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the moto server: `bash tests/run.sh` starts it and runs this"]
async fn an_independent_producer_sends_jobs_and_reads_the_results() {
    let _moto = moto().await;
    let s3 = s3_client().await;
    make_bucket(&s3, "docs").await;
    make_bucket(&s3, "archives").await;
    put(&s3, "s3://docs/a.txt", b"alpha\n".repeat(100)).await;
    put(&s3, "s3://docs/b.txt", b"beta\n".repeat(100)).await;
    records("wasq-records").await;
    jobs_queue().await;

    // boto3, as any producer would: send three jobs (one bad).
    let python = std::env::var("WASQ_TEST_PYTHON")
        .expect("WASQ_TEST_PYTHON is not set: run the tests with `bash tests/run.sh`");
    let producer = r#"
import boto3, json, sys
endpoint = sys.argv[1]
sqs = boto3.client("sqs", endpoint_url=endpoint)
url = sqs.get_queue_url(QueueName="jobs")["QueueUrl"]
for i in range(2):
    job = {"job_id": f"p-{i}", "files": ["s3://docs/a.txt", "s3://docs/b.txt"], "output": f"s3://archives/p-{i}.zip"}
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(job), MessageAttributes={"tenant": {"DataType": "String", "StringValue": "acme"}})
sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"job_id": "bad", "files": []}))
"#;
    let endpoint = harness::moto_endpoint();
    let sent = Command::new(&python)
        .args(["-c", producer, &endpoint])
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("host.log");
    let status = wasq_on_aws(dir.path(), &endpoint, "compress", &log, &["--until-empty"])
        .status()
        .unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{log}");

    // boto3 reads the results back from DynamoDB and follows the links.
    let consumer = r#"
import boto3, json, sys, urllib.request
endpoint = sys.argv[1]
table = boto3.resource("dynamodb", endpoint_url=endpoint).Table("wasq-records")
out = {}
for job in ["p-0", "p-1"]:
    item = table.get_item(Key={"tbl": "archives", "key": job}, ConsistentRead=True)["Item"]
    result = json.loads(item["value"])
    body = urllib.request.urlopen(result["url"]).read()
    out[job] = {"files": result["files"], "size": result["size"], "downloaded": len(body)}
sqs = boto3.client("sqs", endpoint_url=endpoint)
dlq = sqs.get_queue_url(QueueName="jobs-dlq")["QueueUrl"]
letters = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, MessageAttributeNames=["All"], WaitTimeSeconds=1).get("Messages", [])
out["dead"] = [m["MessageAttributes"]["wasq-reason"]["StringValue"] for m in letters]
print(json.dumps(out))
"#;
    let read = Command::new(&python)
        .args(["-c", consumer, &endpoint])
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
    for job in ["p-0", "p-1"] {
        assert_eq!(out[job]["files"], 2, "{out}");
        assert_eq!(out[job]["size"], out[job]["downloaded"], "{out}");
    }
    let dead = out["dead"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{out}");
    assert!(
        dead[0].as_str().unwrap().contains("`files` is empty"),
        "{out}"
    );
}

/// Waits until every id has a result in `results`; the error names the
/// first missing.
async fn all_results(
    records: &DynamoRecords,
    ids: &[String],
    within: Duration,
) -> Result<(), String> {
    let started = Instant::now();
    for id in ids {
        loop {
            if records
                .get("results", &format!("jobs/{id}"))
                .await
                .ok()
                .flatten()
                .is_some()
            {
                break;
            }
            if started.elapsed() > within {
                return Err(format!("message {id} was never done"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

async fn send_many(queue: &wasq::queue::sqs::SqsQueue, n: usize, body: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n / 10 {
        let batch = vec![
            Outgoing {
                body: body.into(),
                ..Outgoing::default()
            };
            10
        ];
        ids.extend(queue.send_batch(batch).await.unwrap());
    }
    ids
}

fn plugins_with_rogue(dir: &Path) {
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    std::fs::copy(wasq_test_guests::ROGUE, dir.join("plugins/rogue.wasm")).unwrap();
}

fn stop(child: &mut std::process::Child) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the moto server: `bash tests/run.sh` starts it and runs this"]
async fn two_hosts_on_one_sqs_queue_lose_nothing() {
    let _moto = moto().await;
    let records = records("wasq-records").await;
    let (sqs, queue) = jobs_queue().await;
    let ids = send_many(&queue, 200, "sleep 20").await;

    let dir = tempfile::tempdir().unwrap();
    plugins_with_rogue(dir.path());
    let endpoint = harness::moto_endpoint();
    let logs = [dir.path().join("a.log"), dir.path().join("b.log")];
    let mut hosts: Vec<_> = logs
        .iter()
        .map(|log| {
            wasq_on_aws(
                dir.path(),
                &endpoint,
                "rogue",
                log,
                &["--max-concurrency", "8"],
            )
            .spawn()
            .unwrap()
        })
        .collect();
    let done = all_results(&records, &ids, Duration::from_secs(120)).await;
    for (host, log) in hosts.iter_mut().zip(&logs) {
        let status = stop(host);
        assert!(
            status.success(),
            "{}",
            std::fs::read_to_string(log).unwrap()
        );
    }
    // Both hosts took part.
    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(done.is_ok(), "{done:?}\n{text}");
        assert!(text.contains("first message done"), "{text}");
    }
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.visible + stats.in_flight, 0);
    assert!(sqs.peek("jobs-dlq", 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the moto server: `bash tests/run.sh` starts it and runs this"]
async fn an_endpoint_outage_mid_run_is_waited_out_and_loses_nothing() {
    let _moto = moto().await;
    let records = records("wasq-records").await;
    let (_, queue) = jobs_queue().await;
    let ids = send_many(&queue, 100, "sleep 150").await;

    let moto_addr = harness::moto_endpoint()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let outage = harness::Outage::new(moto_addr).await;
    let dir = tempfile::tempdir().unwrap();
    plugins_with_rogue(dir.path());
    let log = dir.path().join("host.log");
    let mut host = wasq_on_aws(
        dir.path(),
        &format!("http://{}", outage.addr),
        "rogue",
        &log,
        // Messages SQS handed out in a response the outage cut off come
        // back when their visibility timeout ends: keep it short here.
        &[
            "--max-concurrency",
            "4",
            "--timeout",
            "5s",
            "--visibility-timeout",
            "10s",
        ],
    )
    .spawn()
    .unwrap();

    // Let it get going, then take the endpoint away for a while.
    let started = Instant::now();
    while records
        .get("results", &format!("jobs/{}", ids[0]))
        .await
        .unwrap()
        .is_none()
        && started.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    outage.set_up(false);
    tokio::time::sleep(Duration::from_secs(4)).await;
    outage.set_up(true);

    let done = all_results(&records, &ids, Duration::from_secs(120)).await;
    // Every message is settled, duplicates included (a delete the outage
    // swallowed lets a message run again).
    let queue: std::sync::Arc<dyn Queue> = std::sync::Arc::new(queue);
    let drained = tokio::time::timeout(
        Duration::from_secs(60),
        wasq::run::drained(vec![queue.clone()]),
    )
    .await;
    let status = stop(&mut host);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(done.is_ok(), "{done:?}\n{text}");
    assert!(drained.is_ok(), "{:?}\n{text}", queue.stats().await);
    assert!(status.success(), "{text}");
    // The outage was noticed, logged and waited out (which call met it
    // first depends on timing).
    assert!(
        text.contains("receive failed; backing off")
            || text.contains("; retrying")
            || text.contains("could not record the result"),
        "{text}"
    );
}

/// `wasq` commands against moto, as an operator types them.
fn wasq_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wasq"))
        .env("WASQ_CACHE_DIR", harness::cache_dir())
        .args([
            "--endpoint-url",
            &harness::moto_endpoint(),
            "--s3-path-style",
        ])
        .args(args)
        .output()
        .unwrap()
}

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the moto server: `bash tests/run.sh` starts it and runs this"]
async fn sqs_queues_are_managed_from_the_command_line_and_bad_bindings_refused() {
    let _moto = moto().await;
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();

    let created = wasq_cli(&["queue", "create", "sqs://work", "--max-receive-count", "4"]);
    assert!(created.status.success(), "{}", text(&created));
    assert!(text(&created).contains("dead letters to sqs://work-dlq after 4 receives"));
    let sent = wasq_cli(&[
        "send",
        "sqs://work",
        "--body",
        "reject",
        "--attr",
        "tenant=acme",
    ]);
    assert!(sent.status.success(), "{}", text(&sent));
    let stats = wasq_cli(&["queue", "stats", "sqs://work"]);
    let stats = text(&stats);
    assert!(stats.contains("visible:            1"), "{stats}");
    assert!(stats.contains("work-dlq after 4 receives"), "{stats}");
    assert!(stats.contains("visibility timeout: 3m"), "{stats}");

    // Created again with other settings: refused, as SQS does; changed
    // only by `queue set`.
    let again = wasq_cli(&["queue", "create", "sqs://work", "--max-receive-count", "6"]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("already exists with other settings"),
        "{}",
        text(&again)
    );
    let set = wasq_cli(&[
        "queue",
        "set",
        "sqs://work",
        "--max-receive-count",
        "6",
        "--visibility-timeout",
        "4m",
    ]);
    assert!(set.status.success(), "{}", text(&set));
    let stats = text(&wasq_cli(&["queue", "stats", "sqs://work"]));
    assert!(
        stats.contains("work-dlq after 6 receives") && stats.contains("visibility timeout: 4m"),
        "{stats}"
    );
    let set = wasq_cli(&["queue", "set", "sqs://work", "--max-receive-count", "4"]);
    assert!(set.status.success(), "{}", text(&set));

    // Rejected by a host, listed with its reason, and redriven.
    let dir = tempfile::tempdir().unwrap();
    plugins_with_rogue(dir.path());
    let run = Command::new(env!("CARGO_BIN_EXE_wasq"))
        .env("WASQ_DATA_DIR", &data_dir)
        .env("WASQ_CACHE_DIR", harness::cache_dir())
        .env("WASQ_PLUGINS_DIR", dir.path().join("plugins"))
        .args(["--endpoint-url", &harness::moto_endpoint()])
        .args(["run", "--queue", "sqs://work", "--plugin", "rogue"])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--until-empty",
            "--receive-wait",
            "2s",
        ])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run));
    let listed = text(&wasq_cli(&["dlq", "list", "sqs://work"]));
    assert!(listed.contains("1 dead letters in"), "{listed}");
    assert!(listed.contains("reason: rejected on request"), "{listed}");
    let redriven = wasq_cli(&["dlq", "redrive", "sqs://work"]);
    assert!(redriven.status.success(), "{}", text(&redriven));
    let sqs = SqsQueues::connect(&moto_aws()).await;
    let work = sqs.queue("work").await.unwrap();
    let started = Instant::now();
    while work.stats().await.unwrap().visible != 1 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not redriven: {:?}\n{}",
            work.stats().await,
            text(&redriven)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A queue that does not exist is named.
    let missing = wasq_cli(&["send", "sqs://nope", "--body", "x"]);
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("queue sqs://nope does not exist"),
        "{}",
        text(&missing)
    );

    // A queue without a redrive policy would retry failures forever: a
    // binding on it is refused unless it names a DLQ or opts out.
    let bare = wasq_cli(&["queue", "create", "sqs://bare", "--no-dlq"]);
    assert!(bare.status.success(), "{}", text(&bare));
    let refused = Command::new(env!("CARGO_BIN_EXE_wasq"))
        .env("WASQ_DATA_DIR", &data_dir)
        .env("WASQ_CACHE_DIR", harness::cache_dir())
        .args(["--endpoint-url", &harness::moto_endpoint()])
        .args([
            "run",
            "--queue",
            "sqs://bare",
            "--listen",
            "127.0.0.1:0",
            "--until-empty",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("the queue has no redrive policy"),
        "{}",
        text(&refused)
    );
    let opted_out = Command::new(env!("CARGO_BIN_EXE_wasq"))
        .env("WASQ_DATA_DIR", &data_dir)
        .env("WASQ_CACHE_DIR", harness::cache_dir())
        .args(["--endpoint-url", &harness::moto_endpoint()])
        .args([
            "run",
            "--queue",
            "sqs://bare",
            "--no-dlq",
            "--listen",
            "127.0.0.1:0",
            "--until-empty",
        ])
        .output()
        .unwrap();
    assert!(opted_out.status.success(), "{}", text(&opted_out));
}

/// The S3 writer buffered a part per writer, and 64 writers were allowed:
/// one message could hold about 512 MiB of host memory. Writers now take
/// their part from the message's buffer budget (64 MiB by default), and one
/// past it is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the moto server: `bash tests/run.sh` starts it and runs this"]
async fn one_message_holds_at_most_its_buffer_budget() {
    let _moto = moto().await;
    let s3 = s3_client().await;
    make_bucket(&s3, "out").await;
    let services = Services {
        blobs: std::sync::Arc::new(S3Blobs::connect(&moto_aws()).await),
        records: std::sync::Arc::new(records("wasq-records").await),
    };
    let plugin = harness::rogue(Limits::default());
    let (run, _) = harness::run(
        &plugin,
        &services,
        &harness::message("w", "writers s3://out/w 64"),
    )
    .await;
    let wasq::runtime::Outcome::Done(Some(result)) = &run.outcome else {
        panic!("{:?}", run.outcome);
    };
    let budget = wasq::blobs::DEFAULT_BUDGET as usize / wasq::blobs::PART_SIZE;
    assert!(
        result.starts_with(&format!("{budget} Error::Denied("))
            && result.contains("buffer budget of 64 MiB"),
        "{result}"
    );
    // A smaller budget is honoured.
    let plugin = harness::rogue(Limits {
        buffers: 16 << 20,
        ..Limits::default()
    });
    let (run, _) = harness::run(
        &plugin,
        &services,
        &harness::message("w", "writers s3://out/v 64"),
    )
    .await;
    let fit = (16 << 20) / wasq::blobs::PART_SIZE;
    assert!(
        matches!(&run.outcome, wasq::runtime::Outcome::Done(Some(r)) if r.starts_with(&format!("{fit} Error::Denied("))),
        "{:?}",
        run.outcome
    );
}
