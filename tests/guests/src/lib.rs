//! Paths to the test processors, built by this crate's build script.

/// The `rogue` processor: does whatever its message body says, including
/// trapping, looping forever, hogging memory and reaching outside the store.
pub const ROGUE: &str = concat!(env!("OUT_DIR"), "/rogue.wasm");

/// The `batcher` batch processor: each message's body names its outcome.
pub const BATCHER: &str = concat!(env!("OUT_DIR"), "/batcher.wasm");
