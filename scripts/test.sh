#!/usr/bin/env bash
# Runs every test: formatting and lints, the core's unit tests, and the integration tests
# against a real Envoy. Installs what it needs first (scripts/setup.sh). Never skips Envoy:
# if it is missing, the integration tests fail.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

say "cargo fmt --check"
cargo fmt --all -- --check

say "clippy (native, and the wasm adapter for wasm32-wasip1); unwrap/expect/panic are denied outside tests"
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo clippy -p tokenbind-filter --target wasm32-wasip1 --quiet -- -D warnings

say "the adapter does not depend on the proxy-wasm SDK (its host-call wrappers and dispatcher panic)"
if cargo tree -p tokenbind-filter --target wasm32-wasip1 --edges normal,build --prefix none \
  | grep -q '^proxy-wasm '; then
  echo "tokenbind-filter depends on proxy-wasm; every host call must go through filter/wasm/src/abi.rs" >&2
  exit 1
fi

say "core tests compiled to wasm32-wasip1 and run inside V8 (Node), the engine Envoy embeds"
command -v node >/dev/null || { echo "node (>= 20) is required to run the core tests in V8" >&2; exit 1; }
CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings $PWD/scripts/wasi-run.mjs" \
  cargo test -p tokenbind-core --target wasm32-wasip1

say "unit and integration tests (integration tests start real Envoy $(.venv/bin/envoy --version | grep -o '/1\.[0-9.]*/' | tr -d /))"
export ENVOY_BIN="$PWD/.venv/bin/envoy"
export TOKENBIND_WASM="$PWD/target/wasm32-wasip1/release/tokenbind.wasm"
cargo test --workspace
