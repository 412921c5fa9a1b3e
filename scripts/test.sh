#!/usr/bin/env bash
# Install (into .venv, with the test and postgres extras), check the package arrows (lint-imports, contracts in
# pyproject.toml), then run the whole test suite, slow tests included. A broken import contract fails the run before
# any test starts.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" -x
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" test,postgres
cd "$ROOT"
lint-imports --no-cache
exec python -m pytest -q -p no:cacheprovider "$@"
