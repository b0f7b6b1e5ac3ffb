//! `wasq run`: bindings from flags or `wasq.toml`, checked into a
//! [`HostConfig`], then run until a signal (or until the queues are empty).

use super::{GlobalArgs, parse_config};
use crate::backends::{BlobBackend, RecordsBackend};
use crate::dispatch::{Backoff, BindingConfig};
use crate::queue::{MAX_BATCH, MAX_VISIBILITY};
use crate::run::{BindingSpec, DeadLetters, Host, HostConfig, QueueRef, check_visibility, drained};
use crate::runtime::LimitSettings;
use crate::runtime::plugins::{Manifest, PluginSources};
use anyhow::{Context as _, bail, ensure};
use clap::Args;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The queue to consume: `local://NAME`, `sqs://NAME` or an SQS queue
    /// URL. Without it, bindings come
    /// from the config file.
    #[arg(long)]
    pub queue: Option<String>,
    /// The processor for --queue: a plugin name or a .wasm path.
    #[arg(long, default_value = "compress")]
    pub plugin: String,
    /// Bindings and settings in TOML (default: wasq.toml, if present).
    #[arg(long = "config-file")]
    pub config_file: Option<PathBuf>,
    /// The HTTP server's address: the console, health, metrics, signed
    /// links.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The token the console asks for (at least 16 characters). Without
    /// one the console is served on a loopback listener only. The
    /// environment variable keeps it out of the process list.
    #[arg(long, env = "WASQ_CONSOLE_TOKEN", hide_env_values = true)]
    pub console_token: Option<String>,
    /// How long in-flight messages may take to finish at shutdown.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub grace: Option<Duration>,
    /// Stop once every bound queue is empty, instead of at a signal.
    #[arg(long)]
    pub until_empty: bool,
    /// POST a JSON notification here when a binding's dead-letter alarm
    /// fires or clears (http:// or https://).
    #[arg(long)]
    pub alarm_webhook: Option<String>,
    /// Where processors' objects live: `local` (DATA_DIR/blobs) or `s3`.
    #[arg(long)]
    pub blob_store: Option<BlobBackend>,
    /// Where records live: `sqlite` (DATA_DIR/records.db) or
    /// `dynamodb://TABLE`.
    #[arg(long)]
    pub records: Option<RecordsBackend>,
    #[command(flatten)]
    pub binding: BindingArgs,
}

/// Settings of one binding, from flags or one `[[binding]]` of the file.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BindingArgs {
    #[arg(skip)]
    pub queue: Option<String>,
    #[arg(skip)]
    pub plugin: Option<String>,
    /// Messages per receive, 1-10; for a batch processor, messages per
    /// batch, 1-10000 (filled by several receives within the batching
    /// window).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// How long to gather a fuller batch, e.g. 200ms (at most 300s).
    #[arg(long)]
    pub batching_window: Option<String>,
    /// Messages in flight at most.
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// How long each receive long-polls for messages, 0-20s (default 20s).
    /// A poll under way at shutdown is finished, so shutdown may take this
    /// long.
    #[arg(long)]
    pub receive_wait: Option<String>,
    /// How long a received message stays hidden, e.g. 3m, per receive;
    /// must exceed the processor's timeout (default: the queue's own; a
    /// local queue `wasq run` creates gets six times the timeout, at
    /// least 3m).
    #[arg(long)]
    pub visibility_timeout: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub limits: LimitArgs,
    /// First retry delay, e.g. 2s; doubles per receive.
    #[arg(long)]
    pub backoff_base: Option<String>,
    /// Longest retry delay, e.g. 15m.
    #[arg(long)]
    pub backoff_cap: Option<String>,
    /// Random share of each retry delay, 0-1.
    #[arg(long)]
    pub backoff_jitter: Option<f64>,
    /// Receives after which a failing message is dead-lettered (default:
    /// the queue's redrive policy, which this must match; 5 for a queue
    /// `wasq run` creates).
    #[arg(long)]
    pub max_receive_count: Option<u32>,
    /// The dead-letter queue (default: the queue's redrive policy's; for a
    /// queue `wasq run` creates, NAME-dlq).
    #[arg(long)]
    pub dlq: Option<String>,
    /// Drop rejected and exhausted messages instead of dead-lettering them.
    #[arg(long, num_args = 0, default_missing_value = "true")]
    pub no_dlq: Option<bool>,
    /// Warn when the dead-letter queue holds more than this many messages.
    #[arg(long)]
    pub dlq_alarm: Option<u64>,
    /// Settings for the processor, KEY=VALUE.
    #[arg(long = "plugin-config", value_name = "KEY=VALUE")]
    #[serde(default)]
    pub plugin_config: Vec<String>,
    /// Filter criteria, Lambda's pattern syntax as JSON, e.g.
    /// '{"body": {"type": ["order"]}}'; repeat for more (any may match).
    /// Messages matching none are deleted unprocessed. Replaces the
    /// plugin manifest's filters.
    #[arg(long = "filter", value_name = "PATTERN")]
    #[serde(default)]
    pub filters: Vec<String>,
    /// The bucket large payloads are read from: a message the SQS
    /// Extended Client sent (a pointer to its body) is run on the body
    /// stored there; pointers into any other bucket are refused. Without
    /// it, such messages are dead-lettered naming this setting.
    #[arg(long)]
    pub payload_bucket: Option<String>,
    /// The largest payload read, e.g. 16MiB (at most 1GiB).
    #[arg(long)]
    pub payload_max: Option<String>,
    /// Keys of a `[[binding]]` that are none of the above: refused.
    #[arg(skip)]
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

