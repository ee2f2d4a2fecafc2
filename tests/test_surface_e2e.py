"""What the agent is shown, end to end over stdio with the real MCP client: annotations, the
tool allow/deny lists, images, resources, prompts and the heartbeat."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import DEADLINE, PersonKernel, stdio_client, text_of
from mcp.types import BlobResourceContents, ImageContent, ResourceLink, TextContent
from PIL import Image as PILImage

pytestmark = pytest.mark.anyio

TOOLS = """
import time
from kaimon_kernel import GateTool, serve, tool

def peek(x: int) -> int:
    return x

def _secret() -> str:
    return "hidden but here"

def slow() -> str:
    time.sleep(1.5)
    return "done"

serve(namespace="surf", tools=[
    GateTool("peek", peek, read_only=True, open_world=False),
    GateTool("_secret", _secret),
    GateTool("slow", slow),
])

@tool(destructive=True, idempotent=False)
def wipe() -> str:
    return "wiped"
"""

READ_ONLY = {"list_sessions", "check_eval", "list_jobs", "history", "read_block"}
READ_ONLY |= {"usage_instructions"}


@pytest.fixture
def surf(make_person) -> PersonKernel:
    kernel = make_person(serve=False)
    status, out = kernel.run(TOOLS)
    assert status == "ok", out
    return kernel


async def tools_of(client: Any, expect: str | None = None) -> dict[str, Any]:
    """tools/list once ``expect`` is in it (gate tools come as the session connects)."""
    for _ in range(200):
        tools = {t.name: t for t in (await client.list_tools()).tools}
        if expect is None or expect in tools:
            return tools
        await anyio.sleep(0.05)
    raise AssertionError(f"{expect} never listed")


def config_dir(tmp_path: Path, settings: dict[str, Any], monkeypatch: Any) -> None:
    (tmp_path / "kaimon.json").write_text(json.dumps(settings))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path))


async def test_tools_list_carries_annotations_of_builtin_and_gate_tools(surf) -> None:
    async with stdio_client(cache=None) as client:
        tools = await tools_of(client, "surf_wipe")
        secret = await client.call_tool("surf__secret", {})
    for name in READ_ONLY:
        assert tools[name].annotations.read_only_hint is True, name
    assert tools["manage_repl"].annotations.destructive_hint is True
    assert all(
        t.annotations.open_world_hint is False
        for name, t in tools.items()
        if not name.startswith(("ex", "surf_"))
    )
    assert tools["set_option"].annotations.idempotent_hint is True
    assert tools["surf_peek"].annotations.read_only_hint is True
    assert tools["surf_peek"].annotations.open_world_hint is False
    wipe = tools["surf_wipe"].annotations
    assert (wipe.destructive_hint, wipe.idempotent_hint) == (True, False)
    assert tools["surf_slow"].annotations is None
    # a _name tool is not listed, yet callable
    assert "surf__secret" not in tools
    assert text_of(secret) == "hidden but here"


async def test_deny_hides_tools_from_the_list_and_refuses_their_calls(
    surf, tmp_path: Path, monkeypatch: Any
) -> None:
    config_dir(tmp_path, {"tools": {"deny": ["manage_repl", "surf_p*"]}}, monkeypatch)
    async with stdio_client(cache=None) as client:
        tools = await tools_of(client, "surf_wipe")
        repl = await client.call_tool("manage_repl", {"command": "interrupt"})
        peek = await client.call_tool("surf_peek", {"x": 1})
        ex = await client.call_tool("ex", {"code": "1 + 1"})
    assert "manage_repl" not in tools and "surf_peek" not in tools and "ex" in tools
    assert repl.is_error and "'manage_repl' is hidden" in text_of(repl)
    assert "tools.deny" in text_of(repl)
    assert peek.is_error and "hidden" in text_of(peek)
    assert text_of(ex).strip() == "2"


async def test_allow_lists_only_the_named_tools(person, tmp_path, monkeypatch) -> None:
    config_dir(tmp_path, {"tools": {"allow": ["ex", "list_*"]}}, monkeypatch)
    async with stdio_client(cache=None) as client:
        tools = await tools_of(client)
        refused = await client.call_tool("history", {})
    assert set(tools) == {"ex", "list_sessions", "list_jobs"}
    assert refused.is_error and "tools.allow" in text_of(refused)


FIGURE = (
    "from PIL import Image, ImageDraw\n"
    "im = Image.new('RGB', (4000, 3000), 'white')\n"
    "ImageDraw.Draw(im).rectangle([500, 500, 3500, 2500], outline='black', width=20)\n"
    "im"
)


def size_of(block: ImageContent) -> tuple[int, int]:
    return PILImage.open(io.BytesIO(base64.b64decode(block.data))).size


async def test_a_4000_by_3000_figure_comes_back_1568_wide_with_no_text_block(person) -> None:
    async with stdio_client() as client:
        result = await client.call_tool("ex", {"code": FIGURE})
    assert [b.type for b in result.content] == ["image"], result.content
    assert size_of(result.content[0]) == (1568, 1176)  # type: ignore[arg-type]
    assert result.content[0].mime_type == "image/png"  # type: ignore[union-attr]


NOISE = (
    "import io\nfrom PIL import Image\nbuf = io.BytesIO()\n"
    "Image.effect_noise((6000, 4000), 60).save(buf, 'PNG', compress_level=1)\n"
    "noise = buf.getvalue()"
)
#: The marker is touched once the second image is sent: the first has reached the server.
SHOW_NOISE = (
    "import pathlib\nfrom IPython.display import Image, display\n"
    "display(Image(data=noise, format='png'))\ndisplay(Image(data=noise, format='png'))\n"
    "pathlib.Path({marker!r}).touch()"
)


async def test_a_big_image_being_scaled_does_not_hold_up_another_session(
    make_person, tmp_path
) -> None:
    """A 6000x4000 noisy PNG (32 MB of base64) takes about a second to scale down: another
    session's quick call started while it is scaled is answered first."""
    make_person("--label big").run(NOISE)
    make_person("--label quick")
    marker = tmp_path / "shown"
    done: list[str] = []
    took: dict[str, float] = {}

    async def ex(session: str, code: str) -> None:
        start = time.monotonic()
        result = await client.call_tool("ex", {"code": code, "session": session})
        took[session] = time.monotonic() - start
        assert not result.is_error, text_of(result)
        done.append(session)

    async with stdio_client() as client:
        for session in ("big", "quick"):  # both connected before the race
            assert text_of(await client.call_tool("ex", {"code": "1", "session": session}))
        async with anyio.create_task_group() as tg:
            tg.start_soon(ex, "big", SHOW_NOISE.format(marker=str(marker)))
            with anyio.fail_after(DEADLINE):
                while not marker.exists():  # the kernel has sent the image
                    await anyio.sleep(0.01)
            tg.start_soon(ex, "quick", "1+1")
    print(f"quick ex took {took['quick']:.3f} s; the big image's ex {took['big']:.3f} s")
    assert done == ["quick", "big"]


