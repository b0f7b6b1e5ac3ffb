//! A batch processor (the `batch-processor` world): ledger entries in,
//! one bulk write out. Each message is an entry,
//! `{"account": "acme", "amount": 12.5}`; the batch's valid entries are
//! written as one record (table `ledger`, key `batch-FIRST_ID`), the way a
//! processor would make one bulk insert into a database, and each entry is
//! done with where it went. An entry that is not one is rejected on its
//! own (Lambda's `batchItemFailures`); the rest of the batch goes on.

wit_bindgen::generate!({ path: "../../wit", world: "batch-processor" });

use wasq::processor::types::RetryAfter;
use wasq::processor::{log, records};

struct Bulk;

/// One ledger entry, checked.
struct Entry {
    account: String,
    amount: f64,
}

fn entry(body: &str) -> Result<Entry, String> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|err| format!("not JSON: {err}"))?;
    let account = value["account"]
        .as_str()
        .filter(|a| !a.is_empty() && a.len() <= 64)
        .ok_or("`account` must be a string of 1-64 characters")?;
    let amount = value["amount"]
        .as_f64()
        .filter(|a| a.is_finite())
        .ok_or("`amount` must be a number")?;
    Ok(Entry {
        account: account.to_string(),
        amount,
    })
}

impl Guest for Bulk {
    fn handle_batch(messages: Vec<Message>) -> Vec<ItemOutcome> {
        let Some(first) = messages.first() else {
            return Vec::new();
        };
        let key = format!("batch-{}", first.id);
        let mut rows = Vec::new();
        let mut outcomes = Vec::with_capacity(messages.len());
        let mut valid = Vec::new();
        for message in &messages {
            match entry(&message.body) {
                Ok(entry) => {
                    rows.push(serde_json::json!({
                        "id": message.id,
                        "account": entry.account,
                        "amount": entry.amount,
                    }));
                    valid.push(message.id.clone());
                }
                Err(why) => outcomes.push(ItemOutcome {
                    id: message.id.clone(),
                    outcome: Outcome::Reject(format!("not a ledger entry: {why}")),
                }),
            }
        }
        let total: f64 = rows.iter().filter_map(|r| r["amount"].as_f64()).sum();
        let written = records::put(
            "ledger",
            &key,
            &serde_json::json!({ "rows": rows, "total": total }).to_string(),
        );
        log::log(
            log::Level::Info,
            &format!("{} entries in one write under {key}", valid.len()),
        );
        let done = match written {
            Ok(()) => Outcome::Done(Some(
                serde_json::json!({ "batch": key, "rows": valid.len() }).to_string(),
            )),
            // The bulk write failed: every entry of it is tried again.
            Err(err) => Outcome::Retry(RetryAfter {
                reason: format!("the bulk write failed: {err}"),
                delay_secs: None,
            }),
        };
        outcomes.extend(valid.into_iter().map(|id| ItemOutcome {
            id,
            outcome: done.clone(),
        }));
        outcomes
    }
}

export!(Bulk);
