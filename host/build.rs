//! Builds the built-in processors for wasm32-wasip2 so `wasq` carries them.

#[path = "build_guest.rs"]
mod build_guest;

fn main() {
    // Read when run, not when compiled: a build cache shared between
    // clones in different places would otherwise build the wrong tree.
    let manifest_dir = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let workspace = manifest_dir.parent().expect("host/ sits in the workspace");
    build_guest::build_guest(
        &workspace.join("guest-compress"),
        &workspace.join("wit"),
        "compress.wasm",
        &[],
    );
}
