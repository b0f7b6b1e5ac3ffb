//! Runs processors: one wasmtime engine, a pre-instantiated component per
//! plugin, and a fresh store per message under the plugin's hard limits.

mod bindings;
pub mod cache;
pub mod deflate;
pub mod grants;
pub mod host;
pub mod limits;
pub mod log;
pub mod plugins;
pub mod prefetch;
pub mod slot;
mod state;

pub use grants::Grants;
pub use limits::{LimitSettings, Limits};
pub use log::{Level, LogLine, LogSink, Source};
pub use plugins::{Plugin, PluginSource};
pub use slot::PluginSlot;
pub use state::{Fault, Services, Usage};

use anyhow::Context as _;
use bindings::{Processor, ProcessorPre};
use state::HostState;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::WasiCtxBuilder;

/// How often the engine's epoch advances: the granularity of timeouts, and
/// how often a running processor yields to other tasks.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// The longest retry delay a processor may ask for: SQS's 12-hour maximum
/// visibility timeout.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(12 * 3600);

/// The most processor instances one engine's pool holds.
pub const MAX_POOL_INSTANCES: u32 = 4096;

/// Engine-wide settings, fixed for the life of a [`Runtime`].
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Processor instances that may exist at once (the pool's size): `wasq
    /// run` makes it the sum of its bindings' `max-concurrency`, so every
    /// binding keeps the instances it may need.
    pub max_instances: u32,
    /// The largest memory limit any plugin may be given.
    pub max_memory: u64,
    /// Where compiled components are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Count fuel, so plugins may have fuel limits. Costs about a third of
    /// the speed of every plugin, so it is on only when asked for.
    pub fuel: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_instances: 128,
            max_memory: 4 << 30,
            cache_dir: default_cache_dir(),
            fuel: false,
        }
    }
}

/// `$XDG_CACHE_HOME/wasq/compiled`, else `~/.cache/wasq/compiled`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("wasq").join("compiled"))
}

/// A message as a processor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    pub body: String,
    pub attributes: Vec<(String, String)>,
    pub receive_count: u32,
    pub sent_at_ms: u64,
    pub group_id: Option<String>,
    pub queue: String,
}

/// What became of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done(Option<String>),
    Retry {
        reason: String,
        delay: Option<Duration>,
    },
    Reject(String),
}

impl Outcome {
    /// `done`, `retry` or `reject`.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Done(_) => "done",
            Outcome::Retry { .. } => "retry",
            Outcome::Reject(_) => "reject",
        }
    }
}

/// What `wasq plugins inspect` shows of a plugin.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub sha256: String,
    pub size: usize,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// The world it links against (`processor` or `batch-processor`), or
    /// why it fits neither.
    pub fits: Result<&'static str, String>,
    pub grants: Grants,
}

/// One run of a processor on one message.
#[derive(Debug, Clone)]
pub struct Run {
    pub outcome: Outcome,
    /// Set when the run ended in a trap or an exceeded limit; the outcome is
    /// then a retry naming it.
    pub fault: Option<Fault>,
    pub usage: Usage,
    pub elapsed: Duration,
}

/// How a batch run went: one outcome per message, in their order.
#[derive(Debug)]
pub struct BatchRun {
    pub outcomes: Vec<Outcome>,
    /// Set when the run ended in a trap or an exceeded limit; every
    /// outcome is then a retry naming it.
    pub fault: Option<Fault>,
    pub usage: Usage,
    pub elapsed: Duration,
}

/// The engine and everything shared by all plugins.
pub struct Runtime {
    engine: Engine,
    cache: Option<cache::CompileCache>,
    linker: Linker<HostState>,
    options: EngineOptions,
    ticker_stop: Arc<AtomicBool>,
}

