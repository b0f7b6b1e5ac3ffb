//! `wasq run`: opens the backends, loads the plugins, and runs the
//! dispatcher and the HTTP server until shutdown.

use crate::aws::AwsOptions;
use crate::backends::{Backends, BlobBackend, RecordsBackend};
use crate::dispatch::{Binding, BindingConfig, Dispatcher, Metrics, Readiness};
use crate::offline::LocalEnv;
use crate::queue::local::QueueOptions;
use crate::queue::{Queue, Redrive};
use crate::runtime::plugins::PluginSources;
use crate::runtime::reload::{Reloader, Watched};
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
    /// The visibility timeout set on the binding; without one, it follows
    /// the plugin's timeout (see [`BindingSpec::settle`]).
    pub visibility_timeout: Option<Duration>,
    pub plugin_config: BTreeMap<String, String>,
    /// Its dispatch settings; the visibility timeout is settled at start.
    pub config: BindingConfig,
}

impl BindingSpec {
    /// The dispatch settings once the plugin's limits are known: the
    /// visibility timeout given, or six times the processor timeout (at
    /// least the default), which must exceed the timeout.
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
        for (spec, (code, binding_config)) in config.bindings.iter().zip(codes) {
            let plugin = runtime.load_code(&code, &spec.limits, &spec.plugin_config)?;
            let grants = plugin.grants();
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
            if dlq.is_none() {
                warn!(queue = %spec.queue, "no dead-letter queue: rejected and exhausted messages will be dropped");
            }
            info!(
                queue = %spec.queue,
                plugin = %plugin.name(),
                source = %plugin.source(),
                grants = plugin.manifest_origin().unwrap_or("none"),
                "bound"
            );
            let slot = PluginSlot::new(plugin);
            watched.push(Watched {
                wanted: spec.plugin.clone(),
                queue: spec.queue.clone(),
                visibility_timeout: binding_config.visibility_timeout,
                limits: spec.limits.clone(),
                config: spec.plugin_config.clone(),
                slot: slot.clone(),
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
        let serve = listener.map(|listener| {
            (
                listener,
                ServeState {
                    metrics: metrics.clone(),
                    readiness: readiness.clone(),
                    links: links.clone(),
                },
            )
        });
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
        let server = match self.serve {
            Some((listener, state)) => {
                let stop = server_stop.clone();
                let addr = listener.local_addr()?;
                info!(%addr, "serving health, metrics and signed links");
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
        self.dispatcher
            .run(self.bindings, self.readiness, shutdown)
            .await;
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

/// A local binding: its queue and dead-letter queue are created (or their
/// settings updated) to match the binding.
async fn bind_local(
    backends: &Backends,
    spec: &BindingSpec,
    config: BindingConfig,
) -> anyhow::Result<(Arc<dyn Queue>, Option<Arc<dyn Queue>>, BindingConfig)> {
    let queues = backends.local_queues().await?;
    let dlq_ref = match &spec.dead_letters {
        DeadLetters::Default => Some(spec.queue.default_dlq()),
        DeadLetters::To(dlq) => Some(dlq.clone()),
        DeadLetters::Drop => None,
    };
    let redrive = match &dlq_ref {
        Some(QueueRef::Local(dlq)) => Some(Redrive {
            dlq: dlq.clone(),
            max_receive_count: config.max_receive_count,
        }),
        _ => None,
    };
    queues
        .create(
            spec.queue.name(),
            QueueOptions {
                visibility_timeout: config.visibility_timeout,
                redrive,
            },
        )
        .await
        .with_context(|| format!("setting up queue {}", spec.queue))?;
    let queue = backends.queue(&spec.queue).await?;
    let dlq = match &dlq_ref {
        Some(dlq) => Some(backends.queue(dlq).await?),
        None => None,
    };
    Ok((queue, dlq, config))
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
    let dlq = match (&spec.dead_letters, policy) {
        (DeadLetters::Drop, _) => None,
        (DeadLetters::To(dlq), _) => Some(backends.queue(dlq).await?),
        (DeadLetters::Default, Some(policy)) => {
            if config.max_receive_count != policy.max_receive_count {
                info!(
                    queue = %spec.queue,
                    max_receive_count = policy.max_receive_count,
                    "the queue's redrive policy sets the receive count"
                );
            }
            config.max_receive_count = policy.max_receive_count;
            Some(backends.queue(&QueueRef::Sqs(policy.dlq_url)).await?)
        }
        (DeadLetters::Default, None) => bail!(
            "binding {}: the queue has no redrive policy, so a failing message would be retried forever; give the queue a dead-letter queue (deploy/ does), name one with --dlq, or opt out with --no-dlq",
            spec.queue
        ),
    };
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
