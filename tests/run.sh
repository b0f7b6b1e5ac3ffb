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

# Debian's packages: Prometheus checks the shipped alerting rules and a
# test runs the real server against a host; chromium and its chromedriver
# drive the console in a real browser.
wanted=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || wanted+=(prometheus)
command -v chromium >/dev/null || wanted+=(chromium)
command -v chromedriver >/dev/null || wanted+=(chromium-driver)
if [ "${#wanted[@]}" -gt 0 ]; then
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${wanted[@]}" >/dev/null
fi
promtool check rules deploy/prometheus/wasq-rules.yml
export WASQ_TEST_PROMETHEUS="$(command -v prometheus)"
export WASQ_TEST_CHROMIUM="$(command -v chromium)"
export WASQ_TEST_CHROMEDRIVER="$(command -v chromedriver)"

# A real SQS, S3 and DynamoDB API on loopback: moto server, pinned, in the
# project's virtualenv (started by tests/moto_server.py, which closes a race
# in its SQS deletes); cfn-lint checks the CloudFormation template.
venv="$PWD/.venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
"$venv/bin/cfn-lint" deploy/wasq.yaml

log=$(mktemp)
moto_log=$(mktemp)
moto_port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$venv/bin/python" tests/moto_server.py -H 127.0.0.1 -p "$moto_port" >"$moto_log" 2>&1 &
moto_pid=$!
trap 'kill "$moto_pid" 2>/dev/null; rm -f "$log" "$moto_log"' EXIT
for _ in $(seq 100); do
    if "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$moto_port/moto-api/')" 2>/dev/null; then
        break
    fi
    sleep 0.2
done
"$venv/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$moto_port/moto-api/')" || {
    echo "moto server did not start:" >&2
    cat "$moto_log" >&2
    exit 1
}
export WASQ_TEST_AWS_ENDPOINT="http://127.0.0.1:$moto_port"

# An S3 API that checks signatures, presigned links included: SeaweedFS,
# from PyPI, on free loopback ports, with an identity of its own.
weed_dir=$(mktemp -d)
read -r WASQ_TEST_S3_ENDPOINT WASQ_TEST_S3_ACCESS_KEY WASQ_TEST_S3_SECRET_KEY weed_pid \
    < <("$venv/bin/python" tests/seaweedfs.py "$venv/bin/weed" "$weed_dir") || {
    echo "SeaweedFS did not start:" >&2
    cat "$weed_dir/weed.log" >&2
    exit 1
}
trap 'kill "$moto_pid" 2>/dev/null; kill -KILL -- -"$weed_pid" 2>/dev/null; rm -rf "$log" "$moto_log" "$weed_dir"' EXIT
export WASQ_TEST_S3_ENDPOINT WASQ_TEST_S3_ACCESS_KEY WASQ_TEST_S3_SECRET_KEY
export WASQ_TEST_PYTHON="$venv/bin/python"
# Credentials and region for moto only; nothing here reaches AWS.
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE AWS_ENDPOINT_URL
# The default processor's own unit tests run natively, in its own workspace.
# Tests that need the servers above are marked ignored for a plain `cargo
# test`; here every one of them runs, and a run that skipped any fails.
cargo test --manifest-path guest-compress/Cargo.toml -- --include-ignored 2>&1 | tee "$log"
cargo test --workspace -- --include-ignored 2>&1 | tee -a "$log"

# One closing line for every test binary above.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "all tests: %d passed, %d failed, %d skipped\n", p, f, s; exit (s > 0) }' "$log"
