//! What the integration tests and the benches share: the engine they run
//! plugins on, the rogue test plugin, deterministic bytes, and the CPU time
//! a process has used. Each
//! includes this file as a module of its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use wasq::runtime::{EngineOptions, Limits, Plugin, PluginSource, Runtime};

/// Compiled components are cached beside the build's test binaries, so
/// reruns skip compilation.
pub fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("compile-cache")
}

/// An engine with the compile cache and room for `max_instances`.
pub fn engine(max_instances: u32) -> anyhow::Result<Runtime> {
    Runtime::new(EngineOptions {
        max_instances,
        cache_dir: Some(cache_dir()),
        ..EngineOptions::default()
    })
}

/// The rogue test plugin, loaded with `limits` and `config`.
pub fn rogue_on(
    runtime: &Runtime,
    limits: Limits,
    config: BTreeMap<String, String>,
) -> anyhow::Result<Plugin> {
    let wasm = std::fs::read(wasq_test_guests::ROGUE)?;
    runtime.load(
        "rogue",
        PluginSource::File(wasq_test_guests::ROGUE.into()),
        &wasm,
        limits,
        config,
    )
}

/// Deterministic bytes that do not compress.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The CPU seconds (user + system) process `pid` (or `self`) has used so
/// far, from `/proc`; NaN when it cannot be read.
#[allow(dead_code, reason = "the benches use it, the integration tests do not")]
pub fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}
