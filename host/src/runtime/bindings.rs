//! The one place the WIT contract is turned into Rust: host traits for the
//! imports, typed access to the `handle` export.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "processor",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "wasq:processor/blobs.reader": crate::runtime::host::blobs::ReaderHandle,
        "wasq:processor/blobs.writer": crate::runtime::host::blobs::WriterHandle,
    },
    trappable_error_type: {
        "wasq:processor/blobs.error" => crate::runtime::host::HostBlobError,
    },
});

pub use self::wasq::processor::{blobs, config, log, records, types};
