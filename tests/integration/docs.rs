//! Every manifest the README and deploy/ show, run as written: the
//! default processor, given exactly those grants, archives a job.
//! (deploy/README.md once showed a manifest that failed every job.)

use crate::harness::{self, Env, message, run};
use serde::Deserialize;
use std::path::Path;
use wasq::runtime::grants::Prefix;
use wasq::runtime::plugins::Manifest;
use wasq::runtime::{Limits, Outcome};

/// The ```toml blocks of a Markdown file.
fn toml_blocks(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```toml") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The manifests of `compress` a block holds: a whole manifest, or the
/// `[plugins.compress]` section of a `wasq.toml`.
fn manifests(block: &str) -> Vec<Manifest> {
    let value: toml::Value = toml::from_str(block).unwrap_or_else(|err| panic!("{err}\n{block}"));
    let mut found = Vec::new();
    if value.get("blobs").is_some() {
        found.push(Manifest::deserialize(value.clone()).unwrap());
    }
    if let Some(compress) = value.get("plugins").and_then(|p| p.get("compress"))
        && compress.get("blobs").is_some()
    {
        found.push(Manifest::deserialize(compress.clone()).unwrap());
    }
    found
}

fn first_under(prefixes: &[Prefix]) -> String {
    match prefixes.first().expect("a grant") {
        Prefix::Under { bucket, key } if key.is_empty() => format!("{bucket}/"),
        Prefix::Under { bucket, key } => format!("{bucket}/{key}/"),
        Prefix::Everything => "docs/".to_string(),
    }
}

#[tokio::test]
async fn every_manifest_the_docs_show_works_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for doc in ["README.md", "deploy/README.md"] {
        for block in toml_blocks(&root.join(doc)) {
            for manifest in manifests(&block) {
                let code = wasq::runtime::plugins::PluginCode {
                    manifest: Some(manifest),
                    manifest_origin: Some(doc.to_string()),
                    ..wasq::runtime::plugins::find("compress", None).unwrap()
                };
                let grants = code.grants().unwrap();
                let env = Env::new();
                let input = format!("{}a.txt", first_under(&grants.read));
                let output = format!("{}job.zip", first_under(&grants.write));
                env.put(&input, b"hello");
                let plugin =
                    harness::compress(Limits::default(), Default::default()).with_grants(grants);
                let job = serde_json::json!({
                    "job_id": "docs",
                    "files": [format!("s3://{input}")],
                    "output": format!("s3://{output}"),
                })
                .to_string();
                let (result, _) = run(&plugin, &env.services, &message("m", &job)).await;
                assert!(
                    matches!(result.outcome, Outcome::Done(Some(_))),
                    "the manifest in {doc} fails a job: {:?}\n{block}",
                    result.outcome
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 4, "only {checked} manifests found in the docs");
}
