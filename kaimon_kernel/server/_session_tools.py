"""Tools that manage sessions: start, restart/shutdown/interrupt, labels."""

# No `from __future__ import annotations`: the SDK resolves `Resolve(ask_the_person)` from
# the evaluated annotation, and ask_the_person is a closure over the server's state.
import asyncio
import time
from pathlib import Path
from typing import Annotated, Literal

from mcp.server.mcpserver import (
    AcceptedElicitation,
    Context,
    Elicit,
    ElicitationResult,
    MCPServer,
    Resolve,
)
from mcp.types import CallToolResult
from pydantic import BaseModel, Field

from .._config import add_project, allowed_projects
from .._errors import KaimonError
from ._core import Kaimon
from ._kernel import KernelSession
from ._launcher import project_python
from ._results import text_result

__all__ = ["add_session_tools"]

RESTART_TIMEOUT = 60.0


def _allowed(kaimon: Kaimon) -> list[Path]:
    return [Path(kaimon.options.cwd).resolve(), *(p.resolve() for p in allowed_projects())]


def _is_within(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _project(kaimon: Kaimon, project_path: str) -> Path:
    project = Path(project_path).expanduser()
    if not project.is_absolute():
        project = Path(kaimon.options.cwd) / project
    return project.resolve()


class AllowProject(BaseModel):
    """The person's answer when an agent asks to start a kernel outside the allowed projects."""

    allow: Literal["once", "always"] = Field(
        description="once: start this kernel only; always: also add the directory to the "
        "allowed projects (as `kaimon projects add` does)"
    )


def add_session_tools(mcp: MCPServer, kaimon: Kaimon) -> None:
    async def ask_the_person(
        project_path: str | None, ctx: Context
    ) -> Elicit[AllowProject] | AllowProject | None:
        """Ask through the client (MCP elicitation) when the directory is not allowed yet.

        None means there is nothing to ask, or no way to ask: the tool then decides alone.
        """
        if project_path is None:
            return None
        project = _project(kaimon, project_path)
        if not project.is_dir() or _is_within(project, _allowed(kaimon)):
            return None
        asks = ctx.client_capabilities.elicitation if ctx.client_capabilities else None
        # as the SDK counts it: a bare `elicitation: {}` is form support, url-only is not
        if asks is None or (asks.form is None and asks.url is not None):
            return None
        return Elicit(
            f"An agent asks to start a Python kernel in {project}, which is not one of "
            "kaimon's allowed projects. Allow it?",
            AllowProject,
        )

    @mcp.tool()
    async def start_session(
        permission: Annotated[ElicitationResult[AllowProject], Resolve(ask_the_person)],
        project_path: Annotated[
            str | None, Field(description="an allowed project directory; omit to list them")
        ] = None,
        name: Annotated[str | None, Field(description="a label for the new session")] = None,
    ) -> CallToolResult:
        """Start a new kernel with the gate served, in an allowed project directory (using
        the project's .venv when it has one with ipykernel and kaimon-kernel). Where the
        client can ask the person, a directory not allowed yet is put to them."""
        roots = _allowed(kaimon)
        listing = "\n".join(f"  {r}" for r in roots)
        if project_path is None:
            return text_result(
                f"Projects where you may start a session:\n{listing}",
                structured={"projects": [str(r) for r in roots]},
            )
        project = _project(kaimon, project_path)
        if not project.is_dir():
            return text_result(f"{project} is not a directory", error=True)
        if not _is_within(project, roots):
            answer = permission.data if isinstance(permission, AcceptedElicitation) else None
            if isinstance(answer, AllowProject):
                if answer.allow == "always":
                    add_project(str(project))
            else:
                answered = {"decline": "The person declined", "cancel": "The person dismissed"}
                said = answered.get(permission.action)
                return text_result(
                    (f"{said} the request to allow {project}. " if said else "")
                    + f"{project} is not an allowed project. The person can allow it with "
                    f"`kaimon projects add {project}` (then call start_session again). "
                    f"Allowed:\n{listing}",
                    error=True,
                )
        python, why = project_python(project)
        try:
            session = await kaimon.launcher.start(str(project), name=name, python=python)
        except KaimonError as err:
            return text_result(f"the kernel did not start: {err}", error=True)
        used = why if python else f"the server's Python ({kaimon.launcher.python}); {why}"
        return text_result(
            f"Started session {session.key} (label {session.info.label!r}) in {project}, "
            f"Python {session.info.python_version} from {used}. Pass session="
            f"{session.key!r} to ex.",
            structured={"key": session.key, "label": session.info.label, "python": used},
        )

    @mcp.tool()
    async def manage_repl(
        command: Annotated[Literal["restart", "shutdown", "interrupt"], Field()],
        session: Annotated[str | None, Field(description="key, label or namespace")] = None,
    ) -> CallToolResult:
        """Restart (fresh kernel, same session key and label: ALL state is lost), shut down,
        or interrupt a session's kernel."""
        try:
            target = await kaimon.resolve(session)
            target.usable()
            if command == "interrupt":
                how = await target.interrupt()
                return text_result(f"interrupted session {target.key} ({how}); its state is kept")
            if not target.info.allow_restart:
                return text_result(
                    f"session {target.key} was served with allow_restart=False: the person "
                    f"chose that agents may not {command} it. Ask the person to do it.",
                    error=True,
                )
            if command == "restart":
                return await _restart(kaimon, target)
            return await _shutdown(kaimon, target)
        except KaimonError as err:
            return text_result(str(err), error=True)

    @mcp.tool()
    async def set_option(
        mirror: Annotated[
            bool,
            Field(
                description="show the agent's work live in the person's "
                "notebook (the %kaimon serve cell)"
            ),
        ],
        session: Annotated[str | None, Field(description="key, label or namespace")] = None,
    ) -> CallToolResult:
        """Turn the live view of your work in the person's notebook on or off."""
        try:
            target = await kaimon.resolve(session)
            if not target.info.allow_mirror:
                return text_result(
                    f"session {target.key} was served with allow_mirror=False: "
                    "the person chose not to mirror; leave it off.",
                    error=True,
                )
            target.set_mirror(mirror)
        except KaimonError as err:
            return text_result(str(err), error=True)
        return text_result(f"live view {'on' if mirror else 'off'} in session {target.key}")

    @mcp.tool()
    async def set_session_info(
        session: Annotated[str | None, Field(description="key, label or namespace")] = None,
        label: Annotated[str | None, Field(description="a short name to call it by")] = None,
        description: Annotated[str | None, Field(description="what it is for")] = None,
    ) -> CallToolResult:
        """Give a session a label and a description (what it is for), shown by list_sessions.
        An empty label or description clears it (the label falls back to the namespace)."""
        if label is None and description is None:
            return text_result("give a label, a description, or both", error=True)
        try:
            target = await kaimon.resolve(session)
            info = await target.set_info(label, description)
        except KaimonError as err:
            return text_result(str(err), error=True)
        return text_result(
            f"session {target.key}: label {info.label!r}, description {info.description!r}"
        )


async def _wait_restarted(kaimon: Kaimon, key: str, old_pid: int) -> KernelSession | None:
    deadline = time.monotonic() + RESTART_TIMEOUT
    while time.monotonic() < deadline:
        await kaimon.registry.scan()
        session = kaimon.registry.sessions.get(key)
        if session is not None and session.info.pid != old_pid:
            await session.wait_ready(10)
            return session
        await asyncio.sleep(0.1)
    return None


GONE = (
    "All previous state is gone: variables, imports, open files and running code. "
    "Re-run whatever setup you need."
)


async def _restart(kaimon: Kaimon, target: KernelSession) -> CallToolResult:
    key, old_pid = target.key, target.info.pid
    if key in kaimon.launcher.owned:
        fresh = await kaimon.launcher.restart(key)
    else:
        # The kernel's owner (a Jupyter server) restarts it; the gate serves again at start.
        await target.control_request("shutdown_request", {"restart": True}, timeout=10)
        fresh = await _wait_restarted(kaimon, key, old_pid)
        if fresh is None:
            return text_result(
                f"session {key}'s kernel shut down, but its owner did not start it again within "
                f"{RESTART_TIMEOUT:g} s (a Jupyter server restarts its kernels; a plain console "
                "does not). Start a new session with start_session.",
                error=True,
            )
    return text_result(
        f"Restarted session {key} (label {fresh.info.label!r}): a fresh kernel, "
        f"pid {fresh.info.pid}. {GONE}",
        structured={"key": key, "pid": fresh.info.pid},
    )


async def _shutdown(kaimon: Kaimon, target: KernelSession) -> CallToolResult:
    key = target.key
    if key in kaimon.launcher.owned:
        await kaimon.launcher.shutdown(key)
        return text_result(f"shut down session {key}; it is gone")
    await target.control_request("shutdown_request", {"restart": False}, timeout=10)
    return text_result(
        f"asked session {key}'s kernel to shut down. Its owner (e.g. JupyterLab) may start a "
        "fresh kernel in its place; if so, that kernel is served again with the same key."
    )