SHOW_THREE = (
    "from PIL import Image\nfrom IPython.display import display\n"
    "for c in ('red', 'green', 'blue'):\n    display(Image.new('RGB', (40, 30), c))"
)


async def test_images_beyond_the_cap_are_left_out_and_readable_as_resources(
    person, tmp_path, monkeypatch
) -> None:
    config_dir(tmp_path, {"images": {"max_per_reply": 2}}, monkeypatch)
    async with stdio_client() as client:
        result = await client.call_tool("ex", {"code": SHOW_THREE})
        note = result.content[-1]
        assert isinstance(note, TextContent), result.content
        uri = note.text.split("resources: ")[1].rstrip("]")
        read = await client.read_resource(uri)
    assert [b.type for b in result.content] == ["image", "image", "text"]
    assert "1 more image not shown (at most 2 per reply)" in note.text
    (content,) = read.contents
    assert isinstance(content, BlobResourceContents) and content.mime_type == "image/png"
    blue = PILImage.open(io.BytesIO(base64.b64decode(content.blob))).convert("RGB")
    assert blue.getpixel((0, 0)) == (0, 0, 255)


async def test_link_mode_returns_resource_links_the_client_can_read(person) -> None:
    async with stdio_client() as client:
        result = await client.call_tool("ex", {"code": SHOW_THREE, "images": "link"})
        links = [b for b in result.content if isinstance(b, ResourceLink)]
        read = await client.read_resource(str(links[0].uri))
        missing = await client.call_tool("ex", {"code": "1", "images": "bogus"})
    assert len(links) == 3 and not any(isinstance(b, ImageContent) for b in result.content)
    assert str(links[1].uri).endswith("/image/2.png")
    (content,) = read.contents
    assert isinstance(content, BlobResourceContents) and content.mime_type == "image/png"
    assert missing.is_error


