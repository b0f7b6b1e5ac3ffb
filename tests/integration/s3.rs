//! The S3 blob store against two real S3 APIs on loopback, both started by
//! `tests/run.sh`: moto, and SeaweedFS, which checks every request's SigV4
//! signature, presigned links included. The same tests run on both:
//! streaming, multipart uploads and their aborts, writes that never
//! replace another message's object, and the default processor's archives
//! downloaded through their presigned links with plain HTTP. On SeaweedFS,
//! links that were tampered with or have expired are refused, and wrong
//! credentials fail with an error that names the bucket.

use crate::cli::http_get;
use crate::harness::{self, noise};
use aws_sdk_s3::config::{Credentials, Region};
use std::time::{Duration, Instant};
use wasq::blobs::{BlobError, BlobStore, BlobUri, Budget, CreateOptions, S3Blobs};
use wasq::records::SqliteRecords;
use wasq::runtime::{Limits, Services};

const MB: usize = 1 << 20;

/// One S3 API, and the bucket names a test may use on it.
struct Server {
    config: aws_config::SdkConfig,
    /// Moto is reset for each test; SeaweedFS keeps its buckets for the
    /// whole run, so each test's buckets get a prefix of their own there.
    prefix: String,
    _moto: Option<tokio::sync::MutexGuard<'static, ()>>,
}

impl Server {
    async fn moto() -> Server {
        let guard = harness::moto().await;
        Server {
            config: harness::moto_aws().load().await,
            prefix: String::new(),
            _moto: Some(guard),
        }
    }

    /// SeaweedFS with the identity `tests/run.sh` gave it, or `secret`
    /// instead of its secret key.
    async fn seaweedfs_with(secret: Option<&str>) -> Server {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: the S3 tests need the SeaweedFS server that `bash tests/run.sh` installs and starts")
            })
        };
        let credentials = Credentials::new(
            var("WASQ_TEST_S3_ACCESS_KEY"),
            secret.map_or_else(|| var("WASQ_TEST_S3_SECRET_KEY"), str::to_string),
            None,
            None,
            "tests",
        );
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .credentials_provider(credentials)
            .region(Region::new("us-east-1"))
            .endpoint_url(var("WASQ_TEST_S3_ENDPOINT"))
            .load()
            .await;
        let mut tag = [0u8; 4];
        getrandom::fill(&mut tag).unwrap();
        Server {
            config,
            prefix: format!("t{}-", hex::encode(tag)),
            _moto: None,
        }
    }

    async fn seaweedfs() -> Server {
        Server::seaweedfs_with(None).await
    }

    fn bucket(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A client that sends a checksum only when asked to (`put_crc32`).
    fn client(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&self.config)
                .force_path_style(true)
                .request_checksum_calculation(
                    aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
                )
                .build(),
        )
    }

    fn blobs(&self) -> S3Blobs {
        S3Blobs::new(&self.config, true)
    }

    /// The S3 store, reached through `front` instead of the server itself.
    fn blobs_through(&self, front: std::net::SocketAddr) -> S3Blobs {
        let config = self
            .config
            .to_builder()
            .endpoint_url(format!("http://{front}"))
            .build();
        S3Blobs::new(&config, true)
    }

    async fn make_bucket(&self, name: &str) -> String {
        let bucket = self.bucket(name);
        self.client()
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .unwrap();
        bucket
    }

    async fn put(&self, uri: &str, bytes: Vec<u8>) {
        let uri = BlobUri::parse(uri).unwrap();
        self.client()
            .put_object()
            .bucket(uri.bucket())
            .key(uri.key())
            .body(bytes.into())
            .send()
            .await
            .unwrap();
    }

    /// Puts an object with its CRC-32, which the server checks and keeps.
    async fn put_crc32(&self, uri: &str, bytes: Vec<u8>) {
        let uri = BlobUri::parse(uri).unwrap();
        self.client()
            .put_object()
            .bucket(uri.bucket())
            .key(uri.key())
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32)
            .body(bytes.into())
            .send()
            .await
            .unwrap();
    }

    async fn get(&self, uri: &str) -> Vec<u8> {
        let uri = BlobUri::parse(uri).unwrap();
        let out = self
            .client()
            .get_object()
            .bucket(uri.bucket())
            .key(uri.key())
            .send()
            .await
            .unwrap();
        out.body.collect().await.unwrap().to_vec()
    }

    /// Waits for the multipart uploads left in `bucket` to be aborted (a
    /// writer dropped unfinished aborts its upload on a task of its own).
    async fn uploads_end(&self, bucket: &str) {
        let started = Instant::now();
        while self.open_uploads(bucket).await > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "an upload was left open in `{bucket}`"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn open_uploads(&self, bucket: &str) -> usize {
        self.client()
            .list_multipart_uploads()
            .bucket(bucket)
            .send()
            .await
            .unwrap()
            .uploads()
            .len()
    }
}

