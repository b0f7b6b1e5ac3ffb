//! Start-up and reload costs, run with `cargo bench -p wasq --bench
//! startup` after `examples/build.sh`. Figures and method are recorded in
//! docs/PERFORMANCE.md.
//!
//! 1. From spawning `wasq run` to its first message done, with a cold
//!    compile cache (an empty directory each run) and with a warm one, for
//!    processors from 50 KB (Rust) to 18 MB (Python).
//! 2. What a reload costs once a changed file is seen: finding the code,
//!    compiling it (new content misses the cache) and linking it, in
//!    process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wasq::runtime::plugins::PluginSources;
use wasq::runtime::{EngineOptions, LimitSettings, Runtime};

struct Case {
    label: &'static str,
    plugin: String,
    body: &'static str,
}

fn examples_dir() -> PathBuf {
    std::env::var_os("WASQ_EXAMPLES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("../examples"))
}

fn example(name: &str) -> anyhow::Result<String> {
    let path = examples_dir().join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: run examples/build.sh first",
        path.display()
    );
    Ok(path.display().to_string())
}

fn main() -> anyhow::Result<()> {
    let cases = [
        Case {
            label: "rogue (Rust, 0.1 MB)",
            plugin: wasq_test_guests::ROGUE.to_string(),
            body: "noop",
        },
        Case {
            label: "compress (built-in Rust, 0.4 MB)",
            plugin: "compress".into(),
            body: r#"{"job_id":"s","files":["s3://docs/notes.md"],"output":"s3://archives/s.zip"}"#,
        },
        Case {
            label: "wordcount (JavaScript, 12 MB)",
            plugin: example("wordcount-js.wasm")?,
            body: r#"{"uri":"s3://docs/notes.md"}"#,
        },
        Case {
            label: "wordcount (Python, 18 MB)",
            plugin: example("wordcount-py.wasm")?,
            body: r#"{"uri":"s3://docs/notes.md"}"#,
        },
    ];
    let cold_runs = 3;
    let warm_runs = 10;
    for case in &cases {
        let mut cold = Vec::new();
        for _ in 0..cold_runs {
            let cache = tempfile::tempdir()?;
            cold.push(startup(case, cache.path())?);
        }
        let cache = tempfile::tempdir()?;
        startup(case, cache.path())?;
        let mut warm = Vec::new();
        for _ in 0..warm_runs {
            warm.push(startup(case, cache.path())?);
        }
        println!(
            "{}: start to first message done, cold cache {} | warm cache {}",
            case.label,
            summary(&mut cold),
            summary(&mut warm)
        );
    }

    // Reload: the work between seeing a changed file and swapping it in.
    // New content always misses the cache, so each load compiles.
    let cache = tempfile::tempdir()?;
    let runtime = Runtime::new(EngineOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        ..EngineOptions::default()
    })?;
    let plugins = tempfile::tempdir()?;
    for case in &cases {
        let source = if case.plugin.ends_with(".wasm") {
            PathBuf::from(&case.plugin)
        } else {
            continue;
        };
        let mut wasm = std::fs::read(&source)?;
        let file = plugins.path().join("p.wasm");
        let mut samples = Vec::new();
        for round in 0..3u8 {
            // A custom section makes new content without changing the code.
            wasm.extend_from_slice(&[0, 2, 1, b'r' + round]);
            std::fs::write(&file, &wasm)?;
            let started = Instant::now();
            let code = PluginSources::in_dir(Some(plugins.path().to_path_buf())).find("p")?;
            runtime.load_code(&code, &LimitSettings::default(), &Default::default())?;
            samples.push(started.elapsed());
        }
        println!(
            "{}: reload of changed content (find, compile, link) {}",
            case.label,
            summary(&mut samples)
        );
    }
    Ok(())
}

fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "median {:.1} ms (min {:.1}, max {:.1}, {} runs)",
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
        samples.len()
    )
}

/// Spawns the release `wasq run` on a queue holding one message and times
/// until it logs its first message done.
fn startup(case: &Case, cache: &Path) -> anyhow::Result<Duration> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let docs = data.join("blobs/docs");
    std::fs::create_dir_all(&docs)?;
    std::fs::write(docs.join("notes.md"), "# Notes\n\nThree words here.\n")?;
    let wasq = env!("CARGO_BIN_EXE_wasq");
    for args in [
        &["queue", "create", "startup"][..],
        &["send", "local://startup", "--body", case.body][..],
    ] {
        let output = Command::new(wasq)
            .env("WASQ_DATA_DIR", &data)
            .args(args)
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    // Every processor here gets the grants the jobs need; a plugin named by
    // its path is named by its file stem.
    let name = Path::new(&case.plugin)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("compress");
    let config = dir.path().join("wasq.toml");
    std::fs::write(
        &config,
        format!(
            "[plugins.{name}.blobs]\nread = [\"s3://docs/\"]\nwrite = [\"s3://archives/\"]\n[plugins.{name}.records]\ntables = [\"*\"]\n"
        ),
    )?;
    let started = Instant::now();
    let mut child = Command::new(wasq)
        .env("WASQ_DATA_DIR", &data)
        .env("WASQ_CACHE_DIR", cache)
        .env("WASQ_PLUGINS_DIR", dir.path().join("no-plugins"))
        .env("WASQ_LOG", "info")
        .args([
            "run",
            "--queue",
            "local://startup",
            "--plugin",
            &case.plugin,
        ])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--until-empty"])
        .arg("--config-file")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut took = None;
    let mut seen = Vec::new();
    for line in BufReader::new(child.stderr.take().expect("piped")).lines() {
        let line = line?;
        if line.contains("first message done") {
            took = Some(started.elapsed());
            break;
        }
        seen.push(line);
    }
    child.kill()?;
    child.wait()?;
    took.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: the host never reported its first message done:\n{}",
            case.label,
            seen.join("\n")
        )
    })
}
