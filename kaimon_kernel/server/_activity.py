"""The activity log: every tool call this server answers, in the shared store.

Each kaimon server on the machine (the stdio ones that agent clients start included) records
its calls, so ``kaimon dashboard`` — another process — sees the work of all of them. The
front publishes :class:`~._events.ClientCallStarted` / ``ClientCallFinished`` around a call;
what the call did on the way (the session it ran in, its block, the job it became) is learnt
from the core's events, which are published in the call's own context. Writes are queued on
the store's thread (never on the event loop); old rows are evicted like blocks.

The server's log lines go to a file per server in ``<data dir>/logs`` (rotated, bounded), and
the panels that sessions push (``push_panel``) to the store's ``panels`` table.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import logging.handlers
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._paths import data_dir
from ._db import Database
from ._events import (
    ClientCallFinished,
    ClientCallStarted,
    EventBus,
    ExecutionStarted,
    JobPromoted,
    PanelUpdated,
    SessionCame,
    SessionChanged,
    SessionWent,
    ToolCallStarted,
    ToolsChanged,
)

__all__ = [
    "ARGUMENTS_MAX",
    "KEEP_ACTIVITY",
    "ActivityRecorder",
    "log_dir",
    "log_to_file",
    "shorten_arguments",
]

logger = logging.getLogger(__name__)

#: Rows kept in the store (all servers together); older ones are evicted.
KEEP_ACTIVITY = 100_000
EVICT_EVERY = 500
#: Characters of a call's arguments kept (the block keeps the whole code).
ARGUMENTS_MAX = 400
#: One server's log file: its size before it rotates, and the rotated copies kept.
LOG_BYTES = 512 * 1024
LOG_BACKUPS = 1
#: Log files of servers that are gone: how many are kept.
KEEP_LOG_FILES = 20


@dataclass
class _Call:
    row_id: int | None = None
    session: str = ""
    block_id: str = ""
    eval_id: str = ""


_current: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "kaimon_activity_call", default=None
)


def shorten_arguments(arguments: Any, limit: int = ARGUMENTS_MAX) -> str:
    """A call's arguments as one line of JSON, at most ``limit`` characters."""
    try:
        text = json.dumps(arguments, ensure_ascii=False, default=str, separators=(", ", ": "))
    except (TypeError, ValueError):
        text = repr(arguments)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ActivityRecorder:
    """Records this server's tool calls, and the sessions' panels and gate tools (from
    ``tools_of``: a session key to its tool names, None when it is gone), into ``store``.

    Sessions reached through another provider than the local one (``remote_of``: a session
    key to its provider's name and info as JSON, None when local or gone) are recorded too:
    they have no session file for other processes to read."""

    def __init__(
        self,
        store: Database,
        bus: EventBus,
        transport: str,
        tools_of: Callable[[str], list[str] | None] | None = None,
        remote_of: Callable[[str], tuple[str, str] | None] | None = None,
    ) -> None:
        self.store = store
        self.tools_of = tools_of
        self.remote_of = remote_of
        self.transport = transport
        self.pid = os.getpid()
        self._calls: dict[str, _Call] = {}
        self._inserted = 0
        self._panels: dict[str, dict[str, Any]] = {}
        self._unsubscribe = [
            bus.subscribe(self._started, ClientCallStarted),
            bus.subscribe(self._finished, ClientCallFinished),
            bus.subscribe(self._ran, ExecutionStarted, ToolCallStarted),
            bus.subscribe(self._promoted, JobPromoted),
            bus.subscribe(self._panel, PanelUpdated),
            bus.subscribe(self._tools, ToolsChanged),
            bus.subscribe(self._remote, SessionCame, SessionChanged, SessionWent),
        ]

    async def __aenter__(self) -> ActivityRecorder:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop recording; this server's remote sessions are withdrawn from the store."""
        if not self._unsubscribe:
            return
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        pid = self.pid

        def forget(db: sqlite3.Connection) -> None:
            with db:
                db.execute("DELETE FROM remote_sessions WHERE server_pid = ?", (pid,))

        with contextlib.suppress(Exception):
            self.store.post(forget, "forgetting this server's remote sessions")

    # -- events ------------------------------------------------------------------------------

    def _started(self, event: ClientCallStarted) -> None:
        call = _Call()
        self._calls[event.call_id] = call
        # Handlers run in the publisher's context: the call's own task sees this.
        _current.set(call)
        row = (
            time.time(),
            event.client or "?",
            self.pid,
            self.transport,
            event.tool,
            shorten_arguments(event.arguments),
        )

        def insert(db: sqlite3.Connection) -> None:
            with db:
                cursor = db.execute(
                    "INSERT INTO activity (started_at, client, server_pid, transport, tool,"
                    " arguments, status) VALUES (?, ?, ?, ?, ?, ?, 'running')",
                    row,
                )
            call.row_id = cursor.lastrowid

        self.store.post(insert, f"recording a {event.tool} call")
        self._inserted += 1
        if self._inserted % EVICT_EVERY == 1:
            self.store.post(_evict, "evicting old activity")

    def _ran(self, event: ExecutionStarted | ToolCallStarted) -> None:
        call = _current.get()
        if call is None:
            return
        call.session = event.session
        if isinstance(event, ExecutionStarted):
            call.block_id = event.block_id
        values = (call.session, call.block_id or None)

        def running(db: sqlite3.Connection) -> None:  # readers show what runs where, now
            if call.row_id is not None:
                with db:
                    db.execute(
                        "UPDATE activity SET session_key = ?, block_id = ? WHERE id = ?",
                        (*values, call.row_id),
                    )

        self.store.post(running, "recording where a call runs")

    def _promoted(self, event: JobPromoted) -> None:
        call = _current.get()
        if call is not None:
            call.eval_id = event.eval_id

    def _finished(self, event: ClientCallFinished) -> None:
        call = self._calls.pop(event.call_id, None)
        if call is None:
            return
        values = (
            round(event.seconds, 4),
            "error" if event.is_error else "ok",
            call.session or None,
            call.block_id or None,
            call.eval_id or None,
        )

        def finish(db: sqlite3.Connection) -> None:
            if call.row_id is None:  # its insert failed (and was reported)
                return
            with db:
                db.execute(
                    "UPDATE activity SET duration = ?, status = ?, session_key = ?,"
                    " block_id = ?, eval_id = ? WHERE id = ?",
                    (*values, call.row_id),
                )

        self.store.post(finish, "recording a call's outcome")

    def _panel(self, event: PanelUpdated) -> None:
        panel = self._panels.setdefault(event.session, {})
        if isinstance(event.values, dict):
            panel.update(event.values)
        text = json.dumps(panel, ensure_ascii=False, default=str)
        self._save_of_session("panels", "panel", event.session, text)

    def _tools(self, event: ToolsChanged) -> None:
        names = self.tools_of(event.session) if self.tools_of else None
        if names is None:
            return
        self._save_of_session("session_tools", "tools", event.session, json.dumps(names))

    def _save_of_session(self, table: str, column: str, session: str, text: str) -> None:
        """Upsert one session's JSON ``text`` in ``table`` (keyed by session)."""
        sql = (
            f"INSERT INTO {table} (session_key, {column}, updated_at) VALUES (?, ?, ?)"
            f" ON CONFLICT (session_key) DO UPDATE SET {column} = excluded.{column},"
            " updated_at = excluded.updated_at"
        )
        row = (session, text, time.time())

        def save(db: sqlite3.Connection) -> None:
            with db:
                db.execute(sql, row)

        self.store.post(save, f"saving the {column} of session {session}")

    def _remote(self, event: SessionCame | SessionChanged | SessionWent) -> None:
        found = (
            None
            if isinstance(event, SessionWent) or not self.remote_of
            else (self.remote_of(event.session))
        )
        key, pid = event.session, self.pid

        def save(db: sqlite3.Connection) -> None:
            with db:
                if found is None:
                    db.execute(
                        "DELETE FROM remote_sessions WHERE session_key = ? AND server_pid = ?",
                        (key, pid),
                    )
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO remote_sessions (session_key, server_pid,"
                        " provider, info, updated_at) VALUES (?, ?, ?, ?, ?)",
                        (key, pid, found[0], found[1], time.time()),
                    )

        self.store.post(save, f"recording remote session {key}")


