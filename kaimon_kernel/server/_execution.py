"""One agent evaluation as the server follows it: the execution state machine.

An :class:`Execution` is fed the kernel's messages that answer its execute_request (iopub
output and status, the shell reply) and ends exactly once: ok, error, aborted, cancelled or
dead. Its images are scaled down off the event loop; it ends once they are (so what ends
is whole: the reply and the block see every image). :class:`Activity` is what the kernel
does for other clients (the person's cells).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .._errors import KaimonError
from .._output import OutputCapture

__all__ = ["INTERRUPT_WAIT", "Activity", "ExecStatus", "Execution", "stop", "wait_done"]

logger = logging.getLogger(__name__)

ExecStatus = Literal["queued", "running", "ok", "error", "dead", "aborted", "cancelled"]


@dataclass
class Execution:
    """One execute_request sent by the server, and everything it produced."""

    msg_id: str
    code: str
    capture: OutputCapture
    sent_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    finished_at: float | None = None
    status: ExecStatus = "queued"
    execution_count: int | None = None
    reason: str = ""
    quiet: bool = False
    last_output_at: float | None = None
    stash: dict[str, str] = field(default_factory=dict)
    last_progress: str | None = None
    new_progress: list[str] = field(default_factory=list)
    cancel_requested: bool = False
    #: Picked up again after a server restart: the execute_reply went to the old server.
    reattached: bool = False
    #: Called once when the execution ends, whatever the outcome.
    on_done: list[Callable[[], object]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _reply: dict[str, Any] | None = None
    _idle: bool = False
    _settling: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.capture.background = True  # the server's loop never waits for an image

    @property
    def elapsed(self) -> float:
        return (self.finished_at or time.monotonic()) - self.sent_at

    def feed_iopub(self, msg: dict[str, Any]) -> None:
        kind = msg["header"]["msg_type"]
        content = msg["content"]
        if kind == "status":
            if content["execution_state"] == "busy" and self.started_at is None:
                self.started_at = time.monotonic()
                self.status = "running"
            elif content["execution_state"] == "idle":
                self._idle = True
        elif kind == "stream":
            self.capture.add_text(content.get("text", ""))
        elif kind == "execute_result" and self.quiet:
            return
        elif kind in ("execute_result", "display_data", "update_display_data", "clear_output"):
            self.capture.add_message(kind, content)  # display ids and clears, as a notebook
        elif kind == "error":
            self.capture.add_error(
                content.get("ename", "Error"),
                content.get("evalue", ""),
                content.get("traceback", []),
            )
        else:
            return
        if kind != "status":
            self.last_output_at = time.monotonic()
        self._maybe_finish()

    def feed_reply(self, msg: dict[str, Any]) -> None:
        self._reply = msg["content"]
        self.execution_count = self._reply.get("execution_count")
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if not self._idle or self.done.is_set():
            return
        if self.capture.scaling:
            if self._settling is None:
                self._settling = asyncio.get_running_loop().create_task(self._when_settled())
            return
        if self.cancel_requested:
            self.status = "cancelled"
            self.reason = self.reason or "cancelled by the agent"
            self._finish()
            return
        if self._reply is None:
            if not self.reattached:
                return
            self._reply = {"status": "error" if self.capture.error else "ok"}
        status = self._reply.get("status")
        if status == "ok":
            self.status = "ok"
        elif status == "aborted":
            self.status = "aborted"
            self.reason = (
                "the kernel aborted this request (an earlier cell failed or it was interrupted)"
            )
        else:
            self.status = "error"
            if self.capture.error is None:  # an error reply with no error message on iopub
                self.capture.add_error(
                    self._reply.get("ename", "Error"),
                    self._reply.get("evalue", ""),
                    self._reply.get("traceback", []),
                )
        self._finish()

    async def _when_settled(self) -> None:
        try:
            await self.capture.settled()
        finally:
            self._settling = None
        self._maybe_finish()

    def finish_from(self, status: str, output: str) -> None:
        """End with what the gate recorded (the evaluation ended while no server listened)."""
        self.capture = OutputCapture(limit=self.capture.limit)
        self.capture.add_text(output)
        self.status = "ok" if status == "ok" else "error"
        self.reason = "finished while the server was down; recovered from the kernel"
        self._finish()

    def fail(self, status: ExecStatus, reason: str) -> None:
        if self.done.is_set():
            return
        self.status = status
        self.reason = reason
        self._finish()

    def _finish(self) -> None:
        self.capture.abandon()  # a kernel that died or was cancelled while images were scaled
        self.finished_at = time.monotonic()
        self.done.set()
        for callback in self.on_done:
            try:
                callback()
            except Exception:
                logger.exception("an on_done callback failed")


@dataclass
class Activity:
    """What the kernel is doing for other clients (the person's cells), from iopub."""

    busy_code: str | None = None
    busy_since: float | None = None
    busy_parent: str | None = None

    def describe(self) -> str:
        if self.busy_since is None:
            return "idle"
        first = (self.busy_code or "").strip().splitlines()[:1]
        what = f" running {first[0][:80]!r}" if first else ""
        return f"busy{what} (the person's cell, for {time.monotonic() - self.busy_since:.0f} s)"


#: How long code gets to stop after an interrupt before the cancel says it has not.
INTERRUPT_WAIT = 10.0


class _Stoppable(Protocol):
    """What :func:`stop` needs of a kernel session."""

    def cancel_eval(self, execution: Execution, timeout: float = ...) -> Awaitable[Any]: ...

    def interrupt(self) -> Awaitable[str]: ...


async def wait_done(execution: Execution, timeout: float) -> bool:
    """Whether ``execution`` ends within ``timeout`` seconds."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(execution.done.wait(), timeout)
    return execution.done.is_set()


async def stop(session: _Stoppable, execution: Execution, grace: float) -> tuple[str, str]:
    """Stop ``execution``: the cooperative flag first, an interrupt after ``grace`` seconds,
    and only while the gate says this execution is the one running (an interrupt otherwise
    stops whatever runs instead: another job, the person's cell).

    Returns where the execution was when asked (queued, running or finished) and how it
    stopped, as a sentence."""

    async def ask_gate() -> Any:  # EvalCancelled, or None when the gate did not answer
        with contextlib.suppress(KaimonError):
            return await session.cancel_eval(execution, timeout=max(grace, 0.5))
        return None

    # The gate knows where the execution is; this side's view of it may be stale.
    answer = await ask_gate()
    if answer is None:  # the gate could not say (gone, or busy without a subshell)
        state = "queued" if execution.started_at is None else "running"
    else:
        state = answer.state
    if state == "queued":  # the gate skips it when its turn comes
        execution.fail("cancelled", "cancelled before it started")
        return state, "it had not started; it will not run"
    if state == "finished":
        execution.cancel_requested = False  # it ended by itself: keep its outcome
        await wait_done(execution, INTERRUPT_WAIT)
        return state, "it had already finished"
    if await wait_done(execution, grace):
        return state, "it stopped cooperatively"
    again = await ask_gate()
    if again is not None and again.state != "running":
        await wait_done(execution, INTERRUPT_WAIT)
        return state, "it stopped by itself just as the grace period ended"
    how = await session.interrupt()
    if await wait_done(execution, INTERRUPT_WAIT):
        return state, f"it ignored the flag, so the kernel was interrupted ({how})"
    execution.fail(
        "cancelled",
        f"cancelled; the kernel was interrupted ({how}) but the code had not stopped "
        f"{INTERRUPT_WAIT:g} s later: the session may still be busy",
    )
    return state, "interrupt sent, but the code has not stopped yet"
