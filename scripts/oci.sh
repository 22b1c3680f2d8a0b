#!/bin/sh
# Packs the filter as an OCI image that Istio can pull (WasmPlugin `url: oci://...`).
#
#   scripts/oci.sh            build target/oci/tokenbind/ (OCI image layout) and
#                             target/oci/tokenbind.tar (the same layout as one tar)
#   scripts/oci.sh --pin      also write the new digest and tag into envoy/istio/*.yaml
#   scripts/oci.sh --pin DIR  ... into DIR/*.yaml instead
#
# Format: the "compat" variant of the Wasm image spec, which Istio's image fetcher accepts:
# a standard image manifest (application/vnd.oci.image.manifest.v1+json) with an image config
# blob (application/vnd.oci.image.config.v1+json) and exactly one layer
# (application/vnd.oci.image.layer.v1.tar+gzip) that is a tar.gz holding one file, plugin.wasm.
# The manifest carries the annotation module.wasm.image/variant=compat.
#
# Reproducible: the layer tar has fixed mtimes/owners/modes (ustar), gzip -n stores no name or
# time, and every JSON document is written byte for byte below, so the same tokenbind.wasm
# always gives the same manifest digest.
#
# WasmPlugin.spec.sha256 for an oci:// URL is the hex digest of the image MANIFEST (Istio
# compares it with the pulled image's digest), written to target/oci/tokenbind.sha256. The
# sha256 of the module itself (for http(s):// URLs) goes to tokenbind.wasm.sha256.
#
# Inputs (environment): TOKENBIND_WASM (default target/wasm32-wasip1/release/tokenbind.wasm),
# OCI_OUT (default target/oci), OCI_TAG (default: the workspace version in Cargo.toml).
# Needs GNU tar, gzip and sha256sum. Does not build the module: run scripts/setup.sh (or
# `cargo build --release --target wasm32-wasip1 -p tokenbind-filter`) first.
set -eu
cd "$(dirname "$0")/.."

PIN=""
case "${1:-}" in
  "") ;;
  --pin) PIN="${2:-envoy/istio}" ;;
  *) echo "usage: $0 [--pin [DIR]]" >&2; exit 2 ;;
esac

WASM="${TOKENBIND_WASM:-target/wasm32-wasip1/release/tokenbind.wasm}"
OUT="${OCI_OUT:-target/oci}"
TAG="${OCI_TAG:-$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml)}"
NAME=tokenbind

die() { echo "oci.sh: $*" >&2; exit 1; }
[ -f "$WASM" ] || die "no filter module at $WASM; build it with scripts/setup.sh (or cargo build --release --target wasm32-wasip1 -p tokenbind-filter)"
[ -n "$TAG" ] || die "could not read the workspace version from Cargo.toml (set OCI_TAG)"
tar --version 2>/dev/null | grep -q 'GNU tar' || die "GNU tar is required (reproducible --sort/--mtime)"
command -v gzip >/dev/null || die "gzip is required"
command -v sha256sum >/dev/null || die "sha256sum is required"
if [ "$(head -c 4 "$WASM" | od -An -tx1 | tr -d ' \n')" != "0061736d" ]; then
  die "$WASM is not a Wasm module"
