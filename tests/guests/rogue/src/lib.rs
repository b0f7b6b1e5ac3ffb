//! A processor for tests. The message body is a command, and the processor
//! does exactly that, however badly it behaves. It is built against the
//! 0.1.0 contract, frozen in `tests/guests/wit-0.1.0`, so every test that
//! runs it also proves that processors built for 0.1.0 keep working. The
//! commands:
//!
//! - `noop`: done, no result
//! - `echo`: done, with the message's fields as the result
//! - `trap`: panics (a trap)
//! - `loop`: spins forever
//! - `hog`: allocates until memory runs out
//! - `open URI`: opens an object and reads it all; done with its size, or
//!   reject with the error
//! - `write URI BYTES`: writes an object of BYTES zeros; done with its size,
//!   or reject with the error
//! - `handles URI N`: opens URI N times without closing; done with the number
//!   opened before the first error, and that error
//! - `print`: writes to stdout and stderr, and logs
//! - `retry SECS`: asks for a retry after SECS seconds
//! - `config KEY`: done with the value of setting KEY
//! - `record TABLE KEY VALUE`: puts a record, reads it back, done with it
//! - `fail-until N`: retry (no delay given) until the Nth receive, then done
//!   with the receive count
//! - `sleep MS`: sleeps, then done with the receive count
//! - `seq KEY VALUE`: appends VALUE to the record `order/KEY`; done
//! - `reject`: rejects
//! - `env`: done with every environment variable and argument it can see
//! - `fs PATH`: lists a directory of the host; done with the names, or
//!   reject with the error
//! - `connect ADDR`: opens a TCP connection; done if it could, else reject
//! - `flood BYTES`: writes BYTES newlines to stdout; done
//! - `long-reason BYTES`: retry with a reason BYTES long, control
//!   characters in it
//! - `bad-handle`: reads through a reader handle it never opened (a trap
//!   raised by the host, not by wasm)
//! - `writers URI N`: opens N writers under URI without finishing them;
//!   done with the number opened before the first error, and that error

use bindings::wasq::processor::types::RetryAfter;
use bindings::wasq::processor::{blobs, config, log, records};
use bindings::{Guest, Message, Outcome};

mod bindings {
    #![allow(clippy::too_many_arguments, reason = "generated code")]
    // The 0.1.0 contract, frozen (see `tests/guests/wit-0.1.0`).
    wit_bindgen::generate!({ path: "../wit-0.1.0", world: "processor" });
}

struct Rogue;

