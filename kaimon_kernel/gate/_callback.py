"""Calling back into kaimon from a kernel: any tool the server offers, as an agent would.

From a served kernel's code or a tool handler (an extension's included),
``call_tool("ex", {"code": "...", "session": "other"})`` or ``call_tool("notes_search",
{...})`` goes to a connected kaimon server over the gate's comm, and returns the result."""

from __future__ import annotations

from typing import Any

from .._errors import KaimonError
from .._protocol import TextBlock, ToolSpec
from ._gate import current_gate

__all__ = ["ToolCallError", "call_tool", "server_tools"]


class ToolCallError(KaimonError):
    """The tool answered with an error (its text is the message)."""


def call_tool(name: str, arguments: dict[str, Any] | None = None, *, timeout: float = 60.0) -> Any:
    """Call tool ``name`` of the connected kaimon server with ``arguments``; returns its
    result: the structured value where the tool gives one (a gate tool's return value), else
    its text. Raises :class:`ToolCallError` when the tool answers with an error, and
    :class:`~kaimon_kernel.KaimonError` when no server answers within ``timeout`` seconds.

    A call that would wait on itself (``ex`` into this very session from its own cell) is
    refused. Blocks the calling thread: call it from a tool handler or a cell.
    """
    if not isinstance(name, str) or not name:
        raise TypeError("call_tool needs a tool name, like call_tool('ex', {'code': '1 + 1'})")
    if timeout <= 0:
        raise ValueError("timeout must be a positive number of seconds")
    result = current_gate().call_server(name, dict(arguments or {}), timeout)
    text = "".join(b.text for b in result.content if isinstance(b, TextBlock))
    if result.is_error:
        raise ToolCallError(text or f"{name} failed")
    structured = result.structured
    if structured is not None:
        return structured["result"] if set(structured) == {"result"} else structured
    return text


def server_tools(*, timeout: float = 30.0) -> list[ToolSpec]:
    """The tools :func:`call_tool` can call: the server's built-ins, every session's gate
    tools and every extension's, with their descriptions and parameter schemas."""
    result = current_gate().call_server("", {}, timeout, listing=True)
    if result.is_error or result.tools is None:
        text = "".join(b.text for b in result.content if isinstance(b, TextBlock))
        raise ToolCallError(text or "the server did not list its tools")
    return result.tools
