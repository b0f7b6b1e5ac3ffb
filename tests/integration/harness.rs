//! What every integration test shares: one engine, the plugins, and a fresh
//! local environment per test.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, LazyLock};
use wasq::backends::LocalEnv;
use wasq::blobs::LocalBlobs;
use wasq::runtime::{Grants, Limits, LogSink, Message, Plugin, Run, Runtime, Services};

#[path = "../shared.rs"]
mod shared;
pub use shared::{cache_dir, noise};

pub static RUNTIME: LazyLock<Arc<Runtime>> =
    LazyLock::new(|| Arc::new(shared::engine(64).expect("the engine starts")));

/// `compress`, granted every bucket and table: the tests of what it
/// writes use many buckets; the tests of grants narrow it.
pub fn compress(limits: Limits, config: BTreeMap<String, String>) -> Plugin {
    let code = wasq::runtime::plugins::find("compress", None).unwrap();
    RUNTIME
        .load(&code.name, code.source, &code.wasm, limits, config)
        .unwrap()
        .with_grants(Grants::everything())
}

/// `rogue`, granted every bucket and table, and to replace records (its
/// `seq` command appends to one record from many messages), so that the
/// limits and the store's own checks are what stops it.
pub fn rogue(limits: Limits) -> Plugin {
    let config = BTreeMap::from([("greeting".to_string(), "hello".to_string())]);
    shared::rogue_on(&RUNTIME, limits, config)
        .unwrap()
        .with_grants(Grants {
            overwrite_records: true,
            ..Grants::everything()
        })
}

/// The `batcher` batch processor with every grant.
pub fn batcher(limits: Limits) -> Plugin {
    let wasm = std::fs::read(wasq_test_guests::BATCHER).unwrap();
    RUNTIME
        .load(
            "batcher",
            wasq::runtime::PluginSource::File(wasq_test_guests::BATCHER.into()),
            &wasm,
            limits,
            BTreeMap::new(),
        )
        .unwrap()
        .with_grants(Grants {
            overwrite_records: true,
            ..Grants::everything()
        })
}

/// A manifest granting every bucket and table, for tests that run `wasq`
/// on a plugin whose grants are not what they test.
pub const GRANT_ALL: &str = "[blobs]\nread = [\"s3://\"]\nwrite = [\"s3://\"]\n[records]\ntables = [\"*\"]\noverwrite = true\n";

/// Writes `GRANT_ALL` as the manifest of plugin `name` in `plugins`.
pub fn grant_all(plugins: &Path, name: &str) {
    std::fs::create_dir_all(plugins).unwrap();
    std::fs::write(plugins.join(format!("{name}.toml")), GRANT_ALL).unwrap();
}

