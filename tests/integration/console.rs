//! The operator console, through a real `wasq run` and plain HTTP: the
//! overview shows each binding, a binding pauses and resumes from it (its
//! messages wait, then run), an action without the console's CSRF token or
//! from another origin is refused, pages carry a strict CSP, and a console
//! with a token admits no one without it.

use crate::cli::free_port;
use crate::harness::Killed;
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use wasq::queue::{LocalQueues, Outgoing, Queue};

/// One HTTP/1.0 exchange: status, head, body.
fn http(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

/// A host on `local://jobs` running the rogue processor, listening on a
/// free loopback port, once its server answers.
fn host(dir: &std::path::Path, extra: &[&str]) -> (Killed, String) {
    host_of(dir, wasq_test_guests::ROGUE, extra)
}

/// [`host`] running the processor at `plugin`.
fn host_of(dir: &std::path::Path, plugin: &str, extra: &[&str]) -> (Killed, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["--listen", addr.as_str()];
    args.extend_from_slice(extra);
    let child = crate::harness::wasq_run(&dir.join("data"), plugin, &dir.join("host.log"), &args)
        .spawn()
        .unwrap();
    let host = Killed(child);
    crate::harness::wait_for_port(&addr);
    (host, addr)
}

/// The CSRF token in a page's forms.
fn csrf(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..at + 64].to_string()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(30), "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_binding_pauses_and_resumes_from_the_console_and_actions_need_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let queues = LocalQueues::open(&dir.path().join("data")).unwrap();
    runtime
        .block_on(queues.create("jobs", crate::harness::with_dlq(3)))
        .unwrap();
    let (_host, addr) = host(dir.path(), &[]);

    let (status, head, page) = http("GET", &addr, "/", &[], "");
    assert_eq!(status, 200, "{page}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(head.contains("x-frame-options: deny"), "{head}");
    assert!(
        page.contains("local://jobs") && page.contains("polling"),
        "{page}"
    );
    // Scripts only from the console's own files, none inline.
    assert!(!page.contains("<script>"), "{page}");
    let token = csrf(&page);

    // A page of another name that resolves to 127.0.0.1 (DNS rebinding)
    // sees nothing.
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "GET / HTTP/1.0\r\nHost: rebind.evil.example\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 403"), "{answer}");
    assert!(!answer.contains(&token), "the CSRF token leaked");

    // Without the token, with a wrong one, or from another site: refused.
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    for (headers, body) in [
        (vec![form], String::new()),
        (vec![form], "csrf=0000".to_string()),
        (
            vec![form, ("Origin", "http://evil.example")],
            format!("csrf={token}"),
        ),
        (
            vec![form, ("Sec-Fetch-Site", "cross-site")],
            format!("csrf={token}"),
        ),
    ] {
        let (status, _, _) = http("POST", &addr, "/bindings/jobs/pause", &headers, &body);
        assert_eq!(status, 403, "{headers:?} {body}");
    }
    let (_, _, page) = http("GET", &addr, "/", &[], "");
    assert!(page.contains("polling"), "a refused pause paused");

    // Paused: messages wait in the queue.
    let (status, _, _) = http(
        "POST",
        &addr,
        "/bindings/jobs/pause",
        &[form],
        &format!("csrf={token}"),
    );
    assert_eq!(status, 303);
    let (_, _, page) = http("GET", &addr, "/", &[], "");
    assert!(page.contains(">paused<"), "{page}");
    let (_, _, metrics) = http("GET", &addr, "/metrics", &[], "");
    assert!(
        metrics.contains("wasq_paused{binding=\"jobs\"} 1"),
        "{metrics}"
    );
    let jobs = runtime.block_on(queues.queue("jobs")).unwrap();
    runtime
        .block_on(
            jobs.send_batch(
                (0..5)
                    .map(|_| Outgoing {
                        body: "noop".into(),
                        ..Outgoing::default()
                    })
                    .collect(),
            ),
        )
        .unwrap();
    // The long poll under way when the pause came was cut short: nothing is
    // received.
    std::thread::sleep(Duration::from_secs(2));
    let stats = runtime.block_on(jobs.stats()).unwrap();
    assert_eq!(stats.visible, 5, "{stats:?}");

    // Resumed: they run.
    let (status, _, _) = http(
        "POST",
        &addr,
        "/bindings/jobs/resume",
        &[form],
        &format!("csrf={token}"),
    );
    assert_eq!(status, 303);
    wait_until("the messages did not run after the resume", || {
        let stats = runtime.block_on(jobs.stats()).unwrap();
        stats.visible + stats.in_flight == 0
    });
    let (_, _, page) = http("GET", &addr, "/", &[], "");
    assert!(page.contains(">polling<"), "{page}");

    // An unknown binding is named, not created.
    let (status, _, page) = http(
        "POST",
        &addr,
        "/bindings/%3Cb%3E/pause",
        &[form],
        &format!("csrf={token}"),
    );
    assert_eq!(status, 404);
    assert!(
        page.contains("&lt;b&gt;") && !page.contains("<b>"),
        "{page}"
    );
}

