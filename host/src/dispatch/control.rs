//! Pausing and resuming bindings while the host runs. A paused binding's
//! pollers stop receiving at once (a long poll under way is cut short, and
//! anything it returned as the pause came is released): its messages wait
//! in the queue, and those already running finish.

use prometheus_client::metrics::gauge::Gauge;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// A binding's switch, and the gauge that shows it.
struct Switch {
    paused: watch::Sender<bool>,
    gauge: Gauge,
}

/// Every binding's pause switch, by binding name.
#[derive(Clone, Default)]
pub struct Controls {
    switches: Arc<Mutex<BTreeMap<String, Switch>>>,
}

impl Controls {
    /// The switch of binding `name`, made (running) if it has none yet;
    /// `gauge` is 1 while it is paused.
    pub fn watch(&self, name: &str, gauge: Gauge) -> watch::Receiver<bool> {
        let mut switches = self.switches.lock().unwrap_or_else(|p| p.into_inner());
        switches
            .entry(name.to_string())
            .or_insert_with(|| Switch {
                paused: watch::channel(false).0,
                gauge,
            })
            .paused
            .subscribe()
    }

    /// Pauses or resumes binding `name`; `false` if there is no such
    /// binding.
    pub fn set_paused(&self, name: &str, paused: bool) -> bool {
        let switches = self.switches.lock().unwrap_or_else(|p| p.into_inner());
        match switches.get(name) {
            Some(switch) => {
                switch.paused.send_replace(paused);
                switch.gauge.set(i64::from(paused));
                true
            }
            None => false,
        }
    }

    /// Whether binding `name` is paused; `None` if there is no such binding.
    pub fn is_paused(&self, name: &str) -> Option<bool> {
        let switches = self.switches.lock().unwrap_or_else(|p| p.into_inner());
        switches.get(name).map(|switch| *switch.paused.borrow())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pause_reaches_the_watchers_and_unknown_bindings_are_refused() {
        let controls = Controls::default();
        let gauge = Gauge::default();
        let mut paused = controls.watch("b", gauge.clone());
        assert_eq!(controls.is_paused("b"), Some(false));
        assert!(!controls.set_paused("other", true));
        assert_eq!(controls.is_paused("other"), None);
        assert!(controls.set_paused("b", true));
        paused.changed().await.unwrap();
        assert!(*paused.borrow());
        assert_eq!(gauge.get(), 1);
        assert!(controls.set_paused("b", false));
        paused.wait_for(|p| !*p).await.unwrap();
    }
}
