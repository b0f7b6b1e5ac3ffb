//! The command line, in two stages: clap structs for what the user typed,
//! then validated settings the rest of wasq runs on. Nothing else knows clap.

mod admin;
mod console;
mod demo;
mod plugins;
mod run;

pub use run::{BindingArgs, LimitArgs};

use crate::aws::AwsOptions;
use crate::backends::LocalEnv;
use crate::offline::{self, TestOptions};
use crate::runtime::plugins::PluginSources;
use crate::runtime::{self, EngineOptions};
use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "wasq",
    version,
    about = "Queue-driven jobs run as sandboxed WebAssembly processors"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Where wasq keeps its local state: records, the link secret, and the
    /// local blob store (`DATA_DIR/blobs`).
    #[arg(
        long,
        global = true,
        env = "WASQ_DATA_DIR",
        default_value = "wasq-data"
    )]
    pub data_dir: PathBuf,
    /// Folder of drop-in processors, `NAME.wasm`.
    #[arg(
        long,
        global = true,
        env = "WASQ_PLUGINS_DIR",
        default_value = "plugins"
    )]
    pub plugins_dir: PathBuf,
    /// Where compiled processors are cached.
    #[arg(long, global = true, env = "WASQ_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Compile processors every time instead of caching them.
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// The endpoint for every AWS service (SQS, S3, DynamoDB), for
    /// compatible servers; AWS_ENDPOINT_URL works as well.
    #[arg(long, global = true)]
    pub endpoint_url: Option<String>,
    /// The AWS region, over the credential chain's (AWS_REGION, profile).
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// Address S3 buckets by path (ENDPOINT/bucket/key), as most
    /// S3-compatible servers need.
    #[arg(long, global = true, env = "WASQ_S3_PATH_STYLE")]
    pub s3_path_style: bool,
    /// How log lines are written: `text`, or `json` (one object per line,
    /// with the message's span fields), as log pipelines expect.
    #[arg(long, global = true, env = "WASQ_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Free space the local blob store leaves on its disk: a write that
    /// would eat into it is refused as `unavailable` (a retry).
    #[arg(long, global = true, env = "WASQ_BLOB_RESERVE", default_value = "512MiB", value_parser = parse_size)]
    pub blob_reserve: u64,
    /// The address local signed links point at: wasq's HTTP server as
    /// clients reach it (default: the address `--listen` bound).
    #[arg(long, global = true, env = "WASQ_LINK_BASE")]
    pub link_base: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume queues: every message to its processor, settled like the
    /// Lambda SQS trigger (and better).
    Run(Box<run::RunArgs>),
    /// Send a message to a queue.
    Send(admin::SendArgs),
    /// Create, list, inspect and purge queues.
    #[command(subcommand)]
    Queue(admin::QueueCommand),
    /// Inspect and redrive dead letters.
    #[command(subcommand)]
    Dlq(admin::DlqCommand),
    /// List, check and inspect processors.
    #[command(subcommand)]
    Plugins(plugins::PluginsCommand),
    /// Run a processor on fixture messages against the local backends.
    Test(TestArgs),
    /// The operator console over the data directory's embedded queues,
    /// when no host is running: their depths and their dead letters.
    Console(console::ConsoleArgs),
    /// The whole flow on the embedded backends: seed sample documents,
    /// enqueue good and bad jobs, run until the queue is drained, print the
    /// download links and the dead letters, and serve the links.
    Demo(demo::DemoArgs),
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The processor: a plugin name or a path to a .wasm file.
    #[arg(long, default_value = "compress")]
    pub plugin: String,
    /// The blob store's root directory; reads and writes happen there.
    /// Defaults to DATA_DIR/blobs.
    #[arg(long)]
    pub blobs: Option<PathBuf>,
    /// Print one JSON object per message.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub limits: run::LimitArgs,
    /// A setting the processor reads with `config.get`, as KEY=VALUE.
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// A manifest for the processor (grants, limits, settings), used
    /// instead of the one it has; without either it may touch nothing.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Filter criteria to check the fixtures against, as a binding's
    /// `--filter` (repeatable): messages matching none are reported
    /// `filtered` and not run. Replaces the manifest's filters.
    #[arg(long = "filter", value_name = "PATTERN")]
    pub filters: Vec<String>,
    /// Take the filters of this queue's `[[binding]]` in the config file
    /// (wasq.toml, or --config-file).
    #[arg(long, value_name = "QUEUE", conflicts_with = "filters")]
    pub binding: Option<String>,
    /// The config file --binding reads.
    #[arg(long = "config-file", requires = "binding")]
    pub config_file: Option<PathBuf>,
    /// Fixture files: wasq's JSON form or a Lambda SQS event.
    #[arg(required = true)]
    pub fixtures: Vec<PathBuf>,
}

