#!/usr/bin/env bash
# Install (into .venv) and run the main job: index a repository (this one by default) and answer a search
# through the MCP server over stdio.   Usage: scripts/run.sh [REPO_PATH] ["question"]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
REPO="${1:-$ROOT}"
QUERY="${2:-where are search results fused with reciprocal rank fusion}"
export AGRO_HOME="${AGRO_HOME:-$HOME/.agro}"
exec agro demo "$REPO" --query "$QUERY"