/// Runs a test body on moto and on SeaweedFS.
macro_rules! on_both_servers {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "needs moto and SeaweedFS: `bash tests/run.sh` starts them and runs this"]
            async fn moto() {
                super::$name(super::Server::moto().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "needs moto and SeaweedFS: `bash tests/run.sh` starts them and runs this"]
            async fn seaweedfs() {
                super::$name(super::Server::seaweedfs().await).await;
            }
        }
    };
}

on_both_servers!(an_archive_over_20_mib_goes_up_by_multipart_and_its_link_downloads_it);
async fn an_archive_over_20_mib_goes_up_by_multipart_and_its_link_downloads_it(server: Server) {
    let docs = server.make_bucket("docs").await;
    let archives = server.make_bucket("archives").await;
    let inputs = [
        (format!("s3://{docs}/video.mp4"), noise(14 * MB, 1)),
        (format!("s3://{docs}/scan.tiff"), noise(9 * MB, 2)),
        (
            format!("s3://{docs}/notes.txt"),
            b"meeting notes\n".repeat(1000),
        ),
    ];
    for (uri, bytes) in &inputs {
        server.put(uri, bytes.clone()).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let services = Services {
        blobs: std::sync::Arc::new(server.blobs()),
        records: std::sync::Arc::new(SqliteRecords::open(&dir.path().join("records.db")).unwrap()),
    };
    let files: Vec<&str> = inputs.iter().map(|(uri, _)| uri.as_str()).collect();
    let output = format!("s3://{archives}/big.zip");
    let job = serde_json::json!({"job_id": "big", "files": files, "output": output});
    let plugin = harness::compress(Limits::default(), Default::default());
    let (run, _) = harness::run(&plugin, &services, &harness::message("m", &job.to_string())).await;
    let wasq::runtime::Outcome::Done(Some(result)) = &run.outcome else {
        panic!("{:?}", run.outcome);
    };
    let result: serde_json::Value = serde_json::from_str(result).unwrap();
    assert_eq!(result["files"], 3);
    assert!(
        result["size"].as_u64().unwrap() > 20 * MB as u64,
        "{result}"
    );

    // Stored whole, no upload left open.
    let stored = server.get(&output).await;
    assert_eq!(stored.len() as u64, result["size"].as_u64().unwrap());
    assert_eq!(server.open_uploads(&archives).await, 0);
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(stored.clone())).unwrap();
    let mut video = Vec::new();
    std::io::Read::read_to_end(&mut zip.by_name("video.mp4").unwrap(), &mut video).unwrap();
    assert!(video == inputs[0].1, "the archived file differs");

    // The presigned link fetches the same bytes with a plain HTTP GET.
    let url = result["url"].as_str().unwrap().to_string();
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let (status, body) = tokio::task::spawn_blocking(move || http_get(&url, &[]))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(body == stored, "the link served other bytes");
}

