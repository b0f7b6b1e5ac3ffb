//! The local store's signed links, as a link holder (or anyone who can
//! reach the port) meets them: downloads that no browser renders, only the
//! version a link was made for, ranges that follow that version, and a
//! server that idle or half-sent connections cannot hold.

use crate::harness::Env;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use wasq::blobs::{BlobStore, BlobUri, Budget, CreateOptions};
use wasq::serve::{self, Guards, ServeState};

/// A link server on a free loopback port, over `env`'s store.
async fn server(env: &Env, guards: Guards) -> (SocketAddr, tokio_util::sync::CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = ServeState {
        metrics: Default::default(),
        readiness: Default::default(),
        links: Some(env.blobs.clone()),
        console: None,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(serve::serve(
        listener,
        serve::router(state),
        guards,
        stop.clone(),
    ));
    (addr, stop)
}

async fn put(env: &Env, uri: &str, owner: &str, overwrite: bool, bytes: &[u8]) -> String {
    let uri = BlobUri::parse(uri).unwrap();
    let budget = Budget::default();
    let mut writer = env
        .blobs
        .create(
            &uri,
            CreateOptions {
                content_type: None,
                overwrite,
                owner,
                budget: &budget,
            },
        )
        .await
        .unwrap();
    writer.write(bytes.to_vec()).await.unwrap();
    writer.finish().await.unwrap();
    env.blobs
        .presign_get(&uri, Duration::from_secs(600))
        .await
        .unwrap()
}

struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// GET `link` (made for 127.0.0.1:9) from `addr`, with extra headers.
fn get(addr: SocketAddr, link: &str, headers: &[(&str, &str)]) -> Answer {
    let path = link.strip_prefix("http://127.0.0.1:9").unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Answer {
        status,
        head,
        body: response[split + 4..].to_vec(),
    }
}

/// An output key ending in `.html` was once served as `text/html` from the
/// link origin, with markup a zip entry name could carry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_are_attachments_no_browser_renders() {
    let env = Env::new();
    let (addr, _stop) = server(&env, Guards::default()).await;
    let page = b"<html><script>alert(document.cookie)</script></html>";
    let link = put(&env, "s3://archives/x/page.html", "q/m", false, page).await;
    let answer = tokio::task::spawn_blocking(move || get(addr, &link, &[]))
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, page);
    assert_eq!(
        answer.header("content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert!(
        answer
            .header("content-disposition")
            .is_some_and(|d| d.starts_with("attachment; filename=\"page.html\"")),
        "{}",
        answer.head
    );
    assert_eq!(
        answer.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert!(
        answer
            .header("content-security-policy")
            .is_some_and(|c| c.contains("default-src 'none'") && c.contains("sandbox")),
        "{}",
        answer.head
    );
    assert!(answer.header("etag").is_some(), "{}", answer.head);
}

/// A local link once covered bucket, key and expiry only: a job that
/// replaced another's archive had the victim's link serve its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_serves_only_the_version_it_was_made_for() {
    let env = Env::new();
    let (addr, _stop) = server(&env, Guards::default()).await;
    let victim = put(
        &env,
        "s3://archives/j.zip",
        "q/m1",
        false,
        b"victim's archive",
    )
    .await;
    let first = {
        let victim = victim.clone();
        tokio::task::spawn_blocking(move || get(addr, &victim, &[]))
            .await
            .unwrap()
    };
    assert_eq!(first.body, b"victim's archive");
    let etag = first.header("etag").unwrap();

    // Ranges follow the version: If-Range with this etag gets the range,
    // and If-None-Match with it gets 304.
    let (ranged, unchanged) = {
        let (link, tag) = (victim.clone(), etag.clone());
        tokio::task::spawn_blocking(move || {
            (
                get(addr, &link, &[("Range", "bytes=0-5"), ("If-Range", &tag)]),
                get(addr, &link, &[("If-None-Match", &tag)]),
            )
        })
        .await
        .unwrap()
    };
    assert_eq!(
        (ranged.status, ranged.body.as_slice()),
        (206, &b"victim"[..])
    );
    assert_eq!(
        ranged.header("content-range").as_deref(),
        Some("bytes 0-5/16")
    );
    assert_eq!(unchanged.status, 304);

    // Replaced (by a writer allowed to replace): the old link stops working.
    put(
        &env,
        "s3://archives/j.zip",
        "q/m2",
        true,
        b"attacker's bytes",
    )
    .await;
    let after = tokio::task::spawn_blocking(move || get(addr, &victim, &[]))
        .await
        .unwrap();
    assert_eq!(after.status, 410, "{}", after.head);
    assert!(!after.body.windows(8).any(|w| w == b"attacker"));
}

/// Swapping a directory for a symlink once served files from outside the
/// store over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_swapped_in_is_never_served() {
    let env = Env::new();
    let (addr, _stop) = server(&env, Guards::default()).await;
    let link = put(&env, "s3://archives/d/a.zip", "q/m", false, b"inside").await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("a.zip"), b"outside").unwrap();
    let dir = env.root().join("archives/d");
    std::fs::rename(&dir, env.root().join("archives/moved")).unwrap();
    std::os::unix::fs::symlink(outside.path(), &dir).unwrap();
    let answer = tokio::task::spawn_blocking(move || get(addr, &link, &[]))
        .await
        .unwrap();
    assert_ne!(answer.status, 200, "{}", answer.head);
    assert!(!answer.body.windows(7).any(|w| w == b"outside"));
}

/// Reads until the server closes the connection, or `limit` passes.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