#[test]
fn a_console_with_a_token_admits_no_one_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let queues = LocalQueues::open(&dir.path().join("data")).unwrap();
    runtime
        .block_on(queues.create("jobs", crate::harness::with_dlq(3)))
        .unwrap();
    let secret = "a-console-token-of-some-length";
    let (_host, addr) = host(dir.path(), &["--console-token", secret]);

    let (status, head, _) = http("GET", &addr, "/", &[], "");
    assert_eq!(status, 303);
    assert!(
        head.to_ascii_lowercase().contains("location: /login"),
        "{head}"
    );
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let (status, _, _) = http("POST", &addr, "/bindings/jobs/pause", &[form], "csrf=x");
    assert_eq!(status, 303, "an action without the token went through");
    let (status, _, page) = http("POST", &addr, "/login", &[form], "token=wrong");
    assert_eq!(status, 401, "{page}");

    let (status, head, _) = http("POST", &addr, "/login", &[form], &format!("token={secret}"));
    assert_eq!(status, 303);
    let cookie = head
        .lines()
        .find_map(|line| {
            line.strip_prefix("set-cookie: ")
                .or_else(|| line.strip_prefix("Set-Cookie: "))
        })
        .expect("a session cookie")
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(secret),
        "the cookie holds the token itself"
    );
    let session = cookie.split(';').next().unwrap();
    let (status, _, page) = http("GET", &addr, "/", &[("Cookie", session)], "");
    assert_eq!(status, 200, "{page}");
    let (status, _, _) = http(
        "GET",
        &addr,
        "/",
        &[("Authorization", &format!("Bearer {secret}"))],
        "",
    );
    assert_eq!(status, 200);
    // /metrics and /healthz stay open to scrapers.
    let (status, _, _) = http("GET", &addr, "/healthz", &[], "");
    assert_eq!(status, 200);
}

/// Guessing the token: an address that shows five wrong ones within a
/// minute (on the login form, or as bearer tokens) is refused, the right
/// token included, until the minute is over.
#[test]
fn an_address_guessing_the_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "a-console-token-of-some-length";
    let (_host, addr) = host(dir.path(), &["--console-token", secret]);
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    for guess in 0..3 {
        let (status, _, _) = http(
            "POST",
            &addr,
            "/login",
            &[form],
            &format!("token=guess-{guess}"),
        );
        assert_eq!(status, 401);
    }
    for guess in 3..5 {
        let (status, _, _) = http(
            "GET",
            &addr,
            "/",
            &[("Authorization", &format!("Bearer guess-{guess}"))],
            "",
        );
        assert_eq!(status, 303);
    }
    let (status, head, page) = http("POST", &addr, "/login", &[form], &format!("token={secret}"));
    assert_eq!(status, 429, "{page}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: "),
        "{head}"
    );
    assert!(page.contains("Too many wrong tokens"), "{page}");
    let (status, _, _) = http(
        "GET",
        &addr,
        "/",
        &[("Authorization", &format!("Bearer {secret}"))],
        "",
    );
    assert_eq!(status, 429);
    // Health and metrics are not the console's: still answered.
    let (status, _, _) = http("GET", &addr, "/healthz", &[], "");
    assert_eq!(status, 200);
}

/// The ids of the letters a list page shows (its checkboxes).
fn listed_ids(page: &str) -> Vec<String> {
    page.match_indices("type=\"checkbox\" name=\"id\" value=\"")
        .map(|(at, m)| {
            let rest = &page[at + m.len()..];
            rest[..rest.find('"').unwrap()].to_string()
        })
        .collect()
}

fn form_body(csrf: &str, queue: &str, action: &str, ids: &[String]) -> String {
    let mut fields = vec![("csrf", csrf), ("queue", queue), ("action", action)];
    fields.extend(ids.iter().map(|id| ("id", id.as_str())));
    serde_urlencoded::to_string(fields).unwrap()
}

