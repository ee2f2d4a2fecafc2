"""The server's state: sessions, kernels it started, evaluations still running.

Transports (stdio, HTTP) and the MCP tool layer sit on top of :class:`Kaimon`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._config import DEFAULT_CANCEL_GRACE, DEFAULT_PROMOTE_AFTER
from .._errors import KaimonError, SessionNotFound
from .._protocol import ToolSpec
from ._blocks import BlockStore
from ._discovery import Registry
from ._jobs import Job, JobStatus, JobStore
from ._kernel import Execution, KernelSession
from ._launcher import Launcher, reap_orphans

__all__ = ["JOB_STATUS", "GateToolRef", "Kaimon", "ServerOptions", "TrackedEval"]

JOB_SAVE_INTERVAL = 2.0
INTERRUPT_WAIT = 10.0


def _wall(monotonic: float | None) -> float | None:
    """A time.monotonic() stamp as wall-clock time, for the store."""
    return None if monotonic is None else time.time() - (time.monotonic() - monotonic)


@dataclass
class ServerOptions:
    """How ``kaimon serve`` behaves; the CLI, environment and tests fill it in."""

    auto_start: bool = True
    promote_after: float = DEFAULT_PROMOTE_AFTER
    cancel_grace: float = DEFAULT_CANCEL_GRACE
    cwd: str = field(default_factory=os.getcwd)


JOB_STATUS: dict[str, JobStatus] = {
    "ok": "completed",
    "error": "failed",
    "aborted": "failed",
    "dead": "lost",
    "cancelled": "cancelled",
}


@dataclass
class TrackedEval:
    """An evaluation that outlived its ``ex`` call (promoted, or the call was cancelled)."""

    eval_id: str
    session: KernelSession
    execution: Execution
    #: Set once the job's outcome is in the store.
    saved: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def session_key(self) -> str:
        return self.session.key


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
        self.jobs = JobStore()
        self.blocks = BlockStore(self.jobs.db)
        self._start_lock = asyncio.Lock()
        self._job_tasks: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Kaimon]:
        """Discovery runs inside; kernels this server started are shut down on the way out."""
        reap_orphans()  # kernels left behind by a server that crashed
        await self.registry.scan()
        task = asyncio.create_task(self.registry.run(), name="kaimon-discovery")
        recovery = asyncio.create_task(self.recover_jobs(), name="kaimon-recover-jobs")
        self._job_tasks.add(recovery)
        recovery.add_done_callback(self._job_tasks.discard)
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for job_task in list(self._job_tasks):
                job_task.cancel()
            await self.launcher.shutdown_all()
            await self.registry.close()
            self.jobs.close()

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

    async def resolve(self, name: str | None) -> KernelSession:
        """The session ``name`` resolves to, once it has finished connecting."""
        session = self.registry.resolve(name)
        await session.wait_ready(10)
        return session

    def record_block(self, session: KernelSession, execution: Execution) -> str:
        """Make ``execution`` a block: its full output goes to disk as it comes."""
        block_id, writer = self.blocks.start(session.key, execution.code)
        execution.capture.sink = writer.write

        def finish() -> None:
            writer.close()
            cap = execution.capture
            self.blocks.finish(
                block_id,
                status=execution.status,
                duration=round(execution.elapsed, 3),
                chars=writer.chars,
                error=cap.error,
                images=[{"mime": i.mime, "data": i.data} for i in cap.images],
            )

        execution.on_done.append(finish)
        return block_id

    def track(self, session: KernelSession, execution: Execution) -> TrackedEval:
        """Make ``execution`` a background job: stored, followed to its end, never lost."""
        eval_id = uuid.uuid4().hex[:12]
        tracked = TrackedEval(eval_id, session, execution)
        self.evals[eval_id] = tracked
        self.jobs.add(
            Job(
                id=eval_id,
                msg_id=execution.msg_id,
                session_key=session.key,
                session_id=session.info.session_id,
                kernel_pid=session.info.pid,
                code=execution.code,
                status="running",
                created_at=time.time() - execution.elapsed,
            )
        )
        self._adopt(tracked)
        session.job_promoted(execution, eval_id)
        return tracked

    def _adopt(self, tracked: TrackedEval) -> None:
        self.evals[tracked.eval_id] = tracked
        task = asyncio.create_task(self._follow_job(tracked), name=f"job-{tracked.eval_id}")
        self._job_tasks.add(task)
        task.add_done_callback(self._job_tasks.discard)

    async def recover_jobs(self) -> None:
        """After a restart: re-attach jobs whose kernel still runs; the rest become lost."""
        groups: dict[tuple[str, int], list[Job]] = {}
        for job in self.jobs.running():
            groups.setdefault((job.session_id, job.kernel_pid), []).append(job)
        for (session_id, pid), jobs in groups.items():
            session = next(
                (
                    s
                    for s in self.registry.sessions.values()
                    if s.info.session_id == session_id and s.info.pid == pid
                ),
                None,
            )
            if session is not None:
                await session.wait_ready(15)
            try:
                if session is None or session.state != "ready":
                    raise KaimonError(
                        f"its kernel (pid {pid}) is gone or no longer served"
                        if session is None
                        else f"its session {session.key} is {session.state}"
                    )
                await self._reattach(session, jobs)
            except KaimonError as err:
                for job in jobs:
                    self.jobs.update(
                        job.id,
                        status="lost",
                        finished_at=time.time(),
                        reason=f"lost while the server was down: {err}",
                    )

    async def _reattach(self, session: KernelSession, jobs: list[Job]) -> None:
        # Follow first, then ask: an evaluation ending in between is not missed.
        followed = {job.msg_id: session.follow(job.msg_id, job.code) for job in jobs}
        records = {r.msg_id: r for r in await session.query_evals(list(followed))}
        for job in jobs:
            execution = followed[job.msg_id]
            record = records.get(job.msg_id)
            # No record: the code has not started yet (queued behind other work); keep following.
            if record is not None and record.status != "running" and not execution.done.is_set():
                execution.finish_from(record.status, record.output)
            execution.stash.update(record.stash if record else {})
            if record is not None and record.progress:
                execution.last_progress = record.progress
            self._adopt(TrackedEval(job.id, session, execution))

    async def _follow_job(self, tracked: TrackedEval) -> None:
        """Save the job's output as it grows, and its outcome when it ends."""
        execution = tracked.execution
        saved_at: tuple[object, ...] = ()
        while not execution.done.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(execution.done.wait(), JOB_SAVE_INTERVAL)
            stamp = (execution.last_output_at, execution.last_progress, len(execution.stash))
            if not execution.done.is_set() and stamp != saved_at:
                saved_at = stamp
                self.save_progress(tracked)
        self.jobs.update(
            tracked.eval_id,
            status=JOB_STATUS.get(execution.status, "failed"),
            finished_at=time.time(),
            last_output_at=_wall(execution.last_output_at),
            output=execution.capture.text(),
            reason=execution.reason,
            stash=execution.stash,
            last_progress=execution.last_progress,
        )
        tracked.saved.set()
        self.evals.pop(tracked.eval_id, None)  # the store has it all now

    def save_progress(self, tracked: TrackedEval) -> None:
        self.jobs.update(
            tracked.eval_id,
            last_output_at=_wall(tracked.execution.last_output_at),
            output=tracked.execution.capture.text(),
            stash=tracked.execution.stash,
            last_progress=tracked.execution.last_progress,
        )

    async def cancel(self, tracked: TrackedEval) -> str:
        """Cancel a running job; returns how it stopped. The job ends ``cancelled``."""
        how = await self._cancel(tracked)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(tracked.saved.wait(), 5)
        return how

    async def _cancel(self, tracked: TrackedEval) -> str:
        execution, session = tracked.execution, tracked.session
        grace = self.options.cancel_grace

        async def ask_gate() -> Any:  # EvalCancelled, or None when the gate did not answer
            with contextlib.suppress(KaimonError):
                return await session.cancel_eval(execution, timeout=max(grace, 0.5))
            return None

        # The gate knows where the job is; this server's view of it may be stale.
        answer = await ask_gate()
        if answer is None:  # the gate could not say (gone, or busy without a subshell)
            state = "queued" if execution.started_at is None else "running"
        else:
            state = answer.state
        if state == "queued":
            # The gate skips it when its turn comes. An interrupt now would stop whatever
            # runs instead (another job, the person's cell).
            execution.fail("cancelled", "cancelled by the agent before it started")
            return "it had not started; it will not run"
        if state == "finished":
            execution.cancel_requested = False  # it ended by itself: keep its outcome
            await _wait(execution, INTERRUPT_WAIT)
            return "it had already finished"
        if await _wait(execution, grace):
            return "it stopped cooperatively"
        # Interrupt only while this job is the one running: the gate says so, now.
        again = await ask_gate()
        if again is not None and again.state != "running":
            await _wait(execution, INTERRUPT_WAIT)
            return "it stopped by itself just as the grace period ended"
        how = await session.interrupt()
        if await _wait(execution, INTERRUPT_WAIT):
            return f"it ignored the flag, so the kernel was interrupted ({how})"
        execution.fail(
            "cancelled",
            f"cancelled; the kernel was interrupted ({how}) but the code had not stopped "
            f"{INTERRUPT_WAIT:g} s later: the session may still be busy",
        )
        return "interrupt sent, but the code has not stopped yet"

    def find_job(self, eval_id: str) -> Job:
        """The job ``eval_id`` names (a unique prefix will do), live or from the store."""
        eval_id = eval_id.strip()
        if not eval_id:
            raise KaimonError("eval_id is empty; use the id an `ex` reply gave (eval_id: …)")
        if not all(c in "0123456789abcdef" for c in eval_id.lower()):
            raise KaimonError(f"{eval_id!r} is not an eval id (ids are hex, like 3f9a1c02be71)")
        found = self.jobs.find(eval_id.lower())
        if len(found) == 1 or (found and found[0].id == eval_id):
            return found[0]
        if not found:
            recent = ", ".join(j.id for j in self.jobs.list(limit=5)) or "none yet"
            raise KaimonError(f"no job has id {eval_id!r}; recent ids: {recent}")
        raise KaimonError(
            f"{eval_id!r} matches {len(found)}+ jobs ({', '.join(j.id for j in found)}); "
            "give more characters"
        )

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


async def _wait(execution: Execution, timeout: float) -> bool:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(execution.done.wait(), timeout)
    return execution.done.is_set()
