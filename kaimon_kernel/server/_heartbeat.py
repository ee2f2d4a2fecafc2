"""Progress notifications for one tool call, with a heartbeat while the call is silent.

A client whose tool timeout is shorter than ``promote_after`` would give up on silent code
before the reply with its ``eval_id`` comes. Clients that reset that timeout on progress keep
waiting as long as something arrives, so every :data:`HEARTBEAT` seconds without a
notification one is sent saying how long the call has run. Sent only where the client gave a
``progressToken`` (the SDK's ``report_progress`` does nothing otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType
from typing import Any

__all__ = ["HEARTBEAT", "Heartbeat"]

#: Seconds of silence before a heartbeat (jupyter-mcp-server keeps alive every 5 s).
HEARTBEAT = 5.0


class Heartbeat:
    """``async with Heartbeat(ctx) as beat: ... await beat.report("text")``.

    Progress values only grow: a reported value is used as given, else the count goes up by
    one; a heartbeat after a value with a known total adds a thousandth (the bar barely moves).
    """

    def __init__(self, ctx: Any, interval: float = HEARTBEAT) -> None:
        self.ctx = ctx
        self.interval = interval
        self.started = time.monotonic()
        self.last_sent = self.started
        self.value = 0.0
        self.total: float | None = None
        self.beats = 0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Heartbeat:
        if self.ctx is not None and self.interval > 0:
            self._task = asyncio.create_task(self._beat())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def report(
        self, message: str, progress: float | None = None, total: float | None = None
    ) -> None:
        """Send one progress notification (a failure to send is not the call's failure)."""
        async with self._lock:
            self.value = progress if progress is not None else self.value + 1
            self.total = total
            self.last_sent = time.monotonic()
            if self.ctx is None:
                return
            with contextlib.suppress(Exception):
                await self.ctx.report_progress(self.value, total, message)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(max(self.last_sent + self.interval - time.monotonic(), 0.05))
            if time.monotonic() - self.last_sent < self.interval:
                continue
            elapsed = time.monotonic() - self.started
            step = 1.0 if self.total is None else 0.001
            self.beats += 1
            await self.report(
                f"[still running: {elapsed:.0f} s]", progress=self.value + step, total=self.total
            )
