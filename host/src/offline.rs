//! `wasq test`: runs a processor on fixture messages against the local
//! backends and checks what each fixture expects.

use crate::backends::LocalEnv;
use crate::blobs::{BlobUri, LocalBlobs};
use crate::filter::{Filters, Subject};
use crate::fixture::{self, Fixture};
use crate::runtime::plugins::PluginSources;
use crate::runtime::{
    EngineOptions, Fault, LimitSettings, LogLine, LogSink, Outcome, Plugin, Runtime, Services,
    Source,
};
use anyhow::Context as _;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

/// What `wasq test` was asked to do, already validated.
#[derive(Debug, Clone)]
pub struct TestOptions {
    /// A plugin name, or a path to a `.wasm` file.
    pub plugin: String,
    pub plugins: PluginSources,
    pub env: LocalEnv,
    pub fixtures: Vec<PathBuf>,
    pub json: bool,
    pub engine: EngineOptions,
    /// Limits over the plugin manifest's.
    pub limits: LimitSettings,
    /// A manifest given for this run, and where it came from; it replaces
    /// the plugin's own.
    pub manifest: Option<(crate::runtime::plugins::Manifest, String)>,
    pub config: BTreeMap<String, String>,
    /// Filters for this run, over the manifest's (as a binding's are).
    pub filters: Option<Filters>,
}

/// One fixture message's run.
#[derive(Debug, Clone)]
pub struct CaseReport {
    pub id: String,
    /// `None` when the filters kept the message from running.
    pub outcome: Option<Outcome>,
    pub fault: Option<Fault>,
    pub logs: Vec<LogLine>,
    /// None when the fixture declared no expectation.
    pub unmet: Option<Vec<String>>,
}

impl CaseReport {
    pub fn passed(&self) -> bool {
        self.unmet.as_ref().is_none_or(Vec::is_empty)
    }

    fn to_json(&self) -> Value {
        let mut out = json!({ "id": self.id, "outcome": kind(self.outcome.as_ref()) });
        match &self.outcome {
            None => {}
            Some(Outcome::Done(result)) => {
                out["result"] = match result {
                    Some(text) => {
                        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
                    }
                    None => Value::Null,
                }
            }
            Some(Outcome::Retry { reason, delay }) => {
                out["reason"] = reason.clone().into();
                if let Some(delay) = delay {
                    out["delay_secs"] = delay.as_secs().into();
                }
            }
            Some(Outcome::Reject(reason)) => out["reason"] = reason.clone().into(),
        }
        out["logs"] = serde_json::to_value(&self.logs).unwrap_or_default();
        if let Some(unmet) = &self.unmet {
            out["expectation"] = json!({ "met": unmet.is_empty(), "unmet": unmet });
        }
        out
    }
}

/// An outcome's name; `filtered` for a message the filters kept back.
fn kind(outcome: Option<&Outcome>) -> &'static str {
    outcome.map_or("filtered", Outcome::kind)
}

/// Runs every fixture, printing each result to `out` as it completes.
/// Returns whether every declared expectation was met.
pub async fn test(options: &TestOptions, out: &mut dyn Write) -> anyhow::Result<bool> {
    let mut fixtures = Vec::new();
    for path in &options.fixtures {
        fixtures.extend(fixture::load(path)?);
    }
    let mut code = options.plugins.find(&options.plugin)?;
    if let Some((manifest, origin)) = &options.manifest {
        code.manifest = Some(manifest.clone());
        code.manifest_origin = Some(origin.clone());
    }
    let limits = code.limits(&options.limits)?;
    let runtime = Runtime::new(EngineOptions {
        fuel: options.engine.fuel || limits.fuel.is_some(),
        ..options.engine.clone()
    })?;
    let plugin = runtime.load_code(&code, &options.limits, &options.config)?;
    let filters = match &options.filters {
        Some(filters) => filters,
        None => plugin.filters(),
    };
    if plugin.grants().is_empty() {
        let _ = writeln!(
            std::io::stderr(),
            "{}\n(or give this run a manifest with --manifest FILE)\n",
            crate::run::grant_advice(&plugin, None)
        );
    }
    let (blobs, services) = options.env.open()?;

    let mut met = 0;
    let mut unmet = 0;
    let mut unchecked = 0;
    let admitted: Vec<bool> = fixtures
        .iter()
        .map(|f| filters.admits(&subject(&f.message)))
        .collect();
    // A batch processor runs once on all the messages its filters admit
    // (in batches of at most 10,000), and reports each as usual.
    let mut batched = if plugin.is_batch() {
        run_batches(&runtime, &plugin, &services, &blobs, &fixtures, &admitted).await
    } else {
        Default::default()
    };
    for (n, fixture) in fixtures.iter().enumerate() {
        let message = &fixture.message;
        let report = if let Some(report) = batched.remove(&n) {
            report
        } else if admitted[n] {
            run_one(&runtime, &plugin, &services, &blobs, fixture).await
        } else {
            CaseReport {
                id: message.id.clone(),
                outcome: None,
                fault: None,
                logs: Vec::new(),
                unmet: fixture.expect.as_ref().map(fixture::Expect::unmet_filtered),
            }
        };
        match &report.unmet {
            None => unchecked += 1,
            Some(list) if list.is_empty() => met += 1,
            Some(_) => unmet += 1,
        }
        if options.json {
            writeln!(out, "{}", crate::text::json_line(&report.to_json()))?;
        } else {
            print_human(out, &report)?;
        }
    }
    if !options.json {
        writeln!(
            out,
            "fixtures: {met} met, {unmet} unmet, {unchecked} without expectations ({} messages, {} filtered out, plugin {})",
            fixtures.len(),
            admitted.iter().filter(|a| !**a).count(),
            plugin.name()
        )?;
    }
    Ok(unmet == 0)
}

