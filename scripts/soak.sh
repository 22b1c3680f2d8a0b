#!/usr/bin/env bash
# Memory soak (see README.md, "Memory soak"):
#
#   scripts/soak.sh [MINUTES] [soak options]
#
# Floods one server sidecar of the benchmark topology (client sidecar -> mTLS -> server sidecar
# with tokenbind) for MINUTES (default 10) with requests it has never seen: every request a new
# ES256 token bound to the client's SPIFFE ID, every other one DPoP-bound with a new proof. The
# filter runs with its default cache and replay-store sizes. Prints the server sidecar's RSS and
# its refusals by reason every 15 s, then RSS after warm-up (min, max, slope). Exit status: 0 when
# every request got a 200 and no tokenbind.denied.* counter rose; 2 otherwise.
# Options: --connections N, --interval SECS, --warmup SECS, --wasm PATH, --out FILE
# (results as JSON, default target/bench/soak.json).
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=10
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
  minutes="$1"
  shift
fi

./scripts/setup.sh
export ENVOY_BIN="$PWD/.venv/bin/envoy"
export TOKENBIND_WASM="${TOKENBIND_WASM:-$PWD/target/wasm32-wasip1/release/tokenbind.wasm}"
printf '\033[1m==> %s\033[0m\n' "building the soak driver"
cargo build --release --quiet -p tokenbind-benches --bin soak
exec "${CARGO_TARGET_DIR:-target}/release/soak" --minutes "$minutes" "$@"
