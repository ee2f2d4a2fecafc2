"""The MCP tools that run code and follow jobs: ex, check_eval, cancel_eval, list_jobs,
list_sessions, usage_instructions. They call the core and render its results."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, ContentBlock, TextContent, ToolAnnotations
from pydantic import Field

from .._settings import ImagesSetting
from ._core import JOB_STATUS, Kaimon, TrackedEval
from ._execution import Execution
from ._heartbeat import HEARTBEAT, Heartbeat
from ._instructions import USAGE, watched
from ._jobs import Job
from ._kernel import KernelSession
from ._results import image_content, text_result
from ._surface import READ_ONLY, changes

__all__ = ["add_exec_tools", "session_row"]


def _result_content(
    execution: Execution,
    header: str = "",
    *,
    block_id: str | None = None,
    images: ImagesSetting | None = None,
    links: bool | None = None,
) -> list[ContentBlock]:
    text = execution.capture.text()
    blocks: list[ContentBlock] = []
    body = header + (text if text else "")
    if execution.status == "ok" and not body.strip() and not execution.capture.images:
        body = "(no output)"
    if execution.reason:
        body += ("\n" if body and not body.endswith("\n") else "") + f"[{execution.reason}]"
    if body:  # an image-only result is just its images
        blocks.append(TextContent(type="text", text=body))
    blocks.extend(image_content(execution.capture.images, block_id, images, links))
    return blocks


def session_row(session: KernelSession) -> dict[str, Any]:
    """A session as list_sessions and its resource show it."""
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


def add_exec_tools(
    mcp: MCPServer,
    kaimon: Kaimon,
    image_setting: ImagesSetting | None = None,
    heartbeat: float = HEARTBEAT,
) -> None:

    @mcp.tool(annotations=ToolAnnotations(open_world_hint=True))
    async def ex(
        code: str,
        ctx: Context,
        session: Annotated[str | None, Field(description="key, label or namespace")] = None,
        quiet: Annotated[bool, Field(description="drop the last value")] = False,
        max_output: Annotated[int, Field(ge=200, le=200_000)] = 6000,
        images: Literal["inline", "link"] | None = None,
    ) -> CallToolResult:
        """Run Python in the kernel shared with the person. Read usage_instructions first."""
        run = await kaimon.execute(code, session=session, max_output=max_output, quiet=quiet)
        execution, target = run.execution, run.session
        promote_after = kaimon.promote_after(target)
        try:
            async with Heartbeat(ctx, heartbeat) as beat:
                follow = kaimon.follow(run, promote_after, max_progress=max_output)
                async for message in follow:
                    await beat.report(message)
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
        content = _result_content(
            execution,
            header,
            block_id=run.block_id,
            images=image_setting,
            links=None if images is None else images == "link",
        )
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

    @mcp.tool(annotations=READ_ONLY)
    async def check_eval(
        eval_id: str,
    ) -> CallToolResult:
        """A background job's status and output."""
        job = await kaimon.find_job(eval_id)
        view = _job_view(kaimon, job)
        return CallToolResult(
            content=[TextContent(type="text", text=view.pop("text"))],
            is_error=view["status"] in ("failed", "lost"),
            structured_content=view,
        )

    @mcp.tool(annotations=changes(destructive=False, idempotent=True))
    async def cancel_eval(
        eval_id: str,
    ) -> CallToolResult:
        """Stop a background job."""
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

    @mcp.tool(annotations=READ_ONLY)
    async def list_jobs(
        status: Literal["running", "completed", "failed", "cancelled", "lost"] | None = None,
        limit: Annotated[int, Field(ge=1, le=500)] = 20,
        stats: bool = False,
    ) -> CallToolResult:
        """Background jobs (eval_ids)."""
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

    @mcp.tool(structured_output=True, annotations=READ_ONLY)
    async def list_sessions() -> CallToolResult:
        """The shared kernels (sessions) and their status."""
        sessions = list(kaimon.registry.sessions.values())
        # a session found a moment ago is still connecting: give it a moment to answer
        await asyncio.gather(*(s.wait_ready(3) for s in sessions))
        rows = [session_row(s) for s in sessions]
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
        text += watched(kaimon.registry.providers)
        return text_result(text, structured={"sessions": rows})

    @mcp.tool(annotations=READ_ONLY)
    async def usage_instructions() -> CallToolResult:
        """How to use kaimon: read first."""
        return text_result(USAGE + watched(kaimon.registry.providers))


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
