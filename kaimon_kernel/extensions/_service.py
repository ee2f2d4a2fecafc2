"""Extension supervision for the whole machine: exactly one ``kaimon serve`` supervises.

Every server runs a :class:`Supervisor`; the one that holds the lock file (``filelock``: the
OS releases it when its process dies, however it dies) starts the enabled ``auto_start``
extensions, follows the registry, and answers start/stop/restart requests that any server or
the CLI drops in the requests folder. It publishes each extension's status in a state file
that every server reads. The others try the lock every :data:`LOCK_POLL` seconds: when the
supervising server exits, one of them takes over within seconds, first stopping what a
killed supervisor left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout
from pydantic import BaseModel, ValidationError

from .._paths import sessions_dir, write_private
from .._protocol import ProcessIdentity
from ._forward import EventForwarder
from ._process import KernelProcess, reap_orphans
from ._registry import Extension, Registry, extensions, registry_stamp
from ._supervisor import DEFAULT_BACKOFF, ExtensionProcess, ExtensionStatus, Runner

if TYPE_CHECKING:
    from ..server._core import Kaimon

__all__ = [
    "LOCK_POLL",
    "Request",
    "Supervisor",
    "SupervisorState",
    "lock_file",
    "read_state",
    "requests_dir",
    "send_request",
    "supervising",
]

logger = logging.getLogger(__name__)

#: How often a server that does not supervise tries to take over.
LOCK_POLL = 1.0
#: How often the supervisor looks for requests and registry changes.
WORK_POLL = 0.2
ACTIONS = ("start", "stop", "restart")


def lock_file() -> Path:
    return sessions_dir() / "extensions.lock"


def state_file() -> Path:
    return sessions_dir() / "extensions-state.json"


def requests_dir() -> Path:
    path = sessions_dir() / "extension-requests"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


class SupervisorState(BaseModel):
    """The state file: who supervises, and every extension's status."""

    supervisor: ProcessIdentity
    extensions: dict[str, ExtensionStatus] = {}


class Request(BaseModel):
    name: str
    action: str


class Reply(BaseModel):
    ok: bool
    message: str


def read_state() -> SupervisorState | None:
    """The live supervisor's state, or None when no server supervises extensions."""
    try:
        state = SupervisorState.model_validate_json(state_file().read_text())
    except (OSError, ValidationError, ValueError):
        return None
    return state if state.supervisor.alive() else None


