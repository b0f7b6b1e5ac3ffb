//! `wasq run`: opens the backends, loads the plugins, and runs the
//! dispatcher and the HTTP server until shutdown.

use crate::aws::AwsOptions;
use crate::backends::{Backends, BlobBackend, LocalEnv, RecordsBackend};
use crate::console::{BindingView, Console};
use crate::dispatch::{
    Binding, BindingConfig, Controls, Dispatcher, Metrics, Readiness, Timelines,
};
use crate::queue::QueueOptions;
use crate::queue::{Queue, QueueError, QueueStats, Redrive};
use crate::reload::{Reloader, Watched};
use crate::runtime::plugins::PluginSources;
use crate::runtime::{EngineOptions, LimitSettings, Limits, PluginSlot, Runtime};
use crate::serve::{self, ServeState};
use anyhow::{Context as _, bail};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

pub use crate::backends::QueueRef;

/// Where a binding's dead letters go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetters {
    /// The queue's default dead-letter queue.
    Default,
    To(QueueRef),
    /// Dropped, logged as errors: the user's explicit choice.
    Drop,
}

/// One binding as configured.
#[derive(Debug, Clone)]
pub struct BindingSpec {
    pub queue: QueueRef,
    pub dead_letters: DeadLetters,
    pub plugin: String,
    /// Limits set on the binding, over the plugin manifest's.
    pub limits: LimitSettings,
    /// The visibility timeout set on the binding; without one, it is the
    /// queue's (a queue wasq creates gets [`BindingSpec::settle`]'s).
    pub visibility_timeout: Option<Duration>,
    /// The receive count set on the binding; it must agree with the
    /// queue's redrive policy, if the queue has one.
    pub max_receive_count: Option<u32>,
    pub plugin_config: BTreeMap<String, String>,
    /// Its dispatch settings; the visibility timeout is settled at start.
    pub config: BindingConfig,
}

impl BindingSpec {
    /// The dispatch settings once the plugin's limits are known: the
    /// visibility timeout given, or (for a queue wasq creates) six times
    /// the processor timeout, at least the default; it must exceed the
    /// timeout. Binding to the queue settles the rest.
    pub fn settle(&self, limits: &Limits) -> anyhow::Result<BindingConfig> {
        let visibility = self.visibility_timeout.unwrap_or_else(|| {
            BindingConfig::default()
                .visibility_timeout
                .max(limits.timeout * 6)
                .min(crate::queue::MAX_VISIBILITY)
        });
        check_visibility(&self.queue, visibility, limits.timeout)?;
        Ok(BindingConfig {
            visibility_timeout: visibility,
            ..self.config.clone()
        })
    }
}

/// How long a stopping host waits for the store's own clean-up.
const SETTLE_WAIT: Duration = Duration::from_secs(10);

/// Lifts the soft limit on open files to the hard one. A message may hold
/// a socket for each object it reads ahead, each range and each part in
/// flight (about 150 at most with the S3 store), so a few messages at once
/// pass the soft limit of 1,024 most systems start a process with; the hard
/// limit is the operator's, and is kept. Under an unlimited hard limit the
/// soft one goes to 2^20, the most Linux allows by default.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let Some(current) = limit.current else {
        return;
    };
    let target = limit.maximum.unwrap_or(1 << 20);
    if current >= target {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: Some(target),
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(from = current, to = target, "raised the open files limit"),
        Err(err) => tracing::warn!(
            limit = current,
            error = %err,
            "could not raise the open files limit; many messages reading from S3 at once may run out"
        ),
    }
}

/// A message must stay hidden for longer than its processor may run, or it
/// could reappear and run twice at once.
pub fn check_visibility(
    queue: &QueueRef,
    visibility: Duration,
    timeout: Duration,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        visibility > timeout,
        "binding {queue}: the visibility timeout ({}) must exceed the processor timeout ({}), or a message could reappear while it still runs",
        humantime::format_duration(visibility),
        humantime::format_duration(timeout)
    );
    Ok(())
}

