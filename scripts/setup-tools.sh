#!/usr/bin/env bash
# Dev tools for the deployment tests, idempotently (scripts/setup.sh runs this):
#   - GNU tar, gzip, sha256sum: scripts/oci.sh (integration/tests/oci_image.rs)
#   - Node.js >= 18 and npm, and the Istio CRD schema validator in integration/testdata/istio
#     (@kubernetes-models/istio + typescript, exactly as pinned by its package-lock.json):
#     integration/tests/istio_manifests.rs
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "missing $*: install it with your package manager" >&2
    exit 1
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  say "installing $* (apt)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}

if ! tar --version 2>/dev/null | grep -q 'GNU tar' || ! command -v gzip >/dev/null || ! command -v sha256sum >/dev/null; then
  apt_install tar gzip coreutils
fi

node_major() { node -e 'process.stdout.write(String(process.versions.node.split(".")[0]))' 2>/dev/null || echo 0; }
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1 || [ "$(node_major)" -lt 18 ]; then
  apt_install nodejs npm
fi
if [ "$(node_major)" -lt 18 ]; then
  echo "Node.js >= 18 is required for integration/testdata/istio (have $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi

# npm ci reinstalls from scratch, so run it only when the lock file changed since the last run.
schema_dir=integration/testdata/istio
stamp="$schema_dir/node_modules/.tokenbind-lock.sha256"
want="$(sha256sum "$schema_dir/package-lock.json" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -d "$schema_dir/node_modules/@kubernetes-models/istio" ]; then
  say "installing the Istio CRD schema validator ($schema_dir, npm ci)"
  # --ignore-scripts: nothing here needs install scripts. The packages declare node >= 22 but
  # run on 18+; npm only warns (EBADENGINE).
  npm ci --prefix "$schema_dir" --ignore-scripts --no-audit --no-fund --loglevel=error
  printf '%s\n' "$want" > "$stamp"
fi
printf '    node %s, @kubernetes-models/istio %s, typescript %s\n' "$(node --version)" \
  "$(node -p 'require("./'"$schema_dir"'/node_modules/@kubernetes-models/istio/package.json").version')" \
  "$(node -p 'require("./'"$schema_dir"'/node_modules/typescript/package.json").version')"