#[test]
fn dead_letters_are_searched_shown_as_text_and_redriven_or_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let queues = LocalQueues::open(&dir.path().join("data")).unwrap();
    runtime
        .block_on(queues.create("jobs", crate::harness::with_dlq(3)))
        .unwrap();
    let (_host, addr) = host(dir.path(), &[]);
    let jobs = runtime.block_on(queues.queue("jobs")).unwrap();
    let dlq = runtime.block_on(queues.queue("jobs-dlq")).unwrap();
    // The rogue processor rejects what it does not know, naming the body in
    // its reason: markup reaches both.
    let hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>";
    let mut bodies: Vec<String> = (0..3)
        .map(|n| format!("{{\"job\": {n}, \"kind\": \"alpha\"}}"))
        .collect();
    bodies.extend([hostile.to_string(), hostile.to_string()]);
    runtime
        .block_on(
            jobs.send_batch(
                bodies
                    .iter()
                    .map(|body| Outgoing {
                        body: body.clone(),
                        ..Outgoing::default()
                    })
                    .collect(),
            ),
        )
        .unwrap();
    wait_until("the letters were not dead-lettered", || {
        runtime.block_on(dlq.stats()).unwrap().visible == 5
    });

    let (status, _, page) = http(
        "GET",
        &addr,
        "/dead-letters?queue=local%3A%2F%2Fjobs-dlq",
        &[],
        "",
    );
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("5 letters match"), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(
        !page.contains("<script") && !page.contains("<img"),
        "markup got through: {page}"
    );
    let token = csrf(&page);

    let (_, _, alpha) = http(
        "GET",
        &addr,
        "/dead-letters?queue=local%3A%2F%2Fjobs-dlq&q=ALPHA+job",
        &[],
        "",
    );
    assert!(alpha.contains("3 letters match"), "{alpha}");
    let chosen = listed_ids(&alpha);
    assert_eq!(chosen.len(), 3, "{alpha}");

    // One letter in full: its JSON pretty-printed, wasq's reason apart from
    // what the sender set.
    let (status, _, detail) = http(
        "GET",
        &addr,
        &format!(
            "/dead-letters/letter?queue=local%3A%2F%2Fjobs-dlq&id={}",
            chosen[0]
        ),
        &[],
        "",
    );
    assert_eq!(status, 200, "{detail}");
    assert!(detail.contains("\n  &quot;job&quot;: "), "{detail}");
    assert!(
        detail.contains("wasq-reason") && detail.contains("unknown command"),
        "{detail}"
    );
    assert!(detail.contains("Set by the sender"), "{detail}");

    // The console reaches only its bindings' dead-letter queues.
    let (status, _, _) = http("GET", &addr, "/dead-letters?queue=jobs", &[], "");
    assert_eq!(status, 404);

    // Redrive the search's three, with the binding paused so they wait.
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let (status, _, _) = http(
        "POST",
        &addr,
        "/bindings/jobs/pause",
        &[form],
        &format!("csrf={token}"),
    );
    assert_eq!(status, 303);
    let (status, _, sure) = http(
        "POST",
        &addr,
        "/dead-letters/confirm",
        &[form],
        &form_body(&token, "local://jobs-dlq", "redrive", &chosen),
    );
    assert_eq!(status, 200, "{sure}");
    assert!(sure.contains("Redrive 3 dead letters?"), "{sure}");
    let (status, _, _) = http(
        "POST",
        &addr,
        "/dead-letters/act",
        &[form],
        &form_body("", "local://jobs-dlq", "redrive", &chosen),
    );
    assert_eq!(status, 403, "an action without the CSRF token went through");
    let (status, _, done) = http(
        "POST",
        &addr,
        "/dead-letters/act",
        &[form],
        &form_body(&token, "local://jobs-dlq", "redrive", &chosen),
    );
    assert_eq!(status, 200, "{done}");
    assert!(done.contains("Redrove 3 of the 3"), "{done}");
    assert_eq!(runtime.block_on(jobs.stats()).unwrap().visible, 3);
    assert_eq!(runtime.block_on(dlq.stats()).unwrap().visible, 2);

    // Delete the other two: all that a search matches, found again when
    // the deletion is confirmed.
    let (_, _, rest) = http(
        "GET",
        &addr,
        "/dead-letters?queue=local%3A%2F%2Fjobs-dlq&q=script",
        &[],
        "",
    );
    assert!(rest.contains("2 letters match"), "{rest}");
    assert_eq!(listed_ids(&rest).len(), 2, "{rest}");
    let all = serde_urlencoded::to_string([
        ("csrf", token.as_str()),
        ("queue", "local://jobs-dlq"),
        ("action", "delete"),
        ("all", "1"),
        ("q", "script"),
    ])
    .unwrap();
    let (status, _, sure) = http("POST", &addr, "/dead-letters/confirm", &[form], &all);
    assert_eq!(status, 200, "{sure}");
    assert!(sure.contains("Delete 2 dead letters?"), "{sure}");
    let (status, _, done) = http("POST", &addr, "/dead-letters/act", &[form], &all);
    assert_eq!(status, 200, "{done}");
    assert!(done.contains("Deleted 2 of the 2"), "{done}");
    assert_eq!(runtime.block_on(dlq.stats()).unwrap().visible, 0);
}