/// Everything `wasq run` needs, validated.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub env: LocalEnv,
    pub aws: AwsOptions,
    pub blobs: BlobBackend,
    pub records: RecordsBackend,
    pub engine: EngineOptions,
    pub plugins: PluginSources,
    /// Where the HTTP server listens; `None` runs without one.
    pub listen: Option<SocketAddr>,
    /// Whether local links point at the address the server is bound to,
    /// rather than at the link base given.
    pub links_follow_listen: bool,
    pub grace: Duration,
    /// Where dead-letter alarms are POSTed, if anywhere.
    pub alarm_webhook: Option<crate::dispatch::Webhook>,
    /// The token the console asks for; without one it is served on a
    /// loopback listener only.
    pub console_token: Option<String>,
    pub bindings: Vec<BindingSpec>,
}

/// A host with its backends open and plugins loaded, ready to run.
pub struct Host {
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
    pub backends: Arc<Backends>,
    /// Each binding's queue, in configuration order.
    pub bound: Vec<Arc<dyn Queue>>,
    bindings: Vec<Binding>,
    /// For each plugin bound without any grant, the lines that would give
    /// it some (see [`grant_advice`]).
    pub advice: Vec<String>,
    reloader: Reloader,
    dispatcher: Dispatcher,
    serve: Option<(tokio::net::TcpListener, ServeState)>,
}

