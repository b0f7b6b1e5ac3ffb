//! Builds the misbehaving test processors for wasm32-wasip2.

#[path = "../../host/build_guest.rs"]
mod build_guest;

fn main() {
    let here = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    build_guest::build_guest(
        &here.join("rogue"),
        &here.join("../../wit"),
        "rogue.wasm",
        &[],
    );
}