fn parse_size(text: &str) -> Result<u64, String> {
    runtime::limits::parse_bytes(text)
}

pub(crate) fn parse_config(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
            _ => bail!("--config `{pair}` is not KEY=VALUE"),
        })
        .collect()
}

impl GlobalArgs {
    pub(crate) fn engine(&self) -> EngineOptions {
        EngineOptions {
            cache_dir: if self.no_cache {
                None
            } else {
                self.cache_dir.clone().or_else(runtime::default_cache_dir)
            },
            ..EngineOptions::default()
        }
    }

    pub(crate) fn aws(&self) -> AwsOptions {
        AwsOptions {
            endpoint_url: self.endpoint_url.clone(),
            region: self.region.clone(),
            s3_path_style: self.s3_path_style,
        }
    }

    pub(crate) fn env(&self, blobs: Option<PathBuf>) -> LocalEnv {
        LocalEnv {
            blobs_root: blobs.unwrap_or_else(|| self.data_dir.join("blobs")),
            data_dir: self.data_dir.clone(),
            reserve: self.blob_reserve,
            link_base: self
                .link_base
                .clone()
                .unwrap_or_else(|| crate::backends::DEFAULT_LINK_BASE.to_string()),
        }
    }

    pub(crate) fn plugins_dir(&self) -> Option<PathBuf> {
        self.plugins_dir.is_dir().then(|| self.plugins_dir.clone())
    }
}

impl TestArgs {
    fn options(self, global: &GlobalArgs) -> anyhow::Result<TestOptions> {
        let limits = self.limits.settings();
        limits.resolve()?;
        for path in &self.fixtures {
            if !path.is_file() {
                bail!("fixture {} does not exist", path.display());
            }
        }
        let manifest = match &self.manifest {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let manifest: runtime::plugins::Manifest =
                    toml::from_str(&text).with_context(|| {
                        format!("{} is not a valid plugin manifest", path.display())
                    })?;
                Some((manifest, path.display().to_string()))
            }
            None => None,
        };
        let filters = match &self.binding {
            Some(queue) => run::binding_filters(self.config_file.as_deref(), queue)?,
            None if !self.filters.is_empty() => {
                Some(crate::filter::Filters::parse(&self.filters).context("--filter")?)
            }
            None => None,
        };
        Ok(TestOptions {
            filters,
            manifest,
            plugin: self.plugin,
            plugins: PluginSources::in_dir(global.plugins_dir()),
            env: global.env(self.blobs),
            fixtures: self.fixtures,
            json: self.json,
            engine: global.engine(),
            limits,
            config: parse_config(&self.config)?,
        })
    }
}

impl Cli {
    /// What is logged unless `WASQ_LOG` says otherwise: the host's progress
    /// for `run`, only warnings for the commands that print their own.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Run(_) => "info",
            _ => "warn",
        }
    }
}

/// Runs the command line; `Ok(false)` means the command ran but reports
/// failure (an unmet fixture expectation), for a non-zero exit.
pub async fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Test(args) => {
            let options = args.options(&cli.global)?;
            let stdout = std::io::stdout();
            offline::test(&options, &mut stdout.lock()).await
        }
        Command::Run(args) => run::run(*args, &cli.global).await,
        Command::Send(args) => admin::send(args, &cli.global).await,
        Command::Queue(command) => admin::queue(command, &cli.global).await,
        Command::Dlq(command) => admin::dlq(command, &cli.global).await,
        Command::Demo(args) => demo::demo(args, &cli.global).await,
        Command::Console(args) => console::console(args, &cli.global).await,
        Command::Plugins(command) => plugins::plugins(command, &cli.global).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_pairs_must_have_a_key() {
        assert_eq!(
            parse_config(&["level=9".into(), "prefix=s3://a/=b".into()]).unwrap(),
            BTreeMap::from([
                ("level".into(), "9".into()),
                ("prefix".into(), "s3://a/=b".into())
            ])
        );
        assert!(parse_config(&["=x".into()]).is_err());
        assert!(parse_config(&["novalue".into()]).is_err());
    }
}
