"""The MCP tools that run code and follow jobs: ex, check_eval, cancel_eval, list_jobs,
list_sessions, usage_instructions. They call the core and render its results."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, ContentBlock, ImageContent, TextContent
from pydantic import Field

from ._core import JOB_STATUS, Kaimon, TrackedEval
from ._execution import Execution
from ._instructions import INSTRUCTIONS
from ._jobs import Job
from ._kernel import KernelSession
from ._results import text_result

__all__ = ["add_exec_tools"]


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
        "server_url": info.server_url,
        "notebook_path": info.notebook_path,
    }


def add_exec_tools(mcp: MCPServer, kaimon: Kaimon) -> None:

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
        run = await kaimon.execute(code, session=session, max_output=max_output, quiet=quiet)
        execution, target = run.execution, run.session
        promote_after = kaimon.promote_after(target)
        try:
            sent = 0
            async for message in kaimon.follow(run, promote_after, max_progress=max_output):
                sent += 1
                with contextlib.suppress(Exception):
                    await ctx.report_progress(sent, None, message)
        except asyncio.CancelledError:
            if not execution.done.is_set():
                kaimon.track(target, execution)  # the client gave up; the code still runs
            raise
        header = run.note + ("\n" if run.note else "")
        if run.waited:
            header += f"[waited {run.waited:.1f} s for the kernel to finish other work first]\n"
        if not execution.done.is_set():
            tracked = await kaimon.promote(target, execution)
            if execution.started_at is None:
                header += (
                    f"[it has not started yet: the kernel is {target.activity.describe()}; "
                    "it runs when the kernel is free]\n"
                )
            return _promoted(tracked, header, promote_after)
        content = _result_content(execution, header)
        notes = []
        if execution.capture.cut:
            notes.append(
                f"[the whole output is block {run.block_id}: read_block(block_id="
                f"{run.block_id!r}, offset=..., limit=...) pages through it]"
            )
        if run.store_problem:
            notes.append(f"[kaimon: {run.store_problem}]")
        content.extend(TextContent(type="text", text=note) for note in notes)
        return CallToolResult(content=content, is_error=execution.status != "ok")

    @mcp.tool()
    async def check_eval(
        eval_id: Annotated[str, Field(description="the id an ex reply gave, or a unique prefix")],
    ) -> CallToolResult:
        """Status, elapsed time, stash, last progress and output so far of a background job;
        the full result once it is done."""
        job = await kaimon.find_job(eval_id)
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
        job = await kaimon.find_job(eval_id)
        tracked = kaimon.evals.get(job.id)
        if tracked is None or tracked.execution.done.is_set():
            status = _job_view(kaimon, job)["status"]
            return text_result(
                f"job {job.id} is already {status}; nothing to cancel",
                structured={"eval_id": job.id, "status": status},
            )
        how = await kaimon.cancel(tracked)
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
                + (f"\n    on {r['server_url']}" if r["server_url"] else "")
                + (f"  notebook {r['notebook_path']}" if r["notebook_path"] else "")
                + (f"\n    {r['description']}" if r["description"] else "")
                for r in rows
            )
        return text_result(text, structured={"sessions": rows})

    @mcp.tool()
    async def usage_instructions() -> CallToolResult:
        """How to work with kaimon sessions: read this first."""
        return text_result(INSTRUCTIONS)


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