on_both_servers!(large_stored_entries_are_copied_inside_the_store_and_the_archive_is_unchanged);
async fn large_stored_entries_are_copied_inside_the_store_and_the_archive_is_unchanged(
    server: Server,
) {
    let docs = server.make_bucket("docs").await;
    let archives = server.make_bucket("archives").await;
    // Text before each large entry leaves bytes buffered, which are topped
    // up to a part from the entry before the rest of it is copied.
    let inputs = [
        ("notes.txt", harness::text(300_000)),
        ("film.mp4", noise(24 * MB + 777, 3)),
        ("clip.mov", noise(40 * MB + 12_345, 4)),
        ("small.mp4", noise(3 * MB, 5)),
        ("end.txt", b"the end\n".to_vec()),
    ];
    let local = harness::Env::new();
    // The film is put with its CRC-32, which the server keeps: its entry
    // is copied and not read at all. The clip has none: it is copied, and
    // read for its CRC-32.
    for (name, bytes) in &inputs {
        let uri = format!("s3://{docs}/{name}");
        if *name == "film.mp4" {
            server.put_crc32(&uri, bytes.clone()).await;
        } else {
            server.put(&uri, bytes.clone()).await;
        }
        local.put(&format!("{docs}/{name}"), bytes);
    }
    let files: Vec<String> = inputs
        .iter()
        .map(|(name, _)| format!("s3://{docs}/{name}"))
        .collect();
    let plugin = harness::compress(Limits::default(), Default::default());
    let job = |output: &str| {
        let job = serde_json::json!({"job_id": "copy", "files": files, "output": output});
        harness::message("m", &job.to_string())
    };

    let dir = tempfile::tempdir().unwrap();
    let services = Services {
        blobs: std::sync::Arc::new(server.blobs()),
        records: std::sync::Arc::new(SqliteRecords::open(&dir.path().join("records.db")).unwrap()),
    };
    let output = format!("s3://{archives}/copied.zip");
    let (run, log) = harness::run(&plugin, &services, &job(&output)).await;
    assert!(
        matches!(run.outcome, wasq::runtime::Outcome::Done(_)),
        "{:?}",
        run.outcome
    );
    let copied: Vec<String> = log
        .lines()
        .into_iter()
        .map(|line| line.message)
        .filter(|line| line.contains("copied by the store"))
        .collect();
    assert_eq!(copied.len(), 2, "{copied:?}");
    assert!(copied[0].contains("film.mp4") && copied[1].contains("clip.mov"));
    assert!(
        copied[0].contains("CRC-32 from the store") && !copied[1].contains("CRC-32"),
        "{copied:?}"
    );
    assert_eq!(server.open_uploads(&archives).await, 0);
    let stored = server.get(&output).await;

    // The local store copies nothing; the same job makes the same bytes.
    let (run, log) = harness::run(
        &plugin,
        &local.services,
        &job(&format!("s3://{archives}/local.zip")),
    )
    .await;
    assert!(
        matches!(run.outcome, wasq::runtime::Outcome::Done(_)),
        "{:?}",
        run.outcome
    );
    assert!(
        !log.lines()
            .iter()
            .any(|line| line.message.contains("copied by the store"))
    );
    let streamed = std::fs::read(local.root().join(format!("{archives}/local.zip"))).unwrap();
    assert!(
        stored == streamed,
        "the copied archive differs from the streamed one"
    );
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(stored)).unwrap();
    for (name, bytes) in &inputs {
        let mut read = Vec::new();
        // Reading an entry to its end checks its CRC-32 too.
        std::io::Read::read_to_end(&mut zip.by_name(name).unwrap(), &mut read).unwrap();
        assert!(read == *bytes, "{name} differs");
    }

    // Bytes copied count against the bytes the processor may write, though
    // they never pass through it.
    let limited = harness::compress(
        Limits {
            bytes_written: 40 * MB as u64,
            ..Limits::default()
        },
        Default::default(),
    );
    let output = format!("s3://{archives}/limited.zip");
    let (run, _) = harness::run(&limited, &services, &job(&output)).await;
    assert_eq!(
        run.fault,
        Some(wasq::runtime::Fault::BytesWritten(40 * MB as u64)),
        "{:?}",
        run.outcome
    );
    server.uploads_end(&archives).await;
}

