//! The version of a binding's plugin that new messages run: read per
//! message, replaced by a reload, empty while the plugin's file is gone.

use super::Plugin;
use std::sync::{Arc, RwLock};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The current version of one binding's plugin.
#[derive(Clone)]
pub struct PluginSlot {
    inner: Arc<SlotInner>,
}

struct SlotInner {
    current: RwLock<Option<Arc<Plugin>>>,
    changed: Notify,
    /// The last reload tried, if any.
    reloaded: std::sync::Mutex<Option<Reload>>,
}

/// When the plugin was last reloaded, and why it could not be, if so.
#[derive(Debug, Clone)]
pub struct Reload {
    pub at: std::time::SystemTime,
    pub error: Option<String>,
}

impl PluginSlot {
    pub fn new(plugin: Plugin) -> Self {
        PluginSlot {
            inner: Arc::new(SlotInner {
                current: RwLock::new(Some(Arc::new(plugin))),
                changed: Notify::new(),
                reloaded: std::sync::Mutex::new(None),
            }),
        }
    }

    /// Notes a reload just tried: `error` says why it failed.
    pub fn note_reload(&self, error: Option<String>) {
        *self
            .inner
            .reloaded
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Reload {
            at: std::time::SystemTime::now(),
            error,
        });
    }

    /// The last reload tried, if any.
    pub fn last_reload(&self) -> Option<Reload> {
        self.inner
            .reloaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The plugin to run the next message on; `None` while its file is gone.
    pub fn current(&self) -> Option<Arc<Plugin>> {
        self.inner
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn replace(&self, plugin: Option<Plugin>) {
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = plugin.map(Arc::new);
        self.inner.changed.notify_waiters();
    }

    /// Waits until there is a plugin (or `cancel` fires).
    pub async fn available(&self, cancel: &CancellationToken) -> Option<Arc<Plugin>> {
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(plugin) = self.current() {
                return Some(plugin);
            }
            tokio::select! {
                _ = &mut changed => {}
                _ = cancel.cancelled() => return None,
            }
        }
    }
}
