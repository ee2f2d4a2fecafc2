"""What running code can tell the agent: ``stash``, ``progress``, ``is_cancelled``.

Each knows what it runs for: a gate tool call (a contextvar set in the tool's thread) or an
agent's evaluation (marked in its execute_request's metadata; threads it starts see it too
while it runs). Anywhere else they do nothing and say so once.
"""

from __future__ import annotations

import collections
import contextvars
import dataclasses
import functools
import sys
import threading
from collections.abc import Callable
from typing import Any, Literal

from .._output import OutputCapture
from .._protocol import EVAL_METADATA_KEY, EvalRecord, EvalUpdate

__all__ = ["CallContext", "EvalTracker", "is_cancelled", "progress", "stash"]

STASH_VALUE_LIMIT = 500
KEPT_RECORDS = 50


@dataclasses.dataclass
class CallContext:
    """The tool call the current code runs for."""

    call_id: str
    send_progress: Callable[[str, float | None, float | None], None]
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)


current_call: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "kaimon_call", default=None
)


@dataclasses.dataclass
class _Eval:
    msg_id: str
    capture: OutputCapture = dataclasses.field(default_factory=lambda: OutputCapture(limit=20_000))
    status: str = "running"
    stash: dict[str, str] = dataclasses.field(default_factory=dict)
    progress: str | None = None
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)

    def record(self) -> EvalRecord:
        return EvalRecord(
            msg_id=self.msg_id,
            status=self.status,  # type: ignore[arg-type]
            output=self.capture.text(),
            stash=self.stash,
            progress=self.progress,
        )


class EvalTracker:
    """The agent's evaluations in this kernel: the running one, and the recent ones' results
    (so that a server restarted while one ran can recover it)."""

    def __init__(self, shell: Any, send: Callable[[Any], None]) -> None:
        self.shell = shell
        self.send = send  # to every connected server
        self.current: _Eval | None = None
        self.view: Any = None  # the LiveView, told what the agent runs
        self.recent: collections.OrderedDict[str, _Eval] = collections.OrderedDict()
        # agent evaluations cancelled while still queued: they must not run when their turn
        # comes (interrupting would stop whatever runs now instead: another job, a cell)
        self.cancelled_early: set[str] = set()
        shell.events.register("pre_run_cell", self._pre_run_cell)
        shell.events.register("post_run_cell", self._post_run_cell)
        shell.input_transformers_post.append(self._skip_if_cancelled)
        self._install_hooks()

    def _parent(self) -> dict[str, Any]:
        kernel = getattr(self.shell, "kernel", None)
        return kernel.get_parent() if kernel is not None else {}

    def _skip_if_cancelled(self, lines: list[str]) -> list[str]:
        # runs on every cell, the person's too: nothing to do unless a cancel is pending
        if not self.cancelled_early:
            return lines
        msg_id = self._parent().get("header", {}).get("msg_id")
        if msg_id in self.cancelled_early:
            return ["# kaimon: the agent cancelled this before it ran\n"]
        return lines

    def _pre_run_cell(self, info: Any) -> None:
        parent = self._parent()
        if EVAL_METADATA_KEY not in (parent.get("metadata") or {}):
            return
        if parent["header"]["msg_id"] in self.cancelled_early:  # skipped (transformed away)
            self.cancelled_early.discard(parent["header"]["msg_id"])
            return
        ev = _Eval(parent["header"]["msg_id"])
        self.recent[ev.msg_id] = ev
        while len(self.recent) > KEPT_RECORDS:
            self.recent.popitem(last=False)
        self.current = ev
        if self.view is not None:
            self.view.agent_started(getattr(info, "raw_cell", "") or "", ev.msg_id)

    def _post_run_cell(self, result: Any) -> None:
        ev = self.current
        if ev is None:
            return
        self.current = None
        if self.view is not None:
            failed = result.error_before_exec or result.error_in_exec
            self.view.agent_finished("error" if failed else "ok")
        if result.error_before_exec or result.error_in_exec:
            err = result.error_before_exec or result.error_in_exec
            ev.capture.add_error(type(err).__name__, str(err), [])
            ev.status = "error"
        else:
            if result.result is not None:
                ev.capture.add_text(repr(result.result) + "\n")
            ev.status = "ok"

    def _install_hooks(self) -> None:
        """See every stream and display message; keep those of the agent's evaluations.

        ipykernel runs stream hooks in its IO thread and display hooks in the publishing
        thread, each list thread-local: so register each where it will be called."""
        for stream in (sys.stdout, sys.stderr):
            pub = getattr(stream, "pub_thread", None)
            if pub is not None and hasattr(stream, "register_hook"):
                pub.schedule(functools.partial(stream.register_hook, self._hook))
        display_pub = getattr(self.shell, "display_pub", None)
        if hasattr(display_pub, "register_hook"):
            display_pub.register_hook(self._hook)

    def _hook(self, msg: dict[str, Any]) -> dict[str, Any]:
        ev = self.recent.get((msg.get("parent_header") or {}).get("msg_id"))
        if ev is not None:  # the agent's: reduced as a notebook would (display ids, clears)
            content = msg.get("content", {})
            ev.capture.add_message(msg["header"]["msg_type"], content)
            if "text" in content and self.view is not None:
                self.view.agent_output(content["text"])
        return msg

    def cancel(self, msg_id: str) -> Literal["running", "queued", "finished"]:
        """Cancel the agent's evaluation ``msg_id``; says where it was: running (now
        flagged), not started yet (skipped when its turn comes) or already finished."""
        ev = self.recent.get(msg_id)
        if ev is None:  # not started yet: skip it when it comes up
            self.cancelled_early.add(msg_id)
            return "queued"
        ev.cancelled.set()
        return "running" if ev.status == "running" else "finished"

    def query(self, msg_ids: list[str]) -> list[EvalRecord]:
        return [self.recent[m].record() for m in msg_ids if m in self.recent]


_tracker: EvalTracker | None = None
_warned: set[str] = set()


def set_tracker(tracker: EvalTracker | None) -> None:
    global _tracker
    _tracker = tracker


def _outside(what: str) -> None:
    if what not in _warned:
        _warned.add(what)
        print(
            f"kaimon: {what}() called outside an agent's evaluation or tool call; "
            "it does nothing here."
        )


def _bounded(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    if len(text) > STASH_VALUE_LIMIT:
        text = text[: STASH_VALUE_LIMIT - 1] + "…"
    return text


def progress(message: str, progress: float | None = None, total: float | None = None) -> None:
    """Tell the agent how the running code is doing (an MCP progress notification while the
    call is open; the job's last progress after)."""
    call = current_call.get()
    if call is not None:
        call.send_progress(str(message), progress, total)
        return
    ev = _tracker.current if _tracker is not None else None
    if ev is None:
        _outside("progress")
        return
    ev.progress = _bounded(message)
    _tracker.send(EvalUpdate(msg_id=ev.msg_id, progress=ev.progress))


def stash(key: str, value: Any) -> None:
    """Keep ``value`` (its text, bounded) under ``key`` for the agent's check_eval."""
    ev = _tracker.current if _tracker is not None else None
    if ev is None:
        _outside("stash")
        return
    text = ev.stash[str(key)] = _bounded(value)
    _tracker.send(EvalUpdate(msg_id=ev.msg_id, stash={str(key): text}))


def is_cancelled() -> bool:
    """Whether the agent cancelled what this code runs for: stop soon if so."""
    call = current_call.get()
    if call is not None:
        return call.cancelled.is_set()
    ev = _tracker.current if _tracker is not None else None
    return ev is not None and ev.cancelled.is_set()
