"""Tools over blocks: history, read_block, export_notebook."""

from __future__ import annotations

import time
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult
from pydantic import Field

from .._errors import KaimonError
from ._core import Kaimon
from ._results import text_result

__all__ = ["add_block_tools"]


def _first_line(code: str) -> str:
    return (code.strip().splitlines() or [""])[0][:70]


def add_block_tools(mcp: MCPServer, kaimon: Kaimon) -> None:
    def session_key(session: str | None) -> str | None:
        if session is None:
            return None
        found = kaimon.blocks_of(session)
        return found if isinstance(found, str) else found.key

    @mcp.tool()
    async def history(
        session: Annotated[str | None, Field(description="key, label or namespace")] = None,
        limit: Annotated[int, Field(ge=1, le=500)] = 20,
    ) -> CallToolResult:
        """The agent's recent blocks (one per ex), newest first, one line each."""
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
                "code": _first_line(b.code),
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

    @mcp.tool()
    async def read_block(
        block_id: Annotated[str, Field(description="a block id from history, or a unique prefix")],
        offset: Annotated[int, Field(ge=0, description="first character to return")] = 0,
        limit: Annotated[int, Field(ge=1, le=100_000, description="characters to return")] = 4000,
    ) -> CallToolResult:
        """A page of a block's full output (characters offset .. offset+limit)."""
        try:
            found = await kaimon.blocks.find(block_id.strip())
            if len(found) == 1:
                text, total = await kaimon.blocks.read(found[0], offset, limit)
        except KaimonError as err:
            return text_result(str(err), error=True)
        if len(found) != 1:
            return text_result(
                f"no block has id {block_id!r}; see history"
                if not found
                else f"{block_id!r} matches several blocks; give more characters",
                error=True,
            )
        block = found[0]
        end = offset + len(text)
        more = f"; next: read_block(block_id={block.id!r}, offset={end})" if end < total else ""
        span = f"characters {offset:,}-{end:,} of {total:,}"
        header = f"[block {block.id}, {block.status}: {span}{more}]\n"
        return text_result(
            header + text,
            structured={
                "block_id": block.id,
                "offset": offset,
                "end": end,
                "total": total,
                "status": block.status,
            },
        )

    @mcp.tool()
    async def export_notebook(
        path: Annotated[
            str,
            Field(
                description="where to write the .ipynb (in an allowed project); a relative "
                "path is in the session's folder"
            ),
        ],
        session: Annotated[str | None, Field(description="key, label or namespace")] = None,
        overwrite: Annotated[
            bool, Field(description="replace the file if it exists (else it is an error)")
        ] = False,
    ) -> CallToolResult:
        """Write the agent's blocks of a session as a real .ipynb the person can open and re-run."""
        key, target, cells = await kaimon.export_notebook(session, path, overwrite=overwrite)
        return text_result(
            f"wrote {cells} blocks of session {key} to {target}",
            structured={"path": str(target), "cells": cells},
        )
