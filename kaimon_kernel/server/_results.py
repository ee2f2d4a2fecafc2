"""Building MCP tool results."""

from __future__ import annotations

from typing import Any

from mcp.types import CallToolResult, TextContent

__all__ = ["text_result"]


def text_result(
    text: str, *, error: bool = False, structured: dict[str, Any] | None = None
) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text)],
        is_error=error,
        structured_content=structured,
    )
