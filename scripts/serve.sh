#!/usr/bin/env bash
# Install kaimon-kernel into .venv and start the MCP server (stdio; pass --http for HTTP).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv >&2
.venv/bin/python -m pip install --quiet -e . >&2
exec .venv/bin/kaimon serve "$@"
