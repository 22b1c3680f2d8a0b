#!/usr/bin/env bash
# tokenbind benchmarks (see benches/README.md).
#
#   scripts/bench.sh [e2e options]       micro-benchmarks (native vs inside V8), then the
#                                        end-to-end run of every scenario (A..F, then A-c2/C-c2
#                                        and the DPoP flood) on real Envoys
#   scripts/bench.sh e2e [e2e options]   only the end-to-end run   (options: e2e --help)
#   scripts/bench.sh micro [options]     only the micro-benchmarks, native vs in V8
#   scripts/bench.sh criterion [args]    criterion micro-benchmarks (native)
#
# The micro-benchmarks build without the crate's default `e2e` feature: that feature pulls in
# jwt-simple, which turns on `rsa`'s u64_digit for the filter's code too, and they must time
# the same code as tokenbind.wasm.
#
# Useful e2e options: --quick (smoke run), --rounds N, --duration SECS, --scenarios A,C,D-*,
# --wait-quiet 1.0 (wait for a 1-minute load average below 1.0 first), --profile A,W,C,
# --crypto auto|host|wasm (the filter's backend setting; auto leaves the key out),
# --flood-duration SECS and --flood-alg ES256|EdDSA (DPOP-FLOOD, after the rounds).
# Results: target/bench/results.json and .md (e2e), target/bench/micro.json (micro).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

mode=all
case "${1:-}" in
  e2e|micro|criterion) mode="$1"; shift ;;
esac

# Envoy, the wasm target and the filter module.
./scripts/setup.sh

apt_install() {
  local sudo=()
  [ "$(id -u)" -ne 0 ] && sudo=(sudo)
  say "installing $* (Debian packages)"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null
}

if [ "$mode" = all ] || [ "$mode" = e2e ]; then
  # Load generators: wrk drives the runs; h2load (nghttp2-client) is there for HTTP/2 checks.
  missing=()
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
  if [[ " $* " == *" --profile "* ]] && ! command -v perf >/dev/null 2>&1; then
    missing+=(linux-perf)
  fi
  if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
  fi
fi

target_dir="${CARGO_TARGET_DIR:-target}"

run_micro() {
  say "building the micro-benchmark suite for wasm32-wasip1 (run inside V8 by Node)"
  cargo build --release --target wasm32-wasip1 -p tokenbind-benches --bin micro --no-default-features
  say "micro-benchmarks: native vs inside V8"
  cargo run --release -p tokenbind-benches --no-default-features --bin micro -- \
    --v8 "$target_dir/wasm32-wasip1/release/micro.wasm" "$@"
}

case "$mode" in
  micro) run_micro "$@" ;;
  criterion) cargo bench -p tokenbind-benches --no-default-features -- "$@" ;;
  e2e)
    say "end-to-end: wrk -> client sidecar -> server sidecar (scenarios A..F, memory, DPoP flood)"
    cargo run --release -p tokenbind-benches --bin e2e -- "$@"
    ;;
  all)
    run_micro
    say "end-to-end: wrk -> client sidecar -> server sidecar (scenarios A..F, memory, DPoP flood)"
    cargo run --release -p tokenbind-benches --bin e2e -- "$@"
    ;;
esac
