"""The MCP tool surface: built on the SDK's MCPServer, backed by :class:`Kaimon`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Annotated, Any, Literal

from mcp.server.lowlevel import NotificationOptions
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.subscriptions import InMemorySubscriptionBus, ToolsListChanged
from mcp.types import CallToolResult, ContentBlock, ImageContent, TextContent
from mcp.types import Tool as MCPTool
from pydantic import Field

from .. import __version__
from .._errors import KaimonError
from .._protocol import ImageBlock, ToolResult
from ._block_tools import add_block_tools
from ._core import JOB_STATUS, GateToolRef, Kaimon, TrackedEval
from ._instructions import INSTRUCTIONS
from ._jobs import Job
from ._kernel import Execution, KernelSession
from ._results import text_result
from ._session_tools import add_session_tools

__all__ = ["KaimonMCP", "build_mcp"]

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.25
WAIT_NOTE_INTERVAL = 5.0
# How long after a session is found a call to an unknown tool waits for it to connect; a
# session that never answers costs a wrong name nothing once this has passed.
CONNECT_GRACE = 5.0


def _result_content(execution: Execution, header: str = "") -> list[ContentBlock]:
    text = execution.capture.text()
    blocks: list[ContentBlock] = []
    body = header + (text if text else "")
    if execution.status == "ok" and not body.strip() and not execution.capture.images:
        body = "(no output)"
    if execution.reason:
        body += ("\n" if body and not body.endswith("\n") else "") + f"[{execution.reason}]"
    blocks.append(TextContent(type="text", text=body))
    blocks.extend(
        ImageContent(type="image", data=img.data, mime_type=img.mime)
        for img in execution.capture.images
    )
    return blocks


def _session_row(session: KernelSession) -> dict[str, Any]:
    info = session.info
    running = [e for e in session.executions.values() if not e.done.is_set()]
    if session.state in ("dead", "refused", "connecting", "closed"):
        status = session.state + (f": {session.problem}" if session.problem else "")
    elif running:
        first = running[0].code.strip().splitlines()[:1]
        status = (
            f"busy running the agent's {first[0][:60]!r} for {running[0].elapsed:.0f} s"
            if first
            else "busy (agent)"
        )
    else:
        status = session.activity.describe()
    return {
        "key": info.key,
        "label": info.label,
        "description": info.description,
        "namespace": info.namespace,
        "status": status,
        "pid": info.pid,
        "cwd": info.cwd,
        "python_version": info.python_version,
        "started_by": info.started_by,
        "started_at": info.started_at,
        "allow_mirror": info.allow_mirror,
        "allow_restart": info.allow_restart,
        "tools": len(session.tools),
        "concurrent_tools": session.subshell_id is not None,
    }


MODERN_PROTOCOL = "2026-07-28"


class KaimonMCP(MCPServer):
    """MCPServer plus the gate tools of every session, which come and go at run time."""

    def __init__(self, kaimon: Kaimon) -> None:
        self._bus = InMemorySubscriptionBus()
        super().__init__(
            name="kaimon",
            instructions=INSTRUCTIONS,
            version=__version__,
            log_level="WARNING",
            subscriptions=self._bus,
        )
        self.kaimon = kaimon
        self._legacy_sessions: set[Any] = set()
        self._fingerprint: tuple[Any, ...] = ()
        self._pending: set[asyncio.Task[None]] = set()
        kaimon.registry.listeners.append(self._tools_maybe_changed)
        # The older protocol learns of list_changed from the capability; MCPServer's
        # transports pass no NotificationOptions, so default it to announcing tool changes.
        lowlevel = self._lowlevel_server
        original = lowlevel.create_initialization_options

        def init_options(notification_options: Any = None, *args: Any, **kwargs: Any) -> Any:
            options = notification_options or NotificationOptions(tools_changed=True)
            return original(options, *args, **kwargs)

        lowlevel.create_initialization_options = init_options  # type: ignore[method-assign]

    # -- tools/list and tools/call -----------------------------------------------------------

    async def list_tools(self) -> list[MCPTool]:
        builtin = await super().list_tools()
        taken = {t.name for t in builtin}
        gate = [
            MCPTool(
                name=ref.mcp_name,
                description=ref.spec.description or f"{ref.spec.name} (session {ref.session.key})",
                input_schema=ref.spec.input_schema,
                output_schema=ref.spec.output_schema,
            )
            for ref in self.kaimon.gate_tools().values()
            if ref.mcp_name not in taken
        ]
        return [*builtin, *gate]

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        if self._tool_manager.get_tool(name) is None:
            ref = self.kaimon.gate_tools().get(name)
            if ref is None:
                ref = await self._gate_tool_once_connected(name)
            if ref is not None:
                return await _call_gate_tool(ref, arguments, context)
        return await super().call_tool(name, arguments, context)

    async def _gate_tool_once_connected(self, name: str) -> GateToolRef | None:
        """An unknown name may be a tool of a session that is still connecting (a server
        just started, a kernel just served): look again once every session has answered."""
        await self.kaimon.registry.scan()
        now = time.monotonic()
        waits = [
            s.wait_welcomed(s.discovered_at + CONNECT_GRACE - now)
            for s in self.kaimon.registry.sessions.values()
            if s.state in ("connecting", "ready") and s.discovered_at + CONNECT_GRACE > now
        ]
        await asyncio.gather(*waits)
        return self.kaimon.gate_tools().get(name)

    async def _handle_list_tools(self, ctx: Any, params: Any) -> Any:
        self._remember(ctx)
        return await super()._handle_list_tools(ctx, params)

    async def _handle_call_tool(self, ctx: Any, params: Any) -> Any:
        self._remember(ctx)
        return await super()._handle_call_tool(ctx, params)

    # -- tools/list_changed ------------------------------------------------------------------

    def _remember(self, ctx: Any) -> None:
        if getattr(ctx, "protocol_version", MODERN_PROTOCOL) != MODERN_PROTOCOL:
            self._legacy_sessions.add(ctx.session)

    def _tools_maybe_changed(self) -> None:
        fingerprint = tuple(
            sorted(
                (name, ref.session.key, ref.spec.model_dump_json())
                for name, ref in self.kaimon.gate_tools().items()
            )
        )
        if fingerprint == self._fingerprint:
            return
        self._fingerprint = fingerprint
        task = asyncio.get_running_loop().create_task(self._announce())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _announce(self) -> None:
        await self._bus.publish(ToolsListChanged())
        for session in list(self._legacy_sessions):
            try:
                await session.send_tool_list_changed()
            except Exception:  # that client is gone
                self._legacy_sessions.discard(session)


def _tool_result(result: ToolResult) -> CallToolResult:
    blocks: list[ContentBlock] = [
        ImageContent(type="image", data=b.data, mime_type=b.mime_type)
        if isinstance(b, ImageBlock)
        else TextContent(type="text", text=b.text)
        for b in result.content
    ]
    return CallToolResult(
        content=blocks, structured_content=result.structured, is_error=result.is_error
    )


async def _call_gate_tool(
    ref: GateToolRef, arguments: dict[str, Any], ctx: Context | None
) -> CallToolResult:
    session = ref.session
    try:
        call = session.call_tool(ref.spec.name, arguments)
    except KaimonError as err:
        return text_result(str(err), error=True)
    started = time.monotonic()
    timeout = ref.spec.timeout
    sent = 0
    last_note = 0.0
    try:
        while not call.result.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(call.result), PROGRESS_INTERVAL)
            messages = []
            while not call.progress.empty():
                messages.append(call.progress.get_nowait())
            now = time.monotonic()
            if (
                not messages
                and not call.result.done()
                and session.subshell_id is None
                and session.activity.busy_since is not None
                and now - last_note >= WAIT_NOTE_INTERVAL
            ):
                last_note = now
                note = f"[waiting: the kernel is {session.activity.describe()}]"
                with contextlib.suppress(Exception):
                    if ctx is not None:
                        await ctx.report_progress(sent, None, note)
            for update in messages:
                sent += 1
                with contextlib.suppress(Exception):
                    if ctx is not None:
                        await ctx.report_progress(
                            update.progress if update.progress is not None else sent,
                            update.total,
                            update.message,
                        )
            if timeout is not None and not call.result.done() and now - started > timeout:
                session.cancel_call(call.call_id)
                session.calls.pop(call.call_id, None)
                return text_result(
                    f"{ref.mcp_name} timed out after {timeout:g} s; the tool was told to stop "
                    "(kaimon_kernel.is_cancelled() is now true in it)",
                    error=True,
                )
    except asyncio.CancelledError:
        session.cancel_call(call.call_id)
        session.calls.pop(call.call_id, None)
        raise
    return _tool_result(call.result.result())


def build_mcp(kaimon: Kaimon) -> MCPServer:
    """The MCP server exposing ``kaimon``'s sessions and their gate tools."""
    mcp = KaimonMCP(kaimon)
    add_session_tools(mcp, kaimon)
    add_block_tools(mcp, kaimon)

    @mcp.tool()
    async def ex(
        code: Annotated[str, Field(description="Python code to run in the session's namespace")],
        ctx: Context,
        session: Annotated[
            str | None, Field(description="session key, label or namespace; optional with one")
        ] = None,
        quiet: Annotated[bool, Field(description="drop the last expression's value")] = False,
        max_output: Annotated[
            int, Field(ge=200, le=200_000, description="characters of output returned at most")
        ] = 6000,
    ) -> CallToolResult:
        """Run Python code in a live Jupyter kernel shared with the person.

        Returns what the person would see: stdout/stderr, the value of the last expression,
        errors with traceback, images. Output beyond max_output characters is cut to head and
        tail. Code running longer than the server's promote_after returns an eval_id; poll
        it with check_eval."""
        try:
            target, note = await kaimon.session_for(session)
            execution, block_id = await kaimon.record_block(
                target, code, lambda: target.execute(code, max_output=max_output, quiet=quiet)
            )
        except KaimonError as err:
            return text_result(str(err), error=True)
        try:
            header = note + ("\n" if note else "")
            promote_after = target.info.promote_after
            if promote_after is None:
                promote_after = kaimon.options.promote_after
            waited = await _follow(target, execution, ctx, promote_after)
        except asyncio.CancelledError:
            kaimon.track(target, execution)  # the client gave up; the code still runs
            raise
        if waited:
            header += f"[waited {waited:.1f} s for the kernel to finish other work first]\n"
        if not execution.done.is_set():
            tracked = kaimon.track(target, execution)
            if execution.started_at is None:
                header += (
                    f"[it has not started yet: the kernel is {target.activity.describe()}; "
                    "it runs when the kernel is free]\n"
                )
            return _promoted(tracked, header, promote_after)
        content = _result_content(execution, header)
        if execution.capture.cut:
            content.append(
                TextContent(
                    type="text",
                    text=f"[the whole output is block {block_id}: read_block(block_id="
                    f"{block_id!r}, offset=..., limit=...) pages through it]",
                )
            )
        return CallToolResult(content=content, is_error=execution.status != "ok")

    @mcp.tool()
    async def check_eval(
        eval_id: Annotated[str, Field(description="the id an ex reply gave, or a unique prefix")],
    ) -> CallToolResult:
        """Status, elapsed time, stash, last progress and output so far of a background job;
        the full result once it is done."""
        try:
            job = await kaimon.find_job(eval_id)
        except KaimonError as err:
            return text_result(str(err), error=True)
        view = _job_view(kaimon, job)
        return CallToolResult(
            content=[TextContent(type="text", text=view.pop("text"))],
            is_error=view["status"] in ("failed", "lost"),
            structured_content=view,
        )

    @mcp.tool()
    async def cancel_eval(
        eval_id: Annotated[str, Field(description="the job's id, or a unique prefix")],
    ) -> CallToolResult:
        """Cancel a background job: first the cooperative flag (kaimon_kernel.is_cancelled()),
        then, if the code has not stopped after the grace period, a real kernel interrupt."""
        try:
            job = await kaimon.find_job(eval_id)
        except KaimonError as err:
            return text_result(str(err), error=True)
        tracked = kaimon.evals.get(job.id)
        if tracked is None or tracked.execution.done.is_set():
            status = _job_view(kaimon, job)["status"]
            return text_result(
                f"job {job.id} is already {status}; nothing to cancel",
                structured={"eval_id": job.id, "status": status},
            )
        try:
            how = await kaimon.cancel(tracked)
        except KaimonError as err:
            return text_result(f"cancelling {job.id} failed: {err}", error=True)
        view = _job_view(kaimon, await kaimon.jobs.get(job.id) or job)
        return text_result(f"job {job.id} cancelled ({how}).\n" + view.pop("text"), structured=view)

    @mcp.tool()
    async def list_jobs(
        status: Annotated[
            Literal["running", "completed", "failed", "cancelled", "lost"] | None,
            Field(description="only jobs with this status"),
        ] = None,
        limit: Annotated[int, Field(ge=1, le=500)] = 20,
        stats: Annotated[bool, Field(description="add counts per status and durations")] = False,
    ) -> CallToolResult:
        """Background jobs (evaluations that outlived their ex call), newest first."""
        jobs = await kaimon.jobs.list(status, limit)
        rows = []
        for job in jobs:
            first = (job.code.strip().splitlines() or [""])[0][:60]
            rows.append(
                {
                    "eval_id": job.id,
                    "session": job.session_key,
                    "status": job.status,
                    "elapsed_s": round(job.elapsed, 1),
                    "code": first,
                }
            )
        lines = [
            f"{r['eval_id']}  {r['status']:9}  {r['elapsed_s']:>8.1f} s  session "
            f"{r['session']}  {r['code']!r}"
            for r in rows
        ] or ["no jobs"]
        structured: dict[str, Any] = {"jobs": rows}
        if stats:
            structured["stats"] = await kaimon.jobs.stats()
            lines.append(f"stats: {structured['stats']}")
        return text_result("\n".join(lines), structured=structured)

    @mcp.tool(structured_output=True)
    async def list_sessions() -> CallToolResult:
        """The kernels shared with agents: key, label, status, pid, cwd, Python version."""
        sessions = list(kaimon.registry.sessions.values())
        # a session found a moment ago is still connecting: give it a moment to answer
        await asyncio.gather(*(s.wait_ready(3) for s in sessions))
        rows = [_session_row(s) for s in sessions]
        if not rows:
            text = (
                "No kernel is served. The person can run `%load_ext kaimon_kernel` then "
                "`%kaimon serve` in a notebook"
                + (
                    "; or call ex and a kernel is started for you."
                    if kaimon.options.auto_start
                    else "."
                )
            )
        else:
            text = "\n".join(
                f"{r['key']}  label={r['label']!r}  {r['status']}  pid={r['pid']}  "
                f"python {r['python_version']}  started_by={r['started_by']}  cwd={r['cwd']}"
                + (f"\n    {r['description']}" if r["description"] else "")
                for r in rows
            )
        return text_result(text, structured={"sessions": rows})

    @mcp.tool()
    async def usage_instructions() -> CallToolResult:
        """How to work with kaimon sessions: read this first."""
        return text_result(INSTRUCTIONS)

    return mcp