/// The processor's limits, declared once for `wasq run` (and the keys of a
/// `[[binding]]`) and `wasq test`.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LimitArgs {
    /// The processor's wall-clock limit per message, e.g. 30s (over its
    /// manifest's).
    #[arg(long)]
    pub timeout: Option<String>,
    /// The processor's memory limit, e.g. 128MiB.
    #[arg(long)]
    pub memory: Option<String>,
    /// The processor's fuel (instruction count) limit per message; turns
    /// on fuel metering, which slows processors by about a third.
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Bytes the processor may read from the blob store per message.
    #[arg(long)]
    pub bytes_read: Option<String>,
    /// Bytes the processor may write to the blob store per message.
    #[arg(long)]
    pub bytes_written: Option<String>,
    /// Host memory one message may hold in blob buffers (S3 parts,
    /// read-ahead), e.g. 64MiB.
    #[arg(long)]
    pub buffers: Option<String>,
}

impl LimitArgs {
    /// These limits, with the unset ones taken from `base`.
    fn or(self, base: &LimitArgs) -> LimitArgs {
        LimitArgs {
            memory: self.memory.or_else(|| base.memory.clone()),
            timeout: self.timeout.or_else(|| base.timeout.clone()),
            fuel: self.fuel.or(base.fuel),
            bytes_read: self.bytes_read.or_else(|| base.bytes_read.clone()),
            bytes_written: self.bytes_written.or_else(|| base.bytes_written.clone()),
            buffers: self.buffers.or_else(|| base.buffers.clone()),
        }
    }

    pub fn settings(&self) -> LimitSettings {
        LimitSettings {
            memory: self.memory.clone(),
            timeout: self.timeout.clone(),
            fuel: self.fuel,
            bytes_read: self.bytes_read.clone(),
            bytes_written: self.bytes_written.clone(),
            buffers: self.buffers.clone(),
        }
    }
}

/// `wasq.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ConfigFile {
    listen: Option<SocketAddr>,
    grace: Option<String>,
    alarm_webhook: Option<String>,
    /// `local` or `s3`.
    blob_store: Option<String>,
    /// `sqlite` or `dynamodb://TABLE`.
    records: Option<String>,
    #[serde(default)]
    binding: Vec<BindingArgs>,
    /// Manifests for plugins without one beside them, built-ins included.
    #[serde(default)]
    plugins: BTreeMap<String, Manifest>,
}

impl ConfigFile {
    /// The file given, else `wasq.toml` if there is one, else defaults.
    fn load(given: Option<&std::path::Path>) -> anyhow::Result<(ConfigFile, Option<PathBuf>)> {
        let path = given.map(PathBuf::from).or_else(|| {
            std::path::Path::new("wasq.toml")
                .is_file()
                .then(|| "wasq.toml".into())
        });
        let file = match &path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("{} is not a valid wasq config", path.display()))?
            }
            None => ConfigFile::default(),
        };
        Ok((file, path))
    }
}

