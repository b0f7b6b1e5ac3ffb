#!/usr/bin/env bash
# Runs every test wasq has, installing what they need first. This is the
# README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

# Processors are built for wasm32-wasip2 by the build scripts.
rustup target add wasm32-wasip2

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --manifest-path guest-compress/Cargo.toml --all-targets -- -D warnings
cargo test --workspace
# The default processor's own unit tests run natively, in its own workspace.
cargo test --manifest-path guest-compress/Cargo.toml
