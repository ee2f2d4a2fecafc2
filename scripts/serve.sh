#!/usr/bin/env bash
# Install kaimon-kernel into .venv and start the MCP server (stdio; pass --http for HTTP).
# pip runs only when .venv is new or pyproject.toml changed since the last install (a stamp in
# .venv), so starting again is instant.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv >&2
stamp=.venv/.kaimon-install-stamp
want="$(.venv/bin/python -c 'import hashlib, sys
print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest(), sys.version.split()[0])')"
if [ ! -x .venv/bin/kaimon ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "kaimon: installing into .venv (once; again only when pyproject.toml changes)" >&2
    .venv/bin/python -m pip install --quiet -e . >&2
    echo "$want" >"$stamp"
fi
http=0
for arg in "$@"; do [ "$arg" = "--http" ] && http=1; done
if [ -t 0 ] && [ "$http" = 0 ]; then
    echo "kaimon: MCP server on stdio, waiting for an MCP client (agents start this" \
        "themselves: see \`.venv/bin/kaimon setup --help\`; Ctrl-C stops it)" >&2
fi
exec .venv/bin/kaimon serve "$@"
