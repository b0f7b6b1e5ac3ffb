//! What one message's store holds: the capabilities granted to the
//! processor, its limits and usage, and where its log lines go.

use super::limits::{Bytes, Limits, MemoryLimiter};
use super::log::LogSink;
use crate::blobs::BlobStore;
use crate::records::Records;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The backends a processor's imports act on.
#[derive(Clone)]
pub struct Services {
    pub blobs: Arc<dyn BlobStore>,
    pub records: Arc<dyn Records>,
}

/// Why a run ended without an outcome from the processor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    Timeout(Duration),
    Memory(u64),
    Fuel(u64),
    BytesRead(u64),
    BytesWritten(u64),
    /// The processor trapped (a panic, an abort, a bad handle).
    Trap(String),
    /// The processor could not be instantiated.
    Instantiate(String),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Timeout(limit) => write!(
                f,
                "timeout: the processor ran past its wall-clock limit of {}",
                humantime::format_duration(*limit)
            ),
            Fault::Memory(limit) => write!(
                f,
                "memory limit: the processor needed more than its {} of memory",
                Bytes(*limit)
            ),
            Fault::Fuel(limit) => write!(
                f,
                "fuel limit: the processor used up its {limit} units of fuel"
            ),
            Fault::BytesRead(limit) => write!(
                f,
                "bytes-read limit: the processor read more than {} from the blob store",
                Bytes(*limit)
            ),
            Fault::BytesWritten(limit) => write!(
                f,
                "bytes-written limit: the processor wrote more than {} to the blob store",
                Bytes(*limit)
            ),
            Fault::Trap(message) => write!(f, "trap: {message}"),
            Fault::Instantiate(message) => write!(f, "instantiation failed: {message}"),
        }
    }
}

/// What one run used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// The processor's largest linear memory, in bytes.
    pub peak_memory: u64,
}

/// The store data of one run.
pub struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: MemoryLimiter,
    pub(super) limits: Limits,
    pub(super) services: Services,
    pub(super) config: Arc<BTreeMap<String, String>>,
    pub(super) grants: Arc<super::grants::Grants>,
    pub(super) log: LogSink,
    pub(super) usage: Usage,
    /// Readers and writers the processor holds now.
    pub(super) open_handles: usize,
    /// Who writes this message's objects: `QUEUE/MESSAGE_ID`.
    pub(super) owner: String,
    /// The host memory this message may hold in blob buffers.
    pub(super) budget: crate::blobs::Budget,
    /// Objects this message finished writing, which it may sign links for
    /// without a read grant.
    pub(super) written: std::collections::HashSet<crate::blobs::BlobUri>,
    /// Objects the processor said it will open, opened ahead.
    pub(super) prefetch: super::prefetch::Prefetcher,
    /// This message's share of the host's cores for `blobs.deflate`, made
    /// at its first stream.
    pub(super) deflating: Option<super::deflate::Share>,
    /// Set by a host import before it traps on a hard limit, so the trap can
    /// be reported as that limit.
    pub(super) fault: Option<Fault>,
}

impl HostState {
    /// Records a limit and returns the trap that ends the run.
    pub(super) fn exceed(&mut self, fault: Fault) -> wasmtime::Error {
        let err = wasmtime::Error::msg(fault.to_string());
        self.fault = Some(fault);
        err
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
