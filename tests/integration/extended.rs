//! Large payloads with Amazon's SQS Extended Client (the PyPI library
//! `amazon-sqs-extended-client`) on moto: the library sends, wasq runs the
//! real body and deletes the payload; wasq sends, the library reads.

use crate::harness::{self, moto};
use std::path::Path;
use std::process::Command;

const EXTENDED: &str = r#"
import hashlib, json, os, sys, uuid
from sqs_extended_client import SQSExtendedClientSession

command, queue, bucket = sys.argv[1:4]
sqs = SQSExtendedClientSession(region_name="us-east-1").client("sqs")
sqs.large_payload_support = bucket
# As the Java library does by default: a deleted message's payload goes too.
sqs.delete_payload_from_s3 = True
url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
if command == "send":
    size = int(sys.argv[4])
    body = "measure " + uuid.uuid4().hex
    body += "x" * (size - len(body) - 16) + uuid.uuid4().hex[:16]
    sent = sqs.send_message(
        QueueUrl=url,
        MessageBody=body,
        MessageAttributes={"tenant": {"DataType": "String", "StringValue": "acme"}},
    )
    rest = body[len("measure "):]
    print(json.dumps({"id": sent["MessageId"], "described": f"{len(body)} {rest[:16]} {body[-16:]}"}))
else:
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=5, MessageAttributeNames=["All"])
    message = got["Messages"][0]
    body = message["Body"]
    attributes = {k: v.get("StringValue") for k, v in message.get("MessageAttributes", {}).items()}
    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    print(json.dumps({"size": len(body), "sha256": hashlib.sha256(body.encode()).hexdigest(), "attributes": attributes}))
"#;

/// Runs the library: `send QUEUE BUCKET SIZE` or `receive QUEUE BUCKET`.
fn library(args: &[&str]) -> serde_json::Value {
    let python = std::env::var("WASQ_TEST_PYTHON")
        .expect("WASQ_TEST_PYTHON is not set: run the tests with `bash tests/run.sh`");
    let out = Command::new(python)
        .env("AWS_ENDPOINT_URL", harness::moto_endpoint())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .args(["-c", EXTENDED])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wasq(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wasq"))
        .env("WASQ_DATA_DIR", dir.join("data"))
        .env("WASQ_CACHE_DIR", harness::cache_dir())
        .env("WASQ_PLUGINS_DIR", dir.join("plugins"))
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

async fn keys(s3: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    s3.list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the moto server: `bash tests/run.sh` starts it and runs this"]
async fn the_extended_clients_large_payloads_round_trip() {
    let _moto = moto().await;
    let config = harness::moto_aws().load().await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    );
    for bucket in ["payloads", "elsewhere"] {
        s3.create_bucket().bucket(bucket).send().await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    std::fs::copy(
        wasq_test_guests::ROGUE,
        dir.path().join("plugins/rogue.wasm"),
    )
    .unwrap();
    // It reads nothing and writes nothing: the host reads its payloads.
    // (A processor that may write to the payload bucket is refused.)
    std::fs::write(
        dir.path().join("plugins/rogue.toml"),
        "[records]\ntables = []\n",
    )
    .unwrap();
    for queue in ["sqs://large", "sqs://large-out"] {
        let made = wasq(dir.path(), &["queue", "create", queue]);
        assert!(made.status.success(), "{}", text(&made));
    }
    let before = keys(&s3, "payloads").await;

    // The library sends 2 MiB, past SQS's 1 MiB: the body goes to S3.
    let sent = library(&["send", "large", "payloads", "2097152"]);
    let mut stored = keys(&s3, "payloads").await;
    stored.retain(|k| !before.contains(k));
    assert_eq!(stored.len(), 1, "{stored:?}");
    // And one whose pointer names a bucket the binding does not read.
    let stray = library(&["send", "large", "elsewhere", "300000"]);

    let run = wasq(
        dir.path(),
        &[
            "run",
            "--queue",
            "sqs://large",
            "--plugin",
            "rogue",
            "--blob-store",
            "s3",
            "--payload-bucket",
            "payloads",
            "--payload-max",
            "4MiB",
            "--listen",
            "127.0.0.1:0",
            "--receive-wait",
            "1s",
            "--until-empty",
        ],
    );
    assert!(run.status.success(), "{}", text(&run));
    let records = wasq::records::SqliteRecords::open(&dir.path().join("data/records.db")).unwrap();
    use wasq::records::Records as _;
    let id = sent["id"].as_str().unwrap();
    let result = records
        .get("results", &format!("large/{id}"))
        .await
        .unwrap();
    // The processor saw the real body, all 2 MiB of it.
    assert_eq!(
        result.as_deref(),
        sent["described"].as_str(),
        "{}",
        text(&run)
    );
    // Done: its payload is deleted, as the library deletes it.
    let left = keys(&s3, "payloads").await;
    assert!(!left.contains(&stored[0]), "{left:?}");

    // The stray pointer is dead-lettered with its reason, its payload kept.
    let stray_id = stray["id"].as_str().unwrap();
    assert_eq!(
        records
            .get("results", &format!("large/{stray_id}"))
            .await
            .unwrap(),
        None
    );
    let letters = wasq(dir.path(), &["dlq", "list", "sqs://large", "--json"]);
    let letters = text(&letters);
    assert!(
        letters.contains("this binding reads payloads from bucket payloads only"),
        "{letters}"
    );
    assert_eq!(keys(&s3, "elsewhere").await.len(), 1);

    // wasq sends 1.5 MiB with --payload-bucket; the library reads it back.
    let file = dir.path().join("big.txt");
    let body = "wasq ".repeat(300_000);
    std::fs::write(&file, &body).unwrap();
    let before = keys(&s3, "payloads").await;
    let out = wasq(
        dir.path(),
        &[
            "send",
            "sqs://large-out",
            "--file",
            file.to_str().unwrap(),
            "--payload-bucket",
            "payloads",
            "--attr",
            "tenant=acme",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(keys(&s3, "payloads").await.len(), before.len() + 1);
    let read = library(&["receive", "large-out", "payloads"]);
    use sha2::Digest as _;
    assert_eq!(read["size"], body.len(), "{read}");
    assert_eq!(
        read["sha256"].as_str().unwrap(),
        hex::encode(sha2::Sha256::digest(body.as_bytes()))
    );
    assert_eq!(read["attributes"]["tenant"], "acme", "{read}");
    // The library deleted the payload with the message.
    assert_eq!(keys(&s3, "payloads").await.len(), before.len());
}
