"""Tools over blocks: history, read_block, export_notebook."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult
from pydantic import Field

from .._config import allowed_projects
from .._errors import KaimonError
from ._blocks import NAME_MAX
from ._core import Kaimon
from ._results import text_result

__all__ = ["add_block_tools", "export_target"]

EXPORT_MAX_BLOCKS = 10_000


def _first_line(code: str) -> str:
    return (code.strip().splitlines() or [""])[0][:70]


def _allowed_roots(kaimon: Kaimon) -> list[Path]:
    """The folders an export may write into (the policy, in one place)."""
    return [Path(kaimon.options.cwd).resolve(), *(p.resolve() for p in allowed_projects())]


def export_target(kaimon: Kaimon, path: str, base: str | None) -> Path:
    """Where ``path`` points: relative to ``base`` (the session's folder), resolved, and
    inside the allowed roots. Raises :class:`KaimonError` saying what was wrong."""
    if "\0" in path:
        raise KaimonError(f"the path {path!r} contains a NUL byte; give a plain file path")
    if not path.strip():
        raise KaimonError("the path is empty; give a file path ending in .ipynb")
    for part in Path(path).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise KaimonError(
                f"{part[:40]!r}… is {len(os.fsencode(part))} bytes long; a file or folder name "
                f"has at most {NAME_MAX}: choose a shorter one"
            )
    try:
        target = Path(path).expanduser()
        if not target.is_absolute():
            if not base:
                raise KaimonError(
                    f"{path!r} is relative, and the session's folder is not known (the "
                    "session is gone); give an absolute path"
                )
            target = Path(base) / target
        target = target.resolve()
        if target.is_dir():
            raise KaimonError(f"{target} is a folder; give a file name ending in .ipynb inside it")
    except OSError as err:  # a name too long for the file system, a loop of links
        raise KaimonError(f"{path[:200]!r} is not a usable path: {err.strerror or err}") from err
    except RuntimeError as err:  # "Could not determine home directory"
        raise KaimonError(f"{path[:200]!r} is not a usable path: {err}") from err
    if target.suffix != ".ipynb":
        raise KaimonError(f"{target} must end in .ipynb")
    if not any(target.parent == r or r in target.parents for r in _allowed_roots(kaimon)):
        raise KaimonError(
            f"{target} is outside the allowed projects; the person can allow a directory "
            "with `kaimon projects add DIR`"
        )
    return target


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
        try:
            try:
                live = kaimon.registry.resolve(session)
                key, base = live.key, live.info.cwd
            except KaimonError:
                if session is None:
                    raise
                key, base = session, None  # a session that is gone: its key names its blocks
            target = export_target(kaimon, path, base)
            blocks = list(reversed(await kaimon.blocks.history(key, EXPORT_MAX_BLOCKS)))
            if not blocks:
                return text_result(f"session {key} has no blocks to export", error=True)
            await kaimon.blocks.export(blocks, target, overwrite)
        except KaimonError as err:
            return text_result(str(err), error=True)
        return text_result(
            f"wrote {len(blocks)} blocks of session {key} to {target}",
            structured={"path": str(target), "cells": len(blocks)},
        )
