//! The default processor, end to end: archives read back with the zip crate
//! and compared byte for byte, large jobs under a small memory cap, and the
//! outcome of a store that is briefly unavailable.

use crate::harness::{self, Env, message, noise, run, text};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;
use wasq::blobs::sign::LinkSigner;
use wasq::blobs::{
    BlobError, BlobReader, BlobStore, BlobUri, BlobWriter, Budget, CreateOptions, ObjectInfo,
};
use wasq::records::{PutOptions, Records, RecordsError, SqliteRecords};
use wasq::runtime::{Limits, Outcome, Services};

fn job(id: &str, files: &[&str], output: &str) -> String {
    serde_json::json!({ "job_id": id, "files": files, "output": output }).to_string()
}

fn result_of(outcome: &Outcome) -> serde_json::Value {
    match outcome {
        Outcome::Done(Some(result)) => serde_json::from_str(result).unwrap(),
        other => panic!("expected done with a result, got {other:?}"),
    }
}

#[tokio::test]
async fn archives_hold_every_input_byte_for_byte() {
    let env = Env::new();
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        ("docs/readme.txt", text(300_000)),
        ("docs/photo.jpg", noise(200_000, 1)),
        ("docs/empty.csv", Vec::new()),
        ("docs/deep/er/blob.bin", noise(3_000_000, 2)),
        ("other/readme.txt", b"same name, other bucket".to_vec()),
    ];
    for (path, bytes) in &inputs {
        env.put(path, bytes);
    }
    let files: Vec<String> = inputs.iter().map(|(p, _)| format!("s3://{p}")).collect();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let plugin = harness::compress(Limits::default(), BTreeMap::new());

    let (result, _) = run(
        &plugin,
        &env.services,
        &message("m-1", &job("j-1", &files, "s3://archives/j-1.zip")),
    )
    .await;
    let summary = result_of(&result.outcome);
    assert_eq!(summary["archive"], "s3://archives/j-1.zip");
    assert_eq!(summary["files"], 5);

    let path = env.root().join("archives/j-1.zip");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(summary["size"], bytes.len() as u64);
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let names = [
        "readme.txt",
        "photo.jpg",
        "empty.csv",
        "blob.bin",
        "readme (2).txt",
    ];
    assert_eq!(zip.len(), names.len());
    for (i, ((_, original), name)) in inputs.iter().zip(names).enumerate() {
        let mut entry = zip.by_index(i).unwrap();
        assert_eq!(entry.name().unwrap(), name);
        let expected_method = if name.ends_with(".jpg") {
            zip::CompressionMethod::Stored
        } else {
            zip::CompressionMethod::Deflated
        };
        assert_eq!(entry.compression(), expected_method, "{name}");
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        assert!(content == *original, "{name} differs from its input");
    }

    // The result is recorded under the job id, and the link verifies.
    let records = SqliteRecords::open(&env.dir.path().join("data/records.db")).unwrap();
    let recorded = records.get("archives", "j-1").await.unwrap().unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&recorded).unwrap(),
        summary
    );
    let url = summary["url"].as_str().unwrap();
    let (path_part, query) = url
        .strip_prefix("http://127.0.0.1:9")
        .unwrap()
        .split_once('?')
        .unwrap();
    let signer =
        LinkSigner::for_data_dir(&env.dir.path().join("data"), "http://127.0.0.1:9").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (granted, _version) = signer.verify(path_part, query, now).unwrap();
    assert_eq!(granted.to_string(), "s3://archives/j-1.zip");
}

