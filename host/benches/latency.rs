//! The default job at real object-store latency, side by side with what a
//! user would write in Python: `cargo bench -p wasq --bench latency` after
//! `tests/run.sh` has made `.venv` (it holds SeaweedFS and boto3). Figures
//! and method are recorded in docs/PERFORMANCE.md.
//!
//! SeaweedFS serves S3 on loopback; a TCP proxy of the benchmark's own sits
//! in front of it and delays every chunk by half the round trip in each
//! direction (20 ms round trip by default), as a line would, without
//! slowing the stream; it can also cap each connection's bandwidth. Every
//! client — wasq and the Python scripts — talks to S3 through the proxy.
//!
//! 1. Many small objects: 800 objects of 64 KiB into one archive. `wasq
//!    run --blob-store s3` with the built-in `compress`, against a boto3
//!    script with a `ThreadPoolExecutor(32)` of GETs, `zipfile` at level 6
//!    and `upload_file`, and against the same script with one GET at a
//!    time.
//! 2. Large objects: two 256 MiB incompressible objects (stored, not
//!    deflated), each connection capped at 40 MB/s: wasq against boto3's
//!    `download_file` with `TransferConfig(max_concurrency=8)`. wasq runs
//!    twice: on objects uploaded with a CRC-32 checksum (as current AWS
//!    SDKs and the CLI do by default), which `compress` copies inside the
//!    store without reading, and on the same objects uploaded without one,
//!    which it copies and reads for their CRC-32.
//!
//! wasq's figure is the processor's handle time for the job as `wasq run`
//! reports it in `/metrics` (all reads, the archive, its upload, the link);
//! its peak RSS is the host process's `VmHWM`. The proxy's own ceiling is
//! measured first: one GET of 256 MiB directly and through the proxy with
//! no delay.
//!
//! Two more cases show where the limits are: `proxy` (N GETs of 16 MiB at
//! once through the capped proxy: the proxy scales with connections) and
//! `parts` (the S3 store alone reading, writing, and both at once).
//!
//! Settings: `WASQ_BENCH_RTT_MS` (20), `WASQ_BENCH_SMALL` (800),
//! `WASQ_BENCH_LARGE_MIB` (256), `WASQ_BENCH_CAP_MBPS` (40),
//! `WASQ_BENCH_CASES` (`small,large`; also `proxy`, `parts`),
//! `WASQ_BENCH_LEVEL` (compress's deflate level, 6), `WASQ_BENCH_HOST_LOG`
//! (the host's log filter), `WASQ_BENCH_PARTS_DIRECT` (the `parts` case
//! without the proxy).

#[path = "../../tests/shared.rs"]
#[allow(dead_code)]
mod shared;
use shared::{cpu_seconds, noise};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// SeaweedFS of the benchmark's own, started by `tests/seaweedfs.py`.
struct Seaweed {
    endpoint: String,
    access: String,
    secret: String,
    pid: i32,
    _dir: tempfile::TempDir,
}

impl Seaweed {
    fn start() -> anyhow::Result<Seaweed> {
        let venv = repo().join(".venv/bin");
        anyhow::ensure!(
            venv.join("weed").exists(),
            "{} is missing: run `bash tests/run.sh` once",
            venv.join("weed").display()
        );
        let dir = tempfile::tempdir()?;
        let out = Command::new(venv.join("python"))
            .arg(repo().join("tests/seaweedfs.py"))
            .arg(venv.join("weed"))
            .arg(dir.path())
            .stderr(Stdio::inherit())
            .output()?;
        let text = String::from_utf8(out.stdout)?;
        let parts: Vec<&str> = text.split_whitespace().collect();
        anyhow::ensure!(parts.len() == 4, "SeaweedFS did not start: {text}");
        Ok(Seaweed {
            endpoint: parts[0].into(),
            access: parts[1].into(),
            secret: parts[2].into(),
            pid: parts[3].parse()?,
            _dir: dir,
        })
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        // SeaweedFS takes its time over SIGTERM; nothing of it is kept.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.pid)])
            .status();
    }
}