impl Runtime {
    pub fn new(options: EngineOptions) -> anyhow::Result<Self> {
        // The pool holds `max_instances` instances of the largest component
        // allowed, and a component needing more than its share of core
        // instances, memories or tables is refused when it is loaded. So no
        // plugin can take the slots another binding's messages need.
        anyhow::ensure!(
            (1..=MAX_POOL_INSTANCES).contains(&options.max_instances),
            "{} processor instances at once is not 1-{MAX_POOL_INSTANCES}: lower the bindings' max-concurrency",
            options.max_instances
        );
        let n = options.max_instances;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(n)
            .total_core_instances(n * limits::MAX_CORE_INSTANCES as u32)
            .total_memories(n * limits::MAX_MEMORIES as u32)
            .total_tables(n * limits::MAX_TABLES as u32)
            .total_stacks(n)
            .max_core_instances_per_component(limits::MAX_CORE_INSTANCES as u32)
            .max_memories_per_component(limits::MAX_MEMORIES as u32)
            .max_tables_per_component(limits::MAX_TABLES as u32)
            .max_memory_size(usize::try_from(options.max_memory).unwrap_or(usize::MAX));

        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(options.fuel)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;
        let cache = match &options.cache_dir {
            Some(dir) => Some(cache::CompileCache::open(dir, &engine)?),
            None => None,
        };

        let mut linker = Linker::new(&engine);
        link(&mut linker)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let stop = ticker_stop.clone();
        std::thread::Builder::new()
            .name("wasq-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .context("starting the epoch thread")?;

        Ok(Runtime {
            engine,
            cache,
            linker,
            options,
            ticker_stop,
        })
    }

    /// Compiles a component (or takes it from the cache) and checks it
    /// against the `processor` world.
    pub fn load(
        &self,
        name: &str,
        source: PluginSource,
        wasm: &[u8],
        limits: Limits,
        config: std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<Plugin> {
        if limits.memory > self.options.max_memory {
            anyhow::bail!(
                "plugin `{name}`: memory limit {} is above the engine's maximum {}",
                limits::Bytes(limits.memory),
                limits::Bytes(self.options.max_memory)
            );
        }
        if limits.fuel.is_some() && !self.options.fuel {
            anyhow::bail!(
                "plugin `{name}`: a fuel limit needs fuel metering, which this engine runs without; start wasq with --fuel, or with the manifest already in place"
            );
        }
        let component = self
            .compile(wasm)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("plugin `{name}` ({source}): not a valid component"))?;
        let pre = self.pre(&component).with_context(|| {
            format!(
                "plugin `{name}` ({source}): fits neither the processor world (export `handle`) nor the batch-processor world (export `handle-batch`)"
            )
        })?;
        let ty = component.component_type();
        let identity = plugins::Identity {
            // BLAKE3, not SHA-256: hashing an 18 MB component at every
            // load cost the warm start about 25 ms with SHA-256.
            blake3: blake3::hash(wasm).to_hex().to_string(),
            imports: ty
                .imports(&self.engine)
                .map(|(n, _)| n.to_string())
                .collect(),
            exports: ty
                .exports(&self.engine)
                .map(|(n, _)| n.to_string())
                .collect(),
        };
        Ok(Plugin::new(name, source, pre, limits, config).with_identity(identity))
    }

    /// The component, linked and checked against the `processor` world,
    /// or else the `batch-processor` world.
    fn pre(&self, component: &Component) -> anyhow::Result<plugins::Pre> {
        let linked = self.linker.instantiate_pre(component)?;
        match ProcessorPre::new(linked.clone()) {
            Ok(single) => Ok(plugins::Pre::Single(single)),
            Err(single) => bindings::batch::BatchProcessorPre::new(linked)
                .map(plugins::Pre::Batch)
                .map_err(|_| anyhow::Error::from(single)),
        }
    }

    /// Compiles a component, or loads it from the compile cache.
    fn compile(&self, wasm: &[u8]) -> wasmtime::Result<Component> {
        match &self.cache {
            Some(cache) => {
                let started = Instant::now();
                let (component, origin) = cache.load_or_compile(&self.engine, wasm)?;
                tracing::debug!(?origin, took = ?started.elapsed(), "component ready");
                Ok(component)
            }
            None => Component::new(&self.engine, wasm),
        }
    }

    /// Whether plugins may have fuel limits.
    pub fn counts_fuel(&self) -> bool {
        self.options.fuel
    }

    /// Loads found plugin code with its manifest applied: its limits under
    /// `limits`, its grants, and its settings under `config`.
    pub fn load_code(
        &self,
        code: &plugins::PluginCode,
        limits: &LimitSettings,
        config: &std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<Plugin> {
        let grants = code.grants()?;
        let filters = code.filters()?;
        let limits = code.limits(limits)?;
        let plugin = self.load(
            &code.name,
            code.source.clone(),
            &code.wasm,
            limits,
            code.config(config),
        )?;
        Ok(plugin
            .with_grants(grants)
            .with_filters(filters)
            .with_manifest_origin(code.manifest_origin.clone()))
    }

    /// Compiles plugin code and describes it: its hash, what it imports and
    /// exports, and whether it fits the `processor` world.
    pub fn inspect(&self, code: &plugins::PluginCode) -> anyhow::Result<Inspection> {
        use sha2::Digest;
        let component = self
            .compile(&code.wasm)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!(
                    "plugin `{}` ({}): not a valid component",
                    code.name, code.source
                )
            })?;
        let ty = component.component_type();
        let imports = ty
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let exports = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let fits = self
            .pre(&component)
            .map(|pre| match pre {
                plugins::Pre::Single(_) => "processor",
                plugins::Pre::Batch(_) => "batch-processor",
            })
            .map_err(|err| format!("{err:#}"));
        Ok(Inspection {
            sha256: hex::encode(sha2::Sha256::digest(&code.wasm)),
            size: code.wasm.len(),
            imports,
            exports,
            fits,
            grants: code.grants()?,
        })
    }