/// The filters of the config file's binding of `queue`, for `wasq test`:
/// the binding's own, or `None` when it has none (the plugin manifest's
/// then apply, as they would in `wasq run`).
pub(super) fn binding_filters(
    config_file: Option<&std::path::Path>,
    queue: &str,
) -> anyhow::Result<Option<crate::filter::Filters>> {
    let (file, path) = ConfigFile::load(config_file)?;
    let path =
        path.context("--binding reads wasq.toml, and there is none here; give --config-file")?;
    let want = QueueRef::parse(queue)?;
    let binding = file
        .binding
        .iter()
        .find(|b| {
            b.queue
                .as_deref()
                .and_then(|q| QueueRef::parse(q).ok())
                .is_some_and(|q| q == want)
        })
        .with_context(|| format!("{} has no [[binding]] for {want}", path.display()))?;
    if binding.filters.is_empty() {
        return Ok(None);
    }
    crate::filter::Filters::parse(&binding.filters)
        .map(Some)
        .with_context(|| format!("{}: binding {want}", path.display()))
}

fn duration(field: &str, value: &Option<String>, default: Duration) -> anyhow::Result<Duration> {
    match value {
        Some(text) => humantime::parse_duration(text)
            .with_context(|| format!("{field} `{text}` is not a duration like 30s or 5m")),
        None => Ok(default),
    }
}

impl BindingArgs {
    /// Fills fields unset here from `base` (flags over file).
    fn or(self, base: &BindingArgs) -> BindingArgs {
        BindingArgs {
            queue: self.queue.or_else(|| base.queue.clone()),
            plugin: self.plugin.or_else(|| base.plugin.clone()),
            batch_size: self.batch_size.or(base.batch_size),
            batching_window: self
                .batching_window
                .or_else(|| base.batching_window.clone()),
            max_concurrency: self.max_concurrency.or(base.max_concurrency),
            receive_wait: self.receive_wait.or_else(|| base.receive_wait.clone()),
            visibility_timeout: self
                .visibility_timeout
                .or_else(|| base.visibility_timeout.clone()),
            limits: self.limits.or(&base.limits),
            backoff_base: self.backoff_base.or_else(|| base.backoff_base.clone()),
            backoff_cap: self.backoff_cap.or_else(|| base.backoff_cap.clone()),
            backoff_jitter: self.backoff_jitter.or(base.backoff_jitter),
            max_receive_count: self.max_receive_count.or(base.max_receive_count),
            // A flag for where dead letters go replaces the file's, either
            // way round.
            dlq: match self.no_dlq {
                Some(true) => None,
                _ => self.dlq.clone().or_else(|| base.dlq.clone()),
            },
            no_dlq: match self.dlq {
                Some(_) => None,
                None => self.no_dlq.or(base.no_dlq),
            },
            dlq_alarm: self.dlq_alarm.or(base.dlq_alarm),
            plugin_config: if self.plugin_config.is_empty() {
                base.plugin_config.clone()
            } else {
                self.plugin_config
            },
            filters: if self.filters.is_empty() {
                base.filters.clone()
            } else {
                self.filters
            },
            payload_bucket: self.payload_bucket.or_else(|| base.payload_bucket.clone()),
            payload_max: self.payload_max.or_else(|| base.payload_max.clone()),
            unknown: base.unknown.clone(),
        }
    }