def _job_view(kaimon: Kaimon, job: Job) -> dict[str, Any]:
    """A job as check_eval shows it: live from memory when this server runs it."""
    tracked = kaimon.evals.get(job.id)
    status, stash, last_progress = job.status, job.stash, job.last_progress
    elapsed, output, reason = job.elapsed, job.output, job.reason
    since = time.time() - job.last_output_at if job.last_output_at else None
    if tracked is not None:
        ex = tracked.execution
        done = ex.done.is_set()
        status = JOB_STATUS.get(ex.status, "failed") if done else "running"
        stash, last_progress = ex.stash, ex.last_progress
        elapsed, output, reason = ex.elapsed, ex.capture.text(), ex.reason
        if ex.reattached:  # started under an earlier server: count from the job's start
            end = time.time() - (time.monotonic() - ex.finished_at if ex.finished_at else 0.0)
            elapsed = end - job.created_at
        since = time.monotonic() - ex.last_output_at if ex.last_output_at else None
    lines = [
        f"eval_id: {job.id}",
        f"session: {job.session_key}",
        f"status: {status}",
        f"elapsed: {elapsed:.1f} s"
        + (f", last output {since:.0f} s ago" if since is not None else ", no output yet"),
    ]
    if reason:
        lines.append(f"reason: {reason}")
    if last_progress:
        lines.append(f"progress: {last_progress}")
    if stash:
        lines.append("stash:")
        lines.extend(f"  {k} = {v}" for k, v in stash.items())
    lines.append("--- output ---" if status != "running" else "--- output so far ---")
    lines.append(output or "(none)")
    return {
        "text": "\n".join(lines),
        "eval_id": job.id,
        "session": job.session_key,
        "status": status,
        "elapsed_s": round(elapsed, 3),
        "seconds_since_output": None if since is None else round(since, 1),
        "stash": stash,
        "last_progress": last_progress,
    }


