"""The dashboard's actions on sessions and jobs.

The dashboard does them itself, as one more client of the kernel — over the kernel's own
channels and its gate, the way every kaimon server reaches it — rather than by asking a
running server. Why: the servers agents start are mostly stdio servers, which listen on
nothing another process could call; an HTTP server may not run at all; and a job's server
may be gone. Talking to the kernel works in all these cases, with the same code paths the
servers use (:class:`~kaimon_kernel.server._kernel.KernelSession`). A connection is opened
for one action and closed after it: an idle dashboard holds no kernel connection.

What a kernel's owner must do stays with its owner: a kernel an agent started belongs to the
kaimon server that started it (its kernel manager restarts it); a Jupyter server restarts
its own kernels when asked through the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

from .._errors import KaimonError, NotAllowed
from .._paths import sessions_dir
from .._protocol import ProcessIdentity, SessionInfo
from .._settings import load_settings
from ..server._execution import stop
from ..server._kernel import KernelSession
from ..server.providers import LocalProvider
from ._data import store_path

__all__ = ["cancel_job", "interrupt", "restart", "set_mirror"]

CONNECT_TIMEOUT = 15.0
RESTART_TIMEOUT = 60.0
OWNER_WRITE_WAIT = 15.0


def _session_info(key: str) -> SessionInfo:
    provider = LocalProvider()
    found = provider.discover()
    if key in found:
        return found[key]
    from ._data import Store, read_sessions

    remote = next((r for r in read_sessions(Store()) if r.key == key and r.remote), None)
    if remote is not None and remote.remote is not None:
        kind, pid = remote.remote
        raise KaimonError(
            f"session {key} is a remote kernel ({kind}) that the kaimon server with pid {pid} "
            "reaches; act on it through that server's agent (manage_repl), or in its Jupyter"
        )
    raise KaimonError(f"session {key} is not served any more (its kernel stopped)")


@contextlib.asynccontextmanager
async def _connected(key: str) -> AsyncIterator[KernelSession]:
    info = _session_info(key)
    session = KernelSession(info, LocalProvider())
    try:
        connect = asyncio.ensure_future(session.connect())
        try:
            await asyncio.wait_for(asyncio.shield(connect), CONNECT_TIMEOUT)
        except asyncio.TimeoutError:
            connect.cancel()
            raise KaimonError(
                f"session {key} did not answer within {CONNECT_TIMEOUT:g} s (is its kernel "
                "frozen?); try interrupting it"
            ) from None
        session.usable()
        yield session
    finally:
        await session.close()


def _owner(key: str) -> ProcessIdentity | None:
    """The live kaimon server whose kernel manager started session ``key``'s kernel."""
    try:
        record = json.loads((sessions_dir() / f"owned-{key}.json").read_text())
        server = ProcessIdentity.model_validate(record["server"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return server if server.alive() else None


async def restart(key: str) -> str:
    """Restart session ``key``'s kernel (its owner starts it again, under the same key);
    returns once it serves again. Refused where the person forbade restarts."""
    owner = _owner(key)
    if owner is not None:
        raise NotAllowed(
            f"session {key}'s kernel was started by an agent through the kaimon server with pid "
            f"{owner.pid}, whose kernel manager owns it: ask the agent to restart it "
            "(manage_repl restart), or stop that server"
        )
    async with _connected(key) as session:
        with contextlib.suppress(KaimonError):
            session.info = await session.gate.get_info(timeout=2)
        if not session.info.allow_restart:
            raise NotAllowed(f"session {key} was served with --no-restart: the person forbade it")
        old_pid = session.info.pid
        await session.control_request("shutdown_request", {"restart": True}, timeout=10)
    deadline = time.monotonic() + RESTART_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(KaimonError):
            info = _session_info(key)
            if info.pid != old_pid:
                return f"session {key} restarted (kernel pid {info.pid})"
        await asyncio.sleep(0.2)
    raise KaimonError(
        f"session {key}'s kernel shut down, but its owner did not start it again within "
        f"{RESTART_TIMEOUT:g} s (a Jupyter server restarts its kernels; a plain console does not)"
    )


async def interrupt(key: str) -> str:
    """Interrupt whatever session ``key``'s kernel runs now."""
    async with _connected(key) as session:
        how = await session.interrupt()
    return f"session {key} interrupted ({how})"


async def set_mirror(key: str, on: bool) -> str:
    """Turn session ``key``'s live view on or off (refused where the person forbade it)."""
    async with _connected(key) as session:
        if not session.info.allow_mirror:
            raise NotAllowed(f"session {key} was served with --no-mirror: the person forbade it")
        await session.set_mirror(on)
    return f"session {key}: live view {'on' if on else 'off'}"


def _job(db: sqlite3.Connection, eval_id: str) -> sqlite3.Row | None:
    return db.execute(
        "SELECT id, msg_id, session_key, code, status, server FROM jobs WHERE id = ?",
        (eval_id,),
    ).fetchone()


async def cancel_job(eval_id: str, store: Path | None = None) -> str:
    """Cancel a running job as ``cancel_eval`` does — the flag first, then a real interrupt
    once ``cancel_grace`` has passed — and record it ``cancelled`` in the store once its
    server has written its end (at once when that server is gone)."""
    db = sqlite3.connect(store or store_path(), timeout=10, isolation_level=None)
    db.row_factory = sqlite3.Row
    try:
        job = _job(db, eval_id)
        if job is None:
            raise KaimonError(f"no job has id {eval_id!r}")
        if job["status"] != "running":
            return f"job {eval_id} is already {job['status']}; nothing to cancel"
        how = await _stop(job["session_key"], job["msg_id"], job["code"])
        if how is None:
            return f"job {eval_id} had already finished"
        server = _job_server(job["server"])
        deadline = time.monotonic() + (OWNER_WRITE_WAIT if server else 0)
        while time.monotonic() < deadline:  # its server writes the end: then ours wins
            row = _job(db, eval_id)
            if row is None or row["status"] != "running":
                break
            await asyncio.sleep(0.1)
        db.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = COALESCE(finished_at, ?),"
            " reason = ? WHERE id = ? AND status IN ('running', 'failed')",
            (time.time(), f"cancelled from the dashboard: {how}", eval_id),
        )
        return f"job {eval_id} cancelled ({how})"
    finally:
        db.close()


def _job_server(text: str | None) -> ProcessIdentity | None:
    if not text:
        return None
    try:
        server = ProcessIdentity.model_validate_json(text)
    except ValueError:
        return None
    return server if server.alive() else None


async def _stop(key: str, msg_id: str, code: str) -> str | None:
    """Stop the evaluation ``msg_id`` in session ``key`` as ``cancel_eval`` does; how it
    stopped (None: it had already finished)."""
    try:
        grace = load_settings().cancel_grace
    except KaimonError:
        grace = 2.0
    async with _connected(key) as session:
        state, how = await stop(session, session.follow(msg_id, code), grace)
    return None if state == "finished" else how


# -- extensions ---------------------------------------------------------------------------------

EXTENSION_ACTIONS = ("enable", "disable", "auto_start", "remove", "start", "stop", "restart")


def add_extension(path: str) -> str:
    """Validate the extension project at ``path`` and register it (as ``kaimon extensions
    add`` does); the supervising server starts it."""
    from ..extensions import Entry, Registry, RegistryError
    from ..extensions._validate import validate

    manifest, _tools = validate(path)
    project = str(manifest.project)
    with Registry().editing() as entries:
        if any(e.project_path == project for e in entries):
            raise RegistryError(f"{project} is already registered")
        entries.append(Entry(project_path=project))
    return f"registered extension {manifest.namespace} ({project})"


async def extension_action(name: str, action: str) -> str:
    """``enable``, ``disable``, ``auto_start`` (toggle), ``remove``: the registry, as the CLI
    edits it; ``start``, ``stop``, ``restart``: asked of the supervising server."""
    from ..extensions import Registry, find_extension, send_request

    if action not in EXTENSION_ACTIONS:
        raise KaimonError(f"unknown action {action!r}; one of {', '.join(EXTENSION_ACTIONS)}")
    registry = Registry()
    ext = find_extension(registry, name)
    path = ext.entry.project_path
    if action in ("enable", "disable", "auto_start", "remove"):
        if action == "auto_start":
            with registry.editing() as entries:
                for e in entries:
                    if e.project_path == path:
                        e.auto_start = not e.auto_start
                        action = "auto-start on" if e.auto_start else "auto-start off"
        elif action == "remove":
            with registry.editing() as entries:
                entries[:] = [e for e in entries if e.project_path != path]
        else:
            registry.set_enabled(path, action == "enable")
        done = {"enable": "enabled", "disable": "disabled", "remove": "removed"}
        return f"extension {ext.name}: {done.get(action, action)}"
    ok, message = await send_request(ext.name, action)
    if not ok:
        raise KaimonError(message)
    return message
