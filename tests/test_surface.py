"""What the agent is shown, unit level: tool filter, compact schemas, annotations, images,
the heartbeat."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from mcp.types import ImageContent, ResourceLink, TextContent
from PIL import Image as PILImage

from kaimon_kernel._errors import InvalidArgument
from kaimon_kernel._output import MAX_EDGE, Image, OutputCapture, fit_image
from kaimon_kernel._protocol import ImageBlock, TextBlock, ToolResult, ToolSpec
from kaimon_kernel._settings import (
    ImagesSetting,
    Settings,
    SettingsError,
    ToolsSetting,
    load_settings,
)
from kaimon_kernel.gate import GateTool, ToolDefinitionError
from kaimon_kernel.server._heartbeat import Heartbeat
from kaimon_kernel.server._mcp import _tool_result
from kaimon_kernel.server._results import image_content
from kaimon_kernel.server._surface import (
    ToolFilter,
    compact_schema,
    gate_annotations,
    tidy_description,
)


def picture(width: int, height: int, fmt: str = "PNG") -> str:
    im = PILImage.new("RGB", (width, height), "white")
    im.paste((200, 30, 30), (width // 4, height // 4, width // 2, height // 2))
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def opened(data: str) -> PILImage.Image:
    return PILImage.open(io.BytesIO(base64.b64decode(data)))


# -- tool filter ---------------------------------------------------------------------------


def test_deny_hides_named_and_matching_tools_and_refuses_their_calls() -> None:
    f = ToolFilter(ToolsSetting(deny=["manage_repl", "todo_*"]))
    assert not f.allows("manage_repl")
    assert not f.allows("todo_add")
    assert f.allows("ex")
    with pytest.raises(InvalidArgument, match=r"'todo_add' is hidden.*tools\.deny"):
        f.check_call("todo_add")
    f.check_call("ex")


def test_allow_shows_only_what_it_names() -> None:
    f = ToolFilter(ToolsSetting(allow=["ex", "list_*"]))
    assert [n for n in ("ex", "list_jobs", "manage_repl") if f.allows(n)] == ["ex", "list_jobs"]
    with pytest.raises(InvalidArgument, match=r"not in the tools\.allow"):
        f.check_call("manage_repl")


def test_no_lists_show_everything_but_underscore_gate_tools() -> None:
    f = ToolFilter()
    assert f.allows("anything")
    assert not ToolFilter.listed(ToolSpec(name="_secret", input_schema={}))
    assert ToolFilter.listed(ToolSpec(name="public", input_schema={}))


def test_tools_and_images_settings_come_from_kaimon_json(tmp_path: Path) -> None:
    path = tmp_path / "kaimon.json"
    path.write_text(json.dumps({"tools": {"deny": ["ex"]}, "images": {"links": True}}))
    settings = load_settings(config_path=path)
    assert settings.tools == ToolsSetting(deny=["ex"])
    assert settings.images == ImagesSetting(links=True)
    path.write_text(json.dumps({"tools": {"alow": ["ex"]}}))
    with pytest.raises(SettingsError, match="tools"):
        load_settings(config_path=path)


# -- schemas and annotations ---------------------------------------------------------------


def test_compact_schema_drops_titles_null_options_and_obvious_defaults() -> None:
    schema = {
        "title": "exArguments",
        "type": "object",
        "properties": {
            "session": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "default": None,
                "description": "key",
                "title": "Session",
            },
            "quiet": {"type": "boolean", "default": False, "title": "Quiet"},
            "limit": {"type": "integer", "default": 20, "minimum": 1, "maximum": 500},
            "both": {"anyOf": [{"type": "string"}, {"type": "integer"}], "title": "Both"},
            "mode": {
                "anyOf": [{"enum": ["a", "b"], "type": "string"}, {"type": "null"}],
                "default": None,
            },
            "level": {"enum": [1, 2], "type": "integer"},
        },
        "required": [],
    }
    assert compact_schema(schema) == {
        "type": "object",
        "properties": {
            "session": {"type": "string", "description": "key"},
            "quiet": {"type": "boolean"},
            "limit": {"type": "integer", "default": 20, "maximum": 500},
            "both": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "mode": {"enum": ["a", "b"]},
            "level": {"enum": [1, 2], "type": "integer"},
        },
        "required": [],
    }


def test_a_docstring_loses_its_source_indentation() -> None:
    assert tidy_description("First line\n        second line") == "First line\nsecond line"


def test_gate_tool_hints_become_mcp_annotations() -> None:
    tool = GateTool("drop", lambda table: None, read_only=False, destructive=True)
    spec = tool.spec()
    annotations = gate_annotations(spec)
    assert annotations is not None
    assert (annotations.read_only_hint, annotations.destructive_hint) == (False, True)
    assert annotations.open_world_hint is None
    assert gate_annotations(GateTool("plain", lambda: 1).spec()) is None


def test_a_gate_tool_hint_that_is_not_a_bool_is_refused() -> None:
    with pytest.raises(ToolDefinitionError, match="read_only must be True, False or None"):
        GateTool("t", lambda: 1, read_only="yes")  # type: ignore[arg-type]


# -- images --------------------------------------------------------------------------------


def test_a_large_png_is_scaled_to_the_long_edge_and_stays_png() -> None:
    out = fit_image(picture(4000, 3000), "image/png")
    im = opened(out)
    assert (im.format, im.size) == ("PNG", (MAX_EDGE, 1176))


def test_a_tall_jpeg_stays_jpeg_and_a_small_image_is_untouched() -> None:
    im = opened(fit_image(picture(1000, 3200, "JPEG"), "image/jpeg"))
    assert im.format == "JPEG" and im.size[1] == MAX_EDGE
    small = picture(300, 200)
    assert fit_image(small, "image/png") is small


def test_an_image_too_large_in_bytes_is_scaled_until_it_fits() -> None:
    noisy = PILImage.effect_noise((1500, 1500), 80).convert("RGB")
    buf = io.BytesIO()
    noisy.save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    out = fit_image(data, "image/png", max_b64=300_000)
    assert len(out) <= 300_000
    assert opened(out).format == "PNG"


def test_data_that_is_not_an_image_is_passed_through() -> None:
    assert fit_image("bm90IGFuIGltYWdl", "image/png") == "bm90IGFuIGltYWdl"


def test_the_capture_scales_a_displayed_image() -> None:
    cap = OutputCapture()
    cap.add_message("display_data", {"data": {"image/png": picture(4000, 3000)}})
    (image,) = cap.images
    assert max(opened(image.data).size) == MAX_EDGE


@pytest.mark.anyio
async def test_a_gate_tools_image_is_scaled_in_a_worker_thread() -> None:
    plot = ImageBlock(data=picture(4000, 3000), mime_type="image/png")
    result = ToolResult(call_id="c1", content=[TextBlock(text="a plot"), plot])
    task = asyncio.get_running_loop().create_task(_tool_result(result, Settings()))
    ran = asyncio.Event()
    asyncio.get_running_loop().call_soon(ran.set)  # after the task's first step
    await asyncio.wait_for(ran.wait(), 10)
    assert not task.done()  # the loop runs while the image is scaled
    reply = await asyncio.wait_for(task, 30)
    text, image = reply.content
    assert isinstance(text, TextContent) and isinstance(image, ImageContent)
    assert opened(image.data).size == (MAX_EDGE, 1176)


def test_images_beyond_the_cap_are_named_as_resources() -> None:
    images = [Image("image/png", picture(10, 10)) for _ in range(5)]
    blocks = image_content(images, "b1", ImagesSetting(max_per_reply=2))
    assert [type(b) for b in blocks] == [ImageContent, ImageContent, TextContent]
    note = blocks[2].text  # type: ignore[union-attr]
    assert "3 more images not shown" in note
    assert "kaimon://block/b1/image/3.png" in note and "image/5.png" in note


def test_link_mode_returns_resource_links() -> None:
    images = [Image("image/jpeg", picture(10, 10, "JPEG"))]
    (link,) = image_content(images, "b1", ImagesSetting(), links=True)
    assert isinstance(link, ResourceLink)
    assert (link.uri, link.mime_type) == ("kaimon://block/b1/image/1.jpeg", "image/jpeg")
    # no block to read from: inline after all
    (inline,) = image_content(images, None, ImagesSetting(links=True))
    assert isinstance(inline, ImageContent)


# -- heartbeat -----------------------------------------------------------------------------


class FakeContext:
    def __init__(self) -> None:
        self.sent: list[tuple[float, float | None, str | None]] = []

    async def report_progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        self.sent.append((progress, total, message))


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.anyio
async def test_a_silent_call_gets_heartbeats_with_growing_progress() -> None:
    ctx = FakeContext()
    async with Heartbeat(ctx, interval=0.05) as beat:
        await _until(lambda: len(ctx.sent) >= 3)
    values = [v for v, _, _ in ctx.sent]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert all("still running" in (m or "") for _, _, m in ctx.sent)
    assert beat.beats >= 3


@pytest.mark.anyio
async def test_output_postpones_the_heartbeat_and_a_known_total_is_kept() -> None:
    ctx = FakeContext()
    async with Heartbeat(ctx, interval=0.2) as beat:
        await beat.report("step", 3, 10)
        assert beat.beats == 0
        await _until(lambda: len(ctx.sent) >= 2)
    (first, second) = ctx.sent[:2]
    assert first == (3, 10, "step")
    assert second[1] == 10 and 3 < second[0] < 4
