#!/usr/bin/env bash
# Runs every test: Rust unit + integration tests, then the Python suites (SDK, sidecar interop with
# the official OpenTelemetry Python SDK, end to end) against the freshly built binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
export LOOM_BIN_DIR="$PWD/target/debug"

echo "== building binaries"
cargo build --workspace --bins
# The cross-language codec test runs this example (Rust side of the byte-identical check).
cargo build -p loom-core --example envelope_vectors
echo "== cargo test"
cargo test --workspace
scripts/fuzz.sh --bounded  # each fuzz target ~15 s on its seed corpus (fuzz/README.md)

echo "== python"
scripts/setup-python.sh
# Every folder with Python tests; each has its own conftest.py.
py_dirs=()
for d in loom-sdk-py/tests sidecar/tests/python charts/tests tests/e2e; do
  if compgen -G "$d/test_*.py" > /dev/null; then py_dirs+=("$d"); fi
done
if [ ${#py_dirs[@]} -gt 0 ]; then
  .venv/bin/python -m pytest -q -p no:cacheprovider "${py_dirs[@]}"
else
  echo "no python test folders yet"
fi
