"""The server's state: sessions, kernels it started, evaluations still running.

Transports (stdio, HTTP) and the MCP tool layer sit on top of :class:`Kaimon`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from .._errors import KaimonError, SessionNotFound
from .._protocol import ToolSpec
from ._discovery import Registry
from ._kernel import Execution, KernelSession
from ._launcher import Launcher

__all__ = ["GateToolRef", "Kaimon", "ServerOptions", "TrackedEval"]

DEFAULT_PROMOTE_AFTER = 30.0


@dataclass
class ServerOptions:
    """How ``kaimon serve`` behaves; the CLI, environment and tests fill it in."""

    auto_start: bool = True
    promote_after: float = DEFAULT_PROMOTE_AFTER
    cwd: str = field(default_factory=os.getcwd)


@dataclass
class TrackedEval:
    """An evaluation that outlived its ``ex`` call (promoted or the call was cancelled)."""

    eval_id: str
    session_key: str
    execution: Execution
    promoted_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class GateToolRef:
    """A gate tool as agents see it: its MCP name, and where calls go."""

    mcp_name: str
    session: KernelSession
    spec: ToolSpec


class Kaimon:
    """One ``kaimon serve`` process: discovery, owned kernels and running evaluations."""

    def __init__(self, options: ServerOptions | None = None, registry: Registry | None = None):
        self.options = options or ServerOptions()
        self.registry = registry or Registry()
        self.launcher = Launcher(self.registry)
        self.evals: dict[str, TrackedEval] = {}
        self._start_lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Kaimon]:
        """Discovery runs inside; kernels this server started are shut down on the way out."""
        await self.registry.scan()
        task = asyncio.create_task(self.registry.run(), name="kaimon-discovery")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.launcher.shutdown_all()
            await self.registry.close()

    async def session_for(self, name: str | None) -> tuple[KernelSession, str]:
        """The session ``name`` resolves to, starting one when none exists and allowed.

        Returns the session and a note for the agent (empty unless a kernel was started).
        """
        try:
            session = self.registry.resolve(name)
        except SessionNotFound:
            if name or not self.options.auto_start:
                raise
            async with self._start_lock:
                if self.registry.sessions:  # another call started one meanwhile
                    return self.registry.resolve(None), ""
                session = await self.launcher.start(self.options.cwd)
            connection = Path(session.info.connection_file).name
            return session, (
                f"[kaimon: no kernel was served, so a new one was started for you: session "
                f"{session.key} in {session.info.cwd} (started by the agent; the person can "
                f"attach with `jupyter console --existing {connection}`)]"
            )
        await session.wait_ready(10)
        return session, ""

    def track(self, session: KernelSession, execution: Execution) -> TrackedEval:
        tracked = TrackedEval(execution.msg_id.replace("-", "")[:12], session.key, execution)
        self.evals[tracked.eval_id] = tracked
        return tracked

    def find_eval(self, eval_id: str) -> TrackedEval:
        eval_id = eval_id.strip()
        if not eval_id:
            raise KaimonError("eval_id is empty; use the id an `ex` reply gave (eval_id: …)")
        found = [e for k, e in self.evals.items() if k.startswith(eval_id)]
        if len(found) == 1:
            return found[0]
        if not found:
            known = ", ".join(list(self.evals)[-10:]) or "none"
            raise KaimonError(f"no evaluation has id {eval_id!r}; known ids: {known}")
        raise KaimonError(f"{eval_id!r} matches {len(found)} evaluations; give more characters")

    def gate_tools(self) -> dict[str, GateToolRef]:
        """Every served tool under its MCP name ``<namespace>_<tool>``.

        Sessions sharing a namespace get ``<namespace>_2``, ``_3`` … in the order they
        started, so no tool silently replaces another.
        """
        table: dict[str, GateToolRef] = {}
        used: dict[str, int] = {}
        ordered = sorted(self.registry.sessions.values(), key=lambda s: (s.info.started_at, s.key))
        for session in ordered:
            if session.state != "ready" or not session.tools:
                continue
            ns = session.info.namespace
            used[ns] = used.get(ns, 0) + 1
            prefix = ns if used[ns] == 1 else f"{ns}_{used[ns]}"
            for spec in session.tools:
                name = f"{prefix}_{spec.name}"
                table[name] = GateToolRef(name, session, spec)
        return table