impl Guest for Rogue {
    fn handle(message: Message) -> Outcome {
        // A large body, described: its length and its two ends.
        if let Some(rest) = message.body.strip_prefix("measure ") {
            let head: String = rest.chars().take(16).collect();
            let tail: String = {
                let reversed: Vec<char> = message.body.chars().rev().take(16).collect();
                reversed.into_iter().rev().collect()
            };
            return Outcome::Done(Some(format!("{} {head} {tail}", message.body.len())));
        }
        let words: Vec<&str> = message.body.split_whitespace().collect();
        match words.as_slice() {
            ["noop"] => Outcome::Done(None),
            ["echo"] => Outcome::Done(Some(format!(
                "id={} receive_count={} sent_at_ms={} group={:?} queue={} attributes={:?}",
                message.id,
                message.receive_count,
                message.sent_at_ms,
                message.group_id,
                message.queue,
                message.attributes
            ))),
            ["trap"] => panic!("deliberate trap"),
            ["loop"] => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            ["hog"] => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    let mut block = vec![0u8; 1 << 20];
                    block[0] = 1;
                    hoard.push(std::hint::black_box(block));
                }
            }
            ["open", uri] => match blobs::open(uri) {
                Ok(reader) => {
                    let mut total = 0usize;
                    loop {
                        match reader.read(1 << 20) {
                            Ok(chunk) if chunk.is_empty() => {
                                break Outcome::Done(Some(total.to_string()));
                            }
                            Ok(chunk) => total += chunk.len(),
                            Err(err) => break Outcome::Reject(format!("{err:?}")),
                        }
                    }
                }
                Err(err) => Outcome::Reject(format!("{err:?}")),
            },
            ["write", uri, bytes] => {
                let bytes: usize = bytes.parse().unwrap_or(0);
                let result = blobs::create(uri, None).and_then(|writer| {
                    let chunk = vec![0u8; 1 << 20];
                    let mut left = bytes;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        writer.write(&chunk[..n])?;
                        left -= n;
                    }
                    writer.finish()
                });
                match result {
                    Ok(info) => Outcome::Done(Some(info.size.to_string())),
                    Err(err) => Outcome::Reject(format!("{err:?}")),
                }
            }
            ["one-write", uri, bytes] => {
                // The whole object in a single call.
                let chunk = vec![0u8; bytes.parse().unwrap_or(0)];
                let result = blobs::create(uri, None).and_then(|writer| {
                    writer.write(&chunk)?;
                    writer.finish()
                });
                match result {
                    Ok(info) => Outcome::Done(Some(info.size.to_string())),
                    Err(err) => Outcome::Reject(format!("{err:?}")),
                }
            }
            ["handles", uri, n] => {
                let n: usize = n.parse().unwrap_or(0);
                let mut held = Vec::new();
                for _ in 0..n {
                    match blobs::open(uri) {
                        Ok(reader) => held.push(reader),
                        Err(err) => return Outcome::Done(Some(format!("{} {err:?}", held.len()))),
                    }
                }
                Outcome::Done(Some(held.len().to_string()))
            }
            ["print"] => {
                println!("to stdout");
                eprintln!("to stderr");
                log::log(log::Level::Warn, "through log");
                Outcome::Done(None)
            }
            ["retry", secs] => Outcome::Retry(RetryAfter {
                reason: "asked to retry".into(),
                delay_secs: secs.parse().ok(),
            }),
            ["config", key] => Outcome::Done(config::get(key)),
            ["record", table, key, value] => {
                match records::put(table, key, value).and_then(|()| records::get(table, key)) {
                    Ok(value) => Outcome::Done(value),
                    Err(err) => Outcome::Reject(err),
                }
            }
            ["fail-until", n] => {
                let n: u32 = n.parse().unwrap_or(1);
                if message.receive_count < n {
                    Outcome::Retry(RetryAfter {
                        reason: format!("failing receive {} of {n}", message.receive_count),
                        delay_secs: None,
                    })
                } else {
                    Outcome::Done(Some(message.receive_count.to_string()))
                }
            }
            ["sleep", ms] => {
                std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0)));
                Outcome::Done(Some(message.receive_count.to_string()))
            }
            ["seq", key, value] => {
                let so_far = records::get("order", key)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                let next = if so_far.is_empty() {
                    value.to_string()
                } else {
                    format!("{so_far},{value}")
                };
                match records::put("order", key, &next) {
                    Ok(()) => Outcome::Done(None),
                    Err(err) => Outcome::Retry(RetryAfter {
                        reason: err,
                        delay_secs: Some(0),
                    }),
                }
            }
            ["reject"] => Outcome::Reject("rejected on request".into()),
            // Counts its runs in table `attempts`, then fails as a retry.
            ["tally-fail", key, ms] => {
                std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0)));
                let runs = records::get("attempts", key)
                    .ok()
                    .flatten()
                    .and_then(|n| n.parse::<u32>().ok())
                    .unwrap_or(0)
                    + 1;
                match records::put("attempts", key, &runs.to_string()) {
                    Ok(()) => Outcome::Retry(RetryAfter {
                        reason: format!("run {runs} fails on purpose"),
                        delay_secs: None,
                    }),
                    Err(err) => Outcome::Reject(err),
                }
            }
            ["env"] => {
                let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                let args: Vec<String> = std::env::args().collect();
                Outcome::Done(Some(format!("vars={vars:?} args={args:?}")))
            }
            ["fs", path] => match std::fs::read_dir(path) {
                Ok(entries) => Outcome::Done(Some(
                    entries
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(","),
                )),
                Err(err) => Outcome::Reject(err.to_string()),
            },
            ["connect", addr] => match std::net::TcpStream::connect(addr) {
                Ok(_) => Outcome::Done(Some(format!("connected to {addr}"))),
                Err(err) => Outcome::Reject(err.to_string()),
            },
            ["flood", bytes] => {
                use std::io::Write;
                let block = vec![b'\n'; 64 * 1024];
                let mut left: usize = bytes.parse().unwrap_or(0);
                let mut out = std::io::stdout();
                while left > 0 {
                    let n = left.min(block.len());
                    let _ = out.write_all(&block[..n]);
                    left -= n;
                }
                Outcome::Done(None)
            }
            ["long-reason", bytes] => Outcome::Retry(RetryAfter {
                reason: "\x1b]0;owned\x07\nFORGED line "
                    .repeat(bytes.parse::<usize>().unwrap_or(0) / 24 + 1),
                delay_secs: None,
            }),
            ["bad-handle"] => {
                // SAFETY: deliberately wrong; the host must refuse the handle.
                let reader = unsafe { blobs::Reader::from_handle(999) };
                let _ = reader.read(1);
                Outcome::Done(None)
            }
            ["writers", uri, n] => {
                let n: usize = n.parse().unwrap_or(0);
                let mut held = Vec::new();
                for i in 0..n {
                    match blobs::create(&format!("{uri}{i}"), None) {
                        Ok(writer) => held.push(writer),
                        Err(err) => return Outcome::Done(Some(format!("{} {err:?}", held.len()))),
                    }
                }
                Outcome::Done(Some(held.len().to_string()))
            }
            _ => Outcome::Reject(format!("unknown command `{}`", message.body)),
        }
    }
}

bindings::export!(Rogue with_types_in bindings);
