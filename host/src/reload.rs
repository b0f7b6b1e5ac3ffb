//! Hot reload: each binding reads its plugin from a slot per message
//! ([`PluginSlot`]), and this watcher replaces the slot's plugin when
//! `plugins/NAME.wasm` or its manifest changes. Messages already running
//! keep the version they started with; a file that does not compile, does
//! not fit the processor world, or would outlast its binding's visibility
//! timeout never replaces a working version.

use crate::run::{QueueRef, check_visibility};
use crate::runtime::plugins::PluginSources;
use crate::runtime::{LimitSettings, PluginSlot, Runtime};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How often the plugin files are looked at. A change is taken once it has
/// held still for one more look, so a file still being copied is not read
/// half-written.
const SCAN_EVERY: Duration = Duration::from_millis(500);

/// What a watched plugin looks like on disk: modification time and length
/// of the `.wasm` and of its manifest.
type Fingerprint = [Option<(SystemTime, u64)>; 2];

fn fingerprint(wasm: &Path) -> Fingerprint {
    let look = |path: &Path| {
        std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    [look(wasm), look(&wasm.with_extension("toml"))]
}

/// One slot to keep current.
pub struct Watched {
    /// The plugin as the binding names it: a name or a `.wasm` path.
    pub wanted: String,
    /// The binding's queue and visibility timeout: a new version must
    /// finish within the visibility timeout, or it is not taken.
    pub queue: QueueRef,
    pub visibility_timeout: Duration,
    /// The binding's limits, over the manifest's.
    pub limits: LimitSettings,
    pub config: BTreeMap<String, String>,
    pub slot: PluginSlot,
}

/// Watches plugin files and reloads the slots that use them.
pub struct Reloader {
    pub runtime: Arc<Runtime>,
    pub plugins: PluginSources,
    pub watched: Vec<Watched>,
}

impl Reloader {
    /// The file a binding's plugin comes from (or would, once dropped in).
    fn file_of(&self, wanted: &str) -> Option<PathBuf> {
        self.plugins.file_of(wanted)
    }

    /// Runs until `stop` fires.
    pub async fn run(self, stop: CancellationToken) {
        let files: Vec<Option<PathBuf>> = self
            .watched
            .iter()
            .map(|w| self.file_of(&w.wanted))
            .collect();
        let mut seen: Vec<Fingerprint> = files
            .iter()
            .map(|f| f.as_deref().map(fingerprint).unwrap_or_default())
            .collect();
        let mut pending: Vec<Option<Fingerprint>> = vec![None; files.len()];
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SCAN_EVERY) => {}
                _ = stop.cancelled() => return,
            }
            for (i, watched) in self.watched.iter().enumerate() {
                let Some(file) = &files[i] else { continue };
                let now = fingerprint(file);
                if now == seen[i] {
                    pending[i] = None;
                    continue;
                }
                if pending[i] != Some(now) {
                    pending[i] = Some(now);
                    continue;
                }
                pending[i] = None;
                seen[i] = now;
                self.reload(watched).await;
            }
        }
    }

    async fn reload(&self, watched: &Watched) {
        let runtime = self.runtime.clone();
        let plugins = self.plugins.clone();
        let wanted = watched.wanted.clone();
        let limits = watched.limits.clone();
        let config = watched.config.clone();
        let queue = watched.queue.clone();
        let visibility = watched.visibility_timeout;
        let previous_manifest = watched
            .slot
            .current()
            .and_then(|p| p.manifest_origin().map(str::to_string));
        let loaded = tokio::task::spawn_blocking(move || {
            let code = plugins.find(&wanted)?;
            // Fail closed: a manifest that disappears while its plugin stays
            // would leave the plugin with other grants than the operator
            // last gave it. The running version keeps its grants until the
            // manifest returns or wasq restarts.
            if let (Some(previous), None) = (&previous_manifest, &code.manifest) {
                anyhow::bail!(
                    "its manifest {previous} was removed; restore it, or restart wasq to run the plugin without grants"
                );
            }
            let source = code.source.clone();
            let plugin = runtime.load_code(&code, &limits, &config)?;
            check_visibility(&queue, visibility, plugin.limits().timeout)?;
            Ok::<_, anyhow::Error>((plugin, source))
        })
        .await;
        match loaded {
            Ok(Ok((plugin, source))) => {
                info!(plugin = %watched.wanted, %source, "plugin reloaded; new messages run the new version");
                watched.slot.replace(Some(plugin));
                watched.slot.note_reload(None);
            }
            Ok(Err(err)) if !self.file_of(&watched.wanted).is_some_and(|f| f.exists()) => {
                warn!(plugin = %watched.wanted, error = %format!("{err:#}"), "plugin removed: its bindings pause until it returns");
                watched.slot.replace(None);
                watched.slot.note_reload(Some(format!("{err:#}")));
            }
            Ok(Err(err)) => {
                error!(plugin = %watched.wanted, error = %format!("{err:#}"), "plugin changed but cannot be used; the previous version keeps running");
                watched.slot.note_reload(Some(format!("{err:#}")));
            }
            Err(join) => {
                error!(plugin = %watched.wanted, error = %join, "reloading the plugin failed");
                watched.slot.note_reload(Some(join.to_string()));
            }
        }
    }
}

impl std::fmt::Debug for PluginSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.current() {
            Some(plugin) => write!(f, "PluginSlot({} from {})", plugin.name(), plugin.source()),
            None => write!(f, "PluginSlot(empty)"),
        }
    }
}
