"""Agent tools for extensions: ``extension_info`` and ``manage_extension``.

Any server answers them: status comes from the supervising server's state file, start/stop/
restart go to it as requests, enable/disable change the registry (which it follows)."""

# No `from __future__ import annotations`: the SDK reads the evaluated annotations.
import time
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult
from pydantic import Field

from ..extensions import Registry, extensions, find_extension, read_state, send_request
from ..extensions._process import log_file
from ..extensions._registry import Extension, RegistryError, registry_file, registry_stamp
from ..extensions._supervisor import ExtensionStatus
from ._core import Kaimon
from ._results import text_result
from ._surface import READ_ONLY, changes

__all__ = ["EXTENSION_TOOLS", "add_extension_tools", "extension_tools_listed"]

EXTENSION_TOOLS = frozenset({"extension_info", "manage_extension"})


#: The registry file's (path, stamp) and what extension_tools_listed said for it.
_listed: tuple[object, bool] | None = None


def extension_tools_listed() -> bool:
    """Whether the extension tools are worth their place in tools/list: an extension is
    registered (or the registry has a problem to report). They stay callable either way; an
    extension that comes is a session that comes, which re-lists the tools."""
    global _listed
    path = registry_file()
    stamp = (path, registry_stamp(path))
    if _listed is None or _listed[0] != stamp:  # read again only when the file changed
        registry = Registry(path)
        _listed = (stamp, bool(registry.entries or registry.problem))
    return _listed[1]


def _uptime(status: ExtensionStatus | None) -> float | None:
    if status is None or status.state != "running" or status.started_at is None:
        return None
    return round(time.time() - status.started_at, 1)


def _tools_of(kaimon: Kaimon, ext: Extension) -> list[Any]:
    return [ref for ref in kaimon.gate_tools().values() if ref.session.key == ext.key]


def _summary(kaimon: Kaimon, ext: Extension, status: ExtensionStatus | None) -> dict[str, Any]:
    return {
        "name": ext.name,
        "state": status.state if status else "stopped",
        "enabled": ext.entry.enabled,
        "auto_start": ext.entry.auto_start,
        "uptime": _uptime(status),
        "restarts": status.restarts if status else 0,
        "tools": [ref.mcp_name for ref in _tools_of(kaimon, ext)],
    }


def add_extension_tools(mcp: MCPServer, kaimon: Kaimon) -> None:
    @mcp.tool(annotations=READ_ONLY)
    async def extension_info(
        name: Annotated[
            str | None, Field(description="an extension's name; omit to list them all")
        ] = None,
    ) -> CallToolResult:
        """Extensions (supervised processes that bring their own tools): every one with its
        status, uptime and tool names; with a name, its description, project, tools with
        their parameter schemas, and recent errors."""
        registry = Registry()
        state = read_state()
        statuses = state.extensions if state else {}
        supervisor = (
            f"supervised by the kaimon server pid {state.supervisor.pid}"
            if state
            else "no kaimon server supervises extensions right now"
        )
        if name is None:
            found = extensions(registry)
            rows = [_summary(kaimon, e, statuses.get(e.name)) for e in found]
            lines = [f"Extensions ({supervisor}):"]
            for row in rows:
                up = f" for {row['uptime']:g} s" if row["uptime"] is not None else ""
                flags = "" if row["enabled"] else " (disabled)"
                tools = ", ".join(row["tools"]) or "no tools listed"
                lines.append(f"  {row['name']}: {row['state']}{up}{flags}; tools: {tools}")
            if not rows:
                lines.append("  none registered (the person adds one: kaimon extensions add PATH)")
            if registry.problem:
                lines.append(f"Problem: {registry.problem}")
            return text_result(
                "\n".join(lines),
                structured={"extensions": rows, "problem": registry.problem},
            )
        try:
            ext = find_extension(registry, name)
        except RegistryError as err:
            return text_result(str(err), error=True)
        status = statuses.get(ext.name)
        info = _summary(kaimon, ext, status)
        manifest = ext.manifest
        tools = [
            {
                "name": ref.mcp_name,
                "description": ref.spec.description,
                "input_schema": ref.spec.input_schema,
            }
            for ref in _tools_of(kaimon, ext)
        ]
        info.update(
            description=manifest.description if manifest else "",
            panel=manifest.panel if manifest else None,
            project_path=ext.entry.project_path,
            session=ext.key,
            pid=status.pid if status else None,
            python=manifest.interpreter() if manifest else None,
            tools=tools,
            errors=(status.errors if status else "") or (ext.problem or ""),
            next_start_in=(
                round(status.next_start_at - time.time(), 1)
                if status and status.next_start_at
                else None
            ),
            log=str(log_file(ext.name)),
        )
        lines = [
            f"{ext.name}: {info['state']} ({supervisor})",
            f"  {info['description']}" if info["description"] else "",
            f"  project: {ext.entry.project_path}; session {ext.key}; log {info['log']}",
            f"  restarts: {info['restarts']}"
            + (f"; next start in {info['next_start_in']:g} s" if info["next_start_in"] else ""),
            "  tools:" if tools else "  tools: none listed (it is not running)",
            *(f"    {t['name']}: {t['description']}\n      {t['input_schema']}" for t in tools),
            f"  recent errors:\n{info['errors']}" if info["errors"] else "",
        ]
        return text_result("\n".join(line for line in lines if line), structured=info)

    @mcp.tool(annotations=changes(destructive=False, idempotent=True))
    async def manage_extension(
        name: Annotated[str, Field(description="the extension's name (see extension_info)")],
        action: Annotated[Literal["start", "stop", "restart", "enable", "disable"], Field()],
    ) -> CallToolResult:
        """Start, stop or restart an extension, or enable/disable it (a disabled one stops
        and does not start again until enabled)."""
        registry = Registry()
        try:
            ext = find_extension(registry, name)
            if action in ("enable", "disable"):
                registry.set_enabled(ext.entry.project_path, action == "enable")
                note = ""
                if action == "enable" and ext.entry.auto_start:
                    note = " (it starts now, as it is auto_start)"
                elif action == "enable":
                    note = " (not auto_start: start it with action=start)"
                return text_result(f"{action}d extension {ext.name}{note}")
        except RegistryError as err:
            return text_result(str(err), error=True)
        ok, message = await send_request(ext.name, action)
        return text_result(message, error=not ok)
