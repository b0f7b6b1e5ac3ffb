#!/usr/bin/env bash
# Builds the example processors from wit/ into $OUT (default
# ${CARGO_TARGET_DIR:-target}/examples): wordcount-py.wasm (componentize-py,
# from PyPI, in a project-local virtualenv), wordcount-js.wasm
# (componentize-js, from npm), hello.wasm and bulk.wasm (Rust, wit-bindgen;
# bulk is a batch processor).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
out="${OUT:-$target/examples}"
mkdir -p "$out"

echo "examples: Python (componentize-py)"
venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/examples/python/requirements.txt"
(cd "$root/examples/python" &&
    "$venv/bin/componentize-py" -d ../../wit -w processor componentize app -o "$out/wordcount-py.wasm")

echo "examples: JavaScript (componentize-js)"
(cd "$root/examples/javascript" &&
    npm ci --no-audit --no-fund --loglevel=error &&
    node_modules/.bin/componentize-js wordcount.js --wit ../../wit --world-name processor \
        --disable http fetch-event --out "$out/wordcount-js.wasm")

echo "examples: Rust (wit-bindgen)"
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
(cd "$root/examples/hello-rust" &&
    env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS \
        cargo build --quiet --release --target wasm32-wasip2 --target-dir "$out/cargo")
cp "$out/cargo/wasm32-wasip2/release/hello.wasm" "$out/hello.wasm"
(cd "$root/examples/bulk-rust" &&
    env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS \
        cargo build --quiet --release --target wasm32-wasip2 --target-dir "$out/cargo")
cp "$out/cargo/wasm32-wasip2/release/bulk.wasm" "$out/bulk.wasm"

ls -l "$out"/*.wasm
