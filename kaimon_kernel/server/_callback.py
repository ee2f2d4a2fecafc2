"""Kernels calling the server's tools (``kaimon_kernel.call_tool``): the MCP front answers a
kernel's :class:`~kaimon_kernel._protocol.ServerCall` as it answers an agent, so a kernel or
an extension can call ``ex`` on another session, another session's gate tools, or another
extension's."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from mcp.types import CallToolResult, ImageContent, TextContent

from .._errors import KaimonError
from .._protocol import ImageBlock, ServerCall, ServerCallResult, TextBlock, ToolSpec
from ._events import ServerCallAsked

if TYPE_CHECKING:
    from ._core import Kaimon
    from ._mcp import KaimonMCP

__all__ = ["add_server_calls"]

logger = logging.getLogger(__name__)

#: Tools that run code in a session: from that session's own cell, they would wait on it.
RUNS_IN_SESSION = frozenset({"ex"})


def add_server_calls(mcp: KaimonMCP, kaimon: Kaimon) -> None:
    """Answer kernels' tool calls through ``mcp`` for as long as ``kaimon`` runs."""
    tasks: set[asyncio.Task[None]] = set()

    def asked(event: ServerCallAsked) -> None:
        task = asyncio.get_running_loop().create_task(_answer(mcp, kaimon, event))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    kaimon.bus.subscribe(asked, ServerCallAsked)


async def _answer(mcp: KaimonMCP, kaimon: Kaimon, event: ServerCallAsked) -> None:
    call: ServerCall = event.call
    try:
        if call.listing:
            tools = await mcp.list_tools()
            result = ServerCallResult(
                call_id=call.call_id,
                tools=[
                    ToolSpec(
                        name=t.name,
                        description=t.description or "",
                        input_schema=t.input_schema,
                        output_schema=t.output_schema,
                    )
                    for t in tools
                ],
            )
        else:
            _refuse_waiting_on_itself(kaimon, event.session, call)
            raw = await asyncio.wait_for(mcp.call_tool(call.name, call.arguments), call.timeout)
            result = _from_mcp(call.call_id, raw)
    except asyncio.TimeoutError:
        result = _error(call, f"{call.name} did not finish within {call.timeout:g} s")
    except KaimonError as err:
        result = _error(call, str(err))
    except Exception as err:
        cause = err.__cause__ if err.__cause__ is not None else err
        result = _error(call, f"{call.name}: {cause}")
    session = kaimon.registry.sessions.get(event.session)
    if session is None or session.gate.state != "ready":
        logger.info("session %s went before its call of %s ended", event.session, call.name)
        return
    try:
        session.gate.post(result)
    except KaimonError:  # the comm closed meanwhile
        logger.info("session %s went before its call of %s ended", event.session, call.name)


def _refuse_waiting_on_itself(kaimon: Kaimon, caller: str, call: ServerCall) -> None:
    if call.name not in RUNS_IN_SESSION or not call.from_main_thread:
        return
    target = call.arguments.get("session")
    try:
        session = kaimon.registry.resolve(target if isinstance(target, str) else None)
    except KaimonError:
        return  # the tool itself says what is wrong
    if session.key == caller:
        raise KaimonError(
            f"call_tool({call.name!r}) into session {caller} from its own running cell would "
            "wait on itself (the cell holds the kernel): name another session with "
            "session=..., or call it from a tool handler"
        )


def _from_mcp(call_id: str, raw: Any) -> ServerCallResult:
    if not isinstance(raw, CallToolResult):
        return ServerCallResult(
            call_id=call_id, content=[TextBlock(text="(the tool asked for input)")], is_error=True
        )
    blocks: list[TextBlock | ImageBlock] = []
    for block in raw.content:
        if isinstance(block, TextContent):
            blocks.append(TextBlock(text=block.text))
        elif isinstance(block, ImageContent):
            blocks.append(ImageBlock(data=block.data, mime_type=block.mime_type))
    return ServerCallResult(
        call_id=call_id,
        content=blocks,
        structured=raw.structured_content,
        is_error=bool(raw.is_error),
    )


def _error(call: ServerCall, text: str) -> ServerCallResult:
    return ServerCallResult(call_id=call.call_id, content=[TextBlock(text=text)], is_error=True)
