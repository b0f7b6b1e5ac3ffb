//! Per-plugin hard limits and the memory limiter that enforces one of them.

use std::fmt;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// What one message's run of a processor may use. Exceeding any of these
/// ends the message as a retry whose reason names the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory, in bytes.
    pub memory: u64,
    /// Wall-clock time for one `handle` call, instantiation included.
    pub timeout: Duration,
    /// Bytes read from the blob store.
    pub bytes_read: u64,
    /// Bytes written to the blob store.
    pub bytes_written: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 128 * MIB,
            timeout: Duration::from_secs(30),
            bytes_read: 4 * GIB,
            bytes_written: 4 * GIB,
        }
    }
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

/// Caps linear memory and table growth for one store, and remembers whether
/// it refused a growth, so a trap that follows can be blamed on the limit.
#[derive(Debug)]
pub struct MemoryLimiter {
    max_memory: usize,
    pub denied: bool,
    /// The largest linear memory granted, in bytes.
    pub peak: usize,
}

/// Table elements a component may have; far above what real code needs.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl MemoryLimiter {
    pub fn new(max_memory: u64) -> Self {
        MemoryLimiter {
            max_memory: usize::try_from(max_memory).unwrap_or(usize::MAX),
            denied: false,
            peak: 0,
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.max_memory;
        self.denied |= !allowed;
        if allowed {
            self.peak = self.peak.max(desired);
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn byte_counts_read_as_written() {
        assert_eq!(Bytes(128 * MIB).to_string(), "128 MiB");
        assert_eq!(Bytes(4 * GIB).to_string(), "4 GiB");
        assert_eq!(Bytes(1500).to_string(), "1500 bytes");
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