    /// Checks the combination and builds the binding.
    pub fn spec(&self) -> anyhow::Result<BindingSpec> {
        if let Some(key) = self.unknown.keys().next() {
            bail!(
                "binding {}: `{}` is not a binding setting (see the README's table of them)",
                self.queue.as_deref().unwrap_or("without a queue"),
                crate::text::Escaped(key)
            );
        }
        let queue_text = self.queue.as_deref().context("a binding needs a queue")?;
        let queue = QueueRef::parse(queue_text)?;
        let at = |what: &str| format!("binding {queue}: {what}");
        let defaults = BindingConfig::default();

        let batch_size = self.batch_size.unwrap_or(defaults.batch_size);
        ensure!(
            (1..=crate::dispatch::MAX_BATCH_SIZE).contains(&batch_size),
            at(&format!(
                "batch size {batch_size} is not 1-{MAX_BATCH} (1-{} for batch processors)",
                crate::dispatch::MAX_BATCH_SIZE
            ))
        );
        let batching_window = duration(
            "batching window",
            &self.batching_window,
            defaults.batching_window,
        )?;
        ensure!(
            batching_window <= Duration::from_secs(300),
            at("the batching window is at most 300s")
        );
        let wait = duration("receive wait", &self.receive_wait, defaults.wait)?;
        ensure!(
            wait <= crate::queue::MAX_WAIT,
            at("the receive wait is at most 20s")
        );
        let max_concurrency = self.max_concurrency.unwrap_or(defaults.max_concurrency);
        ensure!(
            (1..=1000).contains(&max_concurrency),
            at(&format!("max concurrency {max_concurrency} is not 1-1000"))
        );
        let limits = self.limits.settings();
        // The plugin's manifest may set what is left unset here, so only the
        // syntax is checked now; the whole is checked at start.
        let resolved = limits
            .resolve()
            .with_context(|| format!("binding {queue}"))?;
        let visibility_timeout = match &self.visibility_timeout {
            Some(_) => {
                let given = duration(
                    "visibility timeout",
                    &self.visibility_timeout,
                    Duration::ZERO,
                )?;
                ensure!(
                    given <= MAX_VISIBILITY,
                    at("the visibility timeout is at most 12h")
                );
                if self.limits.timeout.is_some() {
                    check_visibility(&queue, given, resolved.timeout)?;
                }
                Some(given)
            }
            None => None,
        };
        let backoff = Backoff {
            base: duration("backoff base", &self.backoff_base, defaults.backoff.base)?,
            cap: duration("backoff cap", &self.backoff_cap, defaults.backoff.cap)?,
            jitter: self.backoff_jitter.unwrap_or(defaults.backoff.jitter),
        };
        ensure!(
            !backoff.base.is_zero(),
            at("the backoff base must be more than zero")
        );
        ensure!(
            backoff.cap >= backoff.base,
            at("the backoff cap must be at least its base")
        );
        ensure!(
            backoff.cap <= MAX_VISIBILITY,
            at("the backoff cap is at most 12h")
        );
        ensure!(
            (0.0..=1.0).contains(&backoff.jitter),
            at("the backoff jitter is a share, 0-1")
        );
        let max_receive_count = self.max_receive_count.unwrap_or(defaults.max_receive_count);
        ensure!(
            (1..=1000).contains(&max_receive_count),
            at("max receive count is 1-1000")
        );
        let dead_letters = match (&self.dlq, self.no_dlq.unwrap_or(false)) {
            (Some(_), true) => bail!(at("give a dead-letter queue or no-dlq, not both")),
            (Some(dlq), false) => {
                let dlq = QueueRef::parse(dlq)?;
                ensure!(
                    dlq != queue,
                    at("a queue cannot be its own dead-letter queue")
                );
                DeadLetters::To(dlq)
            }
            (None, true) => DeadLetters::Drop,
            (None, false) => DeadLetters::Default,
        };
        let filters = if self.filters.is_empty() {
            None
        } else {
            Some(std::sync::Arc::new(
                crate::filter::Filters::parse(&self.filters)
                    .with_context(|| format!("binding {queue}"))?,
            ))
        };
        let payload_max = match &self.payload_max {
            Some(text) => crate::runtime::limits::parse_bytes(text)
                .map_err(|err| anyhow::anyhow!(at(&format!("payload-max: {err}"))))?,
            None => crate::payload::DEFAULT_MAX,
        };
        ensure!(
            (1..=crate::payload::LARGEST_MAX).contains(&payload_max),
            at("payload-max is at most 1GiB")
        );
        if let Some(bucket) = &self.payload_bucket {
            crate::blobs::BlobUri::parse(&format!("s3://{bucket}/k")).map_err(|_| {
                anyhow::anyhow!(at(&format!(
                    "payload-bucket `{}` is not a bucket name",
                    crate::text::Escaped(bucket)
                )))
            })?;
        }
        Ok(BindingSpec {
            plugin: self
                .plugin
                .clone()
                .unwrap_or_else(|| "compress".to_string()),
            limits,
            visibility_timeout,
            max_receive_count: self.max_receive_count,
            plugin_config: parse_config(&self.plugin_config)?,
            config: BindingConfig {
                name: queue.name().to_string(),
                batch_size,
                batching_window,
                max_concurrency,
                visibility_timeout: defaults.visibility_timeout,
                wait,
                backoff,
                max_receive_count,
                dlq_alarm: self.dlq_alarm,
                filters,
                payloads: crate::payload::PayloadPolicy {
                    bucket: self.payload_bucket.clone(),
                    max: payload_max,
                },
            },
            queue,
            dead_letters,
        })
    }
}