async def test_sessions_and_blocks_are_listed_and_read_as_resources(person) -> None:
    async with stdio_client(cache=None) as client:
        ran = await client.call_tool("ex", {"code": "print('0123456789' * 3)"})
        assert not ran.is_error
        listed = {str(r.uri) for r in (await client.list_resources()).resources}
        templates = {
            t.uri_template for t in (await client.list_resource_templates()).resource_templates
        }
        session = await client.read_resource(f"kaimon://session/{person.key}")
        latest = await client.call_tool("history", {"limit": 1})
        block_uri = f"kaimon://block/{latest.structured_content['blocks'][0]['block_id']}"
        page = await client.read_resource(block_uri + "?offset=2&limit=5")
        with pytest.raises(Exception, match="no session has key"):
            await client.read_resource("kaimon://session/nope")
    assert f"kaimon://session/{person.key}" in listed and block_uri in listed
    assert "kaimon://block/{block_id}{?offset,limit}" in templates
    assert json.loads(session.contents[0].text)["key"] == person.key  # type: ignore[union-attr]
    text = page.contents[0].text  # type: ignore[union-attr]
    assert text.endswith("\n23456") and "characters 2-7 of 31" in text


async def test_prompts_teach_kaimon_and_gate_tools(person) -> None:
    async with stdio_client() as client:
        names = {p.name for p in (await client.list_prompts()).prompts}
        start = await client.get_prompt("getting-started")
        gate = await client.get_prompt("gate-tools")
    assert {"getting-started", "gate-tools"} <= names
    assert "ex(code, session?)" in start.messages[0].content.text  # type: ignore[union-attr]
    assert "@kk.tool(read_only=True)" in gate.messages[0].content.text  # type: ignore[union-attr]


async def test_silent_code_and_a_silent_gate_tool_send_heartbeats(surf, monkeypatch) -> None:
    monkeypatch.setenv("KAIMON_HEARTBEAT", "0.3")
    beats: list[tuple[float, str]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        beats.append((progress, message or ""))

    async with stdio_client(cache=None) as client:
        await tools_of(client, "surf_slow")
        result = await client.call_tool(
            "ex", {"code": "import time\ntime.sleep(1.5)\n'woke'"}, progress_callback=on_progress
        )
        ex_beats = list(beats)
        beats.clear()
        tool = await client.call_tool("surf_slow", {}, progress_callback=on_progress)
    assert text_of(result).strip() == "'woke'"
    assert len(ex_beats) >= 2 and all("still running" in m for _, m in ex_beats)
    assert [p for p, _ in ex_beats] == sorted({p for p, _ in ex_beats})
    assert text_of(tool) == "done"
    assert any("still running" in m for _, m in beats)


async def test_the_builtin_tools_list_costs_at_most_4_kb() -> None:
    # no session served: the built-in tools only, as the client receives them
    async with stdio_client(cache=None) as client:
        listing = await client.list_tools()
    builtin = {"ex", "check_eval", "cancel_eval", "list_jobs", "list_sessions", "history"}
    builtin |= {"usage_instructions", "start_session", "manage_repl", "set_option"}
    builtin |= {"set_session_info", "read_block", "export_notebook"}
    # a live session's gate tools aside; the extension tools are listed only once an
    # extension is registered
    extension_tools = {"extension_info", "manage_extension"}
    listing.tools = [t for t in listing.tools if t.name in builtin | extension_tools]
    assert {t.name for t in listing.tools} == builtin
    size = len(listing.model_dump_json(by_alias=True, exclude_none=True).encode())
    assert size <= 4000, f"tools/list is {size} bytes"


async def test_a_session_that_comes_announces_resources_list_changed(make_person) -> None:
    async with stdio_client(cache=None) as client:
        async with client.listen(resources_list_changed=True) as events:
            newcomer = make_person("--label newcomer")
            with anyio.fail_after(15):
                async for _event in events:
                    listed = {str(r.uri) for r in (await client.list_resources()).resources}
                    if f"kaimon://session/{newcomer.key}" in listed:
                        break
