//! Filter evaluations per second on one core, run with `cargo bench -p
//! wasq --bench filter`. Figures and method are recorded in
//! docs/PERFORMANCE.md.
//!
//! A binding's filters are checked on every message a poller receives, on
//! the poller's task, before anything runs: the check has to be cheap
//! beside a receive. One evaluation here is what the dispatcher does per
//! message: parse the body (once, for all patterns) and try each pattern
//! until one admits it. The bodies are order events of about 300 bytes, a
//! third of them admitted; three pattern sets: one field, the five
//! patterns Lambda allows by default, and attributes only (no body parse).

use serde_json::json;
use std::hint::black_box;
use std::time::{Duration, Instant};
use wasq::filter::{Filters, Subject};

fn bodies() -> Vec<String> {
    (0..1000)
        .map(|i| {
            json!({
                "type": (["order", "refund", "quote"][i % 3]),
                "id": format!("ord-{i:08}"),
                "customer": {"id": format!("c-{}", i % 97), "tier": (["gold", "silver", "bronze"][i % 3]), "region": (["eu-west-1", "us-east-1"][i % 2])},
                "total": (i as f64) * 1.25,
                "currency": "EUR",
                "items": [{"sku": format!("B-{i}"), "qty": 1}, {"sku": format!("A-{i}"), "qty": 2}],
                "created": "2026-11-27T10:00:00Z",
                "note": "deliver to the side door, ring twice"
            })
            .to_string()
        })
        .collect()
}

/// Evaluations per second, best of five one-second rounds.
fn measure(filters: &Filters, bodies: &[String], attributes: &[(String, String)]) -> (f64, usize) {
    let mut best = 0.0f64;
    let mut admitted = 0;
    for _ in 0..5 {
        let start = Instant::now();
        let mut n = 0usize;
        admitted = 0;
        while start.elapsed() < Duration::from_secs(1) {
            for (i, body) in bodies.iter().enumerate() {
                let subject = Subject {
                    id: "m",
                    body,
                    attributes: &attributes[i % 3..i % 3 + 1],
                    receive_count: 1,
                    sent_at_ms: 0,
                    group_id: None,
                };
                if black_box(filters.admits(black_box(&subject))) {
                    admitted += 1;
                }
            }
            n += bodies.len();
        }
        best = best.max(n as f64 / start.elapsed().as_secs_f64());
        admitted = admitted * bodies.len() / n.max(1);
    }
    (best, admitted)
}

fn main() {
    let bodies = bodies();
    let size: usize = bodies.iter().map(String::len).sum::<usize>() / bodies.len();
    let attributes: Vec<(String, String)> = ["acme", "globex", "initech", "acme"]
        .iter()
        .map(|t| ("tenant".to_string(), t.to_string()))
        .collect();
    let sets: [(&str, Vec<String>); 3] = [
        (
            "one field",
            vec![json!({"body": {"type": ["order"]}}).to_string()],
        ),
        (
            "five patterns",
            vec![
                json!({"body": {"type": ["refund"], "total": [{"numeric": [">", 10000]}]}}).to_string(),
                json!({"body": {"customer": {"region": [{"prefix": "ap-"}]}}}).to_string(),
                json!({"body": {"items": {"sku": [{"wildcard": "Z-*"}]}}}).to_string(),
                json!({"body": {"currency": [{"anything-but": ["EUR", "USD"]}]}}).to_string(),
                json!({"body": {"type": ["order"], "customer": {"tier": [{"equals-ignore-case": "GOLD"}, "silver"]}}}).to_string(),
            ],
        ),
        (
            "attributes only",
            vec![json!({"messageAttributes": {"tenant": ["acme"]}}).to_string()],
        ),
    ];
    println!("bodies: {} of about {size} bytes; one thread", bodies.len());
    for (name, patterns) in &sets {
        let filters = Filters::parse(patterns).expect("valid patterns");
        let (rate, admitted) = measure(&filters, &bodies, &attributes);
        println!(
            "{name:>16}: {:>10.0} evaluations/s ({:.0} ns each), {admitted} of {} admitted",
            rate,
            1e9 / rate,
            bodies.len()
        );
    }
}
