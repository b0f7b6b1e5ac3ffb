//! The example processors in Python, JavaScript and Rust, built from the
//! same WIT by `examples/build.sh`, pass their fixtures through `wasq test`.

use crate::cli::Scratch;
use serde_json::Value;
use std::path::{Path, PathBuf};
use wasq::records::{Records, SqliteRecords};

/// Where `examples/build.sh` put the components: `WASQ_EXAMPLES_DIR`, or
/// `examples/` in the target directory.
fn built(name: &str) -> PathBuf {
    let dir = std::env::var_os("WASQ_EXAMPLES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("../examples"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the examples with examples/build.sh (tests/run.sh does)",
        path.display()
    );
    path
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Runs `wasq test --json` and returns one report per fixture message.
fn wasq_test(scratch: &Scratch, plugin: &Path, fixtures: &Path, manifest: &Path) -> Vec<Value> {
    let output = scratch.wasq(&[
        "test",
        "--json",
        "--manifest",
        &manifest.display().to_string(),
        "--blobs",
        &scratch.dir.path().join("blobs").display().to_string(),
        "--plugin",
        &plugin.display().to_string(),
        &fixtures.display().to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

async fn wordcount(component: &str) {
    let scratch = Scratch::new();
    let fixtures = examples().join("wordcount.json");
    let reports = wasq_test(
        &scratch,
        &built(component),
        &fixtures,
        &examples().join("wordcount.toml"),
    );
    let expected: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&fixtures).unwrap()).unwrap();
    assert_eq!(reports.len(), expected.len());
    for report in &reports {
        assert_eq!(report["expectation"]["met"], true, "{report}");
    }
    let report = &reports[0];
    assert_eq!(report["result"]["words"], 4800, "{report}");
    assert!(
        report["logs"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("4800 words")),
        "{report}"
    );
    // The counts were recorded where the processor's setting says.
    let records = SqliteRecords::open(&scratch.dir.path().join("data/records.db")).unwrap();
    let value = records
        .get("wordcounts", "s3://docs/report.txt")
        .await
        .unwrap()
        .expect("the counts are recorded");
    let value: Value = serde_json::from_str(&value).unwrap();
    assert_eq!(value["lines"], 400);
}

#[tokio::test]
#[ignore = "needs the built examples: `bash tests/run.sh` builds them and runs this"]
async fn the_python_processor_passes_its_fixtures() {
    wordcount("wordcount-py.wasm").await;
}

#[tokio::test]
#[ignore = "needs the built examples: `bash tests/run.sh` builds them and runs this"]
async fn the_javascript_processor_passes_its_fixtures() {
    wordcount("wordcount-js.wasm").await;
}

#[test]
#[ignore = "needs the built examples: `bash tests/run.sh` builds them and runs this"]
fn the_rust_hello_processor_passes_its_fixture() {
    let scratch = Scratch::new();
    // The hello processor touches nothing: an empty manifest is all it needs.
    let empty = scratch.dir.path().join("nothing.toml");
    std::fs::write(&empty, "").unwrap();
    let reports = wasq_test(
        &scratch,
        &built("hello.wasm"),
        &examples().join("hello-rust/hello.json"),
        &empty,
    );
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0]["result"], "hello, world");
}

/// The Rust batch processor takes a fixture of many messages through
/// `wasq test` in one batch: one bulk write holds every valid entry, each
/// entry is done with where it went, and the one that is not an entry is
/// rejected on its own.
#[tokio::test]
#[ignore = "needs the built examples: `bash tests/run.sh` builds them and runs this"]
async fn the_rust_bulk_processor_writes_a_batch_at_once() {
    let scratch = Scratch::new();
    let manifest = examples().join("bulk-rust/bulk.toml");
    // The shipped fixture, its expectations met.
    let reports = wasq_test(
        &scratch,
        &built("bulk.wasm"),
        &examples().join("bulk-rust/entries.json"),
        &manifest,
    );
    assert_eq!(reports.len(), 13);
    assert!(
        reports.iter().all(|r| r["expectation"]["met"] == true),
        "{reports:?}"
    );

    // A thousand entries, one of them bad.
    let entries: Vec<Value> = (0..1000)
        .map(|i| {
            let body = if i == 500 {
                serde_json::json!({"account": "acme", "amount": "many"})
            } else {
                serde_json::json!({"account": format!("a{}", i % 7), "amount": 1.5})
            };
            serde_json::json!({"id": format!("e{i:04}"), "body": body})
        })
        .collect();
    let fixture = scratch.dir.path().join("many.json");
    std::fs::write(&fixture, serde_json::to_string(&entries).unwrap()).unwrap();
    let reports = wasq_test(&scratch, &built("bulk.wasm"), &fixture, &manifest);
    assert_eq!(reports.len(), 1000);
    let rejected: Vec<&Value> = reports
        .iter()
        .filter(|r| r["outcome"] == "reject")
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["id"], "e0500");
    assert!(
        reports
            .iter()
            .filter(|r| r["outcome"] == "done")
            .all(|r| { r["result"]["batch"] == "batch-e0000" && r["result"]["rows"] == 999 })
    );
    let records = SqliteRecords::open(&scratch.dir.path().join("data/records.db")).unwrap();
    let written: Value =
        serde_json::from_str(&records.get("ledger", "batch-e0000").await.unwrap().unwrap())
            .unwrap();
    assert_eq!(written["rows"].as_array().unwrap().len(), 999);
    assert_eq!(written["total"], 999.0 * 1.5);
}
