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

# The example processors in Python, JavaScript and Rust (componentize-py
# from PyPI into .venv, componentize-js from npm); the tests run them.
export WASQ_EXAMPLES_DIR="${CARGO_TARGET_DIR:-$PWD/target}/examples"
OUT="$WASQ_EXAMPLES_DIR" bash examples/build.sh

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The default processor's own unit tests run natively, in its own workspace.
cargo test --manifest-path guest-compress/Cargo.toml 2>&1 | tee "$log"
cargo test --workspace 2>&1 | tee -a "$log"

# One closing line for every test binary above.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
