//! Per-plugin hard limits and the memory limiter that enforces one of them.

use anyhow::{Context as _, ensure};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// What one message's run of a processor may use. Exceeding any of these
/// ends the message as a retry whose reason names the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory, in bytes: every memory of the instance together.
    pub memory: u64,
    /// Wall-clock time for one `handle` call, instantiation included.
    pub timeout: Duration,
    /// Bytes read from the blob store.
    pub bytes_read: u64,
    /// Bytes written to the blob store.
    pub bytes_written: u64,
    /// Wasm instructions (fuel units) one message may execute; `None` for
    /// no count. Counting needs an engine with fuel metering.
    pub fuel: Option<u64>,
    /// Host memory the message may hold in blob buffers (S3 parts,
    /// read-ahead), in bytes.
    pub buffers: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 128 * MIB,
            timeout: Duration::from_secs(30),
            bytes_read: 4 * GIB,
            bytes_written: 4 * GIB,
            fuel: None,
            buffers: crate::blobs::DEFAULT_BUDGET,
        }
    }
}

/// Limits as a manifest, `wasq.toml` or the command line writes them, each
/// optional: `memory = "256MiB"`, `timeout = "2m"`, `fuel = 5000000000`,
/// `bytes-read = "10GiB"`, `bytes-written = "1GiB"`, `buffers = "64MiB"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LimitSettings {
    pub memory: Option<String>,
    pub timeout: Option<String>,
    pub fuel: Option<u64>,
    pub bytes_read: Option<String>,
    pub bytes_written: Option<String>,
    pub buffers: Option<String>,
}

impl LimitSettings {
    /// These settings, with the unset ones taken from `base`.
    pub fn or(&self, base: &LimitSettings) -> LimitSettings {
        let pick = |a: &Option<String>, b: &Option<String>| a.clone().or_else(|| b.clone());
        LimitSettings {
            memory: pick(&self.memory, &base.memory),
            timeout: pick(&self.timeout, &base.timeout),
            fuel: self.fuel.or(base.fuel),
            bytes_read: pick(&self.bytes_read, &base.bytes_read),
            bytes_written: pick(&self.bytes_written, &base.bytes_written),
            buffers: pick(&self.buffers, &base.buffers),
        }
    }

    /// The limits these settings give over the defaults, checked.
    pub fn resolve(&self) -> anyhow::Result<Limits> {
        let defaults = Limits::default();
        let size = |field: &str, text: &Option<String>, default: u64| match text {
            Some(text) => parse_bytes(text)
                .map_err(|err| anyhow::anyhow!("{err}"))
                .with_context(|| format!("limit {field}")),
            None => Ok(default),
        };
        let limits = Limits {
            memory: size("memory", &self.memory, defaults.memory)?,
            timeout: match &self.timeout {
                Some(text) => humantime::parse_duration(text).with_context(|| {
                    format!("limit timeout `{text}` is not a duration like 30s or 5m")
                })?,
                None => defaults.timeout,
            },
            bytes_read: size("bytes-read", &self.bytes_read, defaults.bytes_read)?,
            bytes_written: size("bytes-written", &self.bytes_written, defaults.bytes_written)?,
            fuel: self.fuel,
            buffers: size("buffers", &self.buffers, defaults.buffers)?,
        };
        ensure!(
            !limits.timeout.is_zero(),
            "limit timeout must be more than zero"
        );
        ensure!(
            limits.memory >= 64 * 1024,
            "limit memory {} is below one wasm page (64 KiB)",
            Bytes(limits.memory)
        );
        ensure!(limits.fuel != Some(0), "limit fuel must be more than zero");
        ensure!(
            limits.buffers >= 16 << 20,
            "limit buffers {} is below 16 MiB: S3 writers need a 5 MiB part each, and reads and uploads a share",
            Bytes(limits.buffers)
        );
        Ok(limits)
    }
}

/// Parses `128MiB`, `4GiB`, `512KiB` or a plain number of bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size like 128MiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "`{other}` is not a size unit (KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Formats a byte count the way limits are written: `128 MiB`, `4 GiB`.
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= GIB && n.is_multiple_of(GIB) {
            write!(f, "{} GiB", n / GIB)
        } else if n >= MIB && n.is_multiple_of(MIB) {
            write!(f, "{} MiB", n / MIB)
        } else if n >= 1024 && n.is_multiple_of(1024) {
            write!(f, "{} KiB", n / 1024)
        } else {
            write!(f, "{n} bytes")
        }
    }
}

