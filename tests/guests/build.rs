//! Builds the misbehaving test processors for wasm32-wasip2.

#[path = "../../host/build_guest.rs"]
mod build_guest;

fn main() {
    // Read when run, not when compiled: a build cache shared between
    // clones in different places would otherwise build the wrong tree.
    let here = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    build_guest::build_guest(
        &here.join("rogue"),
        // The 0.1.0 contract, frozen: every test that runs `rogue` also
        // proves that processors built for 0.1.0 keep working.
        &here.join("wit-0.1.0"),
        "rogue.wasm",
        &[],
    );
    // A batch processor, built against the current contract.
    build_guest::build_guest(
        &here.join("batcher"),
        &here.join("../../wit"),
        "batcher.wasm",
        &[],
    );
}