    /// Runs `plugin` on one message in a fresh instance. Never fails: a trap
    /// or an exceeded limit becomes a retry naming it. A batch processor
    /// gets a batch of one.
    pub async fn run(
        &self,
        plugin: &Plugin,
        services: &Services,
        message: &Message,
        log: LogSink,
    ) -> Run {
        if plugin.is_batch() {
            let batch = self
                .run_batch(plugin, services, std::slice::from_ref(message), log)
                .await;
            return Run {
                outcome: batch
                    .outcomes
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| Outcome::Retry {
                        reason: "the batch processor gave no outcome".into(),
                        delay: None,
                    }),
                fault: batch.fault,
                usage: batch.usage,
                elapsed: batch.elapsed,
            };
        }
        let owner = format!("{}/{}", message.queue, message.id);
        let (mut store, started, limits) = self.store(plugin, services, owner, log);
        let plugins::Pre::Single(pre) = &plugin.pre else {
            unreachable!("a batch processor is run as a batch above")
        };
        let wit_message = to_wit(message);
        let call = async {
            let processor: Processor = pre
                .instantiate_async(&mut store)
                .await
                .map_err(|err| Err(Fault::Instantiate(format!("{err:#}"))))?;
            processor
                .call_handle(&mut store, &wit_message)
                .await
                .map_err(Ok)
        };
        let result = tokio::time::timeout(limits.timeout, call).await;
        let state = store.data_mut();
        let (outcome, fault) = match conclude(result, state, &limits) {
            Ok(outcome) => (from_wit(outcome), None),
            Err(fault) => (retry_for(&fault), Some(fault)),
        };
        Run {
            outcome,
            fault,
            usage: Usage {
                peak_memory: state.limiter.peak as u64,
                ..state.usage
            },
            elapsed: started.elapsed(),
        }
    }

    /// Runs a batch processor on `messages` in one fresh instance, under
    /// the plugin's limits for the whole batch. Returns one outcome per
    /// message, in their order, matched by id: a message the processor
    /// gave no outcome, or more than one, is a retry; a trap or an
    /// exceeded limit makes every one a retry naming it.
    pub async fn run_batch(
        &self,
        plugin: &Plugin,
        services: &Services,
        messages: &[Message],
        log: LogSink,
    ) -> BatchRun {
        let owner = match messages.first() {
            Some(first) => format!("{}/batch-{}", first.queue, first.id),
            None => "batch".to_string(),
        };
        let (mut store, started, limits) = self.store(plugin, services, owner, log);
        let plugins::Pre::Batch(pre) = &plugin.pre else {
            panic!("run_batch is for batch processors")
        };
        let wit_messages: Vec<_> = messages.iter().map(to_wit).collect();
        let call = async {
            let processor = pre
                .instantiate_async(&mut store)
                .await
                .map_err(|err| Err(Fault::Instantiate(format!("{err:#}"))))?;
            processor
                .call_handle_batch(&mut store, &wit_messages)
                .await
                .map_err(Ok)
        };
        let result = tokio::time::timeout(limits.timeout, call).await;
        let state = store.data_mut();
        let (outcomes, fault) = match conclude(result, state, &limits) {
            Ok(items) => (match_outcomes(messages, items), None),
            Err(fault) => {
                let retry = retry_for(&fault);
                (vec![retry; messages.len()], Some(fault))
            }
        };
        BatchRun {
            outcomes,
            fault,
            usage: Usage {
                peak_memory: state.limiter.peak as u64,
                ..state.usage
            },
            elapsed: started.elapsed(),
        }
    }

    /// A fresh store for one run: the plugin's limits, grants and
    /// settings, its output owned by `owner`, a deadline counted from now.
    fn store(
        &self,
        plugin: &Plugin,
        services: &Services,
        owner: String,
        log: LogSink,
    ) -> (Store<HostState>, Instant, Limits) {
        let started = Instant::now();
        let limits = plugin.limits;
        let wasi = WasiCtxBuilder::new()
            .stdout(log.stream(Source::Stdout))
            .stderr(log.stream(Source::Stderr))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let state = HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: limits::MemoryLimiter::new(limits.memory),
            limits,
            services: services.clone(),
            config: plugin.config.clone(),
            grants: plugin.grants.clone(),
            log,
            usage: Usage::default(),
            open_handles: 0,
            owner,
            budget: crate::blobs::Budget::new(limits.buffers),
            written: Default::default(),
            prefetch: Default::default(),
            deflating: Default::default(),
            fault: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_hostcall_fuel(MAX_CALL_BYTES);
        if self.options.fuel {
            // Cannot fail with fuel metering on.
            let _ = store.set_fuel(limits.fuel.unwrap_or(u64::MAX));
        }
        // Epoch interruption bounds CPU-bound guests: each tick the guest
        // yields to the executor, and past the deadline it traps. The tokio
        // timeout around the call bounds time spent awaiting host I/O.
        let deadline = started + limits.timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            if Instant::now() >= deadline {
                ctx.data_mut().fault = Some(Fault::Timeout(limits.timeout));
                Err(wasmtime::Trap::Interrupt.into())
            } else {
                Ok(wasmtime::UpdateDeadline::Yield(1))
            }
        });
        (store, started, limits)
    }
}