def _promoted(tracked: TrackedEval, header: str, after: float) -> CallToolResult:
    execution = tracked.execution
    text = execution.capture.text()
    body = (
        f"{header}[still running after {after:g} s; it continues in the kernel. "
        f"Poll with check_eval(eval_id={tracked.eval_id!r}).]\n"
        f"eval_id: {tracked.eval_id}\n" + (f"--- output so far ---\n{text}" if text else "")
    )
    return text_result(body, structured={"eval_id": tracked.eval_id, "status": "running"})


async def _follow(
    session: KernelSession, execution: Execution, ctx: Context, promote_after: float
) -> float:
    """Stream ``execution``'s output as progress until it ends or ``promote_after`` passes.

    Returns how long the code waited for the kernel before it started (0 if it did not).
    """
    deadline = time.monotonic() + promote_after if promote_after > 0 else None
    sent = 0
    last_wait_note = 0.0
    while not execution.done.is_set():
        if deadline is not None and time.monotonic() >= deadline:
            break
        timeout = PROGRESS_INTERVAL
        if deadline is not None:
            timeout = min(timeout, max(deadline - time.monotonic(), 0.0))
        # Wake on completion only; output is batched per interval, so short code sends nothing.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(execution.done.wait(), timeout)
        if execution.done.is_set():
            break
        message = execution.capture.take_new()
        if execution.new_progress:
            progress_text = "\n".join(execution.new_progress)
            execution.new_progress.clear()
            message = f"{message}\n[progress] {progress_text}" if message else progress_text
        if not message and execution.started_at is None:
            now = time.monotonic()
            if now - execution.sent_at > 1.0 and now - last_wait_note >= WAIT_NOTE_INTERVAL:
                last_wait_note = now
                busy = session.activity.describe()
                message = (
                    f"[waiting: the kernel is {busy}; this code starts when it is free]"
                    if busy != "idle"
                    else "[waiting: the kernel has not started this code yet; it is running "
                    "another client's request]"
                )
        if message:
            sent += 1
            with contextlib.suppress(Exception):
                await ctx.report_progress(sent, None, message)
    if execution.started_at is None:
        return 0.0
    waited = execution.started_at - execution.sent_at
    return waited if waited > 1.0 else 0.0
