"""MCP resources: sessions (``kaimon://session/<key>``), blocks (``kaimon://block/<id>``,
paged like read_block) and the images of blocks (``kaimon://block/<id>/image/<n>.png``), so a
client that reads resources gets outputs without a tool call.

Reading goes through the SDK's resource templates; :func:`listed_resources` names the
concrete ones there are now (the sessions, the latest blocks) for ``resources/list``.
"""

from __future__ import annotations

import base64
import json

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError
from mcp.types import Resource

from .._errors import KaimonError
from ._block_tools import first_line, read_page
from ._core import Kaimon
from ._results import IMAGE_EXTENSIONS, image_uri
from ._tools import session_row

__all__ = ["LISTED_BLOCKS", "add_resources", "listed_resources"]

#: How many of the latest blocks resources/list names (every block can be read).
LISTED_BLOCKS = 20
_PAGE = 4000


def add_resources(mcp: MCPServer, kaimon: Kaimon) -> None:
    """The resource templates sessions, blocks and block images are read through."""

    @mcp.resource(
        "kaimon://session/{key}",
        name="session",
        description="A shared kernel: key, label, status, pid, cwd, Python version",
        mime_type="application/json",
    )
    async def session(key: str) -> str:
        found = kaimon.registry.sessions.get(key)
        if found is None:
            known = ", ".join(kaimon.registry.sessions) or "none"
            raise ResourceError(f"no session has key {key!r}; sessions: {known}")
        return json.dumps(session_row(found), indent=1)

    @mcp.resource(
        "kaimon://block/{block_id}{?offset,limit}",
        name="block",
        description="An ex block's full output, a page at a time (offset, limit characters)",
        mime_type="text/plain",
    )
    async def block(block_id: str, offset: int = 0, limit: int = _PAGE) -> str:
        if offset < 0 or not 1 <= limit <= 100_000:
            raise ResourceError("offset must be >= 0 and limit 1..100000")
        try:
            text, _ = await read_page(kaimon, block_id, offset, limit)
        except KaimonError as err:
            raise ResourceError(str(err)) from None
        return text

    for mime, ext in IMAGE_EXTENSIONS.items():
        _add_image_template(mcp, kaimon, ext, mime)


def _add_image_template(mcp: MCPServer, kaimon: Kaimon, ext: str, mime: str) -> None:
    @mcp.resource(
        f"kaimon://block/{{block_id}}/image/{{number}}.{ext}",
        name=f"block image ({ext})",
        description="An image an ex showed (numbered from 1), as it was sent",
        mime_type=mime,
    )
    async def image(block_id: str, number: int) -> bytes:
        found = await kaimon.blocks.find(block_id)
        if len(found) != 1:
            raise ResourceError(f"no block has id {block_id!r}; see history")
        images = found[0].images
        if not 1 <= number <= len(images) or images[number - 1]["mime"] != mime:
            raise ResourceError(
                f"block {block_id} has no {ext} image {number} (it has {len(images)} images)"
            )
        return base64.b64decode(images[number - 1]["data"])


async def listed_resources(kaimon: Kaimon) -> list[Resource]:
    """The sessions there are and the latest blocks (with their images), as resources."""
    out = [
        Resource(
            uri=f"kaimon://session/{s.key}",
            name=f"session {s.info.label or s.key}",
            description=f"kernel in {s.info.cwd} ({s.state})",
            mime_type="application/json",
        )
        for s in kaimon.registry.sessions.values()
    ]
    for b in await kaimon.blocks.history(None, LISTED_BLOCKS):
        first = first_line(b.code, 60)
        out.append(
            Resource(
                uri=f"kaimon://block/{b.id}",
                name=f"block {b.id}",
                description=f"{b.status}, {b.chars:,} chars, session {b.session_key}: {first!r}",
                mime_type="text/plain",
                size=b.chars,
            )
        )
        out.extend(
            Resource(
                uri=image_uri(b.id, n, img["mime"]),
                name=f"image {n} of block {b.id}",
                mime_type=img["mime"],
            )
            for n, img in enumerate(b.images, 1)
        )
    return out
