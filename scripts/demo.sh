#!/usr/bin/env bash
# Builds everything and runs the trace-test demo: loom-sidecar, loom-bridge and three Python
# agents (sensor → processor → output). Each finished trace is printed as a tree; Ctrl-C stops.
# Extra arguments go to `loom run` (e.g. --duration 20). With JAEGER_OTLP_ENDPOINT set, spans
# also go to Jaeger (see docs/observability/TRACING.md).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
scripts/setup-python.sh
export LOOM_BIN_DIR="$PWD/target/debug"
exec .venv/bin/loom run examples/trace-test "$@"
