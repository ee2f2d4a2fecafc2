"""Bounded capture of an execution's output."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any

import pytest
from conftest import DEADLINE, PersonKernel, stdio_client, text_of
from PIL import Image as PILImage

from kaimon_kernel._output import (
    MAX_EDGE,
    MAX_IMAGE_B64,
    MAX_PENDING_B64,
    OutputCapture,
    as_shown,
    strip_ansi,
)
from kaimon_kernel._protocol import EVAL_METADATA_KEY
from kaimon_kernel.server._execution import Execution

PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
UPDATES = (
    "from IPython.display import display\n"
    "h = display('step 0', display_id=True)\n"
    "for i in range(1, 201):\n"
    "    h.update(f'step {i}')\n"
)
CLEARS = (
    "import base64\nfrom IPython.display import Image, clear_output, display\n"
    "print('before')\n"
    "clear_output()\n"
    f"png = base64.b64decode('{PNG}')\n"
    "for i in range(60):\n"
    "    clear_output(wait=True)\n"
    "    display(Image(data=png, format='png'))\n"
    "    print(f'frame {i}')\n"
)


def test_short_output_is_kept_whole() -> None:
    cap = OutputCapture(limit=100)
    cap.add_text("hello\n")
    cap.add_bundle({"text/plain": "42"})
    assert cap.text() == "hello\n42\n"


def test_long_output_keeps_head_and_tail_and_says_how_much_was_cut() -> None:
    cap = OutputCapture(limit=100)
    for i in range(10_000):
        cap.add_text(f"line {i}\n")
    text = cap.text()
    assert text.startswith("line 0\n")
    assert text.endswith("line 9999\n")
    assert f"of {cap.total_chars:,} characters cut" in text
    assert len(text) < 250


def test_streamed_chunks_are_bounded_and_reset() -> None:
    cap = OutputCapture(limit=100, stream_limit=50)
    cap.add_text("a" * 1000)
    new = cap.take_new()
    assert "characters cut" in new and len(new) < 150
    assert cap.take_new() == ""


def test_ansi_codes_are_stripped() -> None:
    assert strip_ansi("\x1b[0;31mZeroDivisionError\x1b[0m") == "ZeroDivisionError"


def test_what_a_carriage_return_went_back_over_is_not_shown() -> None:
    cap = OutputCapture()
    for i in range(0, 101, 10):
        cap.add_text(f"\r{i:3d}%|{'#' * (i // 10):10}|")
    cap.add_text("\ndone\r\nnext line\n")
    assert cap.text() == "100%|##########|\ndone\r\nnext line\n"
    assert as_shown("a\rb\rc\nx\r\ny") == "c\nx\r\ny"
    # print(..., end="\r") leaves its last state showing
    assert as_shown("Downloading 50%\rDownloading 100%\r") == "Downloading 100%\r"
    assert as_shown("x" * 1_000_000) == "x" * 1_000_000  # no \r: returned as it is
    assert as_shown("a\r" + "x" * 200_000) == "x" * 200_000  # a long line is not quadratic


def test_images_are_kept_unless_too_large_for_one_message() -> None:
    cap = OutputCapture()
    cap.add_bundle({"image/png": "iVBOR\n", "text/plain": "<Figure>"})
    cap.add_bundle({"image/png": "A" * (MAX_IMAGE_B64 + 1)})
    assert [i.data for i in cap.images] == ["iVBOR"]
    assert "was not sent: too large" in cap.text()


def display(data: dict[str, str], display_id: str) -> dict[str, object]:
    return {"data": data, "metadata": {}, "transient": {"display_id": display_id}}


def test_an_update_replaces_the_display_it_names_where_it_was_shown() -> None:
    cap = OutputCapture()
    cap.add_text("before\n")
    cap.add_message("display_data", display({"text/plain": "0%"}, "bar"))
    cap.add_text("after\n")
    for i in range(1, 201):
        cap.add_message("update_display_data", display({"text/plain": f"{i}/200"}, "bar"))
    assert cap.text() == "before\n200/200\nafter\n"


def test_an_update_of_a_display_not_shown_here_shows_once_with_its_latest_content() -> None:
    cap = OutputCapture()
    for i in range(50):
        cap.add_message("update_display_data", display({"text/plain": f"state {i}"}, "other"))
    assert cap.text() == "state 49\n"


def test_updated_images_replace_each_other_and_keep_the_image_budget() -> None:
    cap = OutputCapture()
    frames = [chr(ord("A") + i) * 600_000 for i in range(20)]  # two would pass the budget
    cap.add_message("display_data", display({"image/png": frames[0]}, "plot"))
    for frame in frames[1:]:
        cap.add_message("update_display_data", display({"image/png": frame}, "plot"))
    assert [i.data for i in cap.images] == [frames[-1]]
    assert "not sent" not in cap.text()
    cap.add_message("update_display_data", display({"text/plain": "gone"}, "plot"))
    assert cap.images == [] and cap.text() == "gone\n"


def test_clear_output_drops_what_was_shown_before_it() -> None:
    cap = OutputCapture()
    cap.add_text("old line\n")
    cap.add_bundle({"image/png": "OLD"})
    cap.add_message("clear_output", {"wait": False})
    cap.add_text("new line\n")
    assert cap.text() == "new line\n"
    assert cap.images == []


def test_clear_output_with_wait_clears_when_the_next_output_comes() -> None:
    cap = OutputCapture()
    for i in range(100):  # the clear_output(wait=True); display(fig) loop
        cap.add_message("clear_output", {"wait": True})
        cap.add_message("display_data", {"data": {"image/png": f"FRAME{i}", "text/plain": "<F>"}})
        assert [im.data for im in cap.images] == [f"FRAME{i}"]
    cap.add_message("clear_output", {"wait": True})
    assert [im.data for im in cap.images] == ["FRAME99"]  # nothing came after: still shown
    cap.add_text("done\n")
    assert cap.text() == "done\n" and cap.images == []


def test_the_block_file_keeps_the_raw_text_while_the_reply_is_reduced() -> None:
    sink: list[str] = []
    cap = OutputCapture(sink=sink.append)
    cap.add_text("first\n")
    cap.add_message("clear_output", {"wait": False})
    cap.add_message("display_data", display({"text/plain": "a"}, "d"))
    cap.add_message("update_display_data", display({"text/plain": "b"}, "d"))
    assert cap.text() == "b\n"
    assert "".join(sink) == "first\na\nb\n"


def test_progress_shows_a_display_updated_since_the_last_time_once() -> None:
    cap = OutputCapture()
    cap.add_message("display_data", display({"text/plain": "0%"}, "bar"))
    assert cap.take_new() == "0%\n"
    for i in range(1, 100):
        cap.add_message("update_display_data", display({"text/plain": f"{i}%"}, "bar"))
    assert cap.take_new() == "99%\n"
    assert cap.take_new() == ""


def test_displays_survive_a_long_output_cut_in_the_middle() -> None:
    cap = OutputCapture(limit=100)
    cap.add_message("display_data", display({"text/plain": "head display"}, "h"))
    for i in range(1000):
        cap.add_text(f"line {i}\n")
    cap.add_message("display_data", display({"text/plain": "tail display"}, "t"))
    cap.add_message("update_display_data", display({"text/plain": "tail v2"}, "t"))
    text = cap.text()
    assert text.startswith("head display\n") and text.endswith("tail v2\n")
    assert "\ue000" not in text and "\ue001" not in text


@pytest.mark.anyio
async def test_the_agent_gets_outputs_reduced_as_a_notebook_shows_them(
    person: PersonKernel,
) -> None:
    async with stdio_client() as client:
        updated = await client.call_tool("ex", {"code": UPDATES})
        cleared = await client.call_tool("ex", {"code": CLEARS})
    assert text_of(updated) == "'step 200'\n"
    assert text_of(cleared) == "frame 59\n"
    assert len([b for b in cleared.content if b.type == "image"]) == 1


def test_the_gate_keeps_an_agent_evaluation_reduced_for_recovery(person: PersonKernel) -> None:
    """What a server restarted mid-evaluation recovers from the gate is reduced too."""
    kc = person.kc
    msg = kc.session.msg(
        "execute_request",
        {"code": UPDATES + CLEARS, "silent": False, "store_history": True},
        metadata={EVAL_METADATA_KEY: {"server_pid": 0}},
    )
    kc.shell_channel.send(msg)
    msg_id = msg["header"]["msg_id"]
    while kc.get_shell_msg(timeout=DEADLINE)["parent_header"].get("msg_id") != msg_id:
        pass  # until its execute_reply
    status, out = person.run(
        "import json\nfrom kaimon_kernel.gate._context import _tracker\n"
        f"print(json.dumps(_tracker.query([{msg_id!r}])[0].output))"
    )
    assert status == "ok", out
    assert json.loads(out) == "frame 59\n"


def test_a_carriage_return_after_a_display_does_not_erase_it() -> None:
    cap = OutputCapture()
    cap.add_message("display_data", display({"text/plain": "table"}, "t"))
    cap.add_text("\r50%\r100%\n")
    cap.add_message("display_data", display({"image/png": "PNG"}, "img"))
    cap.add_text("end\n")
    assert cap.text() == "table\n100%\nend\n"


# -- images scaled in the background (the server's loop never waits for one) ---------------


def big_png(width: int = 4000, height: int = 3000) -> str:
    im = PILImage.new("RGB", (width, height), "white")
    im.paste((200, 30, 30), (width // 4, height // 4, width // 2, height // 2))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def iopub(kind: str, content: dict[str, Any]) -> dict[str, Any]:
    return {"header": {"msg_type": kind}, "content": content}


@pytest.mark.anyio
async def test_the_server_scales_an_image_in_a_worker_thread_and_ends_once_it_is_in() -> None:
    ex = Execution("m1", "show()", OutputCapture())
    ex.feed_iopub(iopub("status", {"execution_state": "busy"}))
    ex.feed_iopub(iopub("display_data", {"data": {"image/png": big_png()}, "metadata": {}}))
    ex.feed_iopub(iopub("status", {"execution_state": "idle"}))
    ex.feed_reply({"content": {"status": "ok", "execution_count": 1}})
    seen: list[tuple[int, bool]] = []
    ran = asyncio.Event()

    def meanwhile() -> None:  # scheduled while the image is scaled: runs before it is done
        seen.append((len(ex.capture.images), ex.done.is_set()))
        ran.set()

    asyncio.get_running_loop().call_soon(meanwhile)
    await asyncio.wait_for(ran.wait(), DEADLINE)
    assert seen == [(0, False)]
    await asyncio.wait_for(ex.done.wait(), DEADLINE)
    assert ex.status == "ok"
    (image,) = ex.capture.images
    assert PILImage.open(io.BytesIO(base64.b64decode(image.data))).size == (MAX_EDGE, 1176)


@pytest.mark.anyio
async def test_background_updates_and_clears_keep_only_the_latest_image_and_the_budget() -> None:
    cap = OutputCapture(background=True)
    frames = [chr(ord("A") + i) * 600_000 for i in range(20)]  # two would pass the budget
    cap.add_message("display_data", display({"image/png": frames[0]}, "plot"))
    for frame in frames[1:]:
        cap.add_message("update_display_data", display({"image/png": frame}, "plot"))
    await asyncio.wait_for(cap.settled(), DEADLINE)
    assert [i.data for i in cap.images] == [frames[-1]]
    assert "not sent" not in cap.text()
    for i in range(30):  # the clear_output(wait=True); display(fig) loop
        cap.add_message("clear_output", {"wait": True})
        cap.add_message("display_data", {"data": {"image/png": f"FRAME{i}", "text/plain": "<F>"}})
    await asyncio.wait_for(cap.settled(), DEADLINE)
    assert [i.data for i in cap.images] == ["FRAME29"]
    cap.add_bundle({"image/png": "A" * (MAX_IMAGE_B64 + 1)})
    await asyncio.wait_for(cap.settled(), DEADLINE)
    assert "was not sent: too large" in cap.text()


@pytest.mark.anyio
async def test_raw_images_waiting_to_be_scaled_are_bounded() -> None:
    cap = OutputCapture(background=True)
    raw = "A" * (MAX_PENDING_B64 // 3)
    for _ in range(5):  # faster than they are scaled: the fourth and fifth are not kept
        cap.add_bundle({"image/png": raw})
    assert cap.text().count("was not kept: images came faster") == 2
    await asyncio.wait_for(cap.settled(), DEADLINE)
    assert cap.scaling == 0
