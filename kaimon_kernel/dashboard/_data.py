"""What the dashboard shows, read from what every kaimon server leaves on disk.

The dashboard is not a server: it reads the shared store (activity, jobs, blocks, panels,
session tools), the session files, the extension registry and the supervisor's state file,
kaimon.json and the servers' log files. Every read here is synchronous and short (run it off
the UI's event loop); nothing here writes except :func:`save_settings`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .._config import load_config, save_config
from .._errors import KaimonError
from .._paths import config_file, data_dir
from .._protocol import ProcessIdentity, SessionInfo
from .._settings import load_settings
from ..server._activity import log_dir
from ..server.providers import pid_alive

__all__ = [
    "CONFIG_KEYS",
    "ActivityRow",
    "BlockPage",
    "ConfigView",
    "ExtensionRow",
    "JobRow",
    "SessionRow",
    "Store",
    "read_config",
    "read_extensions",
    "read_log",
    "read_sessions",
    "save_setting",
    "watched_paths",
]

#: The settings the Config view edits.
CONFIG_KEYS = ("promote_after", "cancel_grace", "projects", "mirror")
PAGE_CHARS = 4000


def store_path() -> Path:
    return data_dir() / "jobs.sqlite3"


@dataclass
class ActivityRow:
    id: int
    started_at: float
    client: str
    server_pid: int
    transport: str
    tool: str
    arguments: str
    session_key: str | None
    block_id: str | None
    eval_id: str | None
    duration: float | None
    status: str

    @property
    def server(self) -> str:
        return f"{self.transport}:{self.server_pid}"


@dataclass
class JobRow:
    id: str
    session_key: str
    code: str
    status: str
    created_at: float
    finished_at: float | None
    stash: dict[str, Any]
    last_progress: str | None
    reason: str
    server: str | None

    def elapsed(self, now: float) -> float:
        return (self.finished_at or now) - self.created_at


@dataclass
class BlockPage:
    block_id: str
    code: str
    status: str
    text: str
    offset: int
    total: int


@dataclass
class SessionRow:
    info: SessionInfo
    alive: bool
    tools: list[str] = field(default_factory=list)
    #: The agents' calls running in it now.
    running: list[ActivityRow] = field(default_factory=list)
    jobs: int = 0
    #: What its code pushed for the dashboard (``kaimon_kernel.push_panel``).
    panel: dict[str, Any] = field(default_factory=dict)
    #: Reached through another provider (e.g. a Jupyter server): its name and the pid of a
    #: kaimon server that reaches it; None for a kernel on this machine.
    remote: tuple[str, int] | None = None

    @property
    def key(self) -> str:
        return self.info.key

    def status(self, now: float) -> str:
        if not self.alive:
            return "dead"
        if self.running:
            call = min(self.running, key=lambda r: r.started_at)
            return f"busy: {call.tool} by {call.client} for {now - call.started_at:.0f} s"
        if self.jobs:
            return f"busy: {self.jobs} job{'s' if self.jobs > 1 else ''}"
        return "idle"


@dataclass
class ExtensionRow:
    name: str
    key: str
    project_path: str
    enabled: bool
    auto_start: bool
    state: str
    pid: int | None
    started_at: float | None
    restarts: int
    errors: str
    problem: str | None
    namespace: str
    module: str
    tools: list[str]
    panel: dict[str, Any]

    def uptime(self, now: float) -> str:
        if self.state != "running" or not self.started_at:
            return ""
        return duration(now - self.started_at)


@dataclass
class ConfigView:
    values: dict[str, Any]
    stored: dict[str, Any]
    path: Path
    problem: str = ""


def duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


_ACTIVITY = (
    "id, started_at, client, server_pid, transport, tool, arguments, session_key, block_id,"
    " eval_id, duration, status"
)
_JOB = (
    "id, session_key, code, status, created_at, finished_at, stash, last_progress, reason, server"
)


class Store:
    """Reads of the shared SQLite store; absent until some server has made it."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or store_path()
        self._db: sqlite3.Connection | None = None
        self._inode: int | None = None
        self._lock = threading.Lock()

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                inode = self.path.stat().st_ino
            except OSError:
                inode = None
            if self._db is not None and inode != self._inode:  # moved aside, made afresh
                self._db.close()
                self._db = None
            if self._db is None:
                if inode is None:
                    return []
                db = sqlite3.connect(self.path, timeout=5, check_same_thread=False)
                db.row_factory = sqlite3.Row
                self._db, self._inode = db, inode
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.OperationalError as err:
                if "no such table" in str(err):  # a store no server has migrated yet
                    return []
                raise

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def activity(self, limit: int, after: int = 0) -> list[ActivityRow]:
        """Calls with an id above ``after``, newest first."""
        rows = self._query(
            f"SELECT {_ACTIVITY} FROM activity WHERE id > ? ORDER BY id DESC LIMIT ?",
            (after, limit),
        )
        return [ActivityRow(**dict(r)) for r in rows]

    def last_activity_id(self) -> int:
        rows = self._query("SELECT MAX(id) FROM activity")
        return (rows[0][0] or 0) if rows else 0

    def activity_rows(self, ids: list[int]) -> list[ActivityRow]:
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self._query(f"SELECT {_ACTIVITY} FROM activity WHERE id IN ({marks})", tuple(ids))
        return [ActivityRow(**dict(r)) for r in rows]

    def running_calls(self) -> list[ActivityRow]:
        rows = self._query(f"SELECT {_ACTIVITY} FROM activity WHERE status = 'running'")
        return [ActivityRow(**dict(r)) for r in rows]

    def jobs(self, limit: int = 200) -> list[JobRow]:
        """Running jobs first, then the newest finished."""
        rows = self._query(
            f"SELECT {_JOB} FROM jobs WHERE status = 'running' UNION ALL"
            f" SELECT * FROM (SELECT {_JOB} FROM jobs WHERE status != 'running'"
            " ORDER BY created_at DESC LIMIT ?)",
            (limit,),
        )
        out = []
        for r in rows:
            data = dict(r)
            try:
                data["stash"] = json.loads(data["stash"] or "{}")
            except ValueError:
                data["stash"] = {}
            out.append(JobRow(**data))
        return out

    def panels(self) -> dict[str, dict[str, Any]]:
        return self._by_session("SELECT session_key, panel FROM panels")

    def session_tools(self) -> dict[str, list[str]]:
        return self._by_session("SELECT session_key, tools FROM session_tools")

    def _by_session(self, sql: str) -> dict[str, Any]:
        """A table of JSON by session key (a row that does not parse is left out)."""
        out = {}
        for key, text in self._query(sql):
            with contextlib.suppress(ValueError):
                out[key] = json.loads(text)
        return out

    def block(self, block_id: str, offset: int = 0, limit: int = PAGE_CHARS) -> BlockPage | None:
        """A page of a block's output (``offset`` characters in), with its code."""
        rows = self._query("SELECT code, status, chars FROM blocks WHERE id = ?", (block_id,))
        if not rows:
            return None
        row = rows[0]
        path = data_dir() / "blocks" / f"{block_id}.txt"
        try:
            with path.open(encoding="utf-8", errors="replace", newline="") as f:
                text = f.read()
        except OSError:
            text = ""
        offset = max(0, min(offset, max(len(text) - 1, 0)))
        return BlockPage(
            block_id, row["code"], row["status"], text[offset : offset + limit], offset, len(text)
        )