/// Caps the linear memory and table elements of one store, counted over
/// every memory and table the instance has (a component may define several),
/// and remembers whether it refused a growth, so a trap that follows can be
/// blamed on the limit.
#[derive(Debug)]
pub struct MemoryLimiter {
    max_memory: usize,
    pub denied: bool,
    /// Bytes of linear memory granted so far, all memories together.
    pub total: usize,
    /// The most granted at once, in bytes.
    pub peak: usize,
    table_elements: usize,
}

/// Table elements an instance may have, all tables together; far above
/// what real code needs.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;
/// Memories, tables and core instances one message's store may create;
/// the pool also refuses, at load, a component that needs more.
pub const MAX_MEMORIES: usize = 4;
pub const MAX_TABLES: usize = 32;
pub const MAX_CORE_INSTANCES: usize = 64;

impl MemoryLimiter {
    pub fn new(max_memory: u64) -> Self {
        MemoryLimiter {
            max_memory: usize::try_from(max_memory).unwrap_or(usize::MAX),
            denied: false,
            total: 0,
            peak: 0,
            table_elements: 0,
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Called for each memory's initial size too (from 0), so `total`
        // covers every memory of the instance.
        let total = self.total.saturating_sub(current).saturating_add(desired);
        let allowed = total <= self.max_memory;
        self.denied |= !allowed;
        if allowed {
            self.total = total;
            self.peak = self.peak.max(total);
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .table_elements
            .saturating_sub(current)
            .saturating_add(desired);
        let allowed = total <= MAX_TABLE_ELEMENTS;
        if allowed {
            self.table_elements = total;
        }
        Ok(allowed)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_bytes("128MiB"), Ok(128 << 20));
        assert_eq!(parse_bytes("4 GiB"), Ok(4 << 30));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("2MB"), Ok(2_000_000));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").unwrap_err().contains("parsecs"));
    }

    #[test]
    fn settings_layer_over_each_other_then_the_defaults() {
        let flags = LimitSettings {
            timeout: Some("5s".into()),
            ..LimitSettings::default()
        };
        let manifest = LimitSettings {
            timeout: Some("1m".into()),
            memory: Some("256MiB".into()),
            fuel: Some(1_000),
            ..LimitSettings::default()
        };
        let limits = flags.or(&manifest).resolve().unwrap();
        assert_eq!(limits.timeout, Duration::from_secs(5));
        assert_eq!(limits.memory, 256 * MIB);
        assert_eq!(limits.fuel, Some(1_000));
        assert_eq!(limits.bytes_read, Limits::default().bytes_read);
        for (bad, expected) in [
            (
                LimitSettings {
                    memory: Some("lots".into()),
                    ..LimitSettings::default()
                },
                "limit memory",
            ),
            (
                LimitSettings {
                    timeout: Some("0s".into()),
                    ..LimitSettings::default()
                },
                "more than zero",
            ),
            (
                LimitSettings {
                    bytes_written: Some("1 parsec".into()),
                    ..LimitSettings::default()
                },
                "limit bytes-written",
            ),
        ] {
            let err = format!("{:#}", bad.resolve().unwrap_err());
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn byte_counts_read_as_written() {
        assert_eq!(Bytes(128 * MIB).to_string(), "128 MiB");
        assert_eq!(Bytes(4 * GIB).to_string(), "4 GiB");
        assert_eq!(Bytes(1500).to_string(), "1500 bytes");
    }

    /// A component with eight memories once finished under a 128 MiB
    /// limit with the host at 1 GB: each memory had the whole limit.
    #[test]
    fn every_memory_counts_against_one_limit() {
        let mut limiter = MemoryLimiter::new(4 * MIB);
        let mib = MIB as usize;
        assert!(limiter.memory_growing(0, 2 * mib, None).unwrap());
        assert!(limiter.memory_growing(0, mib, None).unwrap());
        assert!(!limiter.memory_growing(0, 2 * mib, None).unwrap());
        assert!(limiter.denied);
        assert!(limiter.memory_growing(mib, 2 * mib, None).unwrap());
        assert_eq!(limiter.peak, 4 * mib);
    }

    #[test]
    fn growth_past_the_cap_is_refused_and_remembered() {
        let mut limiter = MemoryLimiter::new(2 * MIB);
        assert!(limiter.memory_growing(0, (2 * MIB) as usize, None).unwrap());
        assert!(!limiter.denied);
        assert!(
            !limiter
                .memory_growing(0, (2 * MIB) as usize + 65536, None)
                .unwrap()
        );
        assert!(limiter.denied);
    }
}
