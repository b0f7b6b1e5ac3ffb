//! Benchmarks for the runtime, run with `cargo bench -p wasq --bench runtime`.
//! Figures and method are recorded in docs/PERFORMANCE.md.
//!
//! 1. Instantiate + `handle` of a no-op processor: p50, p99, mean.
//! 2. Archive throughput: guest-compress in the sandbox, the same archive
//!    code run natively in the host, and Info-ZIP's `zip` at the same level,
//!    all on the same inputs.
//!
//! `WASQ_BENCH_COMPRESS=path.wasm` benchmarks another build of the archive
//! processor (for example one with the miniz_oxide deflate backend).
//! `WASQ_BENCH_MB` sets the archive input size (default 256).

#[path = "../../tests/shared.rs"]
#[allow(dead_code)]
mod shared;

use guest_compress::archive::{
    self, InlineDeflated, ObjectInfo, ObjectReader, ObjectWriter, Settings, Store, StoreError,
};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use wasq::backends::LocalEnv;
use wasq::runtime::{Limits, LogSink, Message, Outcome, PluginSource};

fn main() -> anyhow::Result<()> {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let runtime = shared::engine(128)?;
    let scratch = tempfile::tempdir()?;
    let env = LocalEnv {
        data_dir: scratch.path().join("data"),
        blobs_root: scratch.path().join("blobs"),
        link_base: "http://127.0.0.1:8080".into(),
        reserve: wasq::blobs::DEFAULT_RESERVE,
    };
    let (_blobs, services) = env.open()?;

    // 1. No-op processor.
    let rogue = std::fs::read(wasq_test_guests::ROGUE)?;
    // It also reads through the blobs interface below: every bucket.
    let noop = runtime
        .load(
            "rogue",
            PluginSource::File(wasq_test_guests::ROGUE.into()),
            &rogue,
            Limits::default(),
            BTreeMap::new(),
        )?
        .with_grants(wasq::runtime::Grants::everything());
    let noop_message = message("noop", "noop");
    let plugin_name = noop.name().clone();
    let sink = LogSink::new(plugin_name, "noop".into(), false);
    let mut samples = Vec::with_capacity(20_000);
    tokio.block_on(async {
        for i in 0..22_000 {
            let started = Instant::now();
            let run = runtime
                .run(&noop, &services, &noop_message, sink.clone())
                .await;
            let took = started.elapsed();
            assert_eq!(run.outcome, Outcome::Done(None));
            if i >= 2_000 {
                samples.push(took);
            }
        }
    });
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "noop instantiate+handle: p50 {:.1} µs, p99 {:.1} µs, mean {:.1} µs ({} runs)",
        micros(samples[samples.len() / 2]),
        micros(samples[samples.len() * 99 / 100]),
        micros(mean),
        samples.len()
    );

    // 2. Archive throughput on one input set.
    let megabytes: usize = std::env::var("WASQ_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let inputs = seed_inputs(&env.blobs_root, megabytes << 20)?;
    let input_bytes: u64 = inputs
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let uris: Vec<String> = inputs
        .iter()
        .map(|p| format!("s3://docs/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    let job =
        serde_json::json!({"job_id": "bench", "files": uris, "output": "s3://archives/bench.zip"})
            .to_string();
    let rounds = 5;

    let (compress_wasm, compress_source) = match std::env::var_os("WASQ_BENCH_COMPRESS") {
        Some(path) => (std::fs::read(&path)?, PluginSource::File(path.into())),
        None => {
            let code = wasq::runtime::plugins::find("compress", None)?;
            (code.wasm.into_owned(), code.source)
        }
    };
    let limits = Limits {
        timeout: Duration::from_secs(600),
        ..Limits::default()
    };
    // Every bucket, and the same archive replaced round after round.
    let compress = runtime
        .load(
            "compress",
            compress_source.clone(),
            &compress_wasm,
            limits,
            BTreeMap::new(),
        )?
        .with_grants(wasq::runtime::Grants {
            overwrite: true,
            overwrite_records: true,
            ..wasq::runtime::Grants::everything()
        });
    let mut peak = 0;
    let mut archive_size = 0;
    let guest = best_of(rounds, || {
        let run = tokio.block_on(runtime.run(
            &compress,
            &services,
            &message("bench", &job),
            LogSink::new("compress".into(), "bench".into(), false),
        ));
        match &run.outcome {
            Outcome::Done(Some(result)) => {
                let result: serde_json::Value = serde_json::from_str(result).unwrap();
                archive_size = result["size"].as_u64().unwrap();
            }
            other => panic!("the archive job failed: {other:?}"),
        }
        peak = run.usage.peak_memory;
    });

    // The host's share: the same bytes read through the blobs interface by a
    // processor that does nothing else with them.
    let read_through = best_of(rounds, || {
        for uri in &uris {
            let run = tokio.block_on(runtime.run(
                &noop,
                &services,
                &message("read", &format!("open {uri}")),
                LogSink::new("rogue".into(), "read".into(), false),
            ));
            assert!(matches!(run.outcome, Outcome::Done(_)), "{:?}", run.outcome);
        }
    });

    let native_store = NativeStore {
        root: env.blobs_root.clone(),
    };
    let native = best_of(rounds, || {
        archive::run(&native_store, &job, &Settings::default())
            .expect("the native archive job runs");
    });

    let info_zip_out = scratch.path().join("info-zip.zip");
    let info_zip = Command::new("zip")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success())
        .then(|| {
            best_of(rounds, || {
                let _ = std::fs::remove_file(&info_zip_out);
                let status = Command::new("zip")
                    .args(["-6", "-q", "-j", "-n", ".jpg:.png:.gz:.zip:.mp4"])
                    .arg(&info_zip_out)
                    .args(&inputs)
                    .status()
                    .expect("zip runs");
                assert!(status.success());
                File::open(&info_zip_out)
                    .and_then(|f| f.sync_all())
                    .unwrap();
            })
        });

    let rate = |d: Duration| input_bytes as f64 / d.as_secs_f64() / 1e6;
    println!(
        "archive of {:.0} MB ({} files) -> {:.0} MB, best of {rounds}, {}:",
        input_bytes as f64 / 1e6,
        inputs.len(),
        archive_size as f64 / 1e6,
        compress_source
    );
    println!(
        "  guest-compress in wasq:  {:>7.1} MB/s  ({:.2} s, guest peak memory {:.1} MiB)",
        rate(guest),
        guest.as_secs_f64(),
        peak as f64 / (1 << 20) as f64
    );
    println!(
        "  same code, native:       {:>7.1} MB/s  ({:.2} s)  guest/native = {:.2}",
        rate(native),
        native.as_secs_f64(),
        native.as_secs_f64() / guest.as_secs_f64()
    );
    println!(
        "  reading the inputs only:  {:>7.1} MB/s  ({:.2} s, the host's read path alone)",
        rate(read_through),
        read_through.as_secs_f64()
    );
    match info_zip {
        Some(d) => println!(
            "  Info-ZIP zip -6:         {:>7.1} MB/s  ({:.2} s)  guest/zip = {:.2}",
            rate(d),
            d.as_secs_f64(),
            d.as_secs_f64() / guest.as_secs_f64()
        ),
        None => println!("  Info-ZIP zip: not installed (apt-get install zip), comparison not run"),
    }
    Ok(())
}

fn message(id: &str, body: &str) -> Message {
    Message {
        id: id.into(),
        body: body.into(),
        attributes: Vec::new(),
        receive_count: 1,
        sent_at_ms: 0,
        group_id: None,
        queue: "bench".into(),
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn best_of(rounds: usize, mut work: impl FnMut()) -> Duration {
    (0..rounds)
        .map(|_| {
            let started = Instant::now();
            work();
            started.elapsed()
        })
        .min()
        .expect("at least one round")
}

/// A mixed input set of about `total` bytes: half log-like text, a quarter
/// CSV, a quarter already-compressed noise (stored, as both tools do).
fn seed_inputs(root: &Path, total: usize) -> std::io::Result<Vec<PathBuf>> {
    let docs = root.join("docs");
    std::fs::create_dir_all(&docs)?;
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut paths = Vec::new();
    for i in 0..4 {
        let path = docs.join(format!("server-{i}.log"));
        let mut out = std::io::BufWriter::new(File::create(&path)?);
        let mut written = 0;
        while written < total / 8 {
            let r = next();
            let line = format!(
                "2026-11-27T04:{:02}:{:02}.{:03}Z INFO request id={:016x} path=/api/v1/items/{} status={} took={}ms\n",
                r % 60,
                (r >> 8) % 60,
                (r >> 16) % 1000,
                r,
                (r >> 24) % 5000,
                [200, 200, 200, 404, 500][(r >> 40) as usize % 5],
                (r >> 48) % 900
            );
            out.write_all(line.as_bytes())?;
            written += line.len();
        }
        paths.push(path);
    }
    for i in 0..2 {
        let path = docs.join(format!("table-{i}.csv"));
        let mut out = std::io::BufWriter::new(File::create(&path)?);
        let mut written = 0;
        while written < total / 8 {
            let r = next();
            let line = format!(
                "{},{},{:.2},region-{}\n",
                r % 100_000,
                (r >> 20) % 1000,
                ((r >> 30) % 100_000) as f64 / 100.0,
                (r >> 50) % 12
            );
            out.write_all(line.as_bytes())?;
            written += line.len();
        }
        paths.push(path);
    }
    for i in 0..2 {
        let path = docs.join(format!("photo-{i}.jpg"));
        let mut out = std::io::BufWriter::new(File::create(&path)?);
        for _ in 0..total / 8 / 8 {
            out.write_all(&next().to_le_bytes())?;
        }
        paths.push(path);
    }
    Ok(paths)
}

/// The archive code's store, over plain files, for the native run.
struct NativeStore {
    root: PathBuf,
}

impl NativeStore {
    fn path(&self, uri: &str) -> PathBuf {
        self.root.join(uri.trim_start_matches("s3://"))
    }
}

struct NativeReader(File);
struct NativeWriter(File, String);

impl ObjectReader for NativeReader {
    fn read(&mut self, max: u32) -> Result<Vec<u8>, StoreError> {
        let mut chunk = vec![0; max as usize];
        let mut filled = 0;
        while filled < chunk.len() {
            match self.0.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) => return Err(StoreError::Unavailable(err.to_string())),
            }
        }
        chunk.truncate(filled);
        Ok(chunk)
    }
}

impl ObjectWriter for NativeWriter {
    fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.0
            .write_all(chunk)
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    fn finish(self) -> Result<ObjectInfo, StoreError> {
        self.0
            .sync_all()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let size = self
            .0
            .metadata()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
            .len();
        Ok(ObjectInfo {
            uri: self.1,
            size,
            content_type: None,
        })
    }
}

impl Store for NativeStore {
    type Reader = NativeReader;
    type Writer = NativeWriter;
    type Deflated = InlineDeflated<NativeReader>;

    fn stat(&self, uri: &str) -> Result<ObjectInfo, StoreError> {
        let meta =
            std::fs::metadata(self.path(uri)).map_err(|e| StoreError::NotFound(e.to_string()))?;
        Ok(ObjectInfo {
            uri: uri.into(),
            size: meta.len(),
            content_type: None,
        })
    }

    fn open(&self, uri: &str) -> Result<NativeReader, StoreError> {
        File::open(self.path(uri))
            .map(NativeReader)
            .map_err(|e| StoreError::NotFound(e.to_string()))
    }

    fn create(&self, uri: &str, _: Option<&str>) -> Result<NativeWriter, StoreError> {
        let path = self.path(uri);
        std::fs::create_dir_all(path.parent().unwrap())
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let file = File::create(path).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(NativeWriter(file, uri.into()))
    }

    fn presign_get(&self, uri: &str, _: u32) -> Result<String, StoreError> {
        Ok(format!("file://{}", self.path(uri).display()))
    }

    fn put_record(&self, _: &str, _: &str, _: &str) -> Result<(), String> {
        Ok(())
    }

    fn info(&self, _: &str) {}

    fn deflate(&self, reader: NativeReader, level: u32) -> Result<Self::Deflated, StoreError> {
        Ok(InlineDeflated::new(reader, level))
    }
}
