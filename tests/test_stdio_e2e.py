"""The agent's side over stdio, against real kernels the person serves."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from conftest import PersonKernel, sessions_dir, stdio_client, text_of, wait_until

pytestmark = pytest.mark.anyio


async def test_agent_and_person_share_one_namespace_both_ways(person: PersonKernel) -> None:
    person.run("shared_from_person = 41")
    async with stdio_client() as client:
        result = await client.call_tool("ex", {"code": "shared_from_person + 1"})
        assert not result.is_error
        assert text_of(result).strip() == "42"
        result = await client.call_tool("ex", {"code": "from_agent = [1, 2, 3]"})
        assert text_of(result) == "(no output)"
    assert person.run("print(sum(from_agent))") == ("ok", "6\n")


async def test_list_sessions_shows_served_kernel_with_its_facts(person: PersonKernel) -> None:
    async with stdio_client() as client:
        result = await client.call_tool("list_sessions", {})
    (row,) = result.structured_content["sessions"]
    assert row["key"] == person.key
    assert row["label"] == "person"
    assert row["status"] == "idle"
    assert row["pid"] == person.pid
    assert row["started_by"] == "person"
    assert row["python_version"].count(".") == 2
    assert person.key in text_of(result)


async def test_serve_flags_are_reported_in_list_sessions(make_person) -> None:
    make_person("--label strict --no-mirror --no-restart --description 'no touching'")
    async with stdio_client() as client:
        result = await client.call_tool("list_sessions", {})
    (row,) = result.structured_content["sessions"]
    assert (row["allow_mirror"], row["allow_restart"]) == (False, False)
    assert row["description"] == "no touching"


async def test_stdout_stderr_and_value_come_back_in_order(person: PersonKernel) -> None:
    code = "import sys\nprint('out', flush=True)\nprint('err', file=sys.stderr, flush=True)\n6 * 7"
    async with stdio_client() as client:
        result = await client.call_tool("ex", {"code": code})
        quiet = await client.call_tool("ex", {"code": "6 * 7", "quiet": True})
    assert text_of(result) == "out\nerr\n42\n"
    assert text_of(quiet) == "(no output)"


async def test_an_exception_is_an_error_with_a_plain_traceback(person: PersonKernel) -> None:
    async with stdio_client() as client:
        result = await client.call_tool("ex", {"code": "def f():\n    return 1/0\nf()"})
        after = await client.call_tool("ex", {"code": "'still alive'"})
    assert result.is_error
    text = text_of(result)
    assert "ZeroDivisionError: division by zero" in text
    assert "return 1/0" in text
    assert "\x1b[" not in text
    assert text_of(after).strip() == "'still alive'"


async def test_images_come_back_as_image_content(person: PersonKernel) -> None:
    code = (
        "import base64\nfrom IPython.display import Image, display\n"
        "png = base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
        "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==')\ndisplay(Image(data=png, format='png'))\n'done'"
    )
    async with stdio_client() as client:
        result = await client.call_tool("ex", {"code": code})
    images = [b for b in result.content if b.type == "image"]
    assert len(images) == 1
    assert images[0].mime_type == "image/png"
    assert images[0].data.startswith("iVBORw0KGgo")
    assert "'done'" in text_of(result)


async def test_a_multi_megabyte_print_is_cut_to_head_and_tail(person: PersonKernel) -> None:
    code = "print('HEAD' + 'x' * 5_000_000 + 'TAIL')"
    async with stdio_client() as client:
        result = await client.call_tool("ex", {"code": code, "max_output": 2000})
    text = result.content[0].text
    assert len(text) < 2300
    assert text.startswith("HEAD")
    assert text.rstrip().endswith("TAIL")
    assert "characters cut" in text
    assert "5,000,009 characters" in text
    assert "read_block(block_id=" in result.content[1].text


async def test_output_streams_as_progress_while_code_runs(person: PersonKernel) -> None:
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    code = "import time\nfor i in range(3):\n    print('step', i, flush=True)\n    time.sleep(0.4)"
    async with stdio_client() as client:
        result = await client.call_tool("ex", {"code": code}, progress_callback=on_progress)
    assert text_of(result) == "step 0\nstep 1\nstep 2\n"
    assert "step 0" in "".join(messages)
    assert len(messages) >= 2


async def test_two_sessions_need_a_name_and_each_name_kind_selects(make_person) -> None:
    a = make_person("--label alpha --namespace ns_a")
    b = make_person("--label beta --namespace ns_b")
    a.run("who = 'a'")
    b.run("who = 'b'")
    async with stdio_client() as client:
        ambiguous = await client.call_tool("ex", {"code": "who"})
        assert ambiguous.is_error
        assert "2 sessions are served" in text_of(ambiguous)
        assert a.key in text_of(ambiguous) and b.key in text_of(ambiguous)
        by_label = await client.call_tool("ex", {"code": "who", "session": "alpha"})
        by_key = await client.call_tool("ex", {"code": "who", "session": b.key})
        by_ns = await client.call_tool("ex", {"code": "who", "session": "ns_b"})
        unknown = await client.call_tool("ex", {"code": "who", "session": "gamma"})
    assert text_of(by_label).strip() == "'a'"
    assert text_of(by_key).strip() == "'b'"
    assert text_of(by_ns).strip() == "'b'"
    assert unknown.is_error and "no session is called 'gamma'" in text_of(unknown)


async def test_a_kernel_killed_mid_ex_is_reported_and_others_keep_working(make_person) -> None:
    doomed = make_person("--label doomed")
    make_person("--label other")
    async with stdio_client("--promote-after", "120") as client:
        call = asyncio.create_task(
            client.call_tool("ex", {"code": "import time; time.sleep(100)", "session": "doomed"})
        )
        await asyncio.sleep(1.0)
        os.kill(doomed.pid, signal.SIGKILL)
        result = await asyncio.wait_for(call, 20)  # reported, not waited on for 100 s
        assert result.is_error
        assert "died" in text_of(result)
        still = await client.call_tool("ex", {"code": "'ok'", "session": "other"})
        assert text_of(still).strip() == "'ok'"
        listing = await client.call_tool("list_sessions", {})
    assert [r["label"] for r in listing.structured_content["sessions"]] == ["other"]
    assert not (sessions_dir() / f"session-{doomed.key}.json").exists()


async def test_a_session_that_stops_serving_disappears(person: PersonKernel) -> None:
    async with stdio_client("--no-auto-start") as client:
        before = await client.call_tool("list_sessions", {})
        assert len(before.structured_content["sessions"]) == 1
        assert person.run("%kaimon stop")[1].startswith("kaimon: stopped")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            after = await client.call_tool("list_sessions", {})
            if not after.structured_content["sessions"]:
                break
            await asyncio.sleep(0.1)
        assert after.structured_content["sessions"] == []
        refused = await client.call_tool("ex", {"code": "1"})
    assert refused.is_error
    assert "no kernel is served" in text_of(refused)


async def test_a_stale_session_file_from_a_dead_pid_is_cleaned(person: PersonKernel) -> None:
    stale = sessions_dir() / "session-deadbeef.json"
    info = (sessions_dir() / f"session-{person.key}.json").read_text()
    proc = await asyncio.create_subprocess_exec("true")
    await proc.wait()
    stale.write_text(
        info.replace(person.key, "deadbeef").replace(f'"pid": {person.pid}', f'"pid": {proc.pid}')
    )
    async with stdio_client() as client:
        listing = await client.call_tool("list_sessions", {})
    assert [r["key"] for r in listing.structured_content["sessions"]] == [person.key]
    assert not stale.exists()


async def test_a_busy_kernel_tells_the_agent_what_it_waits_on(person: PersonKernel) -> None:
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with stdio_client() as client:
        await client.call_tool("list_sessions", {})
        person.kc.execute("import time; time.sleep(4)  # the person's long cell")
        await asyncio.sleep(0.5)
        result = await client.call_tool("ex", {"code": "'after'"}, progress_callback=on_progress)
    assert text_of(result).endswith("'after'\n")
    assert "[waited" in text_of(result)
    waiting = [m for m in messages if m.startswith("[waiting")]
    assert waiting, messages
    assert "time.sleep(4)" in waiting[0]


async def test_long_code_is_promoted_and_checked_later(person: PersonKernel) -> None:
    code = "import time\nprint('begun', flush=True)\ntime.sleep(2)\nprint('finished')"
    async with stdio_client("--promote-after", "0.5") as client:
        result = await client.call_tool("ex", {"code": code})
        eval_id = result.structured_content["eval_id"]
        assert f"eval_id: {eval_id}" in text_of(result)
        bad = await client.call_tool("check_eval", {"eval_id": "zzz"})
        assert bad.is_error and "'zzz' is not an eval id" in text_of(bad)
        unknown = await client.call_tool("check_eval", {"eval_id": "0000000"})
        assert unknown.is_error and "no job has id '0000000'" in text_of(unknown)
        deadline = time.monotonic() + 20
        while True:
            check = await client.call_tool("check_eval", {"eval_id": eval_id[:5]})
            if check.structured_content["status"] != "running" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    assert check.structured_content["status"] == "completed"
    assert "begun\nfinished\n" in text_of(check)


async def test_with_no_session_ex_starts_a_kernel_and_says_so(tmp_path) -> None:
    async with stdio_client(cwd=tmp_path) as client:
        result = await client.call_tool("ex", {"code": "import os; os.getcwd()"})
        listing = await client.call_tool("list_sessions", {})
    assert not result.is_error, text_of(result)
    assert "a new one was started for you" in text_of(result)
    assert repr(str(tmp_path)) in text_of(result)
    (row,) = listing.structured_content["sessions"]
    assert row["started_by"] == "agent"
    # the server shut its kernel down on exit
    session_file = sessions_dir() / f"session-{row['key']}.json"
    wait_until(lambda: not session_file.exists(), 15, "session file removal")


async def test_no_auto_start_refuses_with_advice() -> None:
    async with stdio_client("--no-auto-start") as client:
        result = await client.call_tool("ex", {"code": "1"})
    assert result.is_error
    assert "%kaimon serve" in text_of(result)


async def test_code_waiting_on_the_persons_cell_is_promoted_with_the_reason(person) -> None:
    async with stdio_client("--promote-after", "1") as client:
        await client.call_tool("list_sessions", {})
        person.kc.execute("import time; time.sleep(4)  # person busy")
        await asyncio.sleep(0.5)
        result = await client.call_tool("ex", {"code": "'later'"})
        assert "it has not started yet: the kernel is busy running" in text_of(result)
        assert "time.sleep(4)" in text_of(result)
        eval_id = result.structured_content["eval_id"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            check = await client.call_tool("check_eval", {"eval_id": eval_id})
            if check.structured_content["status"] != "running":
                break
            await asyncio.sleep(0.2)
    assert check.structured_content["status"] == "completed"
    assert text_of(check).endswith("'later'\n")


async def test_the_persons_status_shows_the_connected_server(person: PersonKernel) -> None:
    async with stdio_client() as client:
        await client.call_tool("ex", {"code": "1"})
        _, status = person.run("%kaimon status")
    assert "connected: kaimon server pid" in status
