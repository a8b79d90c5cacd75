#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/) on the stable toolchain and runs them with libFuzzer.
#
#   scripts/fuzz.sh --bounded            every target for FUZZ_SECONDS (default 15) on its corpus (CI)
#   scripts/fuzz.sh --long [SECS] [T..]  the long run: each target (or the named ones) for SECS
#                                        (default 1800), new inputs kept in fuzz/corpus-long/
#   scripts/fuzz.sh --repro T FILE       runs target T once on FILE (a crash artifact)
#
# Coverage comes from LLVM's SanitizerCoverage pass, enabled with stable `-C` flags (what
# `cargo fuzz --sanitizer none` passes, minus anything nightly); see fuzz/README.md.
# Fails (non-zero) when a target crashes, leaks past its limits or times out on one input.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

TARGETS=(otlp_proto otlp_json gzip_body config_load traceparent queue_scan)

export RUSTFLAGS="${RUSTFLAGS:-} --cfg fuzzing -Cdebug-assertions -Coverflow-checks \
 -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares"
# Its own target dir: instrumented objects must never mix with the workspace's.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/target}"
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros (they run on the host
# and must not need the libFuzzer runtime).
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
BIN="$CARGO_TARGET_DIR/$TRIPLE/release"

build() {
  echo "== building fuzz targets ($(rustc --version))"
  cargo build --release --locked --bins --target "$TRIPLE"
}

# libFuzzer options shared by every run: one input over 10 s or 2 GiB is a finding too.
common=(-timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1)

run() { # target seconds corpus_dir...
  local t=$1 secs=$2
  shift 2
  mkdir -p "artifacts/$t"
  echo "== $t (${secs}s)"
  "$BIN/$t" "${common[@]}" -max_total_time="$secs" -artifact_prefix="artifacts/$t/" "$@"
}

case "${1:---bounded}" in
  --bounded)
    secs="${FUZZ_SECONDS:-15}"
    build
    # New inputs go to a scratch dir, so CI never rewrites the committed corpus.
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    for t in "${TARGETS[@]}"; do
      mkdir -p "$scratch/$t"
      run "$t" "$secs" "$scratch/$t" "corpus/$t"
    done
    ;;
  --long)
    secs="${2:-1800}"
    shift $(( $# >= 2 ? 2 : 1 ))
    [ $# -gt 0 ] && TARGETS=("$@")
    build
    for t in "${TARGETS[@]}"; do
      mkdir -p "corpus-long/$t"
      run "$t" "$secs" "corpus-long/$t" "corpus/$t"
    done
    ;;
  --repro)
    build
    "$BIN/$2" "$3"
    ;;
  *)
    sed -n 2,9p "$0"
    exit 2
    ;;
esac
