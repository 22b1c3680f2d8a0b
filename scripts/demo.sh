#!/usr/bin/env bash
# Sets everything up on a fresh machine, then runs the demo: a legitimate call is allowed,
# a stolen token replayed from another workload is rejected by a real Envoy sidecar, and the
# same replay in monitor mode is allowed and counted.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export ENVOY_BIN="$PWD/.venv/bin/envoy"
export TOKENBIND_WASM="$PWD/target/wasm32-wasip1/release/tokenbind.wasm"
cargo run --quiet -p tokenbind-integration --bin demo
