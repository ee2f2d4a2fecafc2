"""Tools over blocks: history, read_block, export_notebook."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult
from pydantic import Field

from .._config import allowed_projects
from .._errors import KaimonError
from ._blocks import Block
from ._core import Kaimon
from ._results import text_result

if TYPE_CHECKING:
    # Imported where used: nbformat loads jsonschema's format checkers, which take 1.5 s
    # where rfc3987-syntax is installed (next to JupyterLab), on every `kaimon serve` start.
    import nbformat

__all__ = ["add_block_tools", "blocks_to_notebook"]

EXPORT_OUTPUT_CHARS = 200_000


def _first_line(code: str) -> str:
    return (code.strip().splitlines() or [""])[0][:70]


def blocks_to_notebook(
    blocks: list[Block], read: Callable[[Block, int, int], tuple[str, int]]
) -> nbformat.NotebookNode:
    """The blocks as a notebook: one code cell each, with its (bounded) output."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    for count, block in enumerate(blocks, start=1):
        cell = nbformat.v4.new_code_cell(block.code, execution_count=count)
        text, total = read(block, 0, EXPORT_OUTPUT_CHARS)
        if total > EXPORT_OUTPUT_CHARS:
            text += f"\n… [{total - EXPORT_OUTPUT_CHARS:,} more characters in block {block.id}]"
        if text:
            cell.outputs.append(nbformat.v4.new_output("stream", name="stdout", text=text))
        for image in block.images:
            cell.outputs.append(
                nbformat.v4.new_output(
                    "display_data", data={image["mime"]: image["data"], "text/plain": "<image>"}
                )
            )
        if block.error:
            ename, _, evalue = block.error.partition(": ")
            cell.outputs.append(
                nbformat.v4.new_output("error", ename=ename, evalue=evalue, traceback=[])
            )
        cell.metadata["kaimon"] = {
            "block_id": block.id,
            "who": block.who,
            "status": block.status,
            "duration": block.duration,
        }
        nb.cells.append(cell)
    return nb


def add_block_tools(mcp: MCPServer, kaimon: Kaimon) -> None:
    def session_key(session: str | None) -> str | None:
        if session is None:
            return None
        try:
            return kaimon.registry.resolve(session).key
        except KaimonError:
            return session  # a session that is gone: its key still names its blocks

    @mcp.tool()
    async def history(
        session: Annotated[str | None, Field(description="key, label or namespace")] = None,
        limit: Annotated[int, Field(ge=1, le=500)] = 20,
    ) -> CallToolResult:
        """The agent's recent blocks (one per ex), newest first, one line each."""
        blocks = kaimon.blocks.history(session_key(session), limit)
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
        found = kaimon.blocks.find(block_id.strip())
        if len(found) != 1:
            return text_result(
                f"no block has id {block_id!r}; see history"
                if not found
                else f"{block_id!r} matches several blocks; give more characters",
                error=True,
            )
        block = found[0]
        text, total = kaimon.blocks.read(block, offset, limit)
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
            str, Field(description="where to write the .ipynb (in an allowed project)")
        ],
        session: Annotated[str | None, Field(description="key, label or namespace")] = None,
    ) -> CallToolResult:
        """Write the agent's blocks of a session as a real .ipynb the person can open and re-run."""
        try:
            key = session_key(session) or kaimon.registry.resolve(None).key
        except KaimonError as err:
            return text_result(str(err), error=True)
        target = Path(path).expanduser()
        if not target.is_absolute():
            target = Path(kaimon.options.cwd) / target
        target = target.resolve()
        roots = [Path(kaimon.options.cwd).resolve(), *(p.resolve() for p in allowed_projects())]
        if target.suffix != ".ipynb":
            return text_result(f"{target} must end in .ipynb", error=True)
        if not any(target.parent == r or r in target.parents for r in roots):
            return text_result(
                f"{target} is outside the allowed projects; the person can allow a directory "
                "with `kaimon projects add DIR`",
                error=True,
            )
        blocks = list(reversed(kaimon.blocks.history(key, 10_000)))
        if not blocks:
            return text_result(f"session {key} has no blocks to export", error=True)
        import nbformat

        nb = blocks_to_notebook(blocks, kaimon.blocks.read)
        nbformat.validate(nb)
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(target))
        return text_result(
            f"wrote {len(blocks)} blocks of session {key} to {target}",
            structured={"path": str(target), "cells": len(blocks)},
        )