/// Delivery is at least once: a message run again (a crash after its
/// archive was written, before it was deleted) finishes on its own earlier
/// archive, while another job naming the same output is refused.
#[tokio::test]
async fn a_redelivery_finishes_on_its_own_archive_and_another_job_cannot_replace_it() {
    let env = Env::new();
    env.put("docs/a.txt", b"first");
    let plugin = harness::compress(Limits::default(), BTreeMap::new());
    let msg = message("m", &job("j", &["s3://docs/a.txt"], "s3://archives/j.zip"));
    let (first, _) = run(&plugin, &env.services, &msg).await;
    let first = result_of(&first.outcome);
    let archive = std::fs::read(env.root().join("archives/j.zip")).unwrap();

    let (again, _) = run(&plugin, &env.services, &msg).await;
    assert_eq!(result_of(&again.outcome)["size"], first["size"]);

    env.put("docs/b.txt", b"the attacker's bytes");
    let attack = message(
        "m-2",
        &job("j", &["s3://docs/b.txt"], "s3://archives/j.zip"),
    );
    let (attacked, _) = run(&plugin, &env.services, &attack).await;
    match &attacked.outcome {
        Outcome::Reject(reason) => assert!(
            reason.contains("s3://archives/j.zip") && reason.contains("already exists"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(std::fs::read(env.root().join("archives/j.zip")).unwrap() == archive);

    // Nor can it replace the job's record by naming the same job id with
    // an output of its own.
    let records = SqliteRecords::open(&env.dir.path().join("data/records.db")).unwrap();
    let before = records.get("archives", "j").await.unwrap().unwrap();
    let other_output = message(
        "m-3",
        &job("j", &["s3://docs/b.txt"], "s3://archives/mine.zip"),
    );
    let (attacked, _) = run(&plugin, &env.services, &other_output).await;
    match &attacked.outcome {
        Outcome::Reject(reason) => assert!(
            reason.contains("recording the result of `j`") && reason.contains("denied"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(records.get("archives", "j").await.unwrap().unwrap(), before);
}

/// 210 MB of input, under a 64 MiB memory cap: the processor streams and
/// never holds an input or the archive whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_job_streams_under_a_64_mib_memory_cap() {
    const MB: usize = 1_000_000;
    let env = Env::new();
    let inputs = [
        ("big/video.mp4", noise(80 * MB, 3)),
        ("big/log.txt", text(70 * MB)),
        ("big/backup.gz", noise(60 * MB, 4)),
    ];
    for (path, bytes) in &inputs {
        env.put(path, bytes);
    }
    let limits = Limits {
        memory: 64 << 20,
        timeout: Duration::from_secs(300),
        ..Limits::default()
    };
    let plugin = harness::compress(limits, BTreeMap::new());
    let files: Vec<String> = inputs.iter().map(|(p, _)| format!("s3://{p}")).collect();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let (result, _) = run(
        &plugin,
        &env.services,
        &message("big", &job("big", &files, "s3://archives/big.zip")),
    )
    .await;
    assert_eq!(result.fault, None);
    let summary = result_of(&result.outcome);
    assert_eq!(summary["files"], 3);
    assert!(result.usage.bytes_read >= 210 * MB as u64);
    assert!(
        result.usage.peak_memory <= 64 << 20,
        "{}",
        result.usage.peak_memory
    );

    let file = std::fs::File::open(env.root().join("archives/big.zip")).unwrap();
    let mut zip = zip::ZipArchive::new(file).unwrap();
    for (i, (_, original)) in inputs.iter().enumerate() {
        let mut entry = zip.by_index(i).unwrap();
        let mut content = Vec::with_capacity(original.len());
        entry.read_to_end(&mut content).unwrap();
        assert!(content == *original, "entry {i} differs from its input");
    }
}

/// A store that answers `unavailable` to everything, as S3 does in an
/// outage.
struct DownStore;

#[async_trait]
impl BlobStore for DownStore {
    async fn stat(&self, uri: &BlobUri) -> Result<ObjectInfo, BlobError> {
        Err(BlobError::Unavailable(format!(
            "`{uri}`: connection refused"
        )))
    }
    async fn open(&self, uri: &BlobUri, _: &Budget) -> Result<Box<dyn BlobReader>, BlobError> {
        Err(BlobError::Unavailable(format!(
            "`{uri}`: connection refused"
        )))
    }
    async fn create(
        &self,
        uri: &BlobUri,
        _: CreateOptions<'_>,
    ) -> Result<Box<dyn BlobWriter>, BlobError> {
        Err(BlobError::Unavailable(format!(
            "`{uri}`: connection refused"
        )))
    }
    async fn presign_get(&self, uri: &BlobUri, _: Duration) -> Result<String, BlobError> {
        Err(BlobError::Unavailable(format!(
            "`{uri}`: connection refused"
        )))
    }
    async fn delete(&self, uri: &BlobUri) -> Result<(), BlobError> {
        Err(BlobError::Unavailable(format!(
            "`{uri}`: connection refused"
        )))
    }
}

struct DownRecords;

#[async_trait]
impl Records for DownRecords {
    async fn put(
        &self,
        table: &str,
        _: &str,
        _: &str,
        _: PutOptions<'_>,
    ) -> Result<(), RecordsError> {
        Err(RecordsError::Unavailable(format!(
            "table `{table}`: database is locked"
        )))
    }
    async fn get(&self, table: &str, _: &str) -> Result<Option<String>, RecordsError> {
        Err(RecordsError::Unavailable(format!(
            "table `{table}`: database is locked"
        )))
    }
}

#[tokio::test]
async fn an_unavailable_store_is_a_retry_not_a_reject() {
    let env = Env::new();
    let plugin = harness::compress(Limits::default(), BTreeMap::new());
    let msg = message("m", &job("j", &["s3://docs/a.txt"], "s3://archives/j.zip"));

    let down_blobs = Services {
        blobs: Arc::new(DownStore),
        records: env.services.records.clone(),
    };
    let (result, _) = run(&plugin, &down_blobs, &msg).await;
    match result.outcome {
        Outcome::Retry { reason, .. } => assert!(
            reason.contains("unavailable") && reason.contains("connection refused"),
            "{reason}"
        ),
        other => panic!("expected retry, got {other:?}"),
    }

    env.put("docs/a.txt", b"x");
    let down_records = Services {
        blobs: env.services.blobs.clone(),
        records: Arc::new(DownRecords),
    };
    let (result, _) = run(&plugin, &down_records, &msg).await;
    match result.outcome {
        Outcome::Retry { reason, .. } => {
            assert!(reason.contains("recording the result of `j`"), "{reason}")
        }
        other => panic!("expected retry, got {other:?}"),
    }
}

#[tokio::test]
async fn settings_choose_the_output_location_and_level() {
    let env = Env::new();
    env.put("docs/a.txt", &text(100_000));
    let config = BTreeMap::from([
        (
            "output-prefix".to_string(),
            "s3://archives/by-job/".to_string(),
        ),
        ("level".to_string(), "0".to_string()),
    ]);
    let plugin = harness::compress(Limits::default(), config);
    let body = serde_json::json!({"job_id": "p-1", "files": ["s3://docs/a.txt"]}).to_string();
    let (result, _) = run(&plugin, &env.services, &message("m", &body)).await;
    let summary = result_of(&result.outcome);
    assert_eq!(summary["archive"], "s3://archives/by-job/p-1.zip");
    // Level 0 deflate stores the text nearly as is.
    assert!(summary["size"].as_u64().unwrap() > 100_000);
}

/// A store whose opens finish in the reverse of the order they were asked
/// for: the earlier an open starts, the longer it waits.
struct Reversed {
    inner: Arc<dyn BlobStore>,
    opened: std::sync::atomic::AtomicU64,
    /// Opens under way now, and the most there were at once.
    in_flight: std::sync::atomic::AtomicU64,
    most: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl BlobStore for Reversed {
    async fn stat(&self, uri: &BlobUri) -> Result<ObjectInfo, BlobError> {
        self.inner.stat(uri).await
    }
    async fn open(&self, uri: &BlobUri, budget: &Budget) -> Result<Box<dyn BlobReader>, BlobError> {
        use std::sync::atomic::Ordering::SeqCst;
        let n = self.opened.fetch_add(1, SeqCst);
        let now = self.in_flight.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        tokio::time::sleep(Duration::from_millis(300u64.saturating_sub(n * 10))).await;
        self.in_flight.fetch_sub(1, SeqCst);
        self.inner.open(uri, budget).await
    }
    async fn create(
        &self,
        uri: &BlobUri,
        options: CreateOptions<'_>,
    ) -> Result<Box<dyn BlobWriter>, BlobError> {
        self.inner.create(uri, options).await
    }
    async fn presign_get(&self, uri: &BlobUri, expires_in: Duration) -> Result<String, BlobError> {
        self.inner.presign_get(uri, expires_in).await
    }
    async fn delete(&self, uri: &BlobUri) -> Result<(), BlobError> {
        self.inner.delete(uri).await
    }
}

/// The objects of a job are opened ahead, and their reads may complete in
/// any order; the archive is the same, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_is_byte_identical_whatever_order_reads_complete_in() {
    let env = Env::new();
    let files: Vec<String> = (0..30)
        .map(|i| {
            let path = format!("docs/part-{i:02}.txt");
            env.put(&path, &text(20_000 + i * 1_000));
            format!("s3://{path}")
        })
        .collect();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let plugin = harness::compress(Limits::default(), BTreeMap::new());
    let (plain, _) = run(
        &plugin,
        &env.services,
        &message(
            "m-1",
            &job("in-order", &files, "s3://archives/in-order.zip"),
        ),
    )
    .await;
    assert_eq!(plain.outcome.kind(), "done", "{:?}", plain.outcome);
    let store = Arc::new(Reversed {
        inner: env.services.blobs.clone(),
        opened: Default::default(),
        in_flight: Default::default(),
        most: Default::default(),
    });
    let reversed = Services {
        blobs: store.clone(),
        records: env.services.records.clone(),
    };
    let (shuffled, _) = run(
        &plugin,
        &reversed,
        &message(
            "m-2",
            &job("reversed", &files, "s3://archives/reversed.zip"),
        ),
    )
    .await;
    assert_eq!(shuffled.outcome.kind(), "done", "{:?}", shuffled.outcome);
    // Opened ahead, the opens waited together, not one after another.
    let most = store.most.load(std::sync::atomic::Ordering::SeqCst);
    assert!(most > 10, "at most {most} opens were under way at once");
    let a = std::fs::read(env.root().join("archives/in-order.zip")).unwrap();
    let b = std::fs::read(env.root().join("archives/reversed.zip")).unwrap();
    assert!(a == b, "the archives differ");
}

#[tokio::test]
async fn what_the_host_deflates_counts_against_the_bytes_read_limit() {
    let env = Env::new();
    env.put("docs/log.txt", &text(3 << 20));
    let job = job("j", &["s3://docs/log.txt"], "s3://archives/j.zip");
    let limits = Limits {
        bytes_read: 2 << 20,
        ..Limits::default()
    };
    // The text is deflated by the host: its 3 MiB count when the stream
    // starts, before a byte of it is read.
    let (over, _) = run(
        &harness::compress(limits, BTreeMap::new()),
        &env.services,
        &message("m", &job),
    )
    .await;
    assert_eq!(over.fault, Some(wasq::runtime::Fault::BytesRead(2 << 20)));
    assert!(!env.root().join("archives/j.zip").exists());

    let (within, _) = run(
        &harness::compress(Limits::default(), BTreeMap::new()),
        &env.services,
        &message("m", &job),
    )
    .await;
    assert_eq!(within.usage.bytes_read, 3 << 20);
    assert_eq!(result_of(&within.outcome)["files"], 1);
}
