//! Processors written to hurt the host: hand-made components with several
//! memories, a processor that holds instances while another binding needs
//! them, log floods, reasons of many megabytes with terminal escapes in
//! them, and traps raised by the host. Each meets a limit, and the host's
//! log stays one line per record.

use crate::harness::{self, Env, message, run};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use wasq::queue::{LocalQueues, Outgoing, Queue};
use wasq::runtime::{Fault, Limits, Outcome, Plugin, PluginSource, Runtime};

/// A component that fits the processor world (its `handle` answers
/// `done`), with `extra` further core instances of a module that defines a
/// memory of `pages` 64 KiB pages, and a `handle` that spins forever when
/// `spin` is set.
fn memories_component(extra: usize, pages: u32, spin: bool) -> Vec<u8> {
    let hogs = "  (core instance (instantiate $hog))\n".repeat(extra);
    let body = if spin {
        "(loop (br 0)) i32.const 0"
    } else {
        "i32.const 0"
    };
    let text = format!(
        r#"(component
  (import "wasq:processor/types@0.1.0" (instance $types
    (type $msg (record (field "id" string) (field "body" string)
      (field "attributes" (list (tuple string string))) (field "receive-count" u32)
      (field "sent-at-ms" u64) (field "group-id" (option string)) (field "queue" string)))
    (export "message" (type (eq $msg)))
    (type $retry (record (field "reason" string) (field "delay-secs" (option u32))))
    (export "retry-after" (type $retry' (eq $retry)))
    (type $outcome (variant (case "done" (option string)) (case "retry" $retry') (case "reject" string)))
    (export "outcome" (type (eq $outcome)))))
  (alias export $types "message" (type $message))
  (alias export $types "outcome" (type $outcome))
  (core module $m
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $at i32)
      global.get $bump
      local.set $at
      global.get $bump
      local.get 3
      i32.add
      i32.const 7
      i32.add
      i32.const -8
      i32.and
      global.set $bump
      local.get $at)
    (func (export "handle") (param i32 i32 i32 i32 i32 i32 i32 i64 i32 i32 i32 i32 i32) (result i32)
      {body}))
  (core instance $i (instantiate $m))
  (core module $hog (memory {pages}))
{hogs}
  (func $handle (param "message" $message) (result $outcome)
    (canon lift (core func $i "handle") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (export "handle" (func $handle)))"#
    );
    wat::parse_str(text).expect("the component is well-formed")
}

fn load(runtime: &Runtime, name: &str, wasm: &[u8], limits: Limits) -> anyhow::Result<Plugin> {
    runtime.load(
        name,
        PluginSource::File(format!("{name}.wasm").into()),
        wasm,
        limits,
        BTreeMap::new(),
    )
}

#[tokio::test]
async fn a_hand_made_component_fits_the_processor_world() {
    let env = Env::new();
    let plugin = load(
        &harness::RUNTIME,
        "one-memory",
        &memories_component(0, 1, false),
        Limits::default(),
    )
    .unwrap();
    let (result, _) = run(&plugin, &env.services, &message("m", "x")).await;
    assert_eq!(result.outcome, Outcome::Done(None));
}

/// A component with eight memories once finished `done` under a 128 MiB
/// limit with the host at 1 GB: the limit applied to each memory.
#[tokio::test]
async fn every_memory_of_an_instance_counts_against_one_limit() {
    let env = Env::new();
    // Three 48 MiB memories: each fits 128 MiB, together they do not.
    let wasm = memories_component(3, 768, false);
    let plugin = load(
        &harness::RUNTIME,
        "three-memories",
        &wasm,
        Limits::default(),
    )
    .unwrap();
    let (result, _) = run(&plugin, &env.services, &message("m", "x")).await;
    assert_eq!(result.fault, Some(Fault::Memory(128 << 20)), "{result:?}");
    // Under a limit that holds them all, it runs.
    let roomy = Limits {
        memory: 256 << 20,
        ..Limits::default()
    };
    let plugin = load(&harness::RUNTIME, "three-memories", &wasm, roomy).unwrap();
    let (result, _) = run(&plugin, &env.services, &message("m", "x")).await;
    assert_eq!(result.outcome, Outcome::Done(None), "{result:?}");
}

#[test]
fn a_component_with_more_memories_than_its_share_is_refused_at_load() {
    let err = load(
        &harness::RUNTIME,
        "nine-memories",
        &memories_component(8, 1, false),
        Limits::default(),
    )
    .err()
    .expect("refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("nine-memories") && text.contains("9 Wasm linear memories"),
        "{text}"
    );
}

/// One processor once took the whole instance pool, so another binding's
/// messages failed with "instantiation failed" and were dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_cannot_take_the_instances_another_binding_needs() {
    let env = Env::new();
    // Two bindings of concurrency one: a pool of two instances.
    let runtime = Runtime::new(wasq::runtime::EngineOptions {
        max_instances: 2,
        cache_dir: Some(harness::cache_dir()),
        ..Default::default()
    })
    .unwrap();
    let greedy = load(
        &runtime,
        "greedy",
        &memories_component(3, 1, true),
        Limits {
            timeout: Duration::from_secs(3),
            ..Limits::default()
        },
    )
    .unwrap();
    let wasm = std::fs::read(wasq_test_guests::ROGUE).unwrap();
    let other = load(&runtime, "rogue", &wasm, Limits::default()).unwrap();
    let sink = |id: &str| wasq::runtime::LogSink::new("t".into(), id.into(), false);
    let greedy_message = message("g", "x");
    let spinning = runtime.run(&greedy, &env.services, &greedy_message, sink("g"));
    let neighbour = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        runtime
            .run(&other, &env.services, &message("n", "noop"), sink("n"))
            .await
    };
    let (spun, served) = tokio::join!(spinning, neighbour);
    assert!(matches!(spun.fault, Some(Fault::Timeout(_))), "{spun:?}");
    assert_eq!(served.outcome, Outcome::Done(None), "{served:?}");
}

/// A reason of 20 MB was once logged as one line, escape sequences and
/// all. (Past `MAX_CALL_BYTES`, 16 MiB, returning it is a trap.)
#[tokio::test]
async fn long_reasons_are_cut_with_a_marker() {
    let env = Env::new();
    let plugin = harness::rogue(Limits::default());
    let (result, _) = run(
        &plugin,
        &env.services,
        &message("r", "long-reason 12000000"),
    )
    .await;
    let Outcome::Retry { reason, .. } = &result.outcome else {
        panic!("{:?}", result.outcome);
    };
    assert!(
        reason.len() <= wasq::runtime::MAX_REASON,
        "{}",
        reason.len()
    );
    assert!(reason.ends_with("more bytes cut]"), "{reason}");

    let (result, _) = run(
        &plugin,
        &env.services,
        &message("r", "long-reason 20000000"),
    )
    .await;
    let Outcome::Retry { reason, .. } = &result.outcome else {
        panic!("{:?}", result.outcome);
    };
    assert!(reason.contains("too much data is being copied"), "{reason}");
}

/// A trap that is not a wasm trap code once lost its cause: "trap: error
/// while executing at wasm backtrace:".
#[tokio::test]
async fn a_trap_raised_by_the_host_keeps_its_cause() {
    let env = Env::new();
    let plugin = harness::rogue(Limits::default());
    let (result, _) = run(&plugin, &env.services, &message("b", "bad-handle")).await;
    let Some(Fault::Trap(cause)) = &result.fault else {
        panic!("{result:?}");
    };
    assert!(cause.contains("handle"), "{cause}");
    assert!(!cause.contains("wasm backtrace"), "{cause}");
}

/// Runs `wasq run` on one local queue until it is empty, with `bodies`
/// sent to it first, and returns the host's log.
async fn host_log(dir: &Path, plugin: &str, bodies: &[&str], extra: &[&str]) -> Vec<u8> {
    let data = dir.join("data");
    let queues = LocalQueues::open(&data).unwrap();
    queues
        .create("jobs", crate::harness::with_dlq(1))
        .await
        .unwrap();
    let queue = queues.queue("jobs").await.unwrap();
    for body in bodies {
        queue
            .send(Outgoing {
                body: body.to_string(),
                ..Outgoing::default()
            })
            .await
            .unwrap();
    }
    let log = dir.join("host.log");
    let mut args = vec!["--until-empty", "--max-receive-count", "1"];
    args.extend_from_slice(extra);
    let status = harness::wasq_run(&data, plugin, &log, &args)
        .status()
        .unwrap();
    let text = std::fs::read(&log).unwrap();
    assert!(status.success(), "{}", String::from_utf8_lossy(&text));
    text
}

/// 3 MB of newlines once made 3,000,001 log lines (708 MB of stderr) in
/// seconds; a reason with a newline forged a log line, and escape
/// sequences changed the terminal's title.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_and_escapes_never_reach_the_log_raw() {
    let dir = tempfile::tempdir().unwrap();
    let log = host_log(
        dir.path(),
        wasq_test_guests::ROGUE,
        &["flood 3000000", "long-reason 100000"],
        &[],
    )
    .await;
    let text = String::from_utf8_lossy(&log);
    let lines = text.lines().count();
    assert!(lines < 1_100, "{lines} log lines");
    assert!(
        text.contains("more log lines") && text.contains("were left out"),
        "{text}"
    );
    assert!(!text.lines().any(|l| l.starts_with("FORGED")), "{text}");
    assert!(!log.contains(&0x07), "a BEL reached the log");
    assert!(
        !log.windows(2).any(|w| w == b"\x1b]"),
        "an escape sequence reached the log"
    );
    assert!(log.len() < 2 << 20, "{} bytes of log", log.len());
}

/// A job naming a URI with a newline in it: the reason it is rejected with
/// is one log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newline_in_a_job_cannot_forge_a_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let job = serde_json::json!({
        "job_id": "j",
        "files": ["s3://docs/a\n2026-01-01T00:00:00Z  INFO FORGED all is well"],
        "output": "s3://archives/j.zip"
    })
    .to_string();
    let log = host_log(dir.path(), "compress", &[&job], &[]).await;
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("dead-lettered"), "{text}");
    assert!(
        !text.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z")),
        "{text}"
    );
}