/// A data directory and blob root of its own.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub blobs: LocalBlobs,
    pub services: Services,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let env = LocalEnv {
            data_dir: dir.path().join("data"),
            blobs_root: dir.path().join("blobs"),
            link_base: "http://127.0.0.1:9".into(),
            reserve: wasq::blobs::DEFAULT_RESERVE,
        };
        let (blobs, services) = env.open().unwrap();
        Env {
            dir,
            blobs,
            services,
        }
    }

    pub fn root(&self) -> &Path {
        self.blobs.root()
    }

    /// Writes an object straight into the store's directory.
    pub fn put(&self, uri_path: &str, bytes: &[u8]) {
        let path = self.root().join(uri_path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

pub fn message(id: &str, body: &str) -> Message {
    Message {
        id: id.to_string(),
        body: body.to_string(),
        attributes: vec![("tenant".to_string(), "acme".to_string())],
        receive_count: 1,
        sent_at_ms: 1_700_000_000_000,
        group_id: None,
        queue: "tests".to_string(),
    }
}

/// Runs one message, keeping its log lines.
pub async fn run(plugin: &Plugin, services: &Services, msg: &Message) -> (Run, LogSink) {
    let log = LogSink::new(plugin.name().clone(), msg.id.as_str().into(), true);
    let run = RUNTIME.run(plugin, services, msg, log.clone()).await;
    (run, log)
}

/// Deterministic text that compresses well.
pub fn text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 100);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!(
                "line {i}: the quick brown fox jumps over the lazy dog {}\n",
                i % 97
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// `wasq run --queue local://jobs --plugin PLUGIN EXTRA… --listen 127.0.0.1:0`
/// (unless EXTRA names its own `--listen`)
/// on `data`, logging at info into the file `log` (a pipe nobody reads would
/// fill and stall the host). Port 0 lets parallel tests never race for a
/// port. Not yet spawned, so callers can add to it.
pub fn wasq_run(data: &Path, plugin: &str, log: &Path, extra: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wasq"));
    command
        .env("WASQ_DATA_DIR", data)
        .env("WASQ_CACHE_DIR", cache_dir())
        .env("WASQ_LOG", "info")
        .args(["run", "--queue", "local://jobs", "--plugin", plugin])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    if !extra.contains(&"--listen") {
        command.args(["--listen", "127.0.0.1:0"]);
    }
    // A plugin named by its path gets every grant from a config file of the
    // test's own (the tests this serves are about dispatch, not grants).
    if let Some(stem) = plugin
        .strip_suffix(".wasm")
        .and_then(|p| Path::new(p).file_name())
    {
        let config = log.with_extension("wasq.toml");
        let stem = stem.to_string_lossy();
        let sections = GRANT_ALL
            .replace("[blobs]", &format!("[plugins.{stem}.blobs]"))
            .replace("[records]", &format!("[plugins.{stem}.records]"));
        std::fs::write(&config, sections).unwrap();
        command.arg("--config-file").arg(config);
    }
    command
}

/// The moto server `tests/run.sh` started: its address.
pub fn moto_endpoint() -> String {
    std::env::var("WASQ_TEST_AWS_ENDPOINT").expect(
        "WASQ_TEST_AWS_ENDPOINT is not set: the AWS tests need the moto server that `bash tests/run.sh` installs and starts",
    )
}

/// How the tests reach moto: its endpoint, path-style S3, a fixed region.
/// Credentials come from the environment `tests/run.sh` sets.
pub fn moto_aws() -> wasq::aws::AwsOptions {
    wasq::aws::AwsOptions {
        endpoint_url: Some(moto_endpoint()),
        region: Some("us-east-1".into()),
        s3_path_style: true,
    }
}

static MOTO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Holds moto for one test at a time, from a fresh state.
pub async fn moto() -> tokio::sync::MutexGuard<'static, ()> {
    let guard = MOTO.lock().await;
    let endpoint = moto_endpoint();
    let reset =
        tokio::task::spawn_blocking(move || http_post(&format!("{endpoint}/moto-api/reset")))
            .await
            .unwrap();
    assert_eq!(reset, 200, "resetting moto");
    guard
}

/// A plain HTTP/1.0 POST without a body; returns the status code.
pub fn http_post(url: &str) -> u16 {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(
        stream,
        "POST /{path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A TCP proxy in front of an endpoint that can be taken down and brought
/// back on the same port: an outage as its clients see it, while the
/// service behind keeps its state.
pub struct Outage {
    pub addr: std::net::SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Outage {
    pub async fn new(target: std::net::SocketAddr) -> Outage {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, watch) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(async move {
            let mut listener = Some(listener);
            let mut watch = watch;
            loop {
                if !*watch.borrow() {
                    // Down: nothing listens, so connections are refused.
                    listener = None;
                    if watch.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                let current = match &listener {
                    Some(l) => l,
                    None => {
                        listener = Some(tokio::net::TcpListener::bind(addr).await.unwrap());
                        listener.as_ref().unwrap()
                    }
                };
                tokio::select! {
                    accepted = current.accept() => {
                        let Ok((mut client, _)) = accepted else { continue };
                        let mut down = watch.clone();
                        tokio::spawn(async move {
                            let Ok(mut server) = tokio::net::TcpStream::connect(target).await else { return };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                // Going down cuts open connections too.
                                _ = down.wait_for(|up| !*up) => {}
                            }
                        });
                    }
                    changed = watch.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Outage { addr, up, task }
    }

    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A new local queue's settings with a dead-letter queue `jobs-dlq` after
/// `max_receive_count` receives, as a binding on it expects.
pub fn with_dlq(max_receive_count: u32) -> wasq::queue::QueueOptions {
    wasq::queue::QueueOptions {
        redrive: Some(wasq::queue::Redrive {
            dlq: "jobs-dlq".into(),
            max_receive_count,
        }),
        ..wasq::queue::QueueOptions::default()
    }
}

/// A child process killed and reaped when dropped, so a failing test
/// leaves no server behind.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something listens on `addr` (at most 30 s).
pub fn wait_for_port(addr: &str) {
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "nothing listens on {addr}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