/// What a call came to: its value, or the fault that ended it (a limit, a
/// trap, an instance that could not be made).
fn conclude<T>(
    result: Result<Result<T, Result<wasmtime::Error, Fault>>, tokio::time::error::Elapsed>,
    state: &mut HostState,
    limits: &Limits,
) -> Result<T, Fault> {
    state.log.finish();
    match result {
        Ok(Ok(value)) => Ok(value),
        // Memories are sized while the instance is made: a refusal there
        // is the memory limit, not a broken component.
        Ok(Err(Err(fault))) => Err(if state.limiter.denied {
            Fault::Memory(limits.memory)
        } else {
            fault
        }),
        Ok(Err(Ok(trap))) => Err(state.fault.take().unwrap_or_else(|| {
            if state.limiter.denied {
                Fault::Memory(limits.memory)
            } else if let (Some(fuel), Some(wasmtime::Trap::OutOfFuel)) =
                (limits.fuel, trap.downcast_ref::<wasmtime::Trap>())
            {
                Fault::Fuel(fuel)
            } else {
                Fault::Trap(trap_message(&trap))
            }
        })),
        Err(_elapsed) => Err(Fault::Timeout(limits.timeout)),
    }
}

/// One outcome per message, in their order, from what a batch processor
/// returned: matched by id; none, or more than one, is a retry saying so.
fn match_outcomes(messages: &[Message], items: Vec<bindings::types::ItemOutcome>) -> Vec<Outcome> {
    let mut by_id: std::collections::HashMap<String, Vec<bindings::types::Outcome>> =
        std::collections::HashMap::with_capacity(items.len());
    for item in items {
        by_id.entry(item.id).or_default().push(item.outcome);
    }
    messages
        .iter()
        .map(|message| match by_id.remove(&message.id) {
            Some(mut outcomes) if outcomes.len() == 1 => {
                from_wit(outcomes.pop().expect("one outcome"))
            }
            Some(outcomes) => Outcome::Retry {
                reason: format!(
                    "the batch processor gave {} outcomes for this message, not one",
                    outcomes.len()
                ),
                delay: None,
            },
            None => Outcome::Retry {
                reason: "the batch processor gave no outcome for this message".into(),
                delay: None,
            },
        })
        .collect()
}

