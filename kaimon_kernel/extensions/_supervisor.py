"""One extension's life: stopped → starting → running, and crashed → (backoff) → starting.

:class:`Runner` is the state machine; what it runs is an :class:`ExtensionProcess` (the real
one, :class:`~._process.KernelProcess`, is an ipykernel serving the gate; tests use a fake).
A process that exits, or does not serve within the start timeout, is a crash: the runner keeps
why (the exit, the tail of its log) and starts it again after 5, 10, 30, then 60 s; a run that
lasted longer than the last delay starts the count afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from pydantic import BaseModel

__all__ = [
    "DEFAULT_BACKOFF",
    "ExtensionProcess",
    "ExtensionStatus",
    "Runner",
    "State",
    "describe_exit",
]

logger = logging.getLogger(__name__)

State = Literal["stopped", "starting", "running", "crashed"]
DEFAULT_BACKOFF: tuple[float, ...] = (5.0, 10.0, 30.0, 60.0)
START_TIMEOUT = 60.0
POLL = 0.1


class ExtensionProcess(Protocol):
    """One start of an extension's process."""

    @property
    def pid(self) -> int | None: ...

    async def start(self) -> None:
        """Launch it (returns once the process exists)."""

    def exit_code(self) -> int | None:
        """Its exit code once it has exited, else None."""

    def served(self) -> bool:
        """Whether it serves the gate (its tools are offered)."""

    async def stop(self) -> None:
        """Shut it down (shutdown hook, then SIGTERM, then SIGKILL); safe to call twice."""

    def recent_output(self) -> str:
        """The tail of what it wrote (its stderr and log) since it started."""


class ExtensionStatus(BaseModel):
    """What the supervisor tells every server about one extension."""

    name: str
    project_path: str
    key: str
    state: State = "stopped"
    pid: int | None = None
    #: Wall-clock time it last began running.
    started_at: float | None = None
    #: How often it was started again after a crash.
    restarts: int = 0
    #: Why it last crashed, with the tail of its output.
    errors: str = ""
    #: When it is started again (crashed only).
    next_start_at: float | None = None


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class Runner:
    """Keeps one extension running while wanted; see the module docstring."""

    def __init__(
        self,
        status: ExtensionStatus,
        spawn: Callable[[], ExtensionProcess],
        *,
        backoff: Sequence[float] = DEFAULT_BACKOFF,
        start_timeout: float = START_TIMEOUT,
        poll: float = POLL,
        on_change: Callable[[ExtensionStatus], None] | None = None,
    ) -> None:
        if not backoff:
            raise ValueError("backoff needs at least one delay")
        self.status = status
        self.spawn = spawn
        self.backoff = tuple(backoff)
        self.start_timeout = start_timeout
        self.poll = poll
        self.on_change = on_change
        self.process: ExtensionProcess | None = None
        self._task: asyncio.Task[None] | None = None
        self._wanted = False
        self._wake = asyncio.Event()

    @property
    def state(self) -> State:
        return self.status.state

    def _set(self, state: State, **changes: object) -> None:
        self.status = self.status.model_copy(update={"state": state, **changes})
        if self.on_change is not None:
            try:
                self.on_change(self.status)
            except Exception:
                logger.warning("extension status listener failed", exc_info=True)

    def start(self) -> None:
        """Start it (no-op when it is already wanted); a crashed one starts at once."""
        if self._task is not None and not self._task.done():
            if self.state == "crashed":
                self._wake.set()  # skip the rest of the backoff
            return
        self._wanted = True
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"extension-{self.status.name}")

    async def stop(self) -> None:
        """Stop it and wait until its process is gone."""
        self._wanted = False
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def restart(self) -> None:
        await self.stop()
        self.start()

    async def wait_state(self, *states: State, timeout: float) -> bool:
        """Until the runner is in one of ``states`` (False when ``timeout`` passes first)."""
        deadline = time.monotonic() + timeout
        while self.state not in states:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(self.poll / 2)
        return True

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less when stop() (or a start during backoff) wakes us."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(seconds, 0))

    async def _run(self) -> None:
        crashes = 0
        process: ExtensionProcess | None = None
        try:
            while self._wanted:
                self._wake.clear()
                self._set("starting", next_start_at=None, pid=None)
                ran_for = 0.0
                try:
                    process = self.process = self.spawn()
                    await process.start()
                except Exception as err:
                    reason = f"could not be started: {err}"
                else:
                    self._set("starting", pid=process.pid)
                    reason = await self._until_served(process)
                    if reason is None and self._wanted:
                        self._set("running", started_at=time.time())
                        began = time.monotonic()
                        reason = await self._until_exit(process)
                        ran_for = time.monotonic() - began
                if not self._wanted:
                    break
                if process is not None:
                    await process.stop()
                if ran_for > self.backoff[-1]:
                    crashes = 0
                delay = self.backoff[min(crashes, len(self.backoff) - 1)]
                crashes += 1
                output = process.recent_output().strip() if process is not None else ""
                errors = f"{reason}" + (f"; its output ends with:\n{output}" if output else "")
                logger.warning("extension %s %s", self.status.name, reason)
                self._set("crashed", errors=errors, next_start_at=time.time() + delay, pid=None)
                await self._pause(delay)
                if self._wanted:
                    self.status = self.status.model_copy(
                        update={"restarts": self.status.restarts + 1}
                    )
                process = None
        finally:
            if process is not None:
                await process.stop()
            self.process = None
            self._set("stopped", pid=None, next_start_at=None)

    async def _until_served(self, process: ExtensionProcess) -> str | None:
        """None once it serves (or stop was asked), else why it will not."""
        deadline = time.monotonic() + self.start_timeout
        while self._wanted:
            if process.served():
                return None
            code = process.exit_code()
            if code is not None:
                return f"{describe_exit(code)} before serving its tools"
            if time.monotonic() > deadline:
                return f"did not serve its tools within {self.start_timeout:g} s"
            await self._pause(self.poll)
        return None

    async def _until_exit(self, process: ExtensionProcess) -> str | None:
        while self._wanted:
            code = process.exit_code()
            if code is not None:
                return describe_exit(code)
            await self._pause(self.poll)
        return None
