"""Finding served kernels: session files in the runtime dir, watched with file events.

A session file whose kernel process is gone is stale: it is deleted and the session dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import watchfiles
from pydantic import ValidationError

from .._errors import AmbiguousSession, SessionNotFound
from .._paths import sessions_dir
from .._protocol import SessionInfo
from ._kernel import KernelSession, pid_alive

__all__ = ["Registry"]

logger = logging.getLogger(__name__)

LIVENESS_INTERVAL = 1.0


def _read_session_file(path: Path) -> SessionInfo | None:
    try:
        return SessionInfo.model_validate_json(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError, ValueError) as err:
        logger.warning("ignoring unreadable session file %s: %s", path, err)
        return None


class Registry:
    """The live set of sessions, kept in step with the session files."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or sessions_dir()
        self.sessions: dict[str, KernelSession] = {}
        self._changed = asyncio.Event()
        self._scan_lock = asyncio.Lock()
        #: Called whenever the set of sessions or any session's tools changes.
        self.listeners: list[Callable[[], object]] = []
        self._background: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Scan now, then on every file event and every second (for dead pids)."""
        await self.scan()
        stop = asyncio.Event()
        watcher = asyncio.create_task(self._watch(stop))
        try:
            while True:
                await asyncio.sleep(LIVENESS_INTERVAL)
                await self.scan()
        finally:
            stop.set()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher

    async def _watch(self, stop: asyncio.Event) -> None:
        async for _changes in watchfiles.awatch(
            self.directory, stop_event=stop, debounce=50, step=20, recursive=False
        ):
            await self.scan()

    async def scan(self) -> None:
        async with self._scan_lock:
            for marker in self.directory.glob("resume-*.json"):
                info = _read_session_file(marker)
                if info is None or not Path(info.connection_file).exists():
                    marker.unlink(missing_ok=True)  # its kernel is gone for good
            seen: dict[str, SessionInfo] = {}
            for path in sorted(self.directory.glob("session-*.json")):
                info = _read_session_file(path)
                if info is None:
                    continue
                if not pid_alive(info.pid):
                    logger.info("removing stale session file %s (pid %s is gone)", path, info.pid)
                    path.unlink(missing_ok=True)
                    continue
                seen[info.key] = info
            changed = False
            for key in list(self.sessions):
                if key not in seen:
                    session = self.sessions.pop(key)
                    gone = not session.alive()
                    reason = (
                        f"the kernel of session {key} died"
                        if gone
                        else f"session {key} was withdrawn by the person (%kaimon stop)"
                    )
                    if gone:
                        session.mark_dead(reason)
                    await session.close(reason)
                    changed = True
            for key, info in seen.items():
                current = self.sessions.get(key)
                if current is not None and current.info.pid == info.pid:
                    current.info = info  # label or flags may have changed
                    continue
                if current is not None:  # same key, new process: a restart
                    await current.close("the kernel was restarted")
                session = KernelSession(info, on_dead=self._rescan_soon)
                session.on_tools_changed = self._notify
                self.sessions[key] = session
                task = asyncio.create_task(session.connect(), name=f"connect-{key}")
                self._background.add(task)
                task.add_done_callback(self._background.discard)
                changed = True
            if changed:
                self._changed.set()
                self._changed = asyncio.Event()
                self._notify()

    def _notify(self) -> None:
        for listener in list(self.listeners):
            listener()

    def _rescan_soon(self) -> None:
        task = asyncio.create_task(self.scan())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def wait_for(self, key: str, timeout: float) -> KernelSession | None:
        """Wait until session ``key`` is known and connected, or the deadline passes."""
        deadline = time.monotonic() + timeout
        while key not in self.sessions:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            changed = self._changed
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, 0.5))
            await self.scan()
        session = self.sessions[key]
        await session.wait_ready(max(deadline - time.monotonic(), 0.1))
        return session

    def resolve(self, name: str | None) -> KernelSession:
        """The session called ``name`` (key, key prefix, label or namespace), or the only one."""
        sessions = list(self.sessions.values())
        if not name:
            if len(sessions) == 1:
                return sessions[0]
            if not sessions:
                raise SessionNotFound(
                    "no kernel is served. The person can run `%load_ext kaimon_kernel` and "
                    "`%kaimon serve` in a notebook, or the agent can call start_session."
                )
            raise AmbiguousSession(
                f"{len(sessions)} sessions are served; name one with session=…:\n"
                + self.describe_all()
            )
        for match in (
            lambda s: s.key == name,
            lambda s: s.info.label == name,
            lambda s: s.info.namespace == name,
            lambda s: s.key.startswith(name),
        ):
            found = [s for s in sessions if match(s)]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise AmbiguousSession(
                    f"{name!r} matches {len(found)} sessions; use the key:\n"
                    + "\n".join(f"  {s.key}  {s.info.label}" for s in found)
                )
        raise SessionNotFound(
            f"no session is called {name!r}. Served sessions:\n"
            + (self.describe_all() or "  (none)")
        )

    def describe_all(self) -> str:
        return "\n".join(
            f"  {s.key}  label={s.info.label!r} namespace={s.info.namespace!r}"
            for s in self.sessions.values()
        )

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            await session.close()
        self.sessions.clear()