fn to_wit(message: &Message) -> bindings::types::Message {
    bindings::types::Message {
        id: message.id.clone(),
        body: message.body.clone(),
        attributes: message.attributes.clone(),
        receive_count: message.receive_count,
        sent_at_ms: message.sent_at_ms,
        group_id: message.group_id.clone(),
        queue: message.queue.clone(),
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// The most one call from a processor may hand the host, and what `handle`
/// may return: the bytes of its strings and lists, 8 per element of a list
/// of strings. The host copies them before it looks at them, up to three
/// times this for a list of short strings; more traps ("too much data is
/// being copied"). Whole objects go in several writes.
pub const MAX_CALL_BYTES: usize = 16 << 20;

/// One line per interface: WASI (with nothing granted), then wasq's own.
fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    bindings::blobs::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    bindings::records::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    bindings::log::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    bindings::config::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    Ok(())
}

fn retry_for(fault: &Fault) -> Outcome {
    Outcome::Retry {
        reason: fault.to_string(),
        delay: None,
    }
}

/// What a trap says, without the wasm backtrace: a trap code's text, or the
/// error and its causes (a host error that ended the call is the cause
/// beneath "error while executing at wasm backtrace").
fn trap_message(trap: &wasmtime::Error) -> String {
    if let Some(code) = trap.downcast_ref::<wasmtime::Trap>() {
        return code.to_string();
    }
    let causes: Vec<String> = trap
        .chain()
        .map(|cause| cause.to_string())
        .filter(|text| !text.starts_with("error while executing at wasm backtrace"))
        .collect();
    let text = if causes.is_empty() {
        format!("{trap:#}")
    } else {
        causes.join(": ")
    };
    text.lines().next().unwrap_or_default().to_string()
}

/// The longest reason a processor's retry or reject keeps, in bytes: longer
/// ones are cut, with a marker, before anything logs or stores them.
pub const MAX_REASON: usize = 4096;

fn from_wit(outcome: bindings::types::Outcome) -> Outcome {
    use bindings::types::Outcome as Wit;
    let bounded = |reason: String| match crate::text::truncate(&reason, MAX_REASON) {
        std::borrow::Cow::Borrowed(_) => reason,
        std::borrow::Cow::Owned(cut) => cut,
    };
    match outcome {
        Wit::Done(result) => Outcome::Done(result),
        Wit::Retry(retry) => Outcome::Retry {
            reason: bounded(retry.reason),
            delay: retry
                .delay_secs
                .map(|secs| Duration::from_secs(u64::from(secs)).min(MAX_RETRY_DELAY)),
        },
        Wit::Reject(reason) => Outcome::Reject(bounded(reason)),
    }
}
