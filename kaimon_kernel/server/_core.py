"""The core of ``kaimon serve``: sessions, executions, jobs, blocks and gate tools, free of MCP.

Fronts (the MCP tools over stdio and HTTP today, the dashboard next) call :class:`Kaimon` and
subscribe to its :class:`~._events.EventBus`; they render its results and map its errors
(:mod:`kaimon_kernel._errors`) in one place each.
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
from .._errors import JobNotFound, KaimonError, NotAllowed, SessionNotFound, StoreError
from .._paths import data_dir
from .._protocol import ProcessIdentity, TextBlock, ToolProgress, ToolResult, ToolSpec
from ..extensions._supervisor import DEFAULT_BACKOFF
from ._blocks import BlockStore
from ._db import Database
from ._events import (
    EventBus,
    ExecutionFinished,
    ExecutionOutput,
    ExecutionStarted,
    JobFinished,
    JobPromoted,
    ToolCallFinished,
    ToolCallStarted,
)
from ._execution import Execution, stop
from ._jobs import Job, JobStatus, JobStore
from ._kernel import KernelSession
from ._policy import allowed_roots, export_target, too_wide
from ._sessions import Registry
from .providers import KernelProvider, LaunchRequest, reap_orphans
from .providers._jupyter import through_jupyter_owner

__all__ = ["JOB_STATUS", "GateToolRef", "Kaimon", "ServerOptions", "TrackedEval"]

JOB_SAVE_INTERVAL = 2.0
START_TIMEOUT = 60.0
RESTART_TIMEOUT = 60.0
RECOVER_RETRY = 1.0  # how often jobs on a kernel not yet found are looked for again
EXPORT_MAX_BLOCKS = 10_000
PROGRESS_INTERVAL = 0.25
WAIT_NOTE_INTERVAL = 5.0
# A gate tool without its own timeout still gets one: a frozen kernel must not hang the agent.
DEFAULT_TOOL_TIMEOUT = 300.0


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
    #: Seconds before a crashed extension is started again (the last repeats).
    extension_backoff: tuple[float, ...] = DEFAULT_BACKOFF


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


@dataclass
class Run:
    """One ``ex``: the execution, its block, and how long it waited for the kernel."""

    session: KernelSession
    execution: Execution
    block_id: str
    note: str = ""
    #: Set when writing the block's file failed at the end: the code ran, the file is short.
    store_problem: str = ""

    @property
    def waited(self) -> float:
        """How long the code waited for the kernel before it started (0 if not noticeably)."""
        ex = self.execution
        if ex.started_at is None:
            return 0.0
        waited = ex.started_at - ex.sent_at
        return waited if waited > 1.0 else 0.0


class Kaimon:
    """One ``kaimon serve`` process: sessions, owned kernels, executions, jobs and blocks."""

    def __init__(self, options: ServerOptions | None = None, registry: Registry | None = None):
        self.options = options or ServerOptions()
        self.registry = registry or Registry()
        self.bus: EventBus = self.registry.bus
        self.evals: dict[str, TrackedEval] = {}
        self.store = Database(data_dir() / "jobs.sqlite3")
        self.jobs = JobStore(self.store)
        self.blocks = BlockStore(self.store)
        self._start_lock = asyncio.Lock()
        self._job_tasks: set[asyncio.Task[None]] = set()
        self._me = ProcessIdentity.current()
        #: Namespace suffixes by session key, kept for the server's life (stable over restarts).
        self._ns_slots: dict[str, dict[str, int]] = {}

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Kaimon]:
        """Discovery runs inside; kernels this server started are shut down on the way out."""
        reap_orphans()  # kernels left behind by a server that crashed
        await self.registry.first()
        task = asyncio.create_task(self.registry.run(), name="kaimon-discovery")
        self._spawn(self.recover_jobs(), "kaimon-recover-jobs")
        self.bus.subscribe(self._tell_gate_job_promoted, JobPromoted)
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for job_task in list(self._job_tasks):
                job_task.cancel()
            for provider in self.registry.providers:
                with contextlib.suppress(Exception):
                    await provider.close()
            await self.registry.close()
            await self.store.aclose()

    def _spawn(self, coro: object, name: str) -> None:
        task = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        self._job_tasks.add(task)
        task.add_done_callback(self._job_tasks.discard)

    # -- sessions ----------------------------------------------------------------------------

    async def session_for(self, name: str | None) -> tuple[KernelSession, str]:
        """The session ``name`` resolves to, starting one when none exists and allowed.

        Returns the session and a note for the agent (empty unless a kernel was started).
        """
        try:
            session = await self.resolve(name)
            return session, ""
        except SessionNotFound:
            if name or not self.options.auto_start:
                raise SessionNotFound(f"{self._not_found_reason(name)}") from None
            wide = too_wide(Path(self.options.cwd).resolve())
            if wide:
                raise NotAllowed(
                    f"no served kernel was found in {self._where_looked()}, and kaimon serve "
                    f"runs in {self.options.cwd} ({wide}), too wide a place to start one in. "
                    "The person can run `%kaimon serve` in a notebook, or start kaimon serve "
                    "in a project directory; or call start_session with an allowed project."
                ) from None
            async with self._start_lock:
                if self.registry.agent_sessions():  # another call started one meanwhile
                    return await self.resolve(None), ""
                session = await self.start_session(self.options.cwd)
            connection = Path(session.info.connection_file).name
            return session, (
                f"[kaimon: no served kernel was found in {self._where_looked()}, so a new one "
                f"was started for you: session {session.key} in {session.info.cwd} (started by "
                f"the agent; the person can attach with `jupyter console --existing "
                f"{connection}`)]"
            )

    def _where_looked(self) -> str:
        return ", ".join(w for p in self.registry.providers for w in p.where())

    def _not_found_reason(self, name: str | None) -> str:
        try:
            self.registry.resolve(name)
        except KaimonError as err:
            return f"{err}\n(kaimon looks for served kernels in {self._where_looked()})"
        return f"no session is called {name!r}"

    async def resolve(self, name: str | None) -> KernelSession:
        """The session ``name`` resolves to, once it has finished connecting."""
        try:
            session = self.registry.resolve(name)
        except SessionNotFound:
            if not name:
                raise
            await self._refresh_info()  # the person may have just relabelled one
            session = self.registry.resolve(name)
        await session.wait_ready(10)
        return session

    async def _refresh_info(self) -> None:
        """Every session's info as its gate has it now (not as it last told us)."""

        async def ask(session: KernelSession) -> None:
            with contextlib.suppress(KaimonError):
                session.info = await session.gate.get_info(timeout=1)

        await asyncio.gather(
            *(
                ask(s)
                for s in self.registry.sessions.values()
                if s.state == "ready" and s.gate.supports("info_query")
            )
        )

    async def start_session(
        self,
        cwd: str,
        *,
        name: str | None = None,
        python: str | None = None,
        key: str | None = None,
        provider: KernelProvider | None = None,
    ) -> KernelSession:
        """Start a kernel with the gate served in ``cwd`` (on ``provider``, by default this
        machine); returns once its gate answers."""
        key = key or uuid.uuid4().hex[:8]
        local = provider or self.registry.local
        await local.launch(LaunchRequest(cwd=cwd, key=key, python=python, label=name))
        return await self._wait_served(key, provider=local)

    async def _wait_served(
        self,
        key: str,
        old: KernelSession | None = None,
        provider: KernelProvider | None = None,
        stop: bool = True,
    ) -> KernelSession:
        """Until session ``key`` (not ``old``: the kernel it replaces) answers; on failure
        its kernel is stopped if ``stop``."""
        local: Any = provider or self.registry.local
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            session = await self.registry.wait_for(key, 0.5)
            if session is not None and session is not old and session.state == "ready":
                return session
            if session is old:
                await self.registry.scan()
            exited = local.exited(key)
            if exited:
                if stop:
                    await local.shutdown(key)
                raise KaimonError(f"the kernel did not start: {exited}")
            if time.monotonic() > deadline:
                if stop:
                    await local.shutdown(key)
                raise KaimonError(
                    f"the kernel did not serve the gate within {START_TIMEOUT:.0f} s; "
                    f"log: {local.log_file(key)}"
                )

    async def _check_may_restart(self, session: KernelSession) -> None:
        """Refuse where the person forbade restarts; asks the gate for its current flags
        first (the person may have just re-served with new ones), not our copy."""
        if session.gate.supports("info_query"):
            with contextlib.suppress(KaimonError):
                session.info = await session.gate.get_info(timeout=2)
        if not session.info.allow_restart:
            raise NotAllowed(
                f"session {session.key} was served with allow_restart=False: the person chose "
                "that agents may not restart or shut it down. Ask the person to do it."
            )

    async def restart(self, session: KernelSession) -> KernelSession:
        """A fresh kernel under the same session key and label: all state is lost."""
        await self._check_may_restart(session)
        key, old_pid = session.key, session.info.pid
        local = session.provider
        if local.owns(key):
            await local.restart(key)
            # a person's remote kernel is never stopped for being slow to serve again
            stop = local is self.registry.local
            return await self._wait_served(key, old=session, provider=local, stop=stop)
        # The kernel's owner (a Jupyter server) restarts it; the gate serves again at start.
        # Through the owner's REST API where it is found: the kernel id stays, the person
        # sees an ordinary "Restarting", and no automatic restart is counted against it.
        if await through_jupyter_owner(session.info.connection_file, restart=True) is None:
            await session.control_request("shutdown_request", {"restart": True}, timeout=10)
        deadline = time.monotonic() + RESTART_TIMEOUT
        while time.monotonic() < deadline:
            await self.registry.scan()
            fresh = self.registry.sessions.get(key)
            if fresh is not None and fresh is not session and fresh.info.pid != old_pid:
                await fresh.wait_ready(10)
                return fresh
            await asyncio.sleep(0.1)
        raise KaimonError(
            f"session {key}'s kernel shut down, but its owner did not start it again within "
            f"{RESTART_TIMEOUT:g} s (a Jupyter server restarts its kernels; a plain console "
            "does not). Start a new session with start_session."
        )

    async def shutdown(self, session: KernelSession) -> str:
        """Stop a session's kernel; returns what became of it."""
        await self._check_may_restart(session)
        local = session.provider
        if local.owns(session.key):
            await local.shutdown(session.key)
            await self.registry.scan()
            return f"shut down session {session.key}; it is gone"
        url = await through_jupyter_owner(session.info.connection_file, restart=False)
        if url is not None:  # the person's JupyterLab: stopped by it, not restarted by it
            await self.registry.scan()
            return (
                f"shut down session {session.key} through its Jupyter server ({url}); "
                "it is gone, and the person's notebook shows no kernel"
            )
        await session.control_request("shutdown_request", {"restart": False}, timeout=10)
        return (
            f"asked session {session.key}'s kernel to shut down. Its owner (e.g. JupyterLab) may "
            "start a fresh kernel in its place; if so, that kernel is served again with the "
            "same key."
        )

    def blocks_of(self, session: str | None) -> KernelSession | str:
        """The session whose blocks ``session`` names: a live one, else the name itself (a
        session that is gone: its key still names its blocks)."""
        try:
            return self.registry.resolve(session)
        except KaimonError:
            if not session:
                raise
            return session

    async def export_notebook(
        self, session: str | None, path: str, *, overwrite: bool = False
    ) -> tuple[str, Path, int]:
        """Write a session's blocks as a notebook; returns its key, the file and the cells.

        A relative ``path`` is in the session's folder; the file must be in an allowed
        project, and an existing one is replaced only with ``overwrite``."""
        live = self.blocks_of(session)
        key, base = (
            (live.key, Path(live.info.cwd)) if isinstance(live, KernelSession) else (live, None)
        )
        target = export_target(path, base, allowed_roots(self.options.cwd))
        blocks = list(reversed(await self.blocks.history(key, EXPORT_MAX_BLOCKS)))
        if not blocks:
            raise JobNotFound(f"session {key} has no blocks to export (run some code first)")
        await self.blocks.export(blocks, target, overwrite)
        return key, target, len(blocks)

    # -- executions --------------------------------------------------------------------------

    async def execute(
        self, code: str, *, session: str | None = None, max_output: int = 6000, quiet: bool = False
    ) -> Run:
        """Record a block, then run ``code``: the code never runs unrecorded."""
        target, note = await self.session_for(session)
        target.usable()
        problems = self.store.take_errors()
        if problems:  # queued writes that failed since the last ex: say so, once
            note += ("\n" if note else "") + f"[kaimon: saving to the store failed: {problems[-1]}]"
        if self.store.moved_aside is not None:  # said once: earlier jobs and blocks are there
            note += ("\n" if note else "") + (
                f"[kaimon: the job store was damaged and moved aside to {self.store.moved_aside} "
                "at start; earlier jobs and blocks are in that file]"
            )
            self.store.moved_aside = None
        try:
            block_id, writer = await self.blocks.start(target.key, code)
        except StoreError as err:
            raise StoreError(f"the code was not run: {err}") from err
        try:
            execution = target.execute(code, max_output=max_output, quiet=quiet)
        except BaseException:
            writer.close()
            self.blocks.finish(block_id, status="not run")
            raise
        execution.capture.sink = writer.write
        if self.bus.wants(ExecutionOutput):  # the dashboard: only a listener pays for it

            def sink(text: str) -> None:
                writer.write(text)
                self.bus.publish(ExecutionOutput(target.key, execution.msg_id, text))

            execution.capture.sink = sink
        run = Run(target, execution, block_id, note)

        def finished() -> None:
            try:
                writer.close()
            except OSError as err:  # the code ran; the reply says so, the block keeps the rest
                run.store_problem = f"the code ran, but its block file is incomplete: {err}"
            cap = execution.capture
            # queued: a failure is reported on the next ex (Database.take_errors)
            self.blocks.finish(
                block_id,
                status=execution.status,
                duration=round(execution.elapsed, 3),
                chars=writer.chars,
                error=cap.error,
                images=[{"mime": i.mime, "data": i.data} for i in cap.images],
            )
            self.bus.publish(
                ExecutionFinished(target.key, execution.msg_id, execution.status, block_id)
            )

        execution.on_done.append(finished)
        self.bus.publish(ExecutionStarted(target.key, execution.msg_id, code, block_id))
        return run

    async def follow(self, run: Run, promote_after: float, max_progress: int) -> AsyncIterator[str]:
        """Progress messages for ``run`` until it ends or ``promote_after`` seconds pass
        (<= 0: never). Output is batched per interval and bounded to ``max_progress``
        characters in all, so a flood of output costs the agent no more than its reply."""
        execution, session = run.execution, run.session
        deadline = time.monotonic() + promote_after if promote_after > 0 else None
        budget = max_progress
        last_wait_note = 0.0
        while not execution.done.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return
            timeout = PROGRESS_INTERVAL
            if deadline is not None:
                timeout = min(timeout, max(deadline - time.monotonic(), 0.0))
            # Wake on completion only; output is batched per interval, short code sends nothing.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(execution.done.wait(), timeout)
            if execution.done.is_set():
                return
            message = execution.capture.take_new()
            if execution.new_progress:
                progress_text = "\n".join(execution.new_progress)
                execution.new_progress.clear()
                message = f"{message}\n[progress] {progress_text}" if message else progress_text
            if message and budget >= 0:
                if len(message) > budget:
                    message = message[: max(budget, 0)] + (
                        "\n[kaimon: more output is not streamed (max_output reached); "
                        "it is in the reply and the block]"
                    )
                    budget = -1
                else:
                    budget -= len(message)
            elif message:
                message = ""
            if not message and execution.started_at is None:
                now = time.monotonic()
                if now - execution.sent_at > 1.0 and now - last_wait_note >= WAIT_NOTE_INTERVAL:
                    last_wait_note = now
                    busy = session.activity.describe()
                    message = (
                        f"[waiting: the kernel is {busy}; this code starts when it is free]"
                        if busy != "idle"
                        else "[waiting: the kernel has not started this code yet; it is "
                        "running another client's request]"
                    )
            if message:
                yield message

    def promote_after(self, session: KernelSession) -> float:
        promote_after = session.info.promote_after
        return self.options.promote_after if promote_after is None else promote_after

    # -- jobs --------------------------------------------------------------------------------

    async def promote(self, session: KernelSession, execution: Execution) -> TrackedEval:
        """Make ``execution`` a background job, its row on disk before the agent hears its id
        (a server killed right after must not leave the agent an id no store knows)."""
        tracked = self.track(session, execution)
        await self.store.flush()
        return tracked

    def track(self, session: KernelSession, execution: Execution) -> TrackedEval:
        """Make ``execution`` a background job: stored (queued), followed to its end."""
        eval_id = uuid.uuid4().hex[:12]
        tracked = TrackedEval(eval_id, session, execution)
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
                server=self._me.model_dump_json(),
            )
        )
        self._adopt(tracked)
        self.bus.publish(JobPromoted(session.key, eval_id, execution.msg_id))
        return tracked

    def _tell_gate_job_promoted(self, event: JobPromoted) -> None:
        """The live view in the kernel lists the agent's background jobs."""
        tracked = self.evals.get(event.eval_id)
        if tracked is not None:
            tracked.session.job_promoted(tracked.execution, event.eval_id)

    def _adopt(self, tracked: TrackedEval) -> None:
        self.evals[tracked.eval_id] = tracked
        self._spawn(self._follow_job(tracked), f"job-{tracked.eval_id}")

    async def recover_jobs(self) -> None:
        """After a restart: re-attach jobs whose kernel still runs; the rest become lost."""
        groups: dict[tuple[str, int], list[Job]] = {}
        for job in await self.jobs.running():
            if _followed_by_another(job, self._me):
                continue  # a live server (another agent's conversation) follows it
            groups.setdefault((job.session_id, job.kernel_pid), []).append(job)
        while groups:
            for (session_id, pid), jobs in list(groups.items()):
                session = next(
                    (
                        s
                        for s in self.registry.sessions.values()
                        if s.info.session_id == session_id and s.info.pid == pid
                    ),
                    None,
                )
                if session is None and any(p.pending() for p in self.registry.providers):
                    continue  # a remote kernel busy with it may yet be found served
                del groups[(session_id, pid)]
                await self._recover(session, pid, jobs)
            if groups:
                await asyncio.sleep(RECOVER_RETRY)

    async def _recover(self, session: KernelSession | None, pid: int, jobs: list[Job]) -> None:
        """Re-attach the jobs of one kernel, or mark them lost with why."""
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
            # A running job's record was joined in the stream (KernelSession); no record: it
            # has not started yet (queued behind other work), keep following.
            if record is not None and record.status != "running" and not execution.done.is_set():
                execution.finish_from(record.status, record.output)
            execution.stash.update(record.stash if record else job.stash)
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
        status = JOB_STATUS.get(execution.status, "failed")
        self.jobs.update(
            tracked.eval_id,
            status=status,
            finished_at=time.time(),
            last_output_at=_wall(execution.last_output_at),
            output=execution.capture.text(),
            reason=execution.reason,
            stash=execution.stash,
            last_progress=execution.last_progress,
        )
        tracked.saved.set()
        self.evals.pop(tracked.eval_id, None)  # the store has it all now
        self.bus.publish(JobFinished(tracked.session_key, tracked.eval_id, status))

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
        _state, how = await stop(tracked.session, tracked.execution, self.options.cancel_grace)
        return how

    async def find_job(self, eval_id: str) -> Job:
        """The job ``eval_id`` names (a unique prefix will do), live or from the store."""
        eval_id = eval_id.strip()
        if not eval_id:
            raise JobNotFound("eval_id is empty; use the id an `ex` reply gave (eval_id: …)")
        if not all(c in "0123456789abcdef" for c in eval_id.lower()):
            raise JobNotFound(f"{eval_id!r} is not an eval id (ids are hex, like 3f9a1c02be71)")
        found = await self.jobs.find(eval_id.lower())
        if len(found) == 1 or (found and found[0].id == eval_id):
            return found[0]
        if not found:
            recent = ", ".join(j.id for j in await self.jobs.list(limit=5)) or "none yet"
            raise JobNotFound(f"no job has id {eval_id!r}; recent ids: {recent}")
        raise JobNotFound(
            f"{eval_id!r} matches {len(found)}+ jobs ({', '.join(j.id for j in found)}); "
            "give more characters"
        )

    # -- gate tools --------------------------------------------------------------------------

    def gate_tools(self) -> dict[str, GateToolRef]:
        """Every served tool under its MCP name ``<namespace>_<tool>``.

        Sessions sharing a namespace get ``<namespace>_2``, ``_3`` … by session key, in the
        order this server first saw them: a restart (same key) keeps its names. A name an
        earlier session's tool already has gets ``_2``, ``_3`` … after the prefix."""
        table: dict[str, GateToolRef] = {}
        ordered = sorted(self.registry.sessions.values(), key=lambda s: (s.info.started_at, s.key))
        slots = {s.key: self._slot(s) for s in ordered}  # every session, ready or not yet
        for session in ordered:
            if session.state != "ready" or not session.tools:
                continue
            slot = slots[session.key]
            ns = session.info.namespace
            prefix = ns if slot == 1 else f"{ns}_{slot}"
            for spec in session.tools:
                name, n = f"{prefix}_{spec.name}", 1
                while name in table:  # e.g. namespace "a_2" vs the second "a": never hide one
                    n += 1
                    name = f"{prefix}_{n}_{spec.name}"
                table[name] = GateToolRef(name, session, spec)
        return table

    def _slot(self, session: KernelSession) -> int:
        slots = self._ns_slots.setdefault(session.info.namespace, {})
        if session.key not in slots:
            live = {
                slots[s.key]
                for s in self.registry.sessions.values()
                if s.key in slots and s.info.namespace == session.info.namespace
            }
            slots[session.key] = next(n for n in range(1, len(live) + 2) if n not in live)
        return slots[session.key]

    async def call_tool(
        self, ref: GateToolRef, arguments: dict[str, Any]
    ) -> AsyncIterator[ToolProgress | ToolResult]:
        """Call a gate tool: its progress as it comes, then its result (always last).

        Every call has a deadline (the tool's own timeout, else :data:`DEFAULT_TOOL_TIMEOUT`):
        past it, or when the caller gives up, the tool is told to stop."""
        session = ref.session
        call = session.call_tool(ref.spec.name, arguments)
        self.bus.publish(ToolCallStarted(session.key, ref.mcp_name, call.call_id))
        started = time.monotonic()
        timeout = ref.spec.timeout if ref.spec.timeout is not None else DEFAULT_TOOL_TIMEOUT
        last_note = 0.0
        result: ToolResult | None = None
        try:
            while result is None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(call.result), PROGRESS_INTERVAL)
                while not call.progress.empty():
                    yield call.progress.get_nowait()
                now = time.monotonic()
                if call.result.done():
                    result = call.result.result()
                elif now - started > timeout:
                    session.cancel_call(call.call_id)
                    session.calls.pop(call.call_id, None)
                    result = _error_result(
                        call.call_id,
                        f"{ref.mcp_name} timed out after {timeout:g} s; the tool was told to "
                        "stop (kaimon_kernel.is_cancelled() is now true in it)",
                    )
                elif (
                    session.subshell_id is None
                    and session.activity.busy_since is not None
                    and now - last_note >= WAIT_NOTE_INTERVAL
                ):
                    last_note = now
                    yield ToolProgress(
                        call_id=call.call_id,
                        message=f"[waiting: the kernel is {session.activity.describe()}]",
                    )
        except (asyncio.CancelledError, GeneratorExit):
            session.cancel_call(call.call_id)
            session.calls.pop(call.call_id, None)
            raise
        finally:
            self.bus.publish(
                ToolCallFinished(
                    session.key,
                    ref.mcp_name,
                    call.call_id,
                    result is None or result.is_error,
                    time.monotonic() - started,
                )
            )
        yield result


def _followed_by_another(job: Job, me: ProcessIdentity) -> bool:
    if not job.server:
        return False
    try:
        server = ProcessIdentity.model_validate_json(job.server)
    except ValueError:
        return False
    return server != me and server.alive()


def _error_result(call_id: str, text: str) -> ToolResult:
    return ToolResult(call_id=call_id, content=[TextBlock(text=text)], is_error=True)
