#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser: `scripts/fuzz.sh [SECONDS] [TARGET...]`.
#
# Runs each target in fuzz/fuzz_targets/ (or only the TARGETs named) for SECONDS (default 60)
# with libFuzzer via cargo-fuzz on the stable toolchain (`--sanitizer none`: the sanitizers
# need nightly; Rust is memory-safe here, and what we hunt are panics, overflows, hangs and
# failed invariants). Each target starts from its seed corpus fuzz/seeds/<target>/, copied to
# a scratch corpus so the repository stays clean. Prints one line per target; on a crash prints
# the crash file and the command that reproduces it, and exits non-zero.
#
# Installs cargo-fuzz (pinned) if it is missing; builds all targets once.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-60}"
shift || true
CARGO_FUZZ_VERSION=0.13.2
# Per-input limits: the largest seed is a few KiB (engine requests with a token and a proof);
# 16 KiB leaves room to grow past every size limit the filter enforces (8 KiB tokens).
MAX_LEN="${FUZZ_MAX_LEN:-16384}"
RSS_LIMIT_MB="${FUZZ_RSS_LIMIT_MB:-2048}"
TIMEOUT_S="${FUZZ_TIMEOUT_S:-10}"
WORK="${FUZZ_WORK:-$PWD/target/fuzz-work}"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  say "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

cd fuzz
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(find fuzz_targets -maxdepth 1 -name '*.rs' -printf '%f\n' | sed 's/\.rs$//' | sort)
fi
# Every target file must be a [[bin]] of the fuzz crate (cargo fuzz list reads Cargo.toml).
listed="$(cargo fuzz list)"
for t in "${targets[@]}"; do
  if ! grep -qx "$t" <<<"$listed"; then
    echo "fuzz target '$t' (fuzz/fuzz_targets/$t.rs) has no [[bin]] entry in fuzz/Cargo.toml" >&2
    exit 2
  fi
  if [ ! -d "seeds/$t" ] || [ -z "$(ls -A "seeds/$t")" ]; then
    echo "fuzz target '$t' has no seed corpus in fuzz/seeds/$t/" >&2
    exit 2
  fi
done

mkdir -p "$WORK"
say "building the fuzz targets (cargo fuzz build --sanitizer none, rustc $(rustc --version | cut -d' ' -f2))"
if ! cargo fuzz build --sanitizer none >"$WORK/build.log" 2>&1; then
  tail -40 "$WORK/build.log" >&2
  exit 2
fi
BIN="$PWD/target/$(rustc -vV | sed -n 's/^host: //p')/release"

say "fuzzing each target for ${SECONDS_PER_TARGET} s"
failed=0
passed=0
for t in "${targets[@]}"; do
  corpus="$WORK/corpus/$t"
  artifacts="$WORK/artifacts/$t"
  rm -rf "$corpus" "$artifacts" && mkdir -p "$corpus" "$artifacts"
  cp "seeds/$t"/* "$corpus/"
  log="$WORK/$t.log"
  set +e
  "$BIN/$t" "$corpus" \
    -max_total_time="$SECONDS_PER_TARGET" -max_len="$MAX_LEN" \
    -rss_limit_mb="$RSS_LIMIT_MB" -timeout="$TIMEOUT_S" \
    -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  secs="$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)"
  last="$(grep -E '^#[0-9]+' "$log" | tail -1)"
  cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")"
  ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")"
  corp="$(find "$corpus" -type f | wc -l)"
  human() { numfmt --to=si "${1:-0}" 2>/dev/null | tr 'K' 'k' || echo "${1:-0}"; }
  crash="$(find "$artifacts" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | head -1)"
  if [ "$rc" -eq 0 ] && [ -z "$crash" ]; then
    printf '%s: %s s, %s execs, %s edges / %s features, corpus %s, no crash\n' \
      "$t" "${secs:-$SECONDS_PER_TARGET}" "$(human "$execs")" "${cov:-?}" "${ft:-?}" "$corp"
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    printf '%s: CRASH after %s execs (exit %s)\n' "$t" "$(human "$execs")" "$rc"
    { grep -E "panicked at|DISAGREEMENT|ERROR: libFuzzer|SUMMARY" "$log" || true; } | head -5 | sed 's/^/    /'
    printf '    crash file: %s\n' "${crash:-<none written; see $log>}"
    printf '    reproduce:  (cd fuzz && cargo fuzz run --sanitizer none %s %s)\n' "$t" "${crash:-}"
    printf '    minimise:   (cd fuzz && cargo fuzz tmin --sanitizer none %s %s)\n' "$t" "${crash:-}"
    printf '    log:        %s\n' "$log"
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