impl Host {
    pub async fn start(config: HostConfig) -> anyhow::Result<Self> {
        if config.bindings.is_empty() {
            bail!("nothing to run: give --queue, or bindings in wasq.toml");
        }
        raise_open_files_limit();
        // The listener is bound first: links point at the address it got.
        let mut env = config.env.clone();
        let listener = match config.listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the HTTP server to {addr}"))?;
                let bound = listener.local_addr()?;
                if config.links_follow_listen {
                    let mut host = bound;
                    if host.ip().is_unspecified() {
                        warn!(%bound, "listening on every address: local links point at 127.0.0.1; give --link-base with the name clients use");
                        host.set_ip([127, 0, 0, 1].into());
                    }
                    env.link_base = format!("http://{host}");
                }
                Some(listener)
            }
            None => None,
        };
        let backends = Arc::new(Backends::new(
            env.clone(),
            config.aws.clone(),
            config.blobs.clone(),
            config.records.clone(),
        ));
        let (links, services) = backends.services().await?;
        let seal = crate::dispatch::IdSeal::for_data_dir(&backends.env.data_dir)
            .context("loading the message id secret")?;
        let mut codes = Vec::new();
        // Fuel is counted only when some plugin has a fuel limit: counting
        // slows every plugin.
        let mut fuel = config.engine.fuel;
        for spec in &config.bindings {
            let code = config.plugins.find(&spec.plugin)?;
            let limits = code.limits(&spec.limits)?;
            fuel |= limits.fuel.is_some();
            codes.push((code, spec.settle(&limits)?));
        }
        // Every binding keeps the instances its concurrency may need.
        let instances: usize = config
            .bindings
            .iter()
            .map(|b| b.config.max_concurrency)
            .sum();
        let engine = EngineOptions {
            fuel,
            max_instances: u32::try_from(instances).unwrap_or(u32::MAX).max(1),
            ..config.engine.clone()
        };
        let runtime = Arc::new(Runtime::new(engine)?);

        let mut bindings = Vec::new();
        let mut bound: Vec<Arc<dyn Queue>> = Vec::new();
        let mut watched = Vec::new();
        let mut advice = Vec::new();
        let mut views = Vec::new();
        for (spec, (code, binding_config)) in config.bindings.iter().zip(codes) {
            let plugin = runtime.load_code(&code, &spec.limits, &spec.plugin_config)?;
            anyhow::ensure!(
                plugin.is_batch() || binding_config.batch_size <= crate::queue::MAX_BATCH,
                "binding {}: batch size {} is for batch processors; plugin `{}` handles one message at a time (1-{})",
                spec.queue,
                binding_config.batch_size,
                plugin.name(),
                crate::queue::MAX_BATCH
            );
            let grants = plugin.grants();
            // A payload is copied into the processor whole: one past its
            // memory could never run, and would be read again each attempt.
            if binding_config.payloads.bucket.is_some()
                && binding_config.payloads.max >= plugin.limits().memory
            {
                anyhow::bail!(
                    "binding {}: payload-max ({}) must be below the memory limit of plugin `{}` ({}): a payload is copied into the processor whole",
                    spec.queue,
                    crate::runtime::limits::Bytes(binding_config.payloads.max),
                    plugin.name(),
                    crate::runtime::limits::Bytes(plugin.limits().memory)
                );
            }
            // The host deletes payloads a sender names in the payload
            // bucket: outputs the processor may write must live elsewhere.
            if let Some(bucket) = &binding_config.payloads.bucket
                && let Some(prefix) = grants.write.iter().find(|p| p.reaches(bucket))
            {
                anyhow::bail!(
                    "binding {}: payload-bucket {bucket} is one plugin `{}` may write to ({prefix}): the host deletes the payloads senders name there, so keep payloads in a bucket of their own",
                    spec.queue,
                    plugin.name()
                );
            }
            for wide in grants.wide() {
                warn!(plugin = %plugin.name(), grant = wide, origin = plugin.manifest_origin().unwrap_or_default(), "wide access granted");
            }
            if grants.is_empty()
                && !advice
                    .iter()
                    .any(|a: &String| a.contains(&format!("`{}`", plugin.name())))
            {
                warn!(plugin = %plugin.name(), "the plugin has no grants: every blob and records call it makes will be denied");
                advice.push(grant_advice(
                    &plugin,
                    config.plugins.manifests_file.as_deref(),
                ));
            }
            let (queue, dlq, binding_config) = match &spec.queue {
                QueueRef::Local(_) => bind_local(&backends, spec, binding_config).await?,
                QueueRef::Sqs(_) => bind_sqs(&backends, spec, binding_config).await?,
            };
            check_queue_visibility(spec, &binding_config, plugin.limits().timeout)?;
            if dlq.is_none() {
                warn!(queue = %spec.queue, "no dead-letter queue: rejected and exhausted messages will be dropped");
            }
            info!(
                queue = %spec.queue,
                plugin = %plugin.name(),
                source = %plugin.source(),
                grants = plugin.manifest_origin().unwrap_or("none"),
                visibility_timeout = %humantime::format_duration(binding_config.visibility_timeout),
                max_receive_count = binding_config.max_receive_count,
                "bound"
            );
            let plugin_name = plugin.name().to_string();
            let slot = PluginSlot::new(plugin);
            watched.push(Watched {
                wanted: spec.plugin.clone(),
                queue: spec.queue.clone(),
                visibility_timeout: binding_config.visibility_timeout,
                limits: spec.limits.clone(),
                config: spec.plugin_config.clone(),
                slot: slot.clone(),
            });
            views.push(BindingView {
                name: binding_config.name.clone(),
                queue: spec.queue.to_string(),
                dlq: dlq.as_ref().map(|dlq| dlq.name().to_string()),
                plugin: plugin_name,
                max_concurrency: binding_config.max_concurrency,
                dlq_alarm: binding_config.dlq_alarm,
                admin: match &dlq {
                    Some(_) => Some(backends.admin(&spec.queue).await?),
                    None => None,
                },
                slot: Some(slot.clone()),
            });
            bound.push(queue.clone());
            bindings.push(Binding {
                config: binding_config,
                queue,
                dlq,
                plugin: slot,
            });
        }

        let metrics = Arc::new(Metrics::default());
        let readiness = Readiness::default();
        let controls = Controls::default();
        let timelines = Timelines::default();
        let serve = match listener {
            Some(listener) => {
                let console = Console::new(
                    views,
                    metrics.clone(),
                    controls.clone(),
                    timelines.clone(),
                    listener.local_addr()?,
                    config.console_token.as_deref(),
                )?;
                if !console.is_served() {
                    warn!("listening beyond loopback without --console-token: the console is off");
                }
                Some((
                    listener,
                    ServeState {
                        metrics: metrics.clone(),
                        readiness: readiness.clone(),
                        links: links.clone(),
                        console: Some(console),
                    },
                ))
            }
            None => None,
        };
        Ok(Host {
            reloader: Reloader {
                runtime: runtime.clone(),
                plugins: config.plugins.clone(),
                watched,
            },
            dispatcher: Dispatcher {
                runtime,
                services,
                metrics: metrics.clone(),
                grace: config.grace,
                alarm_webhook: config.alarm_webhook.clone(),
                hurry: tokio_util::sync::CancellationToken::new(),
                seal,
                controls,
                timelines,
            },
            metrics,
            readiness,
            backends,
            bound,
            bindings,
            advice,
            serve,
        })
    }

    /// Cancelling this cuts the shutdown's grace period short: messages
    /// still running are released at once.
    pub fn hurry(&self) -> tokio_util::sync::CancellationToken {
        self.dispatcher.hurry.clone()
    }

    /// Where the local store's links point, when blobs are local.
    pub fn links_at(&self) -> Option<String> {
        self.serve
            .as_ref()
            .and_then(|(_, state)| state.links.as_ref())
            .map(|links| links.signer().base_url().to_string())
    }

    /// Runs until `shutdown` resolves, then drains (see
    /// [`Dispatcher::run`]) and stops the HTTP server. `keep_serving`, if
    /// given, holds the HTTP server up after the dispatcher has stopped,
    /// until it resolves.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
        keep_serving: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
    ) -> anyhow::Result<()> {
        let server_stop = tokio_util::sync::CancellationToken::new();
        let console = self
            .serve
            .as_ref()
            .and_then(|(_, state)| state.console.clone());
        let server = match self.serve {
            Some((listener, state)) => {
                let stop = server_stop.clone();
                let addr = listener.local_addr()?;
                match state.console.as_ref().filter(|c| c.is_served()) {
                    Some(_) => {
                        info!(%addr, console = %format!("http://{addr}/"), "serving the console, health, metrics and signed links")
                    }
                    None => info!(%addr, "serving health, metrics and signed links"),
                }
                Some(tokio::spawn(serve::serve(
                    listener,
                    serve::router(state),
                    serve::Guards::default(),
                    stop,
                )))
            }
            None => None,
        };
        let reloading = tokio_util::sync::CancellationToken::new();
        let reloader = tokio::spawn(self.reloader.run(reloading.clone()));
        let shutdown = async move {
            shutdown.await;
            if let Some(console) = &console {
                console.set_draining();
            }
        };
        self.dispatcher
            .run(self.bindings, self.readiness, shutdown)
            .await;
        // Uploads of messages cut short are aborted before the process
        // ends, so their parts do not linger in the bucket.
        let blobs = self.dispatcher.services.blobs.clone();
        if tokio::time::timeout(SETTLE_WAIT, blobs.settle())
            .await
            .is_err()
        {
            warn!(
                waited = ?SETTLE_WAIT,
                "aborts of unfinished uploads still under way; a bucket lifecycle rule will have to remove their parts"
            );
        }
        reloading.cancel();
        reloader.await.context("the plugin reloader task")?;
        if let Some(keep) = keep_serving {
            keep.await;
        }
        server_stop.cancel();
        if let Some(server) = server {
            server
                .await
                .context("the HTTP server task")?
                .context("serving HTTP")?;
        }
        Ok(())
    }
}