/// A half-sent request once stayed open for over 75 s, and 900 idle
/// connections were accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_cannot_hold_the_server() {
    let env = Env::new();
    let guards = Guards {
        max_connections: 4,
        max_per_address: 3,
        header_timeout: Duration::from_secs(1),
        ..Guards::default()
    };
    let (addr, _stop) = server(&env, guards).await;
    let link = put(&env, "s3://archives/ok.zip", "q/m", false, b"ok").await;
    // Loopback holds a whole /8: other addresses stand for other clients.
    let connect_from = move |ip: [u8; 4]| {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&std::net::SocketAddr::from((ip, 0)).into())
            .unwrap();
        socket.connect(&addr.into()).unwrap();
        TcpStream::from(socket)
    };
    tokio::task::spawn_blocking(move || {
        // A request head that never ends is cut off at the timeout.
        let mut half = TcpStream::connect(addr).unwrap();
        half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .unwrap();
        let took = closed_within(&mut half, Duration::from_secs(10));
        assert!(took.is_some_and(|t| t < Duration::from_secs(5)), "{took:?}");

        // Three idle connections from one address are its share; a fourth
        // from it is closed at once, while another address still gets in.
        let mut idle: Vec<TcpStream> = (0..3).map(|_| connect_from([127, 0, 0, 1])).collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut fourth = connect_from([127, 0, 0, 1]);
        assert!(
            closed_within(&mut fourth, Duration::from_millis(900)).is_some(),
            "a fourth connection from one address was held open"
        );
        idle.push(connect_from([127, 0, 0, 2]));
        std::thread::sleep(Duration::from_millis(200));
        // Four in all fill the server: a fifth is closed at once.
        let mut fifth = connect_from([127, 0, 0, 3]);
        assert!(
            closed_within(&mut fifth, Duration::from_millis(900)).is_some(),
            "a fifth connection was held open"
        );
        // The idle ones are closed at the header timeout, and the server
        // serves again.
        for stream in &mut idle {
            let took = closed_within(stream, Duration::from_secs(10));
            assert!(took.is_some(), "an idle connection was never closed");
        }
        assert_eq!(get(addr, &link, &[]).status, 200);
    })
    .await
    .unwrap();
}

/// A link holder who asks for a large archive and never reads it, or a
/// client that keeps one connection alive with a request every few
/// seconds, once held a connection for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_and_endless_keep_alive_lose_their_connection() {
    let env = Env::new();
    let guards = Guards {
        stall_timeout: Duration::from_secs(1),
        lifetime: Duration::from_secs(2),
        ..Guards::default()
    };
    let (addr, _stop) = server(&env, guards).await;
    let link = put(
        &env,
        "s3://archives/big.zip",
        "q/m",
        false,
        &vec![7u8; 64 << 20],
    )
    .await;
    tokio::task::spawn_blocking(move || {
        let path = link.strip_prefix("http://127.0.0.1:9").unwrap().to_string();
        let mut stalled = TcpStream::connect(addr).unwrap();
        stalled
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        // Never read: the server's send buffer fills and nothing moves.
        std::thread::sleep(Duration::from_secs(3));
        let mut drained = 0usize;
        stalled
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match stalled.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
        assert!(
            drained < 64 << 20,
            "the stalled reader got the whole object"
        );

        let mut alive = TcpStream::connect(addr).unwrap();
        alive
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let started = Instant::now();
        let mut served = 0;
        loop {
            if alive
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .is_err()
            {
                break;
            }
            let mut answer = [0u8; 512];
            match alive.read(&mut answer) {
                Ok(0) | Err(_) => break,
                Ok(_) => served += 1,
            }
            assert!(
                started.elapsed() < Duration::from_secs(8),
                "the keep-alive connection outlived its lifetime"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        assert!(served >= 2, "{served}");
    })
    .await
    .unwrap();
}

/// Swapping a directory for a symlink while links are being served once
/// served files from outside the store (184 of 4,000 requests): the swap
/// runs in a loop here, against many requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_swapped_for_a_symlink_under_load_never_leaks() {
    let env = Env::new();
    let (addr, _stop) = server(&env, Guards::default()).await;
    let link = put(&env, "s3://archives/d/a.zip", "q/m", false, b"inside").await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("a.zip"), b"outside").unwrap();
    let dir = env.root().join("archives/d");
    let real = env.root().join("archives/real");
    let swapping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let swapper = {
        let (dir, real, outside, swapping) = (
            dir.clone(),
            real.clone(),
            outside.path().to_path_buf(),
            swapping.clone(),
        );
        std::thread::spawn(move || {
            let mut swaps = 0;
            while swapping.load(std::sync::atomic::Ordering::Relaxed) {
                std::fs::rename(&dir, &real).unwrap();
                std::os::unix::fs::symlink(&outside, &dir).unwrap();
                std::thread::yield_now();
                std::fs::remove_file(&dir).unwrap();
                std::fs::rename(&real, &dir).unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let (served, leaked) = tokio::task::spawn_blocking(move || {
        let (mut served, mut leaked) = (0, 0);
        for _ in 0..2_000 {
            let answer = get(addr, &link, &[]);
            if answer.status == 200 {
                served += 1;
            }
            if answer.body.windows(7).any(|w| w == b"outside") {
                leaked += 1;
            }
        }
        (served, leaked)
    })
    .await
    .unwrap();
    swapping.store(false, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert_eq!(
        leaked, 0,
        "{leaked} of 2000 answers came from outside the store"
    );
    assert!(
        swaps > 100,
        "only {swaps} swaps: the race was not exercised"
    );
    assert!(served > 0, "nothing was served between swaps");
}
