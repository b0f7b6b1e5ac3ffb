//! The `config` interface: the operator's settings for this plugin.

use crate::runtime::bindings::config as wit;
use crate::runtime::state::HostState;

impl wit::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.config.get(&key).cloned())
    }
}