class Supervisor:
    """See the module docstring. ``spawn`` makes an extension's process (tests pass a fake)."""

    def __init__(
        self,
        *,
        backoff: Sequence[float] = DEFAULT_BACKOFF,
        spawn: Callable[[Extension], ExtensionProcess] | None = None,
        lock_poll: float = LOCK_POLL,
    ) -> None:
        self.backoff = tuple(backoff) or DEFAULT_BACKOFF
        self.me = ProcessIdentity.current()
        self.spawn = spawn or (lambda ext: KernelProcess(ext, self.me))
        self.lock_poll = lock_poll
        self.lock = FileLock(str(lock_file()), thread_local=False)
        self.runners: dict[str, Runner] = {}  # by project path
        self.catalog: dict[str, Extension] = {}  # by project path
        self._seen: dict[str, tuple[bool, bool]] = {}
        self._registry_stamp: object = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def supervising(self) -> bool:
        return self.lock.is_locked

    async def run(self) -> None:
        """Try to supervise until cancelled; supervise while holding the lock."""
        while not self.supervising:
            try:
                self.lock.acquire(timeout=0)
            except Timeout:
                await asyncio.sleep(self.lock_poll)
        logger.info("supervising extensions (pid %s)", self.me.pid)
        await asyncio.to_thread(reap_orphans)
        self._write_state()
        while True:
            try:
                self._follow_registry()
                self._take_requests()
            except Exception:  # supervision must go on; the next round tries again
                logger.exception("supervising extensions failed")
            await asyncio.sleep(WORK_POLL)

    async def close(self) -> None:
        """Stop every extension this server runs, then let another server take over."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(r.stop() for r in self.runners.values()), return_exceptions=True)
        if self.supervising:
            state_file().unlink(missing_ok=True)
            self.lock.release()

    # -- the registry ------------------------------------------------------------------------

    def _follow_registry(self) -> None:
        stamp = registry_stamp()
        if stamp == self._registry_stamp and self._registry_stamp is not None:
            return
        self._registry_stamp = stamp
        registry = Registry()
        if registry.problem:
            # a file being fixed by hand: report it, leave running extensions alone
            logger.warning("%s", registry.problem)
            return
        self.catalog = {e.entry.project_path: e for e in extensions(registry)}
        for path_key, runner in list(self.runners.items()):
            ext = self.catalog.get(path_key)
            if ext is None or not ext.entry.enabled:
                self._spawn_task(self._drop(path_key, runner))
        for path_key, ext in self.catalog.items():
            flags = (ext.entry.enabled, ext.entry.auto_start)
            before = self._seen.get(path_key)
            self._seen[path_key] = flags
            if flags == (True, True) and before != flags and ext.manifest is not None:
                self._runner(ext).start()
        for path_key in set(self._seen) - set(self.catalog):
            del self._seen[path_key]
        self._write_state()

    async def _drop(self, path_key: str, runner: Runner) -> None:
        await runner.stop()
        if self.runners.get(path_key) is runner and path_key not in self.catalog:
            del self.runners[path_key]
        self._write_state()

    def _runner(self, ext: Extension) -> Runner:
        runner = self.runners.get(ext.entry.project_path)
        if runner is None:
            runner = Runner(
                _stopped(ext),
                lambda: self.spawn(self.catalog.get(ext.entry.project_path, ext)),
                backoff=self.backoff,
                on_change=lambda _status: self._write_state(),
            )
            self.runners[ext.entry.project_path] = runner
        return runner

    def _write_state(self) -> None:
        if not self.supervising:
            return
        statuses = {r.status.name: r.status for r in self.runners.values()}
        for ext in self.catalog.values():
            statuses.setdefault(ext.name, _stopped(ext))
        state = SupervisorState(supervisor=self.me, extensions=statuses)
        with contextlib.suppress(OSError):
            write_private(state_file(), state.model_dump_json())

    # -- requests ----------------------------------------------------------------------------

    def _take_requests(self) -> None:
        for path in sorted(requests_dir().glob("*.request.json")):
            try:
                request = Request.model_validate_json(path.read_text())
            except (OSError, ValidationError, ValueError):
                continue  # being written; taken next time (or never: it is bad)
            finally:
                path.unlink(missing_ok=True)
            reply = path.with_name(path.name.replace(".request.", ".reply."))
            self._spawn_task(self._answer(request, reply))

    async def _answer(self, request: Request, reply_file: Path) -> None:
        try:
            ok, message = await self.act(request.name, request.action)
        except Exception as err:  # the requester must hear back
            logger.warning("extension request %s failed", request, exc_info=True)
            ok, message = False, f"{request.action} failed: {err}"
        write_private(reply_file, Reply(ok=ok, message=message).model_dump_json())

    async def act(self, name: str, action: str) -> tuple[bool, str]:
        """Start, stop or restart extension ``name``; returns (done, what happened)."""
        self._registry_stamp = None
        self._follow_registry()
        ext = next(
            (e for e in self.catalog.values() if name in (e.name, e.entry.project_path)), None
        )
        if ext is None:
            known = ", ".join(e.name for e in self.catalog.values()) or "none is registered"
            return False, f"no extension is called {name!r}; registered: {known}"
        if action not in ACTIONS:
            return False, f"unknown action {action!r}; use one of {', '.join(ACTIONS)}"
        if action == "stop":
            runner = self.runners.get(ext.entry.project_path)
            if runner is None or runner.state == "stopped":
                return True, f"extension {ext.name} was not running"
            await runner.stop()
            return True, f"stopped extension {ext.name}"
        if not ext.entry.enabled:
            return False, (
                f"extension {ext.name} is disabled; enable it first (manage_extension "
                f"action=enable, or `kaimon extensions enable {ext.name}`)"
            )
        if ext.manifest is None:
            return False, f"extension {ext.name} cannot start: {ext.problem}"
        runner = self._runner(ext)
        if action == "restart":
            await runner.stop()
        runner.start()
        await runner.wait_state("running", "crashed", timeout=90)
        if runner.state == "running":
            return True, f"extension {ext.name} is running (pid {runner.status.pid})"
        return False, f"extension {ext.name} did not start: {runner.status.errors}"

    def _spawn_task(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _stopped(ext: Extension) -> ExtensionStatus:
    """The status of an extension that has not run (yet)."""
    return ExtensionStatus(name=ext.name, project_path=ext.entry.project_path, key=ext.key)


@contextlib.asynccontextmanager
async def supervising(
    backoff: Sequence[float] = DEFAULT_BACKOFF, kaimon: Kaimon | None = None
) -> AsyncIterator[Supervisor]:
    """A :class:`Supervisor` running in the background (and, given the server's core, its
    events forwarded to extensions' event_topics); on the way out its extensions stop and
    the lock is released."""
    supervisor = Supervisor(backoff=backoff)
    task = asyncio.create_task(supervisor.run(), name="kaimon-extensions")
    forwarder = EventForwarder(kaimon, lambda: supervisor.supervising) if kaimon else None
    try:
        yield supervisor
    finally:
        if forwarder is not None:
            forwarder.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await supervisor.close()


async def send_request(name: str, action: str, timeout: float = 60.0) -> tuple[bool, str]:
    """Ask the supervising server (whichever it is, this one included) to act; waits for
    its answer. (False, why) when no server supervises or none answers in time."""
    if read_state() is None:
        return False, (
            "no kaimon server supervises extensions right now: extensions run while a "
            "`kaimon serve` runs (an agent's MCP client starts one)"
        )
    token = secrets.token_hex(8)
    folder = requests_dir()
    request, reply = folder / f"{token}.request.json", folder / f"{token}.reply.json"
    write_private(request, Request(name=name, action=action).model_dump_json())
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if reply.exists():
                with contextlib.suppress(ValueError, OSError):
                    answer = Reply.model_validate_json(reply.read_text())
                    return answer.ok, answer.message
            if read_state() is None and request.exists():
                break
            await asyncio.sleep(0.05)
    finally:
        request.unlink(missing_ok=True)
        reply.unlink(missing_ok=True)
    return False, f"the supervising kaimon server did not answer within {timeout:g} s"
