//! The one place the WIT contract is turned into Rust: host traits for the
//! imports, typed access to the `handle` export, and to `handle-batch` for
//! the `batch-processor` world.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "processor",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "wasq:processor/blobs.reader": crate::runtime::host::blobs::ReaderHandle,
        "wasq:processor/blobs.writer": crate::runtime::host::blobs::WriterHandle,
        "wasq:processor/blobs.deflated": crate::runtime::host::blobs::DeflatedHandle,
    },
    trappable_error_type: {
        "wasq:processor/blobs.error" => crate::runtime::host::HostBlobError,
    },
});

pub use self::wasq::processor::{blobs, config, log, records, types};

/// The `batch-processor` world: the same imports, and `handle-batch`.
pub mod batch {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "batch-processor",
        exports: { default: async },
        with: {
            "wasq:processor/types": super::types,
            "wasq:processor/blobs": super::blobs,
            "wasq:processor/records": super::records,
            "wasq:processor/log": super::log,
            "wasq:processor/config": super::config,
        },
    });
}