fi

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { wc -c < "$1" | tr -d ' '; }
# Deterministic tar: names sorted, owner 0:0, fixed mtime, ustar (no pax atime/ctime records).
dtar() { tar --create --format=ustar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 "$@"; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT INT TERM
mkdir -p "$work/rootfs" "$work/layout/blobs/sha256"

# Layer: a tar.gz with one file, plugin.wasm (mode 0644).
cp "$WASM" "$work/rootfs/plugin.wasm"
chmod 0644 "$work/rootfs/plugin.wasm"
dtar --mode=0644 --file="$work/layer.tar" --directory="$work/rootfs" plugin.wasm
gzip -n -9 -c "$work/layer.tar" > "$work/layer.tar.gz"
diff_id="$(sha "$work/layer.tar")"
layer="$(sha "$work/layer.tar.gz")"
layer_size="$(size "$work/layer.tar.gz")"
mv "$work/layer.tar.gz" "$work/layout/blobs/sha256/$layer"

# Image config. architecture/os use Go's names for WASI preview 1 (GOARCH=wasm GOOS=wasip1).
printf '%s' '{"architecture":"wasm","os":"wasip1","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:'"$diff_id"'"]}}' > "$work/config.json"
config="$(sha "$work/config.json")"
config_size="$(size "$work/config.json")"
mv "$work/config.json" "$work/layout/blobs/sha256/$config"

# Image manifest.
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'\
'"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'"$config"'","size":'"$config_size"'},'\
'"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:'"$layer"'","size":'"$layer_size"'}],'\
'"annotations":{"module.wasm.image/variant":"compat","org.opencontainers.image.licenses":"Apache-2.0",'\
'"org.opencontainers.image.title":"'"$NAME"'","org.opencontainers.image.version":"'"$TAG"'"}}' > "$work/manifest.json"
manifest="$(sha "$work/manifest.json")"
manifest_size="$(size "$work/manifest.json")"
mv "$work/manifest.json" "$work/layout/blobs/sha256/$manifest"

# Layout: oci-layout and an index naming the manifest by tag.
printf '%s' '{"imageLayoutVersion":"1.0.0"}' > "$work/layout/oci-layout"
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",'\
'"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'"$manifest"'","size":'"$manifest_size"','\
'"annotations":{"org.opencontainers.image.ref.name":"'"$TAG"'"}}]}' > "$work/layout/index.json"
chmod 0644 "$work/layout/oci-layout" "$work/layout/index.json" "$work/layout/blobs/sha256/"*

# The archive (an "oci-archive": the layout's files at the tar root).
dtar --mode=a+rX,u+w,go-w --file="$work/$NAME.tar" --directory="$work/layout" oci-layout index.json blobs

# Publish: replace the previous layout as a whole, so no stale blobs remain.
mkdir -p "$OUT"
rm -rf "${OUT:?}/$NAME" "$OUT/$NAME.tar"
mv "$work/layout" "$OUT/$NAME"
mv "$work/$NAME.tar" "$OUT/$NAME.tar"
printf '%s\n' "$manifest" > "$OUT/$NAME.sha256"
printf '%s\n' "$(sha "$WASM")" > "$OUT/$NAME.wasm.sha256"
printf '%s\n' "$TAG" > "$OUT/$NAME.tag"

echo "OCI image layout  $OUT/$NAME  (tag $TAG)"
echo "OCI archive       $OUT/$NAME.tar"
echo "manifest digest   sha256:$manifest"
echo "  -> WasmPlugin.spec.sha256 for oci:// URLs: $manifest  ($OUT/$NAME.sha256)"
echo "plugin.wasm       sha256:$(cat "$OUT/$NAME.wasm.sha256")  (for http(s):// URLs; $OUT/$NAME.wasm.sha256)"

if [ -n "$PIN" ]; then
  [ -d "$PIN" ] || die "--pin: no directory $PIN"
  for f in "$PIN"/*.yaml; do
    [ -f "$f" ] || continue
    # Only the sha256 fields (64 hex digits) and the tag of oci://.../tokenbind:<tag> URLs.
    sed -e 's/^\([[:space:]]*sha256:[[:space:]]*"\{0,1\}\)[0-9a-f]\{64\}/\1'"$manifest"'/' \
        -e 's#\(oci://[^[:space:]"]*/'"$NAME"':\)[A-Za-z0-9_.-]*#\1'"$TAG"'#g' \
        "$f" > "$f.pin.tmp"
    if cmp -s "$f" "$f.pin.tmp"; then rm -f "$f.pin.tmp"; else mv "$f.pin.tmp" "$f"; echo "pinned $f"; fi
  done
fi