impl RunArgs {
    pub fn host_config(self, global: &GlobalArgs) -> anyhow::Result<(HostConfig, bool)> {
        let (file, file_path) = ConfigFile::load(self.config_file.as_deref())?;
        let flags = BindingArgs {
            queue: self.queue.clone(),
            plugin: self.queue.as_ref().map(|_| self.plugin.clone()),
            ..self.binding.clone()
        };
        // Flags set on the command line apply over every binding of the
        // file (flags > file > manifest > defaults); the queue and plugin
        // stay the file's.
        let bindings = if self.queue.is_some() {
            vec![flags.spec()?]
        } else {
            file.binding
                .iter()
                .map(|binding| {
                    BindingArgs {
                        queue: None,
                        plugin: None,
                        ..self.binding.clone()
                    }
                    .or(binding)
                    .spec()
                })
                .collect::<anyhow::Result<Vec<_>>>()?
        };
        if bindings.is_empty() {
            bail!(
                "nothing to run: give --queue (local://NAME, sqs://NAME or a queue URL), or [[binding]]s in wasq.toml"
            );
        }
        let grace = match self.grace {
            Some(grace) => grace,
            None => duration("grace", &file.grace, Duration::from_secs(30))?,
        };
        let listen = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| ([127, 0, 0, 1], 8080).into());
        let blobs = match (self.blob_store, &file.blob_store) {
            (Some(flag), _) => flag,
            (None, Some(text)) => text.parse().map_err(|err: String| anyhow::anyhow!(err))?,
            (None, None) => BlobBackend::default(),
        };
        let records = match (self.records, &file.records) {
            (Some(flag), _) => flag,
            (None, Some(text)) => text.parse().map_err(|err: String| anyhow::anyhow!(err))?,
            (None, None) => RecordsBackend::default(),
        };
        Ok((
            HostConfig {
                env: global.env(None),
                aws: global.aws(),
                blobs,
                records,
                engine: global.engine(),
                plugins: PluginSources {
                    dir: global.plugins_dir(),
                    manifests: file.plugins,
                    manifests_file: file_path,
                },
                listen: Some(listen),
                links_follow_listen: global.link_base.is_none(),
                grace,
                alarm_webhook: match self.alarm_webhook.as_ref().or(file.alarm_webhook.as_ref()) {
                    Some(url) => Some(crate::dispatch::Webhook::new(url)?),
                    None => None,
                },
                console_token: self.console_token.clone(),
                bindings,
            },
            self.until_empty,
        ))
    }
}

/// Resolves at SIGINT or SIGTERM.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot listen for signals; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}

