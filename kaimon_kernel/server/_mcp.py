"""The MCP front: the SDK's MCPServer with kaimon's built-in tools and every session's gate tools.

A thin layer over :class:`~._core.Kaimon`: tools render core results; core errors become tool
errors in one place (:meth:`KaimonMCP.call_tool`); gate tools come and go with the sessions,
announced by ``tools/list_changed`` from the core's events. It uses the SDK's public extension
points only: middleware (to learn which connections speak the older protocol, and to announce
``listChanged`` to them) and the subscription bus (for 2026-07-28 clients).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ResourcesListChanged,
    ToolsListChanged,
)
from mcp.types import CallToolResult, ContentBlock, TextContent
from mcp.types import Resource as MCPResource
from mcp.types import Tool as MCPTool

from .. import __version__
from .._errors import InvalidArgument, KaimonError
from .._output import MAX_EDGE, MAX_IMAGE_B64, Image, fit_image
from .._protocol import ImageBlock, ToolResult
from .._settings import Settings, load_settings
from ._block_tools import add_block_tools
from ._callback import add_server_calls
from ._core import GateToolRef, Kaimon
from ._events import (
    ClientCallFinished,
    ClientCallStarted,
    SessionCame,
    SessionWent,
    ToolsChanged,
)
from ._extension_tools import EXTENSION_TOOLS, add_extension_tools, extension_tools_listed
from ._heartbeat import Heartbeat
from ._instructions import INSTRUCTIONS, add_prompts
from ._resources import add_resources, listed_resources
from ._results import image_content, text_result
from ._session_tools import add_session_tools
from ._surface import ToolFilter, compact_schema, gate_annotations, tidy_description
from ._tools import add_exec_tools

__all__ = ["KaimonMCP", "build_mcp"]

logger = logging.getLogger(__name__)

MODERN_PROTOCOL = "2026-07-28"
# How long after a session is found a call to an unknown tool waits for it to connect; a
# session that never answers costs a wrong name nothing once this has passed.
CONNECT_GRACE = 5.0


class KaimonMCP(MCPServer):
    """MCPServer plus the gate tools of every session, which come and go at run time."""

    def __init__(self, kaimon: Kaimon, settings: Settings | None = None) -> None:
        self._bus = InMemorySubscriptionBus()
        self.options = settings if settings is not None else load_settings()
        self.tool_filter = ToolFilter(self.options.tools)
        super().__init__(
            name="kaimon",
            instructions=INSTRUCTIONS,
            version=__version__,
            log_level="WARNING",
            subscriptions=self._bus,
            middleware=[self._middleware],
        )
        self.kaimon = kaimon
        self._legacy_sessions: set[Any] = set()
        self._fingerprint: tuple[Any, ...] = ()
        self._pending: set[asyncio.Task[None]] = set()
        self._started = time.monotonic()
        kaimon.bus.subscribe(self._tools_maybe_changed, ToolsChanged, SessionCame, SessionWent)
        kaimon.bus.subscribe(self._sessions_changed, SessionCame, SessionWent)

    # -- middleware ----------------------------------------------------------------------------

    async def _middleware(self, ctx: Any, call_next: Any) -> Any:
        if ctx.method == "tools/call" and self.kaimon.bus.wants(ClientCallStarted):
            result = await self._recorded(ctx, call_next)
        else:
            result = await call_next(ctx)
        method = ctx.method
        if method == "initialize" and isinstance(result, dict):
            # Clients of the handshake era learn of list_changed from this capability; gate
            # tools come and go, so announce it.
            # The same for resources: the sessions are resources.
            for kind in ("tools", "resources"):
                capability = result.get("capabilities", {}).get(kind)
                if isinstance(capability, dict):
                    capability["listChanged"] = True
        elif method in ("tools/list", "tools/call", "resources/list", "resources/read"):
            if getattr(ctx, "protocol_version", MODERN_PROTOCOL) != MODERN_PROTOCOL:
                self._legacy_sessions.add(ctx.session)
        return result

    async def _recorded(self, ctx: Any, call_next: Any) -> Any:
        """A tools/call, announced to the core's bus (the activity log) with its client."""
        params = ctx.params or {}
        call_id = uuid.uuid4().hex[:12]
        bus = self.kaimon.bus
        bus.publish(
            ClientCallStarted(
                "", call_id, _client_name(ctx), str(params.get("name")), params.get("arguments")
            )
        )
        started, failed = time.monotonic(), True
        try:
            result = await call_next(ctx)
            failed = bool(
                result.get("isError")
                if isinstance(result, dict)
                else getattr(result, "is_error", False)
            )
            return result
        finally:
            bus.publish(ClientCallFinished("", call_id, failed, time.monotonic() - started))

    # -- tools/list and tools/call -----------------------------------------------------------

    async def list_tools(self) -> list[MCPTool]:
        await self._first_sessions()
        allows = self.tool_filter.allows
        every = await super().list_tools()
        taken = {t.name for t in every}
        if not extension_tools_listed():
            every = [t for t in every if t.name not in EXTENSION_TOOLS]
        builtin = [
            t.model_copy(
                update={
                    "description": tidy_description(t.description),
                    "input_schema": compact_schema(t.input_schema),
                }
            )
            for t in every
            if allows(t.name)
        ]
        gate = [
            MCPTool(
                name=ref.mcp_name,
                description=ref.spec.description or f"{ref.spec.name} (session {ref.session.key})",
                input_schema=ref.spec.input_schema,
                output_schema=ref.spec.output_schema,
                annotations=gate_annotations(ref.spec),
            )
            for ref in self.kaimon.gate_tools().values()
            if ref.mcp_name not in taken and ToolFilter.listed(ref.spec) and allows(ref.mcp_name)
        ]
        return [*builtin, *gate]

    async def list_resources(self) -> list[MCPResource]:
        return [*await super().list_resources(), *await listed_resources(self.kaimon)]

    async def _first_sessions(self) -> None:
        """A client's first tools/list must hold the gate tools of the sessions that were
        served when this server started: wait (bounded) for those to answer."""
        registry = self.kaimon.registry
        remaining = self._started + CONNECT_GRACE - time.monotonic()
        if remaining <= 0 or not registry.first_scan:
            return
        waits = [
            s.wait_welcomed(remaining)
            for key in registry.first_scan
            if (s := registry.sessions.get(key)) is not None and s.state == "connecting"
        ]
        if waits:
            await asyncio.gather(*waits)

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        try:
            self.tool_filter.check_call(name)
            refuse_unknown_arguments(self._tool_manager.get_tool(name), arguments)
            if self._tool_manager.get_tool(name) is None:
                ref = self.kaimon.gate_tools().get(name) or await self._gate_tool_once_connected(
                    name
                )
                if ref is not None:
                    return await self._call_gate_tool(ref, arguments, context)
            return await super().call_tool(name, arguments, context)
        except KaimonError as err:
            return tool_error(err)
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(cause, KaimonError):
                return tool_error(cause)
            if isinstance(exc, UnexpectedToolError) and cause is not None:
                logger.error("tool %s failed", name, exc_info=cause)
                return text_result(
                    f"{name} failed: {type(cause).__name__}: {cause}. This is a bug in kaimon, "
                    "not in your call; the kaimon serve log has the traceback.",
                    error=True,
                )
            raise

    async def _gate_tool_once_connected(self, name: str) -> GateToolRef | None:
        """An unknown name may be a tool of a session that is still connecting (a server
        just started, a kernel just served): look again once every session has answered."""
        await self.kaimon.registry.scan()
        now = time.monotonic()
        waits = [
            s.wait_welcomed(s.discovered_at + CONNECT_GRACE - now)
            for s in self.kaimon.registry.sessions.values()
            if s.state == "connecting" and s.discovered_at + CONNECT_GRACE > now
        ]
        await asyncio.gather(*waits)
        return self.kaimon.gate_tools().get(name)

    async def _call_gate_tool(
        self, ref: GateToolRef, arguments: dict[str, Any], ctx: Context | None
    ) -> CallToolResult:
        async with Heartbeat(ctx, self.options.heartbeat) as beat:
            async for update in self.kaimon.call_tool(ref, arguments):
                if isinstance(update, ToolResult):
                    return await _tool_result(update, self.options)
                await beat.report(update.message, update.progress, update.total)
        raise AssertionError("a tool call ends with its result")

    # -- tools/list_changed, resources/list_changed ------------------------------------------

    def _tools_maybe_changed(self, _event: object) -> None:
        fingerprint = tuple(
            sorted(
                (name, ref.session.key, ref.spec.model_dump_json())
                for name, ref in self.kaimon.gate_tools().items()
            )
        )
        if fingerprint == self._fingerprint:
            return
        self._fingerprint = fingerprint
        self._spawn(self._announce(tools=True))

    def _sessions_changed(self, _event: object) -> None:
        self._spawn(self._announce(tools=False))

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _announce(self, *, tools: bool) -> None:
        """tools/list_changed (``tools``) or resources/list_changed, to every client."""
        await self._bus.publish(ToolsListChanged() if tools else ResourcesListChanged())
        for session in list(self._legacy_sessions):
            try:
                if tools:
                    await session.send_tool_list_changed()
                else:
                    await session.send_resource_list_changed()
            except Exception:  # that client is gone
                self._legacy_sessions.discard(session)