/// The built-in `compress` once ran with every grant: anyone who could
/// send a job could archive any bucket and overwrite any object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_without_grants_touches_nothing_and_the_host_says_what_to_add() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let secret = data.join("blobs/secrets/key.txt");
    std::fs::create_dir_all(secret.parent().unwrap()).unwrap();
    std::fs::write(&secret, b"do not archive").unwrap();
    let job = serde_json::json!({
        "job_id": "steal",
        "files": ["s3://secrets/key.txt"],
        "output": "s3://secrets/key.zip"
    })
    .to_string();
    let log = host_log(dir.path(), "compress", &[&job], &[]).await;
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("has no grants"), "{text}");
    assert!(text.contains("[plugins.compress.blobs]"), "{text}");
    assert!(text.contains("read = [\"s3://docs/\"]"), "{text}");
    assert!(text.contains("tables = [\"archives\"]"), "{text}");
    assert!(
        text.contains("this processor may not write any object"),
        "{text}"
    );
    assert!(!data.join("blobs/secrets/key.zip").exists());

    // Wide access works, and is said out loud at start.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wide.toml");
    std::fs::write(
        &config,
        "[plugins.compress.blobs]\nread = [\"s3://\"]\nwrite = [\"s3://archives/\"]\n",
    )
    .unwrap();
    let log = host_log(
        dir.path(),
        "compress",
        &[],
        &["--config-file", config.to_str().unwrap()],
    )
    .await;
    let text = String::from_utf8_lossy(&log);
    assert!(
        text.contains("wide access granted") && text.contains("read = [\\\"s3://\\\"]"),
        "{text}"
    );
}

