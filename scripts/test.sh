#!/usr/bin/env bash
# Install (into .venv, with the test and postgres extras) and run the whole test suite, slow tests included.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" -x
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" test,postgres
cd "$ROOT"
exec python -m pytest -q -p no:cacheprovider "$@"
