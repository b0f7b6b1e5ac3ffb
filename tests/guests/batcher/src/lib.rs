//! A test batch processor (the `batch-processor` world). Each message's
//! body says what becomes of it:
//!
//! - `done TEXT`: done, with TEXT as its result;
//! - `size`: done, with the number of messages in the batch;
//! - `count KEY`: adds one to record `runs`/KEY, then done with the count;
//! - `retry`, `reject`: that outcome;
//! - `skip`: no outcome at all; `twice`: two;
//! - `trap`: the whole batch traps;
//! - `sleep MS`: sleeps, then done.

use bindings::wasq::processor::records;
use bindings::wasq::processor::types::RetryAfter;
use bindings::{Guest, ItemOutcome, Message, Outcome};

mod bindings {
    #![allow(clippy::too_many_arguments, reason = "generated code")]
    wit_bindgen::generate!({ path: "../../../wit", world: "batch-processor" });
}

struct Batcher;

impl Guest for Batcher {
    fn handle_batch(messages: Vec<Message>) -> Vec<ItemOutcome> {
        let size = messages.len();
        let mut out = Vec::with_capacity(size);
        for message in messages {
            let words: Vec<&str> = message.body.split_whitespace().collect();
            let outcome = match words.as_slice() {
                ["done", text] => Outcome::Done(Some(text.to_string())),
                ["size"] => Outcome::Done(Some(size.to_string())),
                ["count", key] => {
                    let runs = records::get("runs", key)
                        .ok()
                        .flatten()
                        .and_then(|n| n.parse::<u32>().ok())
                        .unwrap_or(0)
                        + 1;
                    match records::put("runs", key, &runs.to_string()) {
                        Ok(()) => Outcome::Done(Some(runs.to_string())),
                        Err(err) => Outcome::Reject(err),
                    }
                }
                ["retry"] => Outcome::Retry(RetryAfter {
                    reason: "retry on request".into(),
                    delay_secs: None,
                }),
                ["reject"] => Outcome::Reject("rejected on request".into()),
                ["skip"] => continue,
                ["twice"] => {
                    out.push(ItemOutcome {
                        id: message.id.clone(),
                        outcome: Outcome::Done(None),
                    });
                    Outcome::Done(None)
                }
                ["trap"] => panic!("the batch traps on request"),
                ["sleep", ms] => {
                    std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0)));
                    Outcome::Done(None)
                }
                _ => Outcome::Reject(format!("unknown command: {}", message.body)),
            };
            out.push(ItemOutcome {
                id: message.id,
                outcome,
            });
        }
        out
    }
}

bindings::export!(Batcher with_types_in bindings);
