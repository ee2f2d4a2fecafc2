"""Building MCP tool results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mcp.types import CallToolResult, ContentBlock, ImageContent, ResourceLink, TextContent

from .._output import Image
from .._settings import ImagesSetting

__all__ = ["IMAGE_EXTENSIONS", "image_content", "image_uri", "text_result"]

#: The file extension of each image type in resource URIs.
IMAGE_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpeg"}


def text_result(
    text: str, *, error: bool = False, structured: dict[str, Any] | None = None
) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text)],
        is_error=error,
        structured_content=structured,
    )


def image_uri(block_id: str, number: int, mime: str) -> str:
    """The resource an ex's ``number``-th image (from 1) is read from."""
    return f"kaimon://block/{block_id}/image/{number}.{IMAGE_EXTENSIONS.get(mime, 'png')}"


def image_content(
    images: Sequence[Image],
    block_id: str | None,
    setting: ImagesSetting | None = None,
    links: bool | None = None,
) -> list[ContentBlock]:
    """A reply's images: inline up to ``setting.max_per_reply`` (then a note naming the
    resources that hold the rest), or all as resource links (``links``, else the setting)."""
    setting = setting or ImagesSetting()
    if links is None:
        links = setting.links
    if block_id is None:  # nothing to link to: the block was not stored
        links = False
    if links:
        assert block_id is not None
        return [
            ResourceLink(
                type="resource_link",
                uri=image_uri(block_id, n, img.mime),
                name=f"image {n} of block {block_id}",
                mime_type=img.mime,
                size=len(img.data) * 3 // 4,
            )
            for n, img in enumerate(images, 1)
        ]
    shown = images[: setting.max_per_reply]
    out: list[ContentBlock] = [
        ImageContent(type="image", data=img.data, mime_type=img.mime) for img in shown
    ]
    left = len(images) - len(shown)
    if left:
        text = f"[{left} more image{'s' if left > 1 else ''} not shown (at most "
        text += f"{setting.max_per_reply} per reply)"
        if block_id is not None:
            rest = range(len(shown) + 1, len(images) + 1)
            uris = ", ".join(image_uri(block_id, n, images[n - 1].mime) for n in rest)
            text += f"; read them as resources: {uris}"
        out.append(TextContent(type="text", text=text + "]"))
    return out
