//! The `log` interface: lines go to the message's log sink.

use crate::runtime::bindings::log as wit;
use crate::runtime::log::{Level, Source};
use crate::runtime::state::HostState;

impl wit::Host for HostState {
    async fn log(&mut self, level: wit::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            wit::Level::Trace => Level::Trace,
            wit::Level::Debug => Level::Debug,
            wit::Level::Info => Level::Info,
            wit::Level::Warn => Level::Warn,
            wit::Level::Error => Level::Error,
        };
        self.log.emit(level, Source::Log, &message);
        Ok(())
    }
}
