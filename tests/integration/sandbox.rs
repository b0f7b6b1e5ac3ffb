//! Misbehaving processors meet their limits: each ends in its defined outcome
//! and the host goes on serving other messages.

use crate::harness::{self, Env, message, run};
use std::time::{Duration, Instant};
use wasq::runtime::{Fault, Limits, Outcome, Source};

fn retry_reason(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Retry { reason, .. } => reason,
        other => panic!("expected retry, got {other:?}"),
    }
}

#[tokio::test]
async fn a_trap_is_a_retry_naming_the_trap() {
    let env = Env::new();
    let plugin = harness::rogue(Limits::default());
    let (result, _) = run(&plugin, &env.services, &message("t", "trap")).await;
    assert!(
        matches!(result.fault, Some(Fault::Trap(_))),
        "{:?}",
        result.fault
    );
    assert!(retry_reason(&result.outcome).starts_with("trap: "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_is_stopped_at_the_wall_clock_limit() {
    let env = Env::new();
    let limits = Limits {
        timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let plugin = harness::rogue(limits);
    let started = Instant::now();
    let (result, _) = run(&plugin, &env.services, &message("l", "loop")).await;
    let took = started.elapsed();
    assert_eq!(
        result.fault,
        Some(Fault::Timeout(Duration::from_millis(500)))
    );
    assert!(retry_reason(&result.outcome).contains("wall-clock limit of 500ms"));
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_memory_hog_is_stopped_at_the_memory_limit() {
    let env = Env::new();
    let limits = Limits {
        memory: 32 << 20,
        ..Limits::default()
    };
    let plugin = harness::rogue(limits);
    let (result, _) = run(&plugin, &env.services, &message("h", "hog")).await;
    assert_eq!(result.fault, Some(Fault::Memory(32 << 20)));
    assert!(retry_reason(&result.outcome).contains("32 MiB"));
}

#[tokio::test]
async fn keys_that_escape_the_store_are_invalid_values_not_traps() {
    let env = Env::new();
    std::fs::write(env.dir.path().join("secret.txt"), b"host file").unwrap();
    let plugin = harness::rogue(Limits::default());
    for uri in [
        "s3://blobs/../secret.txt",
        "s3://docs/../../secret.txt",
        "s3://docs//etc/passwd",
        "/etc/passwd",
        "file:///etc/passwd",
        "s3://../secret.txt",
    ] {
        let (result, _) = run(
            &plugin,
            &env.services,
            &message("e", &format!("open {uri}")),
        )
        .await;
        assert_eq!(result.fault, None, "{uri}");
        match &result.outcome {
            Outcome::Reject(reason) => assert!(reason.contains("Invalid("), "{uri}: {reason}"),
            other => panic!("{uri}: expected the processor to see an error, got {other:?}"),
        }
        let (write, _) = run(
            &plugin,
            &env.services,
            &message("w", &format!("write {uri} 10")),
        )
        .await;
        assert!(
            matches!(write.outcome, Outcome::Reject(_)),
            "{uri}: {:?}",
            write.outcome
        );
    }
    assert_eq!(
        std::fs::read(env.dir.path().join("secret.txt")).unwrap(),
        b"host file"
    );
}

#[tokio::test]
async fn reading_past_the_byte_limit_ends_the_message() {
    let env = Env::new();
    env.put("docs/three-mib.bin", &vec![7u8; 3 << 20]);
    let limits = Limits {
        bytes_read: 1 << 20,
        ..Limits::default()
    };
    let plugin = harness::rogue(limits);
    let (result, _) = run(
        &plugin,
        &env.services,
        &message("r", "open s3://docs/three-mib.bin"),
    )
    .await;
    assert_eq!(result.fault, Some(Fault::BytesRead(1 << 20)));
    assert!(retry_reason(&result.outcome).contains("bytes-read limit"));

    let (small, _) = run(
        &harness::rogue(Limits::default()),
        &env.services,
        &message("r", "open s3://docs/three-mib.bin"),
    )
    .await;
    assert_eq!(small.outcome, Outcome::Done(Some((3 << 20).to_string())));
}

#[tokio::test]
async fn writing_past_the_byte_limit_ends_the_message_and_leaves_nothing() {
    let env = Env::new();
    let limits = Limits {
        bytes_written: 2 << 20,
        ..Limits::default()
    };
    let plugin = harness::rogue(limits);
    let (result, _) = run(
        &plugin,
        &env.services,
        &message("w", "write s3://out/big.bin 5000000"),
    )
    .await;
    assert_eq!(result.fault, Some(Fault::BytesWritten(2 << 20)));
    assert!(!env.root().join("out/big.bin").exists());
    let leftovers = std::fs::read_dir(env.root().join(".wasq-tmp"))
        .unwrap()
        .count();
    assert_eq!(
        leftovers, 0,
        "the unfinished object's temp file was left behind"
    );
}

/// One call may hand the host at most `MAX_CALL_BYTES`: the host copies
/// what a call passes before looking at it, so a larger call is a trap, not
/// an allocation the processor chose. Just under it is fine.
#[tokio::test]
async fn one_call_hands_the_host_a_bounded_amount() {
    let env = Env::new();
    let plugin = harness::rogue(Limits::default());
    let most = wasq::runtime::MAX_CALL_BYTES;
    let (result, _) = run(
        &plugin,
        &env.services,
        &message("w", &format!("one-write s3://out/big.bin {}", most + 1)),
    )
    .await;
    assert!(
        matches!(result.fault, Some(Fault::Trap(_))),
        "{:?}",
        result.outcome
    );
    let reason = retry_reason(&result.outcome);
    assert!(reason.contains("too much data is being copied"), "{reason}");
    assert!(!env.root().join("out/big.bin").exists());

    let (result, _) = run(
        &plugin,
        &env.services,
        &message("w", &format!("one-write s3://out/fits.bin {}", most - 64)),
    )
    .await;
    assert_eq!(result.outcome, Outcome::Done(Some((most - 64).to_string())));
}

#[tokio::test]
async fn open_handles_are_bounded() {
    let env = Env::new();
    env.put("docs/a.txt", b"a");
    let plugin = harness::rogue(Limits::default());
    let (result, _) = run(
        &plugin,
        &env.services,
        &message("h", "handles s3://docs/a.txt 100"),
    )
    .await;
    match result.outcome {
        Outcome::Done(Some(text)) => assert!(text.starts_with("64 Error::Denied("), "{text}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn stdout_stderr_and_log_become_tagged_log_lines() {
    let env = Env::new();
    let plugin = harness::rogue(Limits::default());
    let (_, log) = run(&plugin, &env.services, &message("p", "print")).await;
    let lines: Vec<_> = log
        .lines()
        .into_iter()
        .map(|l| (l.source, l.message))
        .collect();
    assert!(
        lines.contains(&(Source::Stdout, "to stdout".to_string())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&(Source::Stderr, "to stderr".to_string())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&(Source::Log, "through log".to_string())),
        "{lines:?}"
    );
}

#[tokio::test]
async fn the_message_config_and_records_reach_the_processor() {
    let env = Env::new();
    let plugin = harness::rogue(Limits::default());
    let mut msg = message("m-7", "echo");
    msg.receive_count = 3;
    msg.group_id = Some("g".into());
    let (result, _) = run(&plugin, &env.services, &msg).await;
    assert_eq!(
        result.outcome,
        Outcome::Done(Some(
            "id=m-7 receive_count=3 sent_at_ms=1700000000000 group=Some(\"g\") queue=tests attributes=[(\"tenant\", \"acme\")]".into()
        ))
    );
    let (config, _) = run(&plugin, &env.services, &message("c", "config greeting")).await;
    assert_eq!(config.outcome, Outcome::Done(Some("hello".into())));
    let (missing, _) = run(&plugin, &env.services, &message("c", "config nothing")).await;
    assert_eq!(missing.outcome, Outcome::Done(None));
    let (record, _) = run(&plugin, &env.services, &message("r", "record jobs k-1 v-1")).await;
    assert_eq!(record.outcome, Outcome::Done(Some("v-1".into())));
    let (bad, _) = run(
        &plugin,
        &env.services,
        &message("r", "record bad!table k v"),
    )
    .await;
    assert!(
        matches!(bad.outcome, Outcome::Reject(ref r) if r.contains("table `bad!table`")),
        "{:?}",
        bad.outcome
    );
    let (retry, _) = run(&plugin, &env.services, &message("r", "retry 42")).await;
    assert_eq!(
        retry.outcome,
        Outcome::Retry {
            reason: "asked to retry".into(),
            delay: Some(Duration::from_secs(42))
        }
    );
}

/// Misbehaving messages run beside good ones: none of them fails another,
/// and the host serves good messages afterwards as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_messages_never_fail_their_neighbours() {
    let env = Env::new();
    let limits = Limits {
        memory: 32 << 20,
        timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let plugin = std::sync::Arc::new(harness::rogue(limits));
    let bodies = [
        "trap",
        "noop",
        "hog",
        "noop",
        "loop",
        "noop",
        "open s3://../x",
        "noop",
    ];
    let mut tasks = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let plugin = plugin.clone();
        let services = env.services.clone();
        let msg = message(&format!("n-{i}"), body);
        tasks.push(tokio::spawn(async move {
            run(&plugin, &services, &msg).await.0
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap().outcome.kind());
    }
    assert_eq!(
        outcomes,
        [
            "retry", "done", "retry", "done", "retry", "done", "reject", "done"
        ]
    );
    for i in 0..20 {
        let (after, _) = run(
            &plugin,
            &env.services,
            &message(&format!("after-{i}"), "noop"),
        )
        .await;
        assert_eq!(after.outcome, Outcome::Done(None));
    }
}

/// A processor sees no environment, no arguments, no host filesystem and no
/// network, whatever the host process has.
#[tokio::test]
async fn no_environment_filesystem_or_network_is_granted() {
    let env = Env::new();
    let plugin = harness::rogue(Limits::default());
    assert!(std::env::var_os("HOME").is_some() || std::env::var_os("PATH").is_some());
    let (vars, _) = run(&plugin, &env.services, &message("e", "env")).await;
    assert_eq!(vars.outcome, Outcome::Done(Some("vars=[] args=[]".into())));

    for path in ["/", ".", "/etc", env.root().to_str().unwrap()] {
        let (listing, _) = run(&plugin, &env.services, &message("f", &format!("fs {path}"))).await;
        assert!(
            matches!(listing.outcome, Outcome::Reject(_)),
            "{path}: {:?}",
            listing.outcome
        );
    }

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (connect, _) = run(
        &plugin,
        &env.services,
        &message("c", &format!("connect {addr}")),
    )
    .await;
    assert!(
        matches!(connect.outcome, Outcome::Reject(_)),
        "{:?}",
        connect.outcome
    );
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "the processor reached the host's socket"
    );
}

/// A manifest beside the plugin grants blob prefixes and tables; anything
/// else is denied with an error naming the URI or table.
#[tokio::test]
async fn a_manifest_confines_the_processor_to_its_grants() {
    let env = Env::new();
    env.put("docs/a.txt", b"allowed");
    env.put("secret/a.txt", b"not for you");
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(wasq_test_guests::ROGUE, plugins.path().join("rogue.wasm")).unwrap();
    std::fs::write(
        plugins.path().join("rogue.toml"),
        r#"
        [blobs]
        read = ["s3://docs/"]
        write = ["s3://out"]
        [records]
        tables = ["jobs"]
        [config]
        greeting = "from the manifest"
        "#,
    )
    .unwrap();
    let code = wasq::runtime::plugins::find("rogue", Some(plugins.path())).unwrap();
    let plugin = harness::RUNTIME
        .load_code(&code, &Default::default(), &Default::default())
        .unwrap();

    let cases = [
        ("open s3://docs/a.txt", Ok("7")),
        (
            "open s3://secret/a.txt",
            Err("`s3://secret/a.txt`: this processor may read only under s3://docs/"),
        ),
        ("write s3://out/x.bin 10", Ok("10")),
        (
            "write s3://docs/x.bin 10",
            Err("`s3://docs/x.bin`: this processor may write only under s3://out/"),
        ),
        (
            "write s3://outside/x.bin 10",
            Err("may write only under s3://out/"),
        ),
        ("record jobs k v", Ok("v")),
        (
            "record secrets k v",
            Err("denied: records table `secrets` is not granted"),
        ),
        ("config greeting", Ok("from the manifest")),
    ];
    for (body, expected) in cases {
        let (result, _) = run(&plugin, &env.services, &message("m", body)).await;
        match (expected, &result.outcome) {
            (Ok(want), Outcome::Done(Some(got))) => assert_eq!(got, want, "{body}"),
            (Err(want), Outcome::Reject(reason)) => {
                assert!(reason.contains(want), "{body}: {reason}")
            }
            (_, other) => panic!("{body}: {other:?}"),
        }
    }
    assert!(!env.root().join("docs/x.bin").exists());
    assert!(!env.root().join("outside/x.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_limits_apply_and_fuel_is_counted_when_asked_for() {
    let env = Env::new();
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(wasq_test_guests::ROGUE, plugins.path().join("rogue.wasm")).unwrap();
    std::fs::write(
        plugins.path().join("rogue.toml"),
        "[limits]\nfuel = 50000000\ntimeout = \"20s\"\nmemory = \"48MiB\"\n",
    )
    .unwrap();
    let code = wasq::runtime::plugins::find("rogue", Some(plugins.path())).unwrap();

    // An engine that does not count fuel refuses a fuel limit by name.
    let err = harness::RUNTIME
        .load_code(&code, &Default::default(), &Default::default())
        .err()
        .expect("a fuel limit needs a counting engine");
    assert!(format!("{err:#}").contains("fuel metering"), "{err:#}");

    let counting = wasq::runtime::Runtime::new(wasq::runtime::EngineOptions {
        max_instances: 4,
        cache_dir: Some(harness::cache_dir()),
        fuel: true,
        ..Default::default()
    })
    .unwrap();
    let plugin = counting
        .load_code(&code, &Default::default(), &Default::default())
        .unwrap();
    assert_eq!(plugin.limits().memory, 48 << 20);
    assert_eq!(plugin.limits().timeout, Duration::from_secs(20));
    let sink = |id: &str| wasq::runtime::LogSink::new(plugin.name().clone(), id.into(), true);
    let started = Instant::now();
    let looping = message("f", "loop");
    let result = counting
        .run(&plugin, &env.services, &looping, sink("f"))
        .await;
    assert_eq!(result.fault, Some(Fault::Fuel(50_000_000)));
    assert!(retry_reason(&result.outcome).contains("50000000 units of fuel"));
    assert!(started.elapsed() < Duration::from_secs(20));
    // Work within the budget is untouched by it.
    let fine = counting
        .run(&plugin, &env.services, &message("n", "noop"), sink("n"))
        .await;
    assert_eq!(fine.fault, None);
    assert_eq!(fine.outcome.kind(), "done");

    // A binding's own setting wins over the manifest's.
    let flags = wasq::runtime::LimitSettings {
        memory: Some("16MiB".into()),
        ..Default::default()
    };
    let plugin = counting
        .load_code(&code, &flags, &Default::default())
        .unwrap();
    let hog = counting
        .run(&plugin, &env.services, &message("h", "hog"), sink("h"))
        .await;
    assert_eq!(hog.fault, Some(Fault::Memory(16 << 20)));
}