def refuse_unknown_arguments(tool: Tool | None, arguments: Mapping[str, Any]) -> None:
    """Refuse argument names a built-in tool does not take, as gate tools do.

    The SDK's argument models ignore unknown fields; an agent that misspells one
    (``max_ouput``) would otherwise silently get the default.
    """
    if tool is None:
        return
    fields = tool.fn_metadata.arg_model.model_fields
    accepted = [f.alias or name for name, f in fields.items()]
    unknown = [name for name in arguments if name not in accepted and name not in fields]
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        raise InvalidArgument(
            f"{tool.name}: unknown argument{'s' if len(unknown) > 1 else ''} {names}; "
            f"{tool.name} accepts: {', '.join(accepted) or '(no arguments)'}"
        )


def _client_name(ctx: Any) -> str:
    """The calling client's ``clientInfo`` name (the handshake's, or the request envelope's)."""
    params = getattr(ctx.session, "client_params", None)
    info = getattr(params, "client_info", None)
    if info is not None and info.name:
        return str(info.name)
    meta = (ctx.params or {}).get("_meta") or {}
    envelope = next((v for k, v in meta.items() if k.endswith("clientInfo")), None)
    return str(envelope.get("name", "?")) if isinstance(envelope, dict) else "?"


def tool_error(err: KaimonError) -> CallToolResult:
    """A core error as the agent reads it: what was wrong and what to do (the message)."""
    return text_result(str(err), error=True)


