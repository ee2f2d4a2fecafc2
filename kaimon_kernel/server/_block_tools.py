"""Tools over blocks: history, read_block, export_notebook."""

from __future__ import annotations

import time
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult
from pydantic import Field

from .._errors import InvalidArgument, KaimonError
from ._core import Kaimon
from ._results import text_result
from ._surface import READ_ONLY, changes

__all__ = ["add_block_tools", "first_line", "read_page"]


def first_line(code: str, width: int = 70) -> str:
    """The first line of ``code``, at most ``width`` characters."""
    return (code.strip().splitlines() or [""])[0][:width]


async def read_page(
    kaimon: Kaimon, block_id: str, offset: int, limit: int
) -> tuple[str, dict[str, Any]]:
    """A page of a block's output with a header saying where it is and how to read on
    (read_block and the ``kaimon://block/<id>`` resource). Raises KaimonError."""
    found = await kaimon.blocks.find(block_id.strip())
    if len(found) != 1:
        raise InvalidArgument(
            f"no block has id {block_id!r}; see history"
            if not found
            else f"{block_id!r} matches several blocks; give more characters"
        )
    block = found[0]
    text, total = await kaimon.blocks.read(block, offset, limit)
    end = offset + len(text)
    more = f"; next: read_block(block_id={block.id!r}, offset={end})" if end < total else ""
    span = f"characters {offset:,}-{end:,} of {total:,}"
    header = f"[block {block.id}, {block.status}: {span}{more}]\n"
    structured = {
        "block_id": block.id,
        "offset": offset,
        "end": end,
        "total": total,
        "status": block.status,
    }
    return header + text, structured


def add_block_tools(mcp: MCPServer, kaimon: Kaimon) -> None:
    def session_key(session: str | None) -> str | None:
        if session is None:
            return None
        found = kaimon.blocks_of(session)
        return found if isinstance(found, str) else found.key

    @mcp.tool(annotations=READ_ONLY)
    async def history(
        session: str | None = None,
        limit: Annotated[int, Field(ge=1, le=500)] = 20,
    ) -> CallToolResult:
        """Your recent ex blocks."""
        try:
            blocks = await kaimon.blocks.history(session_key(session), limit)
        except KaimonError as err:
            return text_result(str(err), error=True)
        rows = [
            {
                "block_id": b.id,
                "session": b.session_key,
                "status": b.status,
                "duration_s": b.duration,
                "chars": b.chars,
                "code": first_line(b.code),
                "started_at": b.started_at,
            }
            for b in blocks
        ]
        lines = [
            f"{r['block_id']}  {time.strftime('%H:%M:%S', time.localtime(r['started_at']))}  "
            f"{r['status']:8} {(r['duration_s'] or 0):7.2f} s {r['chars']:>10,} chars  "
            f"session {r['session']}  {r['code']!r}"
            for r in rows
        ]
        return text_result("\n".join(lines) or "no blocks yet", structured={"blocks": rows})

    @mcp.tool(annotations=READ_ONLY)
    async def read_block(
        block_id: str,
        offset: Annotated[int, Field(ge=0)] = 0,
        limit: Annotated[int, Field(ge=1, le=100_000)] = 4000,
    ) -> CallToolResult:
        """Read a cut reply's full output, by pages."""
        try:
            text, structured = await read_page(kaimon, block_id, offset, limit)
        except KaimonError as err:
            return text_result(str(err), error=True)
        return text_result(text, structured=structured)

    @mcp.tool(annotations=changes(destructive=True, idempotent=True))
    async def export_notebook(
        path: str,
        session: str | None = None,
        overwrite: bool = False,
    ) -> CallToolResult:
        """Save ex blocks as an .ipynb in an allowed project."""
        key, target, cells = await kaimon.export_notebook(session, path, overwrite=overwrite)
        return text_result(
            f"wrote {cells} blocks of session {key} to {target}",
            structured={"path": str(target), "cells": cells},
        )
