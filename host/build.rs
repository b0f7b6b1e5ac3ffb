//! Builds the built-in processors for wasm32-wasip2 so `wasq` carries them.

#[path = "build_guest.rs"]
mod build_guest;

fn main() {
    let manifest_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().expect("host/ sits in the workspace");
    build_guest::build_guest(
        &workspace.join("guest-compress"),
        &workspace.join("wit"),
        "compress.wasm",
        &[],
    );
}