/// What a filter sees of a fixture message.
fn subject(m: &crate::runtime::Message) -> Subject<'_> {
    Subject {
        id: &m.id,
        body: &m.body,
        attributes: &m.attributes,
        receive_count: m.receive_count,
        sent_at_ms: m.sent_at_ms,
        group_id: m.group_id.as_deref(),
    }
}

/// Runs a batch processor on the fixtures `admitted` marks, by index.
async fn run_batches(
    runtime: &Runtime,
    plugin: &Plugin,
    services: &Services,
    blobs: &LocalBlobs,
    fixtures: &[Fixture],
    admitted: &[bool],
) -> std::collections::HashMap<usize, CaseReport> {
    let admitted: Vec<(usize, &Fixture)> = fixtures
        .iter()
        .enumerate()
        .filter(|(n, _)| admitted[*n])
        .collect();
    let mut reports = std::collections::HashMap::new();
    for chunk in admitted.chunks(crate::dispatch::MAX_BATCH_SIZE) {
        let messages: Vec<_> = chunk.iter().map(|(_, f)| f.message.clone()).collect();
        let log = LogSink::new(
            plugin.name().clone(),
            format!("batch-{}", messages[0].id).as_str().into(),
            true,
        );
        let run = runtime
            .run_batch(plugin, services, &messages, log.clone())
            .await;
        // The batch's log lines, once, with its first message.
        let mut logs = Some(log.lines());
        for ((n, fixture), outcome) in chunk.iter().zip(run.outcomes) {
            reports.insert(
                *n,
                CaseReport {
                    id: fixture.message.id.clone(),
                    unmet: unmet_of(fixture, &outcome, blobs),
                    outcome: Some(outcome),
                    fault: run.fault.clone(),
                    logs: logs.take().unwrap_or_default(),
                },
            );
        }
    }
    reports
}

/// What a fixture expected and its outcome did not meet; `None` when it
/// expected nothing.
fn unmet_of(fixture: &Fixture, outcome: &Outcome, blobs: &LocalBlobs) -> Option<Vec<String>> {
    fixture.expect.as_ref().map(|expect| {
        let mut unmet = expect.unmet(outcome);
        if let Some(want) = &expect.entries {
            match archive_entries(blobs, outcome) {
                Ok(got) if &got == want => {}
                Ok(got) => unmet.push(format!("expected archive entries {want:?}, got {got:?}")),
                Err(err) => unmet.push(format!("expected archive entries {want:?}, but {err:#}")),
            }
        }
        unmet
    })
}

async fn run_one(
    runtime: &Runtime,
    plugin: &Plugin,
    services: &Services,
    blobs: &LocalBlobs,
    fixture: &Fixture,
) -> CaseReport {
    let log = LogSink::new(
        plugin.name().clone(),
        fixture.message.id.as_str().into(),
        true,
    );
    let run = runtime
        .run(plugin, services, &fixture.message, log.clone())
        .await;
    let unmet = unmet_of(fixture, &run.outcome, blobs);
    CaseReport {
        id: fixture.message.id.clone(),
        outcome: Some(run.outcome),
        fault: run.fault,
        logs: log.lines(),
        unmet,
    }
}

/// The entry names of the archive a `done` result points at (its `archive`
/// field), read from the local store.
pub fn archive_entries(blobs: &LocalBlobs, outcome: &Outcome) -> anyhow::Result<Vec<String>> {
    let Outcome::Done(Some(result)) = outcome else {
        anyhow::bail!("the outcome has no result naming an archive");
    };
    let result: Value = serde_json::from_str(result).context("the result is not JSON")?;
    let uri = result["archive"]
        .as_str()
        .context("the result has no `archive` field")?;
    let uri = BlobUri::parse(uri)?;
    let opened = blobs.open_object(&uri)?;
    let mut zip =
        zip::ZipArchive::new(opened.file).with_context(|| format!("reading {uri} as a zip"))?;
    (0..zip.len())
        .map(|i| Ok(zip.by_index(i)?.name()?.to_string()))
        .collect()
}

fn print_human(out: &mut dyn Write, report: &CaseReport) -> std::io::Result<()> {
    let verdict = match &report.unmet {
        None => "RAN ",
        Some(list) if list.is_empty() => "PASS",
        Some(_) => "FAIL",
    };
    let detail = match &report.outcome {
        None => "matches none of the filters: deleted unprocessed".to_string(),
        Some(Outcome::Done(Some(result))) => result.clone(),
        Some(Outcome::Done(None)) => String::new(),
        Some(Outcome::Retry {
            reason,
            delay: Some(delay),
        }) => format!("{reason} (retry in {}s)", delay.as_secs()),
        Some(Outcome::Retry {
            reason,
            delay: None,
        }) => reason.clone(),
        Some(Outcome::Reject(reason)) => reason.clone(),
    };
    // Ids, results, reasons and log lines are the processor's and the
    // fixture's: escaped, and results cut, before they reach a terminal.
    use crate::text::{Escaped, truncate};
    writeln!(
        out,
        "{verdict} {}  {}  {}",
        Escaped(&report.id),
        kind(report.outcome.as_ref()),
        Escaped(&truncate(&detail, 4096))
    )?;
    for line in &report.logs {
        let source = match line.source {
            Source::Log => "log",
            Source::Stdout => "stdout",
            Source::Stderr => "stderr",
        };
        let level = format!("{:?}", line.level).to_lowercase();
        writeln!(out, "       [{source} {level}] {}", Escaped(&line.message))?;
    }
    for miss in report.unmet.iter().flatten() {
        writeln!(out, "       unmet: {}", Escaped(miss))?;
    }
    Ok(())
}