def _session_files() -> list[Path]:
    from ..server.providers._local import session_dirs

    try:
        dirs = session_dirs()
    except KaimonError:  # a broken kaimon.json: the process's own runtime dir still counts
        from .._paths import sessions_dir

        dirs = [sessions_dir()]
    return sorted(p for d in dirs for p in d.glob("session-*.json"))


def read_sessions(store: Store, running: list[ActivityRow] | None = None) -> list[SessionRow]:
    """Every served kernel kaimon can see, with what agents run in it now."""
    running = store.running_calls() if running is None else running
    tools = store.session_tools()
    panels = store.panels()
    jobs: dict[str, int] = {}
    for (key,) in store._query("SELECT session_key FROM jobs WHERE status = 'running'"):
        jobs[key] = jobs.get(key, 0) + 1
    rows = []

    def add(info: SessionInfo, alive: bool, remote: tuple[str, int] | None = None) -> None:
        key = info.key
        rows.append(
            SessionRow(
                info,
                alive,
                tools.get(key, []),
                [r for r in running if r.session_key == key and _server_alive(r)],
                jobs.get(key, 0),
                panels.get(key, {}),
                remote,
            )
        )

    for path in _session_files():
        try:
            info = SessionInfo.model_validate_json(path.read_text())
        except (OSError, ValidationError, ValueError):
            continue
        identity = info.kernel or ProcessIdentity.of(info.pid)
        add(info, identity is not None and identity.alive())
    local = {r.key for r in rows}
    for key, pid, provider, text in store._query(
        "SELECT session_key, server_pid, provider, info FROM remote_sessions"
        " ORDER BY updated_at DESC"
    ):
        if key in local or not pid_alive(pid):
            continue
        try:
            info = SessionInfo.model_validate_json(text)
        except (ValidationError, ValueError):
            continue
        local.add(key)
        add(info, True, (provider, pid))
    rows.sort(key=lambda r: (r.info.started_by == "extension", r.info.started_at))
    return rows


_alive_cache: dict[int, tuple[float, bool]] = {}


