"""The live view: the person's %kaimon serve cell shows what the agent runs, as it runs."""

from __future__ import annotations

import re
from queue import Empty
from typing import Any

import anyio
import pytest
from conftest import stdio_client, text_of

pytestmark = pytest.mark.anyio


def serve_with_view(kernel: Any, args: str = "") -> str | None:
    """Run %kaimon serve like a notebook cell; return the live view's display_id."""
    display_ids = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "display_data":
            display_ids.append(msg["content"].get("transient", {}).get("display_id"))

    reply = kernel.kc.execute_interactive(
        f"%load_ext kaimon_kernel\n%kaimon serve {args}", timeout=30, output_hook=hook
    )
    assert reply["content"]["status"] == "ok"
    return display_ids[0] if display_ids else None


def drain_updates(kernel: Any, display_id: str) -> list[str]:
    texts = []
    while True:
        try:
            msg = kernel.kc.get_iopub_msg(timeout=0.5)
        except Empty:
            return texts
        content = msg["content"]
        if (
            msg["msg_type"] == "update_display_data"
            and content.get("transient", {}).get("display_id") == display_id
        ):
            texts.append(content["data"]["text/plain"])


async def test_the_serve_cell_shows_the_agents_code_and_output_live(make_person) -> None:
    person = make_person(serve=False)
    display_id = serve_with_view(person)
    assert display_id and display_id.startswith("kaimon-")
    drain_updates(person, display_id)
    code = "import time\nprint('agent says hi', flush=True)\ntime.sleep(2.5)\n'done'"
    async with stdio_client() as client:
        result = await client.call_tool("ex", {"code": code})
    assert text_of(result) == "agent says hi\n'done'\n"  # the view never leaks into replies
    updates = drain_updates(person, display_id)
    running = [u for u in updates if "the agent is running" in u]
    assert running and "print('agent says hi', flush=True)" in running[0]
    assert any("agent says hi" in u and "output so far" in u for u in running)
    assert "recent:" in updates[-1] and "import time" in updates[-1]


async def test_mirror_can_be_turned_off_and_is_refused_where_not_allowed(make_person) -> None:
    person = make_person(serve=False)
    display_id = serve_with_view(person)
    assert "live view off" in person.run("%kaimon mirror off")[1]
    drain_updates(person, display_id)
    strict = make_person(serve=False)
    assert serve_with_view(strict, "--label strict --no-mirror") is None
    async with stdio_client() as client:
        sessions = (await client.call_tool("list_sessions", {})).structured_content["sessions"]
        other = next(s["key"] for s in sessions if s["label"] != "strict")
        await client.call_tool("ex", {"code": "x = 1", "session": other})
        refused = await client.call_tool("set_option", {"mirror": True, "session": "strict"})
        turned_on = await client.call_tool("set_option", {"mirror": True, "session": other})
        await client.call_tool("ex", {"code": "y = 2", "session": other})
    assert refused.is_error and "allow_mirror=False" in text_of(refused)
    assert not turned_on.is_error
    updates = drain_updates(person, display_id)
    assert updates
    assert all("y = 2" in u for u in updates)  # nothing was sent while the view was off


async def test_the_agents_tool_calls_show_in_the_view(make_person) -> None:
    person = make_person(serve=False)
    display_id = serve_with_view(person, "--namespace shop")
    status, out = person.run(
        "import kaimon_kernel\n"
        "@kaimon_kernel.tool\n"
        "def price(item: str, qty: int = 1) -> float:\n"
        "    return 2.5 * qty\n"
    )
    assert status == "ok", out
    drain_updates(person, display_id)
    async with stdio_client() as client:
        result = await client.call_tool("shop_price", {"item": "pear", "qty": 2})
    assert not result.is_error, text_of(result)
    updates = drain_updates(person, display_id)
    assert updates
    assert re.search(
        r"\d\d:\d\d:\d\d  ok +\d+\.\d s  tool price\(item='pear', qty=2\)", updates[-1]
    )


async def test_background_jobs_running_and_queued_show_in_the_view(make_person) -> None:
    person = make_person(serve=False)
    display_id = serve_with_view(person)
    drain_updates(person, display_id)
    async with stdio_client("--promote-after", "0.5") as client:
        first = await client.call_tool("ex", {"code": "import time\ntime.sleep(3)"})
        second = await client.call_tool("ex", {"code": "time.sleep(0.2)\n'second'"})
        ids = [r.structured_content["eval_id"] for r in (first, second)]
        status = "running"
        with anyio.fail_after(30):
            while status == "running":
                await anyio.sleep(0.2)
                check = await client.call_tool("check_eval", {"eval_id": ids[1]})
                status = check.structured_content["status"]
    assert status == "completed", text_of(check)
    updates = drain_updates(person, display_id)
    assert any(
        f"the agent is running background job {ids[0]}" in u
        and f"queued: 1 background job ({ids[1]})" in u
        for u in updates
    ), updates
    recent = updates[-1].split("recent:", 1)[1]
    assert f"job {ids[1]}: time.sleep(0.2)" in recent and f"job {ids[0]}: import time" in recent
    assert "queued" not in updates[-1] and "the agent is running" not in updates[-1]