/// What to add so that a plugin without grants may do its work: the exact
/// lines, for the operator's `wasq.toml` (built-in plugins) or the manifest
/// beside the plugin's file.
pub fn grant_advice(
    plugin: &crate::runtime::Plugin,
    config_file: Option<&std::path::Path>,
) -> String {
    let name = plugin.name();
    let (read, write, table) = if &**name == "compress" {
        ("s3://docs/", "s3://archives/", "archives")
    } else {
        ("s3://BUCKET/PREFIX/", "s3://BUCKET/PREFIX/", "TABLE")
    };
    let lines = |section: &str| {
        format!(
            "[{section}blobs]\nread = [\"{read}\"]\nwrite = [\"{write}\"]\n\n[{section}records]\ntables = [\"{table}\"]\n"
        )
    };
    let fill = if &**name == "compress" {
        "with your own buckets"
    } else {
        "with what it needs"
    };
    match plugin.source() {
        crate::runtime::PluginSource::BuiltIn => format!(
            "plugin `{name}` has no grants: it may read, write and record nothing. Add its grants to {}, {fill}:\n\n{}",
            config_file.map_or("wasq.toml".into(), |p| p.display().to_string()),
            lines(&format!("plugins.{name}."))
        ),
        crate::runtime::PluginSource::File(path) => format!(
            "plugin `{name}` has no grants: it may read, write and record nothing. Add its grants to {} (or to [plugins.{name}] in wasq.toml), {fill}:\n\n{}",
            path.with_extension("toml").display(),
            lines("")
        ),
    }
}

