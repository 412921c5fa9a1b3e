#!/usr/bin/env bash
# Install (into .venv, with the test and postgres extras), check the package arrows (lint-imports, contracts in
# pyproject.toml), then run the whole test suite, slow tests included. A broken import contract fails the run before
# any test starts.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" -x
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" test,postgres
# The console's browser tests (tests/agro_mcp/web) drive Debian's Chromium and its driver through Selenium.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "installing chromium and chromium-driver for the browser tests" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2
fi
cd "$ROOT"
lint-imports --no-cache
exec python -m pytest -q -p no:cacheprovider "$@"