def _server_alive(row: ActivityRow) -> bool:
    """Whether the server of a running call still runs (a killed one leaves its row)."""
    now = time.monotonic()
    seen = _alive_cache.get(row.server_pid)
    if seen is None or now - seen[0] > 2.0:
        seen = (now, pid_alive(row.server_pid))
        _alive_cache[row.server_pid] = seen
    return seen[1]


def running_status(row: ActivityRow) -> str:
    """A call's status, ``lost`` where its server is gone."""
    if row.status == "running" and not _server_alive(row):
        return "lost"
    return row.status


def read_extensions(store: Store) -> tuple[list[ExtensionRow], str]:
    """Registered extensions with their status and panels; and a note (no supervisor, a
    broken registry), empty when all is well."""
    from ..extensions import Registry, extensions, read_state

    registry = Registry()
    state = read_state()
    panels = store.panels()
    tools = store.session_tools()
    rows = []
    for ext in extensions(registry):
        status = state.extensions.get(ext.name) if state else None
        rows.append(
            ExtensionRow(
                name=ext.name,
                key=ext.key,
                project_path=ext.entry.project_path,
                enabled=ext.entry.enabled,
                auto_start=ext.entry.auto_start,
                state=status.state if status else "stopped",
                pid=status.pid if status else None,
                started_at=status.started_at if status else None,
                restarts=status.restarts if status else 0,
                errors=status.errors if status else "",
                problem=ext.problem,
                namespace=ext.manifest.namespace if ext.manifest else "",
                module=getattr(ext.manifest, "module", "") if ext.manifest else "",
                tools=tools.get(ext.key, []),
                panel=panels.get(ext.key, {}),
            )
        )
    notes = []
    if registry.problem:
        notes.append(registry.problem)
    if state is None:
        notes.append("no kaimon server supervises extensions now (they run with `kaimon serve`)")
    return rows, "; ".join(notes)


def read_config() -> ConfigView:
    """The settings the Config view edits: in effect, and as stored in kaimon.json."""
    path = config_file()
    try:
        stored = load_config()
    except KaimonError as err:
        return ConfigView({}, {}, path, str(err))
    try:
        settings = load_settings()
    except KaimonError as err:
        return ConfigView({}, stored, path, str(err))
    values = {key: getattr(settings, key) for key in CONFIG_KEYS}
    values["projects"] = [str(p) for p in settings.projects]
    return ConfigView(values, stored, path)


def save_setting(name: str, text: str) -> Any:
    """Write one setting to kaimon.json from what the person typed; returns the value.

    Raises :class:`KaimonError` saying what was wrong (the file is then unchanged)."""
    if name not in CONFIG_KEYS:
        raise KaimonError(f"{name!r} is not a setting the dashboard edits ({CONFIG_KEYS})")
    text = text.strip()
    value: Any
    if name == "projects":
        value = [str(Path(p).expanduser().resolve()) for p in text.split(os.pathsep) if p]
    elif name == "mirror":
        if text.lower() not in ("on", "off", "true", "false", "1", "0", "yes", "no"):
            raise KaimonError(f"mirror: {text!r} is not on or off")
        value = text.lower() in ("on", "true", "1", "yes")
    else:
        try:
            value = float(text)
        except ValueError:
            raise KaimonError(f"{name}: {text!r} is not a number of seconds") from None
    data = load_config()
    data[name] = value
    from .._settings import Settings

    try:  # validate the file as a server would read it, before writing it
        Settings.model_validate({k: v for k, v in data.items() if k in Settings.model_fields})
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        raise KaimonError(f"{name}: {first['msg']}") from None
    save_config(data)
    return value


def read_log(limit: int = 500) -> list[str]:
    """The newest ``limit`` lines of every server's log, oldest first."""
    lines: list[str] = []
    try:
        files = sorted(log_dir().glob("server-*.log"))
    except OSError:
        return []
    for path in files:
        with contextlib.suppress(OSError):
            lines.extend(_tail(path, limit))
    lines.sort()  # each line starts with its timestamp
    return lines[-limit:]


def _tail(path: Path, count: int) -> list[str]:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 200 * count))
        data = f.read().decode("utf-8", errors="replace")
    out = data.splitlines()
    if size > 200 * count:
        out = out[1:]  # a cut first line
    return [line for line in out if line][-count:]


def watched_paths() -> list[Path]:
    """Where a change means something to show: the store (and its WAL), the session dirs,
    the extension registry and state, kaimon.json, the logs."""
    from ..extensions._registry import registry_file

    paths = [data_dir(), config_file().parent, registry_file().parent]
    paths.extend({f.parent for f in _session_files()})
    from .._paths import sessions_dir

    paths.append(sessions_dir())
    unique: list[Path] = []
    for p in paths:
        with contextlib.suppress(OSError):
            p.mkdir(parents=True, exist_ok=True)
        if p.exists() and all(p != u for u in unique):
            unique.append(p)
    return unique


def clock() -> Callable[[], float]:
    return time.time