/// A local binding. A queue that does not exist yet is created with the
/// binding's settings. One that exists keeps its own: the binding follows
/// them (see [`follow_queue`]) and dead-letters where the queue's redrive
/// policy says; a queue without one is refused, as on SQS, unless the
/// binding names a dead-letter queue or opts out.
async fn bind_local(
    backends: &Backends,
    spec: &BindingSpec,
    mut config: BindingConfig,
) -> anyhow::Result<(Arc<dyn Queue>, Option<Arc<dyn Queue>>, BindingConfig)> {
    let queues = backends.local_queues().await?;
    let name = spec.queue.name();
    let existing = match queues.queue(name).await {
        Ok(queue) => Some(queue.stats().await?),
        Err(QueueError::NoSuchQueue(_)) => None,
        Err(err) => return Err(err).with_context(|| format!("opening queue {}", spec.queue)),
    };
    let existing = match existing {
        Some(stats) => Some(stats),
        None => {
            let dlq = match &spec.dead_letters {
                DeadLetters::Default => Some(spec.queue.default_dlq()),
                DeadLetters::To(dlq) => Some(dlq.clone()),
                DeadLetters::Drop => None,
            };
            let redrive = match &dlq {
                Some(QueueRef::Local(dlq)) => Some(Redrive {
                    dlq: dlq.clone(),
                    max_receive_count: config.max_receive_count,
                }),
                _ => None,
            };
            let options = QueueOptions {
                visibility_timeout: config.visibility_timeout,
                redrive,
            };
            match queues.create(name, options).await {
                Ok(()) => {
                    info!(
                        queue = %spec.queue,
                        visibility_timeout = %humantime::format_duration(config.visibility_timeout),
                        max_receive_count = config.max_receive_count,
                        "created the queue with the binding's settings"
                    );
                    None
                }
                // Another host on the directory created it first, perhaps
                // with other settings: follow those.
                Err(err) => match queues.queue(name).await {
                    Ok(queue) => Some(queue.stats().await?),
                    Err(_) => {
                        return Err(err).with_context(|| format!("creating queue {}", spec.queue));
                    }
                },
            }
        }
    };
    let dlq_ref = match &existing {
        None => match &spec.dead_letters {
            DeadLetters::Default => Some(spec.queue.default_dlq()),
            DeadLetters::To(dlq) => Some(dlq.clone()),
            DeadLetters::Drop => None,
        },
        Some(stats) => {
            follow_queue(spec, stats, &mut config)?;
            match (&spec.dead_letters, &stats.redrive) {
                (DeadLetters::Drop, _) => None,
                (DeadLetters::Default, Some(redrive)) => Some(QueueRef::Local(redrive.dlq.clone())),
                (DeadLetters::Default, None) => bail!(
                    "binding {queue}: the queue has no dead-letter queue, so a failing message would be retried forever; give it one (`wasq queue set {queue} --dlq {}`), name one with --dlq, or opt out with --no-dlq",
                    spec.queue.default_dlq(),
                    queue = spec.queue
                ),
                (DeadLetters::To(dlq), Some(redrive))
                    if dlq.is_local() && dlq.name() != redrive.dlq =>
                {
                    bail!(
                        "binding {}: the binding dead-letters to {dlq}, but the queue's redrive policy moves messages to local://{}; name that one, or drop the setting",
                        spec.queue,
                        redrive.dlq
                    )
                }
                (DeadLetters::To(dlq), _) => Some(dlq.clone()),
            }
        }
    };
    if let Some(QueueRef::Local(dlq)) = &dlq_ref
        && let Err(QueueError::NoSuchQueue(_)) = queues.queue(dlq).await
    {
        // Created by someone else meanwhile is as good.
        if let Err(err) = queues.create(dlq, QueueOptions::default()).await
            && queues.queue(dlq).await.is_err()
        {
            return Err(err).with_context(|| format!("creating dead-letter queue local://{dlq}"));
        }
    }
    let queue = backends.queue(&spec.queue).await?;
    let dlq = match &dlq_ref {
        Some(dlq) => Some(backends.queue(dlq).await?),
        None => None,
    };
    check_dlq_kind(spec, queue.as_ref(), dlq.as_deref())?;
    Ok((queue, dlq, config))
}

