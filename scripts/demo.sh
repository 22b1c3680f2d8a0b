#!/usr/bin/env bash
# Sets everything up on a fresh machine, then runs the demos:
#  1. east-west: frontend, orders and a compromised batch workload, each behind its own sidecar
#     Envoy with its own SPIFFE identity; batch replays frontend's stolen token to orders.
#  2. enforce and monitor: a legitimate call is allowed, the stolen token replayed from another
#     workload is rejected, and the same replay in monitor mode is allowed and counted.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export ENVOY_BIN="$PWD/.venv/bin/envoy"
export TOKENBIND_WASM="$PWD/target/wasm32-wasip1/release/tokenbind.wasm"
cargo build --quiet -p tokenbind-integration --bins
cargo run --quiet -p tokenbind-integration --bin east-west
echo
cargo run --quiet -p tokenbind-integration --bin demo