/// A copy inside the store names the source's version: an object replaced
/// after it was opened is not copied, and the writer leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto and SeaweedFS: `bash tests/run.sh` starts them and runs this"]
async fn a_source_replaced_before_its_copy_is_not_copied() {
    let server = Server::seaweedfs().await;
    let bucket = server.make_bucket("copies").await;
    let source = format!("s3://{bucket}/source.mp4");
    server.put(&source, noise(12 * MB, 1)).await;
    let blobs = server.blobs();
    let budget = Budget::default();
    let reader = blobs
        .open(&BlobUri::parse(&source).unwrap(), &budget)
        .await
        .unwrap();
    let target = BlobUri::parse(&format!("s3://{bucket}/out.zip")).unwrap();
    let options = CreateOptions {
        content_type: None,
        overwrite: false,
        owner: "q/m",
        budget: &budget,
    };

    // Too short to copy once the buffered bytes are topped up: declined.
    let mut writer = blobs.create(&target, options).await.unwrap();
    writer.write(vec![1; 1000]).await.unwrap();
    assert_eq!(
        writer.copy_in(reader.info(), 0, 9 * MB as u64).await,
        Ok(false)
    );
    drop(writer);

    server.put(&source, noise(12 * MB, 2)).await;
    // With bytes buffered, the top-up read fails; with none, the copy.
    for buffered in [1000, 0] {
        let mut writer = blobs.create(&target, options).await.unwrap();
        writer.write(vec![1; buffered]).await.unwrap();
        let copied = writer.copy_in(reader.info(), 0, 12 * MB as u64).await;
        let finished = match copied {
            Ok(_) => writer.finish().await.map(|_| ()),
            Err(err) => Err(err),
        };
        assert!(
            matches!(&finished, Err(BlobError::Unavailable(m)) if m.contains("changed")),
            "{buffered} bytes buffered: {finished:?}"
        );
    }
    server.uploads_end(&bucket).await;
    assert!(matches!(
        blobs.stat(&target).await,
        Err(BlobError::NotFound(_))
    ));
}