/// A FIFO queue's dead letters go to a FIFO queue, a standard queue's to a
/// standard one: anything else would refuse every dead letter.
fn check_dlq_kind(
    spec: &BindingSpec,
    queue: &dyn Queue,
    dlq: Option<&dyn Queue>,
) -> anyhow::Result<()> {
    if let Some(dlq) = dlq
        && dlq.is_fifo() != queue.is_fifo()
    {
        bail!(
            "binding {}: its dead-letter queue `{}` must be {} like the queue",
            spec.queue,
            dlq.name(),
            if queue.is_fifo() { "FIFO" } else { "standard" }
        );
    }
    Ok(())
}

/// A binding on a queue that exists follows the queue's settings, so that
/// what `wasq queue stats` shows is what the host does. A visibility
/// timeout the binding names is its own, per receive (as SQS allows), and
/// said so at start; a receive count the binding names must be the one of
/// the queue's redrive policy, which a binding never rewrites.
fn follow_queue(
    spec: &BindingSpec,
    stats: &QueueStats,
    config: &mut BindingConfig,
) -> anyhow::Result<()> {
    match spec.visibility_timeout {
        Some(own) if own != stats.visibility_timeout => info!(
            queue = %spec.queue,
            binding = %humantime::format_duration(own),
            queue_default = %humantime::format_duration(stats.visibility_timeout),
            "the binding hides each message it receives for its own visibility timeout, not the queue's"
        ),
        Some(_) => {}
        None => config.visibility_timeout = stats.visibility_timeout,
    }
    if let Some(redrive) = &stats.redrive {
        match spec.max_receive_count {
            // The queue would move messages before the binding gives up.
            Some(count) if count > redrive.max_receive_count => bail!(
                "binding {queue}: max receive count {count} is above the queue's: its redrive policy dead-letters after {} receives. Change the queue's with `wasq queue set {queue} --max-receive-count {count}`, or drop the setting",
                redrive.max_receive_count,
                queue = spec.queue
            ),
            // Fewer: wasq dead-letters after its own count, and the queue's
            // policy is left as the backstop (after a crash), with room for
            // receives given back that SQS counts.
            Some(count) => {
                if count < redrive.max_receive_count {
                    info!(
                        queue = %spec.queue,
                        binding = count,
                        queue_policy = redrive.max_receive_count,
                        "the binding dead-letters after fewer attempts than the queue's redrive policy counts"
                    );
                }
                config.max_receive_count = count;
            }
            None => config.max_receive_count = redrive.max_receive_count,
        }
    }
    Ok(())
}