/// A loopback TCP proxy that delays every chunk by `delay` in each
/// direction, as a line of that latency would (a delay line: later chunks
/// are read while earlier ones wait), and optionally caps each
/// connection's bandwidth in each direction.
async fn proxy(
    target: std::net::SocketAddr,
    delay: Duration,
    cap: Option<u64>,
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::join!(pump(cr, sw, delay, cap), pump(sr, cw, delay, cap));
            });
        }
    });
    addr
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    cap: Option<u64>,
) {
    // Up to 16 MiB in flight on the line, as a socket's buffers would hold.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(256);
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = tokio::time::Instant::now() + delay;
                    if tx.send((due, buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        let mut free_at = tokio::time::Instant::now();
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if let Some(bytes_per_sec) = cap {
                // A token bucket: the line is busy until `free_at`. Waiting
                // for every chunk would round each wait up to the timer's
                // millisecond and cap far below the rate, so the writer
                // waits only once it is a few milliseconds ahead.
                let now = tokio::time::Instant::now();
                free_at = free_at.max(now)
                    + Duration::from_secs_f64(chunk.len() as f64 / bytes_per_sec as f64);
                if free_at > now + Duration::from_millis(5) {
                    tokio::time::sleep_until(free_at).await;
                }
            }
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

fn s3_client(endpoint: &str, seaweed: &Seaweed) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        // Objects get a checksum only where the benchmark asks for one.
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            &seaweed.access,
            &seaweed.secret,
            None,
            None,
            "bench",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Deterministic text that deflates about as well as documents do.
fn text(len: usize, seed: u64) -> Vec<u8> {
    let words = [
        "queue",
        "archive",
        "object",
        "latency",
        "the",
        "of",
        "a",
        "processor",
        "host",
        "signed",
        "link",
        "record",
        "message",
        "batch",
        "retry",
    ];
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(words[(state % words.len() as u64) as usize].as_bytes());
        out.push(if state.is_multiple_of(11) {
            b'\n'
        } else {
            b' '
        });
    }
    out.truncate(len);
    out
}

/// Seconds one thread takes to deflate the case's objects at `level`, each
/// on its own as the host deflates a chunk: the best of three.
fn deflate_seconds(count: usize, level: u32) -> f64 {
    use std::io::Write;
    let objects: Vec<Vec<u8>> = (0..count).map(|i| text(64 * 1024, i as u64)).collect();
    (0..3)
        .map(|_| {
            let started = Instant::now();
            for object in &objects {
                let mut encoder = flate2::write::DeflateEncoder::new(
                    Vec::with_capacity(object.len()),
                    flate2::Compression::new(level),
                );
                encoder.write_all(object).expect("deflating to memory");
                std::hint::black_box(encoder.finish().expect("deflating to memory"));
            }
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// The time a Python script prints as its last line, in seconds.
fn python(script: &str, args: &[&str], seaweed: &Seaweed) -> anyhow::Result<f64> {
    let out = Command::new(repo().join(".venv/bin/python"))
        .arg("-c")
        .arg(script)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", &seaweed.access)
        .env("AWS_SECRET_ACCESS_KEY", &seaweed.secret)
        .env_remove("AWS_SESSION_TOKEN")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .stderr(Stdio::inherit())
        .output()?;
    anyhow::ensure!(out.status.success(), "the Python baseline failed");
    let text = String::from_utf8(out.stdout)?;
    Ok(text.trim().lines().last().unwrap_or("").parse()?)
}

const ZIP_SCRIPT: &str = r#"
import boto3, io, sys, time, zipfile, tempfile, os
from botocore.config import Config
from concurrent.futures import ThreadPoolExecutor
endpoint, bucket, out_bucket, count, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}, max_pool_connections=max(threads, 10)))
keys = [f"small/{i:04}.txt" for i in range(count)]
started = time.perf_counter()
def fetch(key):
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
if threads > 1:
    with ThreadPoolExecutor(threads) as pool:
        bodies = list(pool.map(fetch, keys))
else:
    bodies = [fetch(key) for key in keys]
with tempfile.NamedTemporaryFile(suffix=".zip", delete=False) as f:
    path = f.name
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as z:
    for key, body in zip(keys, bodies):
        z.writestr(key.split("/")[-1], body)
s3.upload_file(path, out_bucket, f"python-{threads}.zip")
os.unlink(path)
print(time.perf_counter() - started)
"#;

const DOWNLOAD_SCRIPT: &str = r#"
import boto3, sys, time, tempfile, os
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
endpoint, bucket = sys.argv[1], sys.argv[2]
keys = sys.argv[3:]
s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}, max_pool_connections=16))
config = TransferConfig(max_concurrency=8)
started = time.perf_counter()
for key in keys:
    with tempfile.NamedTemporaryFile(delete=False) as f:
        path = f.name
    s3.download_file(bucket, key, path, Config=config)
    os.unlink(path)