/// The same, through `wasq run`'s own wiring: a binding whose 64 messages
/// each hold an instance of four memories (256 memories: the whole pool of
/// an engine sized as it once was) does not keep the other binding's
/// message from starting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_binding_keeps_the_instances_its_concurrency_needs() {
    use wasq::cli::BindingArgs;
    use wasq::run::{Host, HostConfig};
    let dir = tempfile::tempdir().unwrap();
    let greedy = dir.path().join("greedy.wasm");
    std::fs::write(&greedy, memories_component(3, 1, true)).unwrap();
    let binding = |queue: &str, plugin: &Path, timeout: &str, concurrency: usize| {
        BindingArgs {
            queue: Some(queue.into()),
            plugin: Some(plugin.display().to_string()),
            max_concurrency: Some(concurrency),
            limits: wasq::cli::LimitArgs {
                timeout: Some(timeout.into()),
                ..Default::default()
            },
            receive_wait: Some("1s".into()),
            ..BindingArgs::default()
        }
        .spec()
        .unwrap()
    };
    let env = wasq::backends::LocalEnv {
        data_dir: dir.path().join("data"),
        blobs_root: dir.path().join("data/blobs"),
        link_base: "http://127.0.0.1:9".into(),
        reserve: wasq::blobs::DEFAULT_RESERVE,
    };
    let config = HostConfig {
        env: env.clone(),
        aws: Default::default(),
        blobs: Default::default(),
        records: Default::default(),
        engine: wasq::runtime::EngineOptions {
            cache_dir: Some(harness::cache_dir()),
            ..Default::default()
        },
        plugins: Default::default(),
        listen: None,
        links_follow_listen: false,
        grace: Duration::from_secs(1),
        alarm_webhook: None,
        console_token: None,
        bindings: vec![
            binding("local://spin", &greedy, "5s", 64),
            binding("local://work", Path::new(wasq_test_guests::ROGUE), "5s", 1),
        ],
    };
    let host = Host::start(config).await.unwrap();
    let queues = host.backends.local_queues().await.unwrap().clone();
    let send = |queue: &'static str, body: &'static str| {
        let queues = queues.clone();
        async move {
            queues
                .queue(queue)
                .await
                .unwrap()
                .send(Outgoing {
                    body: body.into(),
                    ..Outgoing::default()
                })
                .await
                .unwrap()
        }
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(host.run(stop.clone().cancelled_owned(), None));
    for _ in 0..64 {
        send("spin", "x").await;
    }
    let spin = queues.queue("spin").await.unwrap();
    let started = std::time::Instant::now();
    while spin.stats().await.unwrap().in_flight < 64 {
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "the spinners never all started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Received is not yet instantiated: give every spinner time to hold its
    // instance.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let id = send("work", "echo").await;
    let records = wasq::records::SqliteRecords::open(&env.data_dir.join("records.db")).unwrap();
    let started = std::time::Instant::now();
    let mut served = None;
    while started.elapsed() < Duration::from_secs(3) {
        use wasq::records::Records;
        served = records.get("results", &format!("work/{id}")).await.unwrap();
        if served.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(
        served.is_some(),
        "the other binding's message did not run while the greedy one spun"
    );
}
