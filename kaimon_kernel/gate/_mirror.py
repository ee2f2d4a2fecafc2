"""The live view: the cell where the person ran ``%kaimon serve`` shows what the agent does.

A display with a ``display_id``, updated with ``update_display_data`` while the agent's code
runs: its code, how long it has run, the tail of its output, and the recent blocks and tool
calls. The updates carry the serve cell's request as parent, so frontends route them to that
cell and the server never mistakes them for the agent's own output.
"""

from __future__ import annotations

import html
import logging
import reprlib
import threading
import time
import uuid
from collections import deque
from typing import Any

from .._output import as_shown

__all__ = ["LiveView"]

logger = logging.getLogger(__name__)

TICK = 1.0
#: Changes within this window make one update, so a short run's start and end cost the
#: agent's execution nothing: updates go out from the view's own thread.
COALESCE = 0.05
TAIL_CHARS = 1500

_short = reprlib.Repr()  # a tool's arguments in the view: short, however large they are
_short.maxstring = _short.maxother = 40


class LiveView:
    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.display_id = f"kaimon-{uuid.uuid4().hex[:12]}"
        self.enabled = True
        self.shown = False
        self._parent: dict[str, Any] = {}
        self._running: dict[str, Any] | None = None
        self._tail = ""
        self._recent: deque[str] = deque(maxlen=5)
        # promoted evaluations (msg_id → eval_id) until they finish: running or queued
        self._jobs: dict[str, str] = {}
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._publisher: threading.Thread | None = None

    def show(self) -> None:
        """Put the view in the current cell (the one running ``%kaimon serve``)."""
        from IPython.display import display

        kernel = getattr(self.shell, "kernel", None)
        self._parent = kernel.get_parent() if kernel is not None else {}
        display(self._bundle(), raw=True, display_id=self.display_id)
        self.shown = True
        if self._publisher is None:
            self._publisher = threading.Thread(
                target=self._publish_loop, name="kaimon-live-view", daemon=True
            )
            self._publisher.start()

    def agent_started(self, code: str, msg_id: str = "") -> None:
        with self._lock:
            self._running = {"code": code, "since": time.time(), "msg_id": msg_id}
            self._tail = ""
        self._mark_changed()

    def job_promoted(self, msg_id: str, eval_id: str) -> None:
        with self._lock:
            self._jobs[msg_id] = eval_id
            while len(self._jobs) > 100:  # bound what a lost kernel reply could leave behind
                self._jobs.pop(next(iter(self._jobs)))
        self._mark_changed()

    def job_cancelled(self, msg_id: str) -> None:
        """A cancelled job that never started never finishes here: stop listing it."""
        with self._lock:
            running = self._running is not None and self._running["msg_id"] == msg_id
            eval_id = None if running else self._jobs.pop(msg_id, None)
            if eval_id is not None:
                self._remember("cancelled", 0.0, f"job {eval_id}, before it ran")
        self._mark_changed()

    def agent_output(self, text: str) -> None:
        with self._lock:
            if self._running is not None:
                self._tail = (self._tail + text)[-TAIL_CHARS:]

    def agent_finished(self, status: str) -> None:
        with self._lock:
            if self._running is None:
                return
            first = (self._running["code"].strip().splitlines() or [""])[0]
            eval_id = self._jobs.pop(self._running["msg_id"], None)
            what = f"job {eval_id}: {first}" if eval_id else first
            self._remember(status, time.time() - self._running["since"], what)
            self._running = None
        self._mark_changed()

    def tool_finished(self, name: str, arguments: dict[str, Any], status: str, took: float) -> None:
        """A gate tool call the agent made: it runs beside the cells, so only its outcome shows."""
        args = ", ".join(f"{k}={_short.repr(v)}" for k, v in arguments.items())
        with self._lock:
            self._remember(status, took, f"tool {name}({args})")
        self._mark_changed()

    def _mark_changed(self) -> None:
        # What happens while the view is off is remembered (recent) but never published.
        if self.shown and self.enabled:
            self._changed.set()

    def _remember(self, status: str, took: float, what: str) -> None:
        self._recent.appendleft(
            f"{time.strftime('%H:%M:%S')}  {status:5} {took:6.1f} s  {what[:80]}"
        )

    def _publish_loop(self) -> None:
        """Publish after each burst of changes, and every TICK while the agent's code runs."""
        while True:
            if self._changed.wait(TICK if self._running is not None else None):
                time.sleep(COALESCE)
                self._changed.clear()
            try:
                self._publish()
            except Exception:  # e.g. the kernel is shutting down; the view never breaks it
                logger.debug("live view update failed", exc_info=True)

    def text(self) -> str:
        with self._lock:
            lines = [
                "kaimon: this kernel is shared with agents"
                + ("" if self.enabled else " (live view paused: %kaimon mirror on)")
            ]
            running_job = None
            if self._running is not None:
                secs = time.time() - self._running["since"]
                running_job = self._jobs.get(self._running["msg_id"])
                job = f" background job {running_job}" if running_job else ""
                lines.append(f"▶ the agent is running{job} ({secs:.0f} s):")
                lines.extend("    " + line for line in self._running["code"].splitlines()[:12])
                if self._tail:
                    lines.append("  output so far:")
                    tail = as_shown(self._tail).splitlines()[-15:]
                    lines.extend("    " + line for line in tail)
            else:
                lines.append("  idle: the agent runs nothing right now")
            queued = [e for e in self._jobs.values() if e != running_job]
            if queued:
                lines.append(
                    f"  queued: {len(queued)} background job{'s' if len(queued) > 1 else ''}"
                    f" ({', '.join(queued[:5])}{', …' if len(queued) > 5 else ''})"
                )
            if self._recent:
                lines.append("  recent:")
                lines.extend("    " + r for r in self._recent)
        return "\n".join(lines)

    def _bundle(self) -> dict[str, str]:
        text = self.text()
        return {"text/plain": text, "text/html": f"<pre>{html.escape(text)}</pre>"}

    def _publish(self) -> None:
        if not (self.shown and self.enabled):
            return
        kernel = getattr(self.shell, "kernel", None)
        if kernel is None or kernel.session is None:
            return
        content = {
            "data": self._bundle(),
            "metadata": {},
            "transient": {"display_id": self.display_id},
        }
        kernel.session.send(
            kernel.iopub_socket,
            "update_display_data",
            content,
            parent=self._parent,
            ident=b"display_data",
        )
