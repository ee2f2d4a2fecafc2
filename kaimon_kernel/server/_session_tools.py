"""Tools that manage sessions: start, restart/shutdown/interrupt, labels."""

# No `from __future__ import annotations`: the SDK resolves `Resolve(ask_the_person)` from
# the evaluated annotation, and ask_the_person is a closure over the server's state.
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

from .._config import add_project
from .._errors import KaimonError
from ._core import Kaimon
from ._launcher import project_python
from ._policy import (
    BadPath,
    allowed_roots,
    clean_path,
    folder_problem,
    is_within,
    relative_base,
    too_wide,
)
from ._results import text_result
from ._surface import changes
from .providers import JupyterServerProvider

__all__ = ["add_session_tools"]


def _relative_base(kaimon: Kaimon) -> Path:
    served = [
        s.info.cwd for s in kaimon.registry.sessions.values() if s.state in ("connecting", "ready")
    ]
    return relative_base(served, kaimon.options.cwd)


def _project(kaimon: Kaimon, project_path: str) -> Path:
    return clean_path(project_path, lambda: _relative_base(kaimon), "project_path")


def _roots_listing(kaimon: Kaimon, roots: list[Path]) -> str:
    listing = "\n".join(f"  {r}" for r in roots) or "  (none yet)"
    why = too_wide(kaimon.options.cwd)
    if why:
        listing += (
            f"\n(the server's directory, {Path(kaimon.options.cwd).resolve()}, is {why}: "
            "not allowed unless the person adds it)"
        )
    return listing


class AllowProject(BaseModel):
    """The person's answer when an agent asks to start a kernel outside the allowed projects."""

    allow: Literal["once", "always"] = Field(
        description="once: start this kernel only; always: also add the directory to the "
        "allowed projects (as `kaimon projects add` does)"
    )


def add_session_tools(mcp: MCPServer, kaimon: Kaimon) -> None:
    async def ask_the_person(
        project_path: str | None, ctx: Context, server: str | None = None
    ) -> Elicit[AllowProject] | AllowProject | None:
        """Ask through the client (MCP elicitation) when the directory is not allowed yet.

        None means there is nothing to ask, or no way to ask: the tool then decides alone.
        """
        if project_path is None or server is not None:  # a Jupyter server's: kaimon.json
            return None
        try:
            project = _project(kaimon, project_path)
            if folder_problem(project) or is_within(project, allowed_roots(kaimon.options.cwd)):
                return None
        except KaimonError:  # the tool itself says what is wrong
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

    @mcp.tool(annotations=changes(destructive=False))
    async def start_session(
        permission: Annotated[ElicitationResult[AllowProject], Resolve(ask_the_person)],
        project_path: str | None = None,
        name: Annotated[str | None, Field(description="label")] = None,
        server: Annotated[str | None, Field(description="Jupyter Server URL")] = None,
    ) -> CallToolResult:
        """Start a kernel in an allowed project (no project_path: list them)."""
        if server is not None:
            return await _start_remote(kaimon, server, project_path, name)
        try:
            roots = allowed_roots(kaimon.options.cwd)
            listing = _roots_listing(kaimon, roots)
            if project_path is None:
                return text_result(
                    f"Projects where you may start a session:\n{listing}",
                    structured={"projects": [str(r) for r in roots]},
                )
            project = _project(kaimon, project_path)
        except BadPath as err:
            return text_result(f"{err}. Allowed projects:\n{listing}", error=True)
        except KaimonError as err:  # e.g. a bad kaimon.json
            return text_result(str(err), error=True)
        problem = folder_problem(project)
        if problem:
            return text_result(problem, error=True)
        if not is_within(project, roots):
            answer = permission.data if isinstance(permission, AcceptedElicitation) else None
            if isinstance(answer, AllowProject):
                if answer.allow == "always":
                    try:
                        add_project(str(project))
                    except KaimonError as err:
                        return text_result(f"could not add {project}: {err}", error=True)
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
        # Only now, inside an allowed project: probing the .venv runs the project's Python.
        python, why = await project_python(project)
        session = await kaimon.start_session(str(project), name=name, python=python)
        used = why if python else f"the server's Python ({kaimon.registry.local.python}); {why}"
        return text_result(
            f"Started session {session.key} (label {session.info.label!r}) in {project}, "
            f"Python {session.info.python_version} from {used}. Pass session="
            f"{session.key!r} to ex.",
            structured={"key": session.key, "label": session.info.label, "python": used},
        )

    @mcp.tool(annotations=changes(destructive=True))
    async def manage_repl(
        command: Literal["restart", "shutdown", "interrupt"],
        session: str | None = None,
    ) -> CallToolResult:
        """Restart (ALL state lost), shut down or interrupt a kernel."""
        target = await kaimon.resolve(session)
        target.usable()
        if command == "interrupt":
            how = await target.interrupt()
            return text_result(f"interrupted session {target.key} ({how}); its state is kept")
        if command == "restart":
            fresh = await kaimon.restart(target)
            return text_result(
                f"Restarted session {fresh.key} (label {fresh.info.label!r}): a fresh kernel, "
                f"pid {fresh.info.pid}. {GONE}",
                structured={"key": fresh.key, "pid": fresh.info.pid},
            )
        return text_result(await kaimon.shutdown(target))

    @mcp.tool(annotations=changes(destructive=False, idempotent=True))
    async def set_option(
        mirror: bool,
        session: str | None = None,
    ) -> CallToolResult:
        """Mirror your work in the person's notebook, or stop."""
        try:
            target = await kaimon.resolve(session)
            if not target.info.allow_mirror:
                return text_result(
                    f"session {target.key} was served with allow_mirror=False: "
                    "the person chose not to mirror; leave it off.",
                    error=True,
                )
            await target.set_mirror(mirror)
        except KaimonError as err:
            return text_result(str(err), error=True)
        return text_result(f"live view {'on' if mirror else 'off'} in session {target.key}")

    @mcp.tool(annotations=changes(destructive=False, idempotent=True))
    async def set_session_info(
        session: str | None = None,
        label: str | None = None,
        description: str | None = None,
    ) -> CallToolResult:
        """Label and describe a session."""
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


async def _start_remote(
    kaimon: Kaimon, server: str, project_path: str | None, name: str | None
) -> CallToolResult:
    remotes = [p for p in kaimon.registry.providers if isinstance(p, JupyterServerProvider)]
    wanted = server.rstrip("/") + "/"
    provider = next((p for p in remotes if p.api.url == wanted), None)
    if provider is None:
        known = (
            "\n".join(f"  {p.api.url}" for p in remotes) or "  (none: kaimon serve --jupyter URL)"
        )
        return text_result(
            f"kaimon serves no Jupyter server {server!r}. It serves:\n{known}", error=True
        )
    try:
        path = provider.allowed_path(project_path)
        session = await kaimon.start_session(path, name=name, provider=provider)
    except KaimonError as err:
        return text_result(str(err), error=True)
    return text_result(
        f"Started session {session.key} (label {session.info.label!r}) on {provider.api.url} "
        f"in {path or 'its root'}, Python {session.info.python_version}. Pass session="
        f"{session.key!r} to ex.",
        structured={"key": session.key, "label": session.info.label, "server": provider.api.url},
    )


GONE = (
    "All previous state is gone: variables, imports, open files and running code. "
    "Re-run whatever setup you need."
)
