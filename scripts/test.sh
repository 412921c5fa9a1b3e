#!/usr/bin/env bash
# Install (into .venv, with test extras) and run the whole test suite, slow tests included.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" -x
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" test
cd "$ROOT"
exec python -m pytest -q -p no:cacheprovider "$@"
