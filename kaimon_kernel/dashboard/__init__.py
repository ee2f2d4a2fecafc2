"""``kaimon dashboard``: every session, agent call, job and extension on this machine, live.

It reads what every kaimon server leaves on disk (the shared store, the session files, the
extension registry and state, kaimon.json, the logs), so it needs no server of its own and
sees the work of all of them. See :class:`Dashboard` and :func:`snapshot_text`.
"""

from __future__ import annotations

import sys

from ._app import Dashboard
from ._data import Store
from ._once import snapshot_text

__all__ = ["Dashboard", "Store", "run", "snapshot_text"]


def run(once: bool = False) -> int:
    """Run the dashboard in this terminal (``once``: print the snapshot and return)."""
    if not once and not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("kaimon: not a terminal, so here is a snapshot (--once)", file=sys.stderr)
        once = True
    if once:
        print(snapshot_text(), end="")
        return 0
    Dashboard().run()
    return 0