#[test]
fn the_processors_page_shows_the_running_code_and_a_failed_reload() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let queues = LocalQueues::open(&dir.path().join("data")).unwrap();
    runtime
        .block_on(queues.create("jobs", crate::harness::with_dlq(3)))
        .unwrap();
    let plugin = dir.path().join("rogue.wasm");
    std::fs::copy(wasq_test_guests::ROGUE, &plugin).unwrap();
    let hash = blake3::hash(&std::fs::read(&plugin).unwrap())
        .to_hex()
        .to_string();
    let (_host, addr) = host_of(dir.path(), plugin.to_str().unwrap(), &[]);

    let (status, _, page) = http("GET", &addr, "/processors", &[], "");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&hash), "{page}");
    assert!(page.contains("wasq:processor/blobs@0.1.0"), "{page}");
    assert!(page.contains("none since the host started"), "{page}");

    // A change that cannot be used: the old version runs on, and the page
    // says why the new one did not load.
    std::fs::write(&plugin, b"<b>not a component</b>").unwrap();
    wait_until("the failed reload was not shown", || {
        let (_, _, page) = http("GET", &addr, "/processors", &[], "");
        page.contains("failed, the previous version runs on")
    });
    let (_, _, page) = http("GET", &addr, "/processors", &[], "");
    assert!(page.contains(&hash), "{page}");
    assert!(!page.contains("<b>not"), "{page}");
}

/// `wasq console` serves a data directory's queues and dead letters with
/// no host running: depths shown, letters redriven, nothing to pause.
#[test]
fn wasq_console_serves_a_data_directory_without_a_host() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let queues = LocalQueues::open(&data).unwrap();
    runtime
        .block_on(queues.create("jobs", crate::harness::with_dlq(3)))
        .unwrap();
    let dlq = runtime.block_on(queues.queue("jobs-dlq")).unwrap();
    runtime
        .block_on(
            dlq.send_batch(
                (0..4)
                    .map(|n| Outgoing {
                        body: format!("job {n}"),
                        attributes: vec![
                            ("wasq-reason".into(), "trap: boom".into()),
                            ("wasq-source-queue".into(), "jobs".into()),
                        ],
                        ..Outgoing::default()
                    })
                    .collect(),
            ),
        )
        .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_wasq"))
        .env("WASQ_DATA_DIR", &data)
        .args(["console", "--listen", &addr])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _console = Killed(child);
    crate::harness::wait_for_port(&addr);

    let (status, _, page) = http("GET", &addr, "/", &[], "");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("No host is running here"), "{page}");
    assert!(
        page.contains("local://jobs") && page.contains(">no host<"),
        "{page}"
    );
    assert!(!page.contains(">pause<"), "{page}");
    wait_until("the dead-letter depth was not shown", || {
        let (_, _, page) = http("GET", &addr, "/", &[], "");
        page.contains("<td class=\"num\">4</td>")
    });
    let (_, _, page) = http("GET", &addr, "/", &[], "");
    let token = {
        let (_, _, letters) = http(
            "GET",
            &addr,
            "/dead-letters?queue=local%3A%2F%2Fjobs-dlq",
            &[],
            "",
        );
        assert!(letters.contains("4 letters match"), "{letters}");
        csrf(&letters)
    };
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let (status, _, _) = http(
        "POST",
        &addr,
        "/bindings/jobs/pause",
        &[form],
        &format!("csrf={token}"),
    );
    assert_eq!(status, 404, "{page}");
    let all = serde_urlencoded::to_string([
        ("csrf", token.as_str()),
        ("queue", "local://jobs-dlq"),
        ("action", "redrive"),
        ("all", "1"),
    ])
    .unwrap();
    let (status, _, done) = http("POST", &addr, "/dead-letters/act", &[form], &all);
    assert_eq!(status, 200, "{done}");
    assert!(done.contains("Redrove 4 of the 4"), "{done}");
    let jobs = runtime.block_on(queues.queue("jobs")).unwrap();
    assert_eq!(runtime.block_on(jobs.stats()).unwrap().visible, 4);
}