on_both_servers!(s3_writes_are_all_or_nothing_and_errors_name_the_object);
async fn s3_writes_are_all_or_nothing_and_errors_name_the_object(server: Server) {
    let out = server.make_bucket("out").await;
    let blobs = server.blobs();
    let uri = |key: &str| BlobUri::parse(&format!("s3://{out}/{key}")).unwrap();

    // A small object is one PutObject; it reads back in any chunk size.
    let small = uri("small.txt");
    let budget = Budget::default();
    let options = |owner| CreateOptions {
        content_type: None,
        overwrite: false,
        owner,
        budget: &budget,
    };
    let mut writer = blobs.create(&small, options("q/m1")).await.unwrap();
    writer.write(b"hello ".to_vec()).await.unwrap();
    writer.write(b"world".to_vec()).await.unwrap();
    let info = writer.finish().await.unwrap();
    assert_eq!(info.size, 11);
    let stat = blobs.stat(&small).await.unwrap();
    assert_eq!(stat.size, 11);
    assert_eq!(stat.content_type.as_deref(), Some("text/plain"));
    let mut reader = blobs.open(&small, &budget).await.unwrap();
    let mut read = Vec::new();
    loop {
        let chunk = reader.read(4).await.unwrap();
        if chunk.is_empty() {
            break;
        }
        assert!(chunk.len() <= 4);
        read.extend(chunk);
    }
    assert_eq!(read, b"hello world");

    // An object another message wrote is not replaced: refused at create,
    // and, for writers racing past that check, by S3's If-None-Match. The
    // writer's own output, met again on a redelivery, is kept.
    match blobs.create(&small, options("q/m2")).await {
        Err(BlobError::Denied(text)) => assert!(text.contains("already exists"), "{text}"),
        other => panic!("{:?}", other.err()),
    }
    let racing = uri("race.txt");
    let mut late = blobs.create(&racing, options("q/m3")).await.unwrap();
    let mut early = blobs.create(&racing, options("q/m4")).await.unwrap();
    early.write(b"first".to_vec()).await.unwrap();
    early.finish().await.unwrap();
    late.write(b"second".to_vec()).await.unwrap();
    assert!(matches!(late.finish().await, Err(BlobError::Denied(_))));
    let mut again = blobs.create(&small, options("q/m1")).await.unwrap();
    again.write(b"hello world".to_vec()).await.unwrap();
    assert_eq!(again.finish().await.unwrap().size, 11);
    assert_eq!(server.get(&small.to_string()).await, b"hello world");

    // A multipart upload that loses the race is refused at completion too.
    let large = uri("large.bin");
    let mut loser = blobs.create(&large, options("q/m5")).await.unwrap();
    loser.write(noise(9 * MB, 3)).await.unwrap();
    let mut winner = blobs.create(&large, options("q/m6")).await.unwrap();
    winner.write(noise(9 * MB, 4)).await.unwrap();
    winner.finish().await.unwrap();
    assert!(matches!(loser.finish().await, Err(BlobError::Denied(_))));
    assert!(server.get(&large.to_string()).await == noise(9 * MB, 4));

    // A large object dropped before `finish` leaves neither the object nor
    // its upload behind.
    let dropped = uri("dropped.bin");
    let mut writer = blobs.create(&dropped, options("q/m1")).await.unwrap();
    writer.write(noise(9 * MB, 7)).await.unwrap();
    assert!(server.open_uploads(&out).await >= 1, "a part went up");
    drop(writer);
    // The abort runs on a task of its own; `settle`, which a stopping host
    // calls, returns once it is done.
    blobs.settle().await;
    assert_eq!(
        server.open_uploads(&out).await,
        0,
        "settled with the upload still open"
    );
    assert!(matches!(
        blobs.stat(&dropped).await,
        Err(BlobError::NotFound(_))
    ));

    // Errors name what was wrong.
    let missing = uri("missing.txt");
    match blobs.stat(&missing).await {
        Err(BlobError::NotFound(text)) => assert!(text.contains(&missing.to_string()), "{text}"),
        other => panic!("{other:?}"),
    }
    let nowhere = server.bucket("nowhere");
    let elsewhere = BlobUri::parse(&format!("s3://{nowhere}/a.txt")).unwrap();
    match blobs.open(&elsewhere, &budget).await {
        Err(BlobError::NotFound(text)) => assert!(text.contains(&elsewhere.to_string()), "{text}"),
        other => panic!("{}", other.err().map(|e| e.to_string()).unwrap_or_default()),
    }
    match blobs.check_bucket(&nowhere).await {
        Err(BlobError::NotFound(text)) => {
            assert!(
                text.contains(&format!("bucket `{nowhere}` does not exist")),
                "{text}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        blobs
            .presign_get(&small, Duration::from_secs(8 * 24 * 3600))
            .await,
        Err(BlobError::Invalid(_))
    ));
}

/// moto accepts any signature; SeaweedFS checks them. A link wasq made
/// downloads with plain HTTP; one whose key, expiry or signature was
/// changed is refused, and so is one that has expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto and SeaweedFS: `bash tests/run.sh` starts them and runs this"]
async fn presigned_links_are_checked_by_a_signature_checking_server() {
    let server = Server::seaweedfs().await;
    let bucket = server.make_bucket("archives").await;
    server
        .put(&format!("s3://{bucket}/a.zip"), b"the archive".to_vec())
        .await;
    server
        .put(&format!("s3://{bucket}/b.zip"), b"another one".to_vec())
        .await;
    let blobs = server.blobs();
    let a = BlobUri::parse(&format!("s3://{bucket}/a.zip")).unwrap();
    let link = blobs
        .presign_get(&a, Duration::from_secs(600))
        .await
        .unwrap();
    let short = blobs.presign_get(&a, Duration::from_secs(1)).await.unwrap();
    let (link2, short2) = (link.clone(), short.clone());
    let answers = tokio::task::spawn_blocking(move || {
        let fetch = |url: &str| http_get(url, &[]);
        let good = fetch(&link2);
        let other_key = fetch(&link2.replace("/a.zip", "/b.zip"));
        let longer = fetch(&link2.replace("X-Amz-Expires=600", "X-Amz-Expires=6000"));
        let signature_at = link2.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
        let mut forged = link2.clone().into_bytes();
        forged[signature_at] = if forged[signature_at] == b'0' {
            b'1'
        } else {
            b'0'
        };
        let forged = fetch(&String::from_utf8(forged).unwrap());
        std::thread::sleep(Duration::from_millis(2_500));
        let expired = fetch(&short2);
        (good, other_key, longer, forged, expired)
    })
    .await
    .unwrap();
    let (good, other_key, longer, forged, expired) = answers;
    assert_eq!((good.0, good.1.as_slice()), (200, &b"the archive"[..]));
    for (what, (status, body)) in [
        ("another key", other_key),
        ("a longer expiry", longer),
        ("a changed signature", forged),
        ("an expired link", expired),
    ] {
        assert_eq!(status, 403, "{what}: {}", String::from_utf8_lossy(&body));
    }
}

/// Wrong credentials fail every call with an error that names the bucket
/// (and is `denied`, so a processor rejects rather than retries forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto and SeaweedFS: `bash tests/run.sh` starts them and runs this"]
async fn wrong_credentials_fail_naming_the_bucket() {
    let server = Server::seaweedfs().await;
    let bucket = server.make_bucket("docs").await;
    server
        .put(&format!("s3://{bucket}/a.txt"), b"hello".to_vec())
        .await;
    let wrong = Server::seaweedfs_with(Some("not-the-secret")).await.blobs();
    let uri = BlobUri::parse(&format!("s3://{bucket}/a.txt")).unwrap();
    match wrong.stat(&uri).await {
        Err(BlobError::Denied(text)) => assert!(text.contains(&bucket), "{text}"),
        other => panic!("{other:?}"),
    }
    match wrong.open(&uri, &Budget::default()).await {
        Err(BlobError::Denied(text)) => assert!(
            text.contains(&bucket) && text.contains("SignatureDoesNotMatch"),
            "{text}"
        ),
        other => panic!("{:?}", other.err()),
    }
    match wrong.check_bucket(&bucket).await {
        Err(BlobError::Denied(text)) => assert!(text.contains(&bucket), "{text}"),
        other => panic!("{other:?}"),
    }
}

/// Reads and writes keep several requests going at once within the
/// message's buffer budget, and come out right whatever the budget: with
/// room, ranges of a large object are fetched ahead and parts go up while
/// the processor writes on; with none to spare, the rest of an object
/// streams in one GET and parts go up one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto and SeaweedFS: `bash tests/run.sh` starts them and runs this"]
async fn large_objects_read_and_write_right_within_any_budget() {
    let server = Server::seaweedfs().await;
    let bucket = server.make_bucket("big").await;
    let original = noise(40 * MB + 12_345, 9);
    let source = format!("s3://{bucket}/source.bin");
    server.put(&source, original.clone()).await;
    let blobs = server.blobs();
    let source = BlobUri::parse(&source).unwrap();
    for budget_mib in [16u64, 64, 256] {
        let budget = Budget::new(budget_mib << 20);
        let mut reader = blobs.open(&source, &budget).await.unwrap();
        assert_eq!(reader.info().size, original.len() as u64);
        let mut read = Vec::with_capacity(original.len());
        let mut most_held = 0;
        loop {
            let chunk = reader.read(1 << 20).await.unwrap();
            most_held = most_held.max(budget.in_use());
            if chunk.is_empty() {
                break;
            }
            read.extend(chunk);
        }
        assert!(
            read == original,
            "the object read back differs at {budget_mib} MiB"
        );
        assert!(most_held <= budget.total(), "{most_held}");
        if budget_mib >= 64 {
            assert!(most_held > 8 << 20, "no ranges were fetched ahead");
        }
        drop(reader);

        let copy = BlobUri::parse(&format!("s3://{bucket}/copy-{budget_mib}.bin")).unwrap();
        let mut writer = blobs
            .create(
                &copy,
                CreateOptions {
                    content_type: None,
                    overwrite: false,
                    owner: "q/m",
                    budget: &budget,
                },
            )
            .await
            .unwrap();
        for chunk in original.chunks(3 << 20) {
            writer.write(chunk.to_vec()).await.unwrap();
            assert!(budget.in_use() <= budget.total());
        }
        writer.finish().await.unwrap();
        assert!(
            server.get(&copy.to_string()).await == original,
            "the object written differs at {budget_mib} MiB"
        );
    }
}

/// An object read as ranges names its version: replaced while it is read,
/// it fails instead of mixing two versions' bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto and SeaweedFS: `bash tests/run.sh` starts them and runs this"]
async fn an_object_replaced_while_it_is_read_is_not_mixed() {
    let server = Server::seaweedfs().await;
    let bucket = server.make_bucket("big").await;
    let uri = format!("s3://{bucket}/moving.bin");
    server.put(&uri, noise(24 * MB, 1)).await;
    let blobs = server.blobs();
    // A budget with room for no ranges ahead: every later byte is asked for
    // after the object changed.
    let budget = Budget::new(16 << 20);
    let held = budget.reserve(16 << 20, "test").unwrap();
    let target = BlobUri::parse(&uri).unwrap();
    let mut reader = blobs.open(&target, &budget).await.unwrap();
    drop(held);
    let first = reader.read(1 << 20).await.unwrap();
    assert!(!first.is_empty() && first == noise(24 * MB, 1)[..first.len()]);
    server.put(&uri, noise(24 * MB, 2)).await;
    let mut outcome = Ok(());
    loop {
        match reader.read(4 << 20).await {
            Ok(chunk) if chunk.is_empty() => break,
            Ok(_) => {}
            Err(err) => {
                outcome = Err(err);
                break;
            }
        }
    }
    assert!(
        matches!(
            &outcome,
            Err(BlobError::Unavailable(_)) | Err(BlobError::Invalid(_))
        ),
        "{outcome:?}"
    );
}

/// A listener for a test's own front to SeaweedFS, and SeaweedFS's
/// address behind it.
async fn seaweedfs_front() -> (tokio::net::TcpListener, std::net::SocketAddr) {
    let target = std::env::var("WASQ_TEST_S3_ENDPOINT")
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    (listener, target)
}

/// Passes connections from `listener` to `target`, showing each chunk a
/// client sends to `look`, which says how long to hold it back.
fn spawn_front(
    listener: tokio::net::TcpListener,
    target: std::net::SocketAddr,
    look: impl Fn(&[u8]) -> Duration + Send + Sync + 'static,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let look = std::sync::Arc::new(look);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let look = look.clone();
            tokio::spawn(async move {
                let Ok(upstream) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut upstream_read, mut upstream_write) = upstream.into_split();
                let requests = async move {
                    let mut buffer = vec![0u8; 64 << 10];
                    while let Ok(n) = client_read.read(&mut buffer).await {
                        if n == 0 {
                            break;
                        }
                        let hold = look(&buffer[..n]);
                        if !hold.is_zero() {
                            tokio::time::sleep(hold).await;
                        }
                        if upstream_write.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let answers = tokio::io::copy(&mut upstream_read, &mut client_write);
                tokio::select! {
                    _ = requests => {}
                    _ = answers => {}
                }
            });
        }
    });
}

