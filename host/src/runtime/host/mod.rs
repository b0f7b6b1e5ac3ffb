//! The host side of each WIT interface, one file per interface, all acting
//! on the per-message [`HostState`](super::state::HostState).

pub mod blobs;
pub mod config;
pub mod log;
pub mod records;

use super::state::Fault;

/// What a blobs import can end in besides success: an error value the
/// processor handles, or a trap that ends the message (a hard limit, a bad
/// handle).
#[derive(Debug)]
pub enum HostBlobError {
    Blob(crate::blobs::BlobError),
    Trap(wasmtime::Error),
}

impl From<crate::blobs::BlobError> for HostBlobError {
    fn from(err: crate::blobs::BlobError) -> Self {
        HostBlobError::Blob(err)
    }
}

impl From<wasmtime::Error> for HostBlobError {
    fn from(err: wasmtime::Error) -> Self {
        HostBlobError::Trap(err)
    }
}

impl From<wasmtime::component::ResourceTableError> for HostBlobError {
    fn from(err: wasmtime::component::ResourceTableError) -> Self {
        HostBlobError::Trap(err.into())
    }
}

impl From<Fault> for HostBlobError {
    fn from(fault: Fault) -> Self {
        HostBlobError::Trap(wasmtime::Error::msg(fault.to_string()))
    }
}