def _evict(db: sqlite3.Connection) -> None:
    with db:
        db.execute(
            "DELETE FROM activity WHERE id <= (SELECT MAX(id) FROM activity) - ?",
            (KEEP_ACTIVITY,),
        )


# -- the server's log file -------------------------------------------------------------------


def log_dir() -> Path:
    """Where every server writes its log (one file per server process)."""
    path = data_dir() / "logs"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


class _Kaimon(logging.Filter):
    """kaimon's own INFO lines, and everyone's warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.startswith("kaimon_kernel")


def log_to_file(transport: str, level: str = "WARNING") -> Path:
    """Also write this server's log to ``<data dir>/logs/server-<pid>.log`` (rotated at
    :data:`LOG_BYTES`), at INFO for kaimon's own loggers; stderr keeps ``level``.
    Files of servers that are gone are removed beyond the newest :data:`KEEP_LOG_FILES`."""
    from .providers import pid_alive

    folder = log_dir()
    files = sorted(folder.glob("server-*.log*"), key=_mtime, reverse=True)
    for old in files[KEEP_LOG_FILES:]:
        pid = old.name.split("-", 1)[1].split(".", 1)[0]
        if pid.isdigit() and pid_alive(int(pid)):
            continue  # a running server's
        with contextlib.suppress(OSError):
            old.unlink()
    path = folder / f"server-{os.getpid()}.log"
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
    )
    with contextlib.suppress(OSError):
        path.chmod(0o600)
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s pid {os.getpid()} {transport} %(levelname)s %(name)s: %(message)s",
            datefmt="%Y-%m-%d %H:%M:%S",
        )
    )
    handler.addFilter(_Kaimon())
    root = logging.getLogger()
    for existing in root.handlers:  # stderr stays as quiet as asked
        if existing.level == logging.NOTSET:
            existing.setLevel(level)
    root.addHandler(handler)
    ours = logging.getLogger("kaimon_kernel")
    if ours.getEffectiveLevel() > logging.INFO:
        ours.setLevel(logging.INFO)
    return path


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