/// S3 answers `503 SlowDown` when a prefix is pushed too hard; the client
/// backs off and tries again (the SDK's adaptive retry mode) rather than
/// failing the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto and SeaweedFS: `bash tests/run.sh` starts them and runs this"]
async fn slow_down_answers_are_backed_off_and_retried() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::seaweedfs().await;
    let bucket = server.make_bucket("busy").await;
    server
        .put(&format!("s3://{bucket}/a.txt"), b"hello".to_vec())
        .await;
    // A front that answers the first three requests with SlowDown and
    // passes the rest through.
    let (listener, target) = seaweedfs_front().await;
    let front = listener.local_addr().unwrap();
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = refused.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            if counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 3 {
                let mut head = [0u8; 4096];
                let _ = client.read(&mut head).await;
                let body = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                let answer = format!(
                    "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = client.write_all(answer.as_bytes()).await;
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    let blobs = server.blobs_through(front);
    let uri = BlobUri::parse(&format!("s3://{bucket}/a.txt")).unwrap();
    let started = Instant::now();
    let info = blobs.stat(&uri).await.unwrap();
    assert_eq!(info.size, 5);
    assert!(refused.load(std::sync::atomic::Ordering::SeqCst) > 3);
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// A reader read a little and dropped fetches one range ahead, not a
/// window of them: the window ahead starts at one range and doubles with
/// each range read. Read to its end, the object comes back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto and SeaweedFS: `bash tests/run.sh` starts them and runs this"]
async fn a_reader_dropped_early_fetched_one_range_ahead_and_a_whole_read_is_intact() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let server = Server::seaweedfs().await;
    let bucket = server.make_bucket("ramp").await;
    let object = noise(40 * MB, 9);
    let uri = format!("s3://{bucket}/big.bin");
    server.put(&uri, object.clone()).await;
    // A front that counts the GETs passing through it.
    let (listener, target) = seaweedfs_front().await;
    let front = listener.local_addr().unwrap();
    let gets = Arc::new(AtomicUsize::new(0));
    let counter = gets.clone();
    spawn_front(listener, target, move |chunk| {
        let seen = chunk.windows(4).filter(|w| w == b"GET ").count();
        counter.fetch_add(seen, Ordering::SeqCst);
        Duration::ZERO
    });
    let blobs = server.blobs_through(front);
    let uri = BlobUri::parse(&uri).unwrap();
    let budget = Budget::default();

    let mut reader = blobs.open(&uri, &budget).await.unwrap();
    assert_eq!(reader.read(1).await.unwrap().len(), 1);
    // The range ahead reaches the server, and then time for any more the
    // read started (there were 15 more before the window ramped).
    let started = Instant::now();
    while gets.load(Ordering::SeqCst) < 2 && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(reader);
    let after_one_byte = gets.load(Ordering::SeqCst);
    // The open's GET and one range ahead.
    assert_eq!(after_one_byte, 2, "GETs for one byte read");

    let mut reader = blobs.open(&uri, &budget).await.unwrap();
    let mut read = Vec::with_capacity(object.len());
    loop {
        let chunk = reader.read(MB).await.unwrap();
        if chunk.is_empty() {
            break;
        }
        read.extend_from_slice(&chunk);
    }
    assert!(read == object, "the object read back differs");
    // 40 MiB in 2 MiB ranges: 20 GETs, the open's included.
    assert_eq!(gets.load(Ordering::SeqCst) - after_one_byte, 20);
    drop(reader);
    assert_eq!(budget.in_use(), 0);
}

/// A writer dropped unfinished aborts its upload on a task of its own;
/// `settle`, which a stopping host calls, returns only once that abort is
/// done. The store is reached through a front that holds each request
/// back, so an abort nobody waited for would still be on its way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto and SeaweedFS: `bash tests/run.sh` starts them and runs this"]
async fn settling_waits_for_the_aborts_of_dropped_uploads() {
    let server = Server::seaweedfs().await;
    let bucket = server.make_bucket("settle").await;
    let (listener, target) = seaweedfs_front().await;
    let front = listener.local_addr().unwrap();
    let held = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let holding = held.clone();
    spawn_front(listener, target, move |_| {
        if holding.load(std::sync::atomic::Ordering::SeqCst) {
            Duration::from_secs(2)
        } else {
            Duration::ZERO
        }
    });
    let blobs = server.blobs_through(front);
    let budget = Budget::default();
    let uri = BlobUri::parse(&format!("s3://{bucket}/dropped.bin")).unwrap();
    let options = CreateOptions {
        content_type: None,
        overwrite: false,
        owner: "q/m1",
        budget: &budget,
    };
    let mut writer = blobs.create(&uri, options).await.unwrap();
    writer.write(noise(9 * MB, 7)).await.unwrap();
    assert!(server.open_uploads(&bucket).await >= 1, "a part went up");
    held.store(true, std::sync::atomic::Ordering::SeqCst);
    drop(writer);
    assert!(
        server.open_uploads(&bucket).await >= 1,
        "the abort was not held back"
    );
    blobs.settle().await;
    assert_eq!(
        server.open_uploads(&bucket).await,
        0,
        "settled with the upload still open"
    );
}
