"""Defects found trying kaimon as a new user would, fuzzing it and killing its parts (issue 9)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PersonKernel, sessions_dir, stdio_client, text_of, wait_until

from kaimon_kernel._protocol import SessionInfo
from kaimon_kernel.server.providers import ProcessIdentity, reap_orphans

pytestmark = pytest.mark.anyio

TOOL_CELL = "import kaimon_kernel\n@kaimon_kernel.tool\ndef ping() -> str:\n    return 'pong'\n"


async def test_the_first_tools_list_holds_the_gate_tools_of_sessions_already_served(
    make_person,
) -> None:
    kernels = [make_person(serve=False) for _ in range(3)]
    for n, kernel in enumerate(kernels):
        kernel.run("%load_ext kaimon_kernel\n" + TOOL_CELL)
        kernel.serve(f"--namespace ns{n}")
    async with stdio_client() as client:
        tools = {t.name for t in (await client.list_tools()).tools}
    assert {"ns0_ping", "ns1_ping", "ns2_ping"} <= tools


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], stdin=subprocess.DEVNULL
    )


async def test_a_crafted_session_file_exposes_nothing_and_signals_no_stranger(make_person) -> None:
    unserved = make_person(serve=False)  # a kernel that never ran %kaimon serve
    stranger = _sleeper()
    try:
        connection = unserved.km.connection_file
        crafted = SessionInfo(
            session_id="crafted",
            key="crafted1",
            pid=stranger.pid,
            connection_file=connection,
            namespace="evil",
            label="evil",
            cwd="/",
            python_version="3",
            started_at=time.time(),
        )
        path = sessions_dir() / "session-crafted1.json"
        path.write_text(crafted.model_dump_json())
        async with stdio_client("--no-auto-start") as client:
            ran = await client.call_tool("ex", {"code": "leaked = 1", "session": "crafted1"})
            interrupt = await client.call_tool(
                "manage_repl", {"command": "interrupt", "session": "crafted1"}
            )
        assert ran.is_error and "has not answered" in text_of(ran), text_of(ran)
        assert interrupt.is_error
        assert stranger.poll() is None  # the stranger was not signalled
        _, out = unserved.run("'leaked' in globals()")
        assert out.strip() == "False"
        path.unlink(missing_ok=True)
    finally:
        stranger.kill()
        stranger.wait()


def test_an_owner_record_from_before_a_reboot_stops_no_unrelated_process(tmp_path: Path) -> None:
    stranger = _sleeper()
    try:
        record = {
            "server": {"pid": 999_999, "create_time": 1.0},  # long gone
            # same pid, but not the same process: created at another time
            "kernel": {"pid": stranger.pid, "create_time": 12345.0},
            "connection_file": str(tmp_path / "kernel-x.json"),
        }
        (tmp_path / "owned-x.json").write_text(json.dumps(record))
        legacy = {"server_pid": 999_999, "kernel_pid": stranger.pid, "connection_file": "/x"}
        (tmp_path / "owned-y.json").write_text(json.dumps(legacy))
        assert reap_orphans(tmp_path) == []
        assert stranger.poll() is None
        assert not list(tmp_path.glob("owned-*.json"))
        identity = ProcessIdentity.of(stranger.pid)
        assert identity is not None
        record["kernel"] = {"pid": identity.pid, "create_time": identity.create_time}
        (tmp_path / "owned-z.json").write_text(json.dumps(record))
        assert reap_orphans(tmp_path) == [stranger.pid]  # the real orphan is stopped
        stranger.wait(5)
    finally:
        stranger.kill()
        stranger.wait()


async def test_servers_that_came_and_went_leave_nothing_in_the_kernel(
    person: PersonKernel,
) -> None:
    _, before = person.run("import threading; threading.active_count()")
    for _ in range(4):
        async with stdio_client("--no-auto-start") as client:
            result = await client.call_tool("ex", {"code": "1"})
            assert not result.is_error, text_of(result)
    _, status = wait_until(
        lambda: (s := person.run("%kaimon status")) and "connected:" not in s[1] and s,
        15,
        "the servers to be gone from %kaimon status",
    )
    assert "no kaimon server has connected" in status
    _, after = person.run("import threading; threading.active_count()")
    assert int(after) <= int(before)  # no subshell thread left per server


async def test_progress_for_a_huge_print_is_bounded_by_max_output(person: PersonKernel) -> None:
    sizes: list[int] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        sizes.append(len(message or ""))

    code = (
        "import time\n"
        "for i in range(20):\n"
        "    print('x' * 5000, flush=True)\n"
        "    time.sleep(0.05)\n"
    )
    async with stdio_client() as client:
        result = await client.call_tool(
            "ex", {"code": code, "max_output": 2000}, progress_callback=on_progress
        )
    assert not result.is_error, text_of(result)
    assert sizes, "some output was streamed"
    assert sum(sizes) <= 2000 + 200  # the bound, plus one note saying the rest is not streamed


async def test_with_nothing_served_the_agent_is_told_where_kaimon_looked() -> None:
    async with stdio_client("--no-auto-start") as client:
        result = await client.call_tool("ex", {"code": "1"})
    assert result.is_error
    assert str(sessions_dir()) in text_of(result)


WHO_CELL = (
    "import kaimon_kernel\n"
    "@kaimon_kernel.tool\n"
    "def who() -> str:\n"
    "    return kaimon_kernel.gate.current_gate().info.key\n"
)


async def test_namespace_suffixes_stay_with_their_session_across_a_restart(tmp_path) -> None:
    async with stdio_client(cwd=tmp_path) as client:
        keys = []
        for _ in range(2):
            started = await client.call_tool("start_session", {"project_path": str(tmp_path)})
            assert not started.is_error, text_of(started)
            keys.append(started.structured_content["key"])
            await client.call_tool("ex", {"code": WHO_CELL, "session": keys[-1]})

        async def who_is_who() -> dict[str, str]:
            names = sorted(t.name for t in (await client.list_tools()).tools if "_who" in t.name)
            return {name: text_of(await client.call_tool(name, {})) for name in names}

        before = await who_is_who()
        assert sorted(before.values()) == sorted(keys)
        restarted = await client.call_tool(
            "manage_repl", {"command": "restart", "session": keys[0]}
        )
        assert not restarted.is_error, text_of(restarted)
        await client.call_tool("ex", {"code": WHO_CELL, "session": keys[0]})
        after = await who_is_who()
    assert after == before


async def test_a_kernel_the_server_started_is_interrupted_by_its_kernel_manager(tmp_path) -> None:
    async with stdio_client("--promote-after", "0.5", cwd=tmp_path) as client:
        started = await client.call_tool("start_session", {"project_path": str(tmp_path)})
        key = started.structured_content["key"]
        await client.call_tool("ex", {"code": "kept = 42", "session": key})
        job = await client.call_tool("ex", {"code": "import time; time.sleep(60)", "session": key})
        eval_id = job.structured_content["eval_id"]
        interrupt = {"command": "interrupt", "session": key}
        interrupted = await client.call_tool("manage_repl", interrupt)
        assert "kernel manager" in text_of(interrupted), text_of(interrupted)
        for _ in range(100):
            check = await client.call_tool("check_eval", {"eval_id": eval_id})
            if check.structured_content["status"] != "running":
                break
            await asyncio.sleep(0.1)
        kept = await client.call_tool("ex", {"code": "kept", "session": key})
    assert check.structured_content["status"] == "failed", text_of(check)
    assert "KeyboardInterrupt" in text_of(check)
    assert text_of(kept).strip() == "42"