pub async fn run(args: RunArgs, global: &GlobalArgs) -> anyhow::Result<bool> {
    let (config, until_empty) = args.host_config(global)?;
    let host = Host::start(config).await?;
    for advice in &host.advice {
        // Written, not printed: a closed stderr must not stop the host.
        let _ = writeln!(std::io::stderr(), "\n{advice}");
    }
    // The first SIGINT or SIGTERM starts the graceful shutdown; a second
    // one cuts it short, as service managers expect.
    let (first, first_signal) = tokio::sync::oneshot::channel();
    let hurry = host.hurry();
    tokio::spawn(async move {
        signal().await;
        let _ = first.send(());
        signal().await;
        hurry.cancel();
    });
    let signalled = async move {
        let _ = first_signal.await;
    };
    if until_empty {
        let queues = host.bound.clone();
        host.run(
            async move {
                tokio::select! {
                    _ = signalled => {}
                    _ = drained(queues) => {}
                }
            },
            None,
        )
        .await?;
    } else {
        host.run(signalled, None).await?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(extra: impl FnOnce(&mut BindingArgs)) -> anyhow::Result<BindingSpec> {
        let mut args = BindingArgs {
            queue: Some("local://jobs".into()),
            ..BindingArgs::default()
        };
        extra(&mut args);
        args.spec()
    }

    #[test]
    fn defaults_make_a_sound_binding() {
        let spec = binding(|_| {}).unwrap();
        assert_eq!(spec.dead_letters, DeadLetters::Default);
        let limits = spec.limits.resolve().unwrap();
        assert!(spec.settle(&limits).unwrap().visibility_timeout > limits.timeout);
        assert_eq!(spec.plugin, "compress");
    }

    #[test]
    fn bad_combinations_are_explained() {
        type Change = Box<dyn FnOnce(&mut BindingArgs)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|a| a.batch_size = Some(10_001)),
                "batch size 10001 is not 1-10 (1-10000 for batch processors)",
            ),
            (
                Box::new(|a| {
                    a.limits.timeout = Some("60s".into());
                    a.visibility_timeout = Some("30s".into())
                }),
                "the visibility timeout (30s) must exceed the processor timeout (1m)",
            ),
            (
                Box::new(|a| a.max_concurrency = Some(0)),
                "max concurrency 0",
            ),
            (
                Box::new(|a| a.limits.timeout = Some("soon".into())),
                "timeout `soon` is not a duration",
            ),
            (
                Box::new(|a| {
                    a.dlq = Some("local://dead".into());
                    a.no_dlq = Some(true)
                }),
                "not both",
            ),
            (
                Box::new(|a| a.dlq = Some("local://jobs".into())),
                "its own dead-letter queue",
            ),
            (
                Box::new(|a| a.backoff_jitter = Some(2.0)),
                "jitter is a share",
            ),
            (
                Box::new(|a| a.limits.memory = Some("lots".into())),
                "limit memory",
            ),
            (
                Box::new(|a| a.limits.fuel = Some(0)),
                "fuel must be more than zero",
            ),
        ];
        for (change, expected) in cases {
            let err = format!("{:#}", binding(change).unwrap_err());
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn a_manifest_timeout_moves_the_default_visibility_or_is_refused() {
        let spec = binding(|_| {}).unwrap();
        let manifest = LimitSettings {
            timeout: Some("10m".into()),
            ..LimitSettings::default()
        };
        let limits = spec.limits.or(&manifest).resolve().unwrap();
        assert_eq!(
            spec.settle(&limits).unwrap().visibility_timeout,
            Duration::from_secs(3600)
        );
        let spec = binding(|a| a.visibility_timeout = Some("5m".into())).unwrap();
        let err = spec.settle(&limits).unwrap_err().to_string();
        assert!(
            err.contains("the visibility timeout (5m) must exceed the processor timeout (10m)"),
            "{err}"
        );
    }

    #[test]
    fn a_config_file_holds_several_bindings() {
        let file: ConfigFile = toml::from_str(
            r#"
            listen = "127.0.0.1:9090"
            grace = "10s"
            [[binding]]
            queue = "local://jobs"
            batch-size = 5
            timeout = "10s"
            [[binding]]
            queue = "local://orders.fifo"
            plugin = "my-plugin"
            no-dlq = true
            plugin-config = ["level=9"]
            [plugins.compress.limits]
            timeout = "2m"
            "#,
        )
        .unwrap();
        let specs: Vec<_> = file.binding.iter().map(|b| b.spec().unwrap()).collect();
        assert_eq!(specs[0].config.batch_size, 5);
        let limits = specs[0].limits.resolve().unwrap();
        assert_eq!(
            specs[0].settle(&limits).unwrap().visibility_timeout,
            Duration::from_secs(180)
        );
        assert_eq!(
            file.plugins["compress"].limits.timeout.as_deref(),
            Some("2m")
        );
        assert_eq!(specs[1].dead_letters, DeadLetters::Drop);
        assert_eq!(specs[1].plugin_config["level"], "9");
        let file = toml::from_str::<ConfigFile>("[[binding]]\nqueue = \"x\"\nbogus = 1\n").unwrap();
        let err = file.binding[0].spec().unwrap_err().to_string();
        assert!(err.contains("`bogus` is not a binding setting"), "{err}");
    }
}

