#!/usr/bin/env bash
# Installs the browser the dashboard's browser tests drive: Debian's chromium + chromium-driver
# (tests point Selenium at /usr/bin/chromium and /usr/bin/chromedriver; nothing is downloaded at
# test time). Needs root (or an image that already has them); otherwise says so and skips, and
# the tests skip too — except in CI (CI=true), where a missing browser fails.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "setup-browser: installing chromium + chromium-driver (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null; }
  exit 0
fi
msg="setup-browser: chromium / chromium-driver missing and not root with apt-get: browser tests will skip (as root: apt-get install chromium chromium-driver)"
if [ "${CI:-}" = true ]; then
  echo "$msg — CI must run them" >&2
  exit 1
fi
echo "$msg" >&2