/// The visibility timeout a binding ends up with must exceed its
/// processor's timeout; the error says where the one in use came from.
fn check_queue_visibility(
    spec: &BindingSpec,
    config: &BindingConfig,
    timeout: Duration,
) -> anyhow::Result<()> {
    if spec.visibility_timeout.is_some() || config.visibility_timeout > timeout {
        return check_visibility(&spec.queue, config.visibility_timeout, timeout);
    }
    let enough = humantime::format_duration(
        (timeout * 6)
            .max(crate::queue::DEFAULT_VISIBILITY)
            .min(crate::queue::MAX_VISIBILITY),
    );
    bail!(
        "binding {queue}: the queue's visibility timeout ({}) must exceed the processor timeout ({}), or a message could reappear while it still runs. Raise it with `wasq queue set {queue} --visibility-timeout {enough}`, or give the binding its own with --visibility-timeout",
        humantime::format_duration(config.visibility_timeout),
        humantime::format_duration(timeout),
        queue = spec.queue
    )
}

/// An SQS binding: the queue must exist. Its redrive policy names the
/// dead-letter queue and the receive count; a queue without one is refused
/// unless the binding names a dead-letter queue or opts out, since its
/// failing messages would otherwise retry forever.
async fn bind_sqs(
    backends: &Backends,
    spec: &BindingSpec,
    mut config: BindingConfig,
) -> anyhow::Result<(Arc<dyn Queue>, Option<Arc<dyn Queue>>, BindingConfig)> {
    let queue = backends.sqs_queue(&spec.queue).await?;
    let policy = backends
        .sqs()
        .await
        .redrive_policy(queue.url())
        .await
        .with_context(|| format!("reading the redrive policy of {}", spec.queue))?;
    let stats = queue
        .stats()
        .await
        .with_context(|| format!("reading the settings of {}", spec.queue))?;
    follow_queue(spec, &stats, &mut config)?;
    let dlq = match (&spec.dead_letters, policy) {
        (DeadLetters::Drop, _) => None,
        (DeadLetters::To(dlq), _) => Some(backends.queue(dlq).await?),
        (DeadLetters::Default, Some(policy)) => {
            Some(backends.queue(&QueueRef::Sqs(policy.dlq_url)).await?)
        }
        (DeadLetters::Default, None) => bail!(
            "binding {}: the queue has no redrive policy, so a failing message would be retried forever; give the queue a dead-letter queue (deploy/ does, or `wasq queue set {} --dlq NAME`), name one with --dlq, or opt out with --no-dlq",
            spec.queue,
            spec.queue
        ),
    };
    check_dlq_kind(spec, &queue, dlq.as_deref())?;
    Ok((Arc::new(queue), dlq, config))
}

/// Resolves once every queue is empty: nothing visible, in flight or
/// delayed, seen twice in a row.
pub async fn drained(queues: Vec<Arc<dyn Queue>>) {
    let mut empty_checks = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut empty = true;
        for queue in &queues {
            match queue.stats().await {
                Ok(stats) if stats.visible + stats.in_flight + stats.delayed == 0 => {}
                _ => empty = false,
            }
        }
        empty_checks = if empty { empty_checks + 1 } else { 0 };
        if empty_checks >= 2 {
            return;
        }
    }
}