async def _tool_result(result: ToolResult, settings: Settings) -> CallToolResult:
    """A gate tool's result: its text as given, its images scaled down (in a worker thread:
    the loop serves other calls meanwhile) and capped like ex's (inline only: a gate tool's
    images have no block to be read from later)."""
    blocks: list[ContentBlock] = [
        TextContent(type="text", text=b.text)
        for b in result.content
        if not isinstance(b, ImageBlock)
    ]
    images = [
        Image(
            b.mime_type,
            await asyncio.to_thread(fit_image, b.data, b.mime_type, MAX_EDGE, MAX_IMAGE_B64),
        )
        for b in result.content
        if isinstance(b, ImageBlock)
    ]
    blocks.extend(image_content(images, None, settings.images, links=False))
    return CallToolResult(
        content=blocks, structured_content=result.structured, is_error=result.is_error
    )


def build_mcp(kaimon: Kaimon, settings: Settings | None = None) -> MCPServer:
    """The MCP server exposing ``kaimon``'s sessions, their gate tools, resources and prompts.

    ``settings`` gives the tool lists, image options and heartbeat (default: the
    environment and kaimon.json, as ``kaimon serve`` read them)."""
    mcp = KaimonMCP(kaimon, settings)
    add_exec_tools(mcp, kaimon, mcp.options.images, mcp.options.heartbeat)
    add_session_tools(mcp, kaimon)
    add_block_tools(mcp, kaimon)
    add_resources(mcp, kaimon)
    add_prompts(mcp)
    add_extension_tools(mcp, kaimon)
    add_server_calls(mcp, kaimon)
    return mcp