#[cfg(test)]
mod store_tests {
    use crate::backends::{BlobBackend, QueueRef, RecordsBackend};
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn host_config(args: &[&str]) -> anyhow::Result<crate::run::HostConfig> {
        let cli = Cli::try_parse_from(args)?;
        let Command::Run(run) = cli.command else {
            unreachable!("a run command")
        };
        Ok(run.host_config(&cli.global)?.0)
    }

    /// Binding flags were once dropped without a word when the bindings came
    /// from the file.
    #[test]
    fn binding_flags_apply_over_every_file_binding() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wasq.toml");
        std::fs::write(
            &file,
            "[[binding]]\nqueue = \"local://a\"\ntimeout = \"10s\"\nmax-concurrency = 4\n[[binding]]\nqueue = \"local://b\"\n",
        )
        .unwrap();
        let file = file.display().to_string();
        let config = host_config(&[
            "wasq",
            "run",
            "--config-file",
            &file,
            "--timeout",
            "5s",
            "--visibility-timeout",
            "40s",
        ])
        .unwrap();
        assert_eq!(config.bindings.len(), 2);
        for spec in &config.bindings {
            assert_eq!(spec.limits.timeout.as_deref(), Some("5s"));
            assert_eq!(
                spec.visibility_timeout,
                Some(std::time::Duration::from_secs(40))
            );
        }
        assert_eq!(config.bindings[0].config.max_concurrency, 4);
        assert_eq!(config.bindings[1].queue, QueueRef::Local("b".into()));
        // A flag that cannot apply is refused, naming the binding.
        let err = host_config(&[
            "wasq",
            "run",
            "--config-file",
            &file,
            "--visibility-timeout",
            "5s",
            "--timeout",
            "30s",
        ])
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("binding local://a: the visibility timeout (5s) must exceed the processor timeout (30s)"),
            "{err:#}"
        );

        // Where dead letters go: a flag replaces the file's choice, either
        // way round.
        std::fs::write(
            &file,
            "[[binding]]\nqueue = \"local://a\"\ndlq = \"local://elsewhere\"\n[[binding]]\nqueue = \"local://b\"\nno-dlq = true\n",
        )
        .unwrap();
        let config = host_config(&["wasq", "run", "--config-file", &file, "--no-dlq"]).unwrap();
        assert_eq!(
            config.bindings[0].dead_letters,
            crate::run::DeadLetters::Drop
        );
        let config =
            host_config(&["wasq", "run", "--config-file", &file, "--dlq", "local://d"]).unwrap();
        assert_eq!(
            config.bindings[1].dead_letters,
            crate::run::DeadLetters::To(QueueRef::Local("d".into()))
        );
    }

    #[test]
    fn stores_and_queues_come_from_the_file_or_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wasq.toml");
        std::fs::write(
            &file,
            "blob-store = \"s3\"\nrecords = \"dynamodb://wasq-records\"\n[[binding]]\nqueue = \"https://sqs.eu-west-1.amazonaws.com/123456789012/jobs\"\n",
        )
        .unwrap();
        let file = file.display().to_string();
        let config = host_config(&["wasq", "run", "--config-file", &file]).unwrap();
        assert_eq!(config.blobs, BlobBackend::S3);
        assert_eq!(
            config.records,
            RecordsBackend::DynamoDb("wasq-records".into())
        );
        assert!(matches!(config.bindings[0].queue, QueueRef::Sqs(_)));
        let config = host_config(&[
            "wasq",
            "--endpoint-url",
            "http://127.0.0.1:4566",
            "run",
            "--config-file",
            &file,
            "--blob-store",
            "local",
            "--records",
            "sqlite",
        ])
        .unwrap();
        assert_eq!(config.blobs, BlobBackend::Local);
        assert_eq!(config.records, RecordsBackend::Sqlite);
        assert_eq!(
            config.aws.endpoint_url.as_deref(),
            Some("http://127.0.0.1:4566")
        );
        std::fs::write(
            dir.path().join("bad.toml"),
            "records = \"mongodb://x\"\n[[binding]]\nqueue = \"jobs\"\n",
        )
        .unwrap();
        let bad = dir.path().join("bad.toml").display().to_string();
        let err = host_config(&["wasq", "run", "--config-file", &bad]).unwrap_err();
        assert!(
            err.to_string().contains("records store `mongodb://x`"),
            "{err}"
        );
    }
}