print(time.perf_counter() - started)
"#;

/// One job through `wasq run`: its handle time and the host's peak RSS.
struct WasqRun {
    seconds: f64,
    peak_rss_kib: u64,
    /// CPU seconds (user + system) spent while the job ran: by the host,
    /// by SeaweedFS, and by this process (the proxy).
    cpu: [f64; 3],
}

/// The CPU seconds of every process in SeaweedFS's process group.
fn seaweed_cpu(seaweed: &Seaweed) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(2)?.parse::<i32>().ok()
                })
                == Some(seaweed.pid)
        })
        .map(|pid| cpu_seconds(&pid))
        .sum()
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).ok()?;
    Some(out)
}

fn wasq_job(
    seaweed: &Seaweed,
    endpoint: &str,
    job: &serde_json::Value,
    grants: &str,
) -> anyhow::Result<WasqRun> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::write(dir.path().join("wasq.toml"), grants)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let wasq = env!("CARGO_BIN_EXE_wasq");
    let created = Command::new(wasq)
        .env("WASQ_DATA_DIR", &data)
        .args(["queue", "create", "bench", "--visibility-timeout", "10m"])
        .output()?;
    anyhow::ensure!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let sent = Command::new(wasq)
        .env("WASQ_DATA_DIR", &data)
        .args(["send", "local://bench", "--body", &job.to_string()])
        .output()?;
    anyhow::ensure!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let mut host: Child = Command::new(wasq)
        .current_dir(dir.path())
        .env("WASQ_DATA_DIR", &data)
        .env("AWS_ACCESS_KEY_ID", &seaweed.access)
        .env("AWS_SECRET_ACCESS_KEY", &seaweed.secret)
        .env_remove("AWS_SESSION_TOKEN")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env(
            "WASQ_LOG",
            std::env::var("WASQ_BENCH_HOST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .args(["--endpoint-url", endpoint, "--s3-path-style"])
        .args(["run", "--queue", "local://bench", "--blob-store", "s3"])
        .args(["--listen", &listen.to_string(), "--timeout", "5m"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let started = Instant::now();
    let cpu_before = [0.0, seaweed_cpu(seaweed), cpu_seconds("self")];
    let seconds = loop {
        std::thread::sleep(Duration::from_millis(20));
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the job did not finish"
        );
        if let Some(status) = host.try_wait()? {
            anyhow::bail!("wasq run stopped before the job was done: {status}");
        }
        let Some(text) = http_get(listen, "/metrics") else {
            continue;
        };
        let done = metric(&text, "wasq_messages_done_total").unwrap_or(0.0)
            + metric(&text, "wasq_messages_dead_lettered_total").unwrap_or(0.0)
            + metric(&text, "wasq_messages_retried_total").unwrap_or(0.0);
        if done >= 1.0 {
            anyhow::ensure!(
                metric(&text, "wasq_messages_done_total") == Some(1.0),
                "the job did not finish done:\n{text}"
            );
            break metric(&text, "wasq_handle_duration_seconds_sum").unwrap_or(f64::NAN);
        }
    };
    let cpu_after = [
        cpu_seconds(&host.id().to_string()),
        seaweed_cpu(seaweed),
        cpu_seconds("self"),
    ];
    let status = std::fs::read_to_string(format!("/proc/{}/status", host.id()))?;
    let peak_rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let _ = Command::new("kill")
        .args(["-TERM", &host.id().to_string()])
        .status();
    host.wait()?;
    Ok(WasqRun {
        seconds,
        peak_rss_kib,
        cpu: std::array::from_fn(|i| cpu_after[i] - cpu_before[i]),
    })
}

/// Writes `data` to `target` in 1 MiB writes, as a processor would.
async fn write_all(
    blobs: &wasq::blobs::S3Blobs,
    target: &wasq::blobs::BlobUri,
    data: &[u8],
    budget: &wasq::blobs::Budget,
) -> anyhow::Result<()> {
    use wasq::blobs::BlobStore as _;
    let mut writer = blobs
        .create(
            target,
            wasq::blobs::CreateOptions {
                content_type: None,
                overwrite: true,
                owner: "bench",
                budget,
            },
        )
        .await?;
    for chunk in data.chunks(1 << 20) {
        writer.write(chunk.to_vec()).await?;
    }
    writer.finish().await?;
    Ok(())
}

fn grants(read: &str, write: &str) -> String {
    let level = std::env::var("WASQ_BENCH_LEVEL").unwrap_or_else(|_| "6".into());
    format!(
        "[plugins.compress.blobs]\nread = [\"s3://{read}/\"]\nwrite = [\"s3://{write}/\"]\n[plugins.compress.records]\ntables = [\"archives\"]\n[plugins.compress.config]\nlevel = \"{level}\"\n"
    )
}

fn main() -> anyhow::Result<()> {
    let rtt = Duration::from_millis(setting("WASQ_BENCH_RTT_MS", 20));
    let small = setting("WASQ_BENCH_SMALL", 800) as usize;
    let large_mib = setting("WASQ_BENCH_LARGE_MIB", 256) as usize;
    let cap = setting("WASQ_BENCH_CAP_MBPS", 40) * 1_000_000;
    let cases = std::env::var("WASQ_BENCH_CASES").unwrap_or_else(|_| "small,large".into());
    let seaweed = Seaweed::start()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let target: std::net::SocketAddr = seaweed.endpoint.trim_start_matches("http://").parse()?;
    let direct = s3_client(&seaweed.endpoint, &seaweed);
    let tag = format!("b{}", std::process::id());
    let (docs, archives, big) = (
        format!("{tag}-docs"),
        format!("{tag}-archives"),
        format!("{tag}-big"),
    );
    println!(
        "SeaweedFS at {}; round trip {:?} through the proxy",
        seaweed.endpoint, rtt
    );

    runtime.block_on(async {
        for bucket in [&docs, &archives, &big] {
            direct.create_bucket().bucket(bucket).send().await?;
            // SeaweedFS gives a bucket its storage at the first write, which
            // takes about a second; whoever wrote to the archive bucket first
            // would pay it. One object in each, beforehand, keeps it out of
            // every contender's time.
            direct
                .put_object()
                .bucket(bucket)
                .key("warm-up")
                .body(vec![0u8; 1 << 20].into())
                .send()
                .await?;
        }
        anyhow::Ok(())
    })?;

    if cases.contains("small") {
        runtime.block_on(async {
            for start in (0..small).step_by(32) {
                let mut uploads = tokio::task::JoinSet::new();
                for i in start..(start + 32).min(small) {
                    let (client, docs) = (direct.clone(), docs.clone());
                    uploads.spawn(async move {
                        client
                            .put_object()
                            .bucket(docs)
                            .key(format!("small/{i:04}.txt"))
                            .body(text(64 * 1024, i as u64).into())
                            .send()
                            .await
                    });
                }
                while let Some(done) = uploads.join_next().await {
                    done??;
                }
            }
            anyhow::Ok(())
        })?;
        let delayed = runtime.block_on(proxy(target, rtt / 2, None));
        let endpoint = format!("http://{delayed}");
        let files: Vec<String> = (0..small)
            .map(|i| format!("s3://{docs}/small/{i:04}.txt"))
            .collect();
        let job = serde_json::json!({"job_id": "small", "files": files, "output": format!("s3://{archives}/small.zip")});
        let wasq = wasq_job(&seaweed, &endpoint, &job, &grants(&docs, &archives))?;
        let count = small.to_string();
        let pool = python(
            ZIP_SCRIPT,
            &[&endpoint, &docs, &archives, &count, "32"],
            &seaweed,
        )?;
        let sequential = python(
            ZIP_SCRIPT,
            &[&endpoint, &docs, &archives, &count, "1"],
            &seaweed,
        )?;
        println!("\ncase 1: {small} objects of 64 KiB -> one archive, {rtt:?} round trip");
        println!("  {:<38} {:>8} {:>12}", "", "seconds", "objects/s");
        for (what, seconds) in [
            ("wasq run (compress)", wasq.seconds),
            ("boto3 ThreadPoolExecutor(32)", pool),
            ("boto3, one GET at a time", sequential),
        ] {
            println!(
                "  {what:<38} {seconds:>8.3} {:>12.0}",
                small as f64 / seconds
            );
        }
        println!(
            "  wasq / 32-thread boto3: {:.2}x; wasq peak RSS {} MiB",
            pool / wasq.seconds,
            wasq.peak_rss_kib / 1024
        );
        println!(
            "  CPU seconds while wasq ran: host {:.2} (from its start), SeaweedFS {:.2}, proxy {:.2}",
            wasq.cpu[0], wasq.cpu[1], wasq.cpu[2]
        );
        // What no client that deflates these objects can beat here: the
        // deflate itself, on one otherwise idle core, plus what the server
        // and the proxy took, spread over every core.
        let level = setting("WASQ_BENCH_LEVEL", 6) as u32;
        let deflate = deflate_seconds(small, level);
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let floor = (deflate + wasq.cpu[1] + wasq.cpu[2]) / cores as f64;
        println!(
            "  the floor on {cores} cores: deflating the objects at level {level} takes one core {deflate:.2} s (zlib-rs); with the server's and proxy's CPU, no job that deflates them ends under {floor:.2} s ({:.0} objects/s)",
            small as f64 / floor
        );
    }

    if cases.contains("large") {
        let size = large_mib << 20;
        runtime.block_on(async {
            // The same two objects twice: with the CRC-32 checksum that
            // current AWS SDKs and the CLI upload by default, and without.
            for (i, name) in ["one.mp4", "two.mp4"].iter().enumerate() {
                for (prefix, crc32) in [("large", true), ("bare", false)] {
                    direct
                        .put_object()
                        .bucket(&big)
                        .key(format!("{prefix}/{name}"))
                        .set_checksum_algorithm(
                            crc32.then_some(aws_sdk_s3::types::ChecksumAlgorithm::Crc32),
                        )
                        .body(noise(size, 10 + i as u64).into())
                        .send()
                        .await?;
                }
            }
            anyhow::Ok(())
        })?;
        // The proxy's own ceiling: one GET of a large object, directly and
        // through the proxy with no delay and no cap.
        let ceiling = |endpoint: String| -> anyhow::Result<f64> {
            let client = s3_client(&endpoint, &seaweed);
            runtime.block_on(async {
                let started = Instant::now();
                let body = client
                    .get_object()
                    .bucket(&big)
                    .key("large/one.mp4")
                    .send()
                    .await?
                    .body
                    .collect()
                    .await?;
                Ok(body.into_bytes().len() as f64 / started.elapsed().as_secs_f64() / 1e6)
            })
        };
        let plain = runtime.block_on(proxy(target, Duration::ZERO, None));
        let direct_mbps = ceiling(seaweed.endpoint.clone())?;
        let proxied_mbps = ceiling(format!("http://{plain}"))?;
        println!(
            "\nthe proxy's ceiling, one {large_mib} MiB GET: direct {direct_mbps:.0} MB/s, through the proxy (no delay) {proxied_mbps:.0} MB/s"
        );

        let capped = runtime.block_on(proxy(target, rtt / 2, Some(cap)));
        let endpoint = format!("http://{capped}");
        let job = serde_json::json!({
            "job_id": "large",
            "files": [format!("s3://{big}/large/one.mp4"), format!("s3://{big}/large/two.mp4")],
            "output": format!("s3://{archives}/large.zip"),
        });
        let wasq = wasq_job(&seaweed, &endpoint, &job, &grants(&big, &archives))?;
        let bare_job = serde_json::json!({
            "job_id": "bare",
            "files": [format!("s3://{big}/bare/one.mp4"), format!("s3://{big}/bare/two.mp4")],
            "output": format!("s3://{archives}/bare.zip"),
        });
        let bare = wasq_job(&seaweed, &endpoint, &bare_job, &grants(&big, &archives))?;
        let boto = python(
            DOWNLOAD_SCRIPT,
            &[&endpoint, &big, "large/one.mp4", "large/two.mp4"],
            &seaweed,
        )?;
        let total = 2.0 * size as f64 / 1e6;
        println!(
            "\ncase 2: two {large_mib} MiB objects, stored, {} MB/s per connection, {rtt:?} round trip",
            cap / 1_000_000
        );
        println!("  {:<38} {:>8} {:>12}", "", "seconds", "MB/s");
        for (what, seconds) in [
            ("wasq run, objects with CRC-32s", wasq.seconds),
            ("wasq run, objects without", bare.seconds),
            ("boto3 download_file(max_concurrency=8)", boto),
        ] {
            println!("  {what:<38} {seconds:>8.3} {:>12.0}", total / seconds);
        }
        println!(
            "  wasq / boto3 parallel download: {:.2}x with CRC-32s, {:.2}x without; wasq peak RSS {} / {} MiB",
            boto / wasq.seconds,
            boto / bare.seconds,
            wasq.peak_rss_kib / 1024,
            bare.peak_rss_kib / 1024
        );
    }
    if cases.contains("proxy") {
        // The proxy's own scaling with the cap: N GETs of 16 MiB at once.
        let capped = runtime.block_on(proxy(target, rtt / 2, Some(cap)));
        let client = s3_client(&format!("http://{capped}"), &seaweed);
        runtime.block_on(async {
            direct
                .put_object()
                .bucket(&big)
                .key("proxy/16m.bin")
                .body(noise(16 << 20, 5).into())
                .send()
                .await?;
            for n in [1usize, 2, 4, 8] {
                let started = Instant::now();
                let mut gets = tokio::task::JoinSet::new();
                for _ in 0..n {
                    let (client, big) = (client.clone(), big.clone());
                    gets.spawn(async move {
                        let out = client
                            .get_object()
                            .bucket(big)
                            .key("proxy/16m.bin")
                            .send()
                            .await?;
                        out.body.collect().await?;
                        anyhow::Ok(())
                    });
                }
                while let Some(done) = gets.join_next().await {
                    done??;
                }
                println!(
                    "proxy, {n} GETs of 16 MiB at once: {:.0} MB/s in all",
                    (n * (16 << 20)) as f64 / started.elapsed().as_secs_f64() / 1e6
                );
            }
            anyhow::Ok(())
        })?;
    }
    if cases.contains("parts") {
        // The S3 store's own legs, without the processor: one large object
        // read through a reader, and written through a writer, at the
        // default buffer budget.
        let size = large_mib << 20;
        let capped = runtime.block_on(proxy(target, rtt / 2, Some(cap)));
        let config = runtime.block_on(
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .credentials_provider(aws_sdk_s3::config::Credentials::new(
                    &seaweed.access,
                    &seaweed.secret,
                    None,
                    None,
                    "bench",
                ))
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                .endpoint_url(if std::env::var_os("WASQ_BENCH_PARTS_DIRECT").is_some() {
                    seaweed.endpoint.clone()
                } else {
                    format!("http://{capped}")
                })
                .load(),
        );
        let blobs = wasq::blobs::S3Blobs::new(&config, true);
        runtime.block_on(async {
            use wasq::blobs::BlobStore;
            direct
                .put_object()
                .bucket(&big)
                .key("parts/source.bin")
                .body(noise(size, 3).into())
                .send()
                .await?;
            let budget = wasq::blobs::Budget::default();
            let uri = wasq::blobs::BlobUri::parse(&format!("s3://{big}/parts/source.bin"))?;
            let started = Instant::now();
            let mut reader = blobs.open(&uri, &budget).await?;
            let mut total = 0;
            loop {
                let chunk = reader.read(1 << 20).await?;
                if chunk.is_empty() {
                    break;
                }
                total += chunk.len();
            }
            let read = started.elapsed().as_secs_f64();
            let target = wasq::blobs::BlobUri::parse(&format!("s3://{big}/parts/copy.bin"))?;
            let data = noise(size, 4);
            let started = Instant::now();
            write_all(&blobs, &target, &data, &budget).await?;
            let write = started.elapsed().as_secs_f64();
            // Both at once, as a job that copies does.
            let started = Instant::now();
            let copy = wasq::blobs::BlobUri::parse(&format!("s3://{big}/parts/both.bin"))?;
            let reading = async {
                let mut reader = blobs.open(&uri, &budget).await?;
                while !reader.read(1 << 20).await?.is_empty() {}
                anyhow::Ok(())
            };
            let writing = write_all(&blobs, &copy, &data, &budget);
            let (r, w) = tokio::join!(reading, writing);
            r?;
            w?;
            let both = started.elapsed().as_secs_f64();
            println!(
                "the S3 store reading and writing {large_mib} MiB at once: {:.0} MB/s each way",
                size as f64 / both / 1e6
            );
            println!(
                "
the S3 store alone, {large_mib} MiB, {} MB/s per connection: read {:.0} MB/s, write {:.0} MB/s",
                cap / 1_000_000,
                total as f64 / read / 1e6,
                size as f64 / write / 1e6
            );
            anyhow::Ok(())
        })?;
    }
    drop(seaweed);
    Ok(())
}
