//! The `wasq` binary as a user runs it: `wasq test` on the shipped fixtures
//! (both fixture forms), unmet expectations, bad input, and `wasq demo`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// A scratch directory holding a copy of the fixture blobs.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&fixtures().join("blobs"), &dir.path().join("blobs"));
        Scratch { dir }
    }

    fn wasq(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_wasq"))
            .current_dir(self.dir.path())
            .env("WASQ_DATA_DIR", self.dir.path().join("data"))
            .env("WASQ_CACHE_DIR", crate::harness::cache_dir())
            .env("WASQ_PLUGINS_DIR", self.dir.path().join("plugins"))
            .args(args)
            .output()
            .unwrap()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn fixture(name: &str) -> String {
    fixtures().join(name).display().to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_shipped_fixture_meets_its_expectation() {
    let scratch = Scratch::new();
    let mut args = vec![
        "test".to_string(),
        "--blobs".to_string(),
        "blobs".to_string(),
    ];
    let mut names: Vec<_> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| p.display().to_string())
        .collect();
    names.sort();
    assert!(names.len() >= 4);
    args.extend(names);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = scratch.wasq(&args);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("fixtures: 9 met, 0 unmet"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(scratch.dir.path().join("blobs/archives/ok.zip").is_file());
}

#[test]
fn a_sam_event_runs_unchanged_and_json_output_has_one_object_per_message() {
    let scratch = Scratch::new();
    let out = scratch.wasq(&[
        "test",
        "--json",
        "--blobs",
        "blobs",
        &fixture("sam-event.json"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], "19dd0b57-b21e-4ac1-bd88-01bbb068cb78");
    assert_eq!(lines[0]["outcome"], "done");
    assert_eq!(lines[0]["result"]["archive"], "s3://archives/sam-1.zip");
    assert_eq!(lines[0]["result"]["files"], 2);
    assert_eq!(lines[1]["outcome"], "reject");
    assert!(
        lines[1]["reason"]
            .as_str()
            .unwrap()
            .contains("s3://docs/gone.pdf")
    );
    let entries =
        wasq::offline::list_entries(&scratch.dir.path().join("blobs/archives/sam-1.zip")).unwrap();
    assert_eq!(entries, ["notes.md", "data.csv"]);
}

#[test]
fn an_unmet_expectation_fails_the_run() {
    let scratch = Scratch::new();
    let wrong = scratch.dir.path().join("wrong.json");
    std::fs::write(
        &wrong,
        r#"{"id": "wrong", "body": {"job_id": "w", "files": ["s3://docs/notes.md"], "output": "s3://archives/w.zip"},
            "expect": {"outcome": "done", "entries": ["something-else.md"]}}"#,
    )
    .unwrap();
    let out = scratch.wasq(&["test", "--blobs", "blobs", wrong.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("FAIL wrong"), "{stdout}");
    assert!(
        stdout.contains(r#"expected archive entries ["something-else.md"], got ["notes.md"]"#),
        "{stdout}"
    );
}

#[test]
fn bad_input_is_named() {
    let scratch = Scratch::new();
    let broken = scratch.dir.path().join("broken.json");
    std::fs::write(&broken, "{ not json").unwrap();
    let out = scratch.wasq(&["test", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("error: fixture")
            && stderr.contains("broken.json")
            && stderr.contains("not valid JSON"),
        "{stderr}"
    );

    let out = scratch.wasq(&["test", "--plugin", "nope", &fixture("job-ok.json")]);
    assert!(
        text(&out.stderr).contains("no plugin `nope`"),
        "{}",
        text(&out.stderr)
    );

    std::fs::create_dir_all(scratch.dir.path().join("plugins")).unwrap();
    std::fs::write(
        scratch.dir.path().join("plugins/junk.wasm"),
        b"not wasm at all",
    )
    .unwrap();
    let out = scratch.wasq(&["test", "--plugin", "junk", &fixture("job-ok.json")]);
    assert!(
        text(&out.stderr).contains("plugin `junk`")
            && text(&out.stderr).contains("not a valid component"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_plugin_file_replaces_the_built_in_of_its_name() {
    let scratch = Scratch::new();
    std::fs::create_dir_all(scratch.dir.path().join("plugins")).unwrap();
    std::fs::copy(
        wasq_test_guests::ROGUE,
        scratch.dir.path().join("plugins/compress.wasm"),
    )
    .unwrap();
    let job = scratch.dir.path().join("noop.json");
    std::fs::write(
        &job,
        r#"{"id": "n", "body": "noop", "expect": {"outcome": "done"}}"#,
    )
    .unwrap();
    let out = scratch.wasq(&["test", job.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn the_demo_archives_the_sample_documents() {
    let scratch = Scratch::new();
    let out = scratch.wasq(&["demo"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("archive: s3://archives/sample.zip"),
        "{stdout}"
    );
    assert!(
        stdout.contains("report.txt, data.csv, notes.md, logo.png"),
        "{stdout}"
    );
    assert!(
        stdout.contains("link:    http://127.0.0.1:8080/blobs/archives/sample.zip?expires="),
        "{stdout}"
    );
}
