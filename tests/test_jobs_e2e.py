"""Background jobs: promotion, stash/progress, cancellation, recovery, many at once."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import anyio
import httpx2
import pytest
from conftest import HttpServer, PersonKernel, stdio_client, text_of, wait_until
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

pytestmark = pytest.mark.anyio

TOKEN = "jobs-token-0123456789abcdef"


async def wait_status(client: Any, eval_id: str, timeout: float = 30) -> Any:
    check = None
    with anyio.move_on_after(timeout):
        while True:
            check = await client.call_tool("check_eval", {"eval_id": eval_id})
            assert check.structured_content, text_of(check)
            if check.structured_content["status"] != "running":
                return check
            await asyncio.sleep(0.1)
    raise AssertionError(f"job {eval_id} still running after {timeout} s:\n{text_of(check)}")


def gate_knows_a_server(person: PersonKernel) -> None:
    wait_until(
        lambda: "connected: kaimon server" in person.run("%kaimon status")[1],
        what="the gate to take the server's comm",
    )


async def test_a_promoted_job_keeps_collecting_with_stash_and_progress(person) -> None:
    progress: list[str] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    code = (
        "import time, kaimon_kernel\n"
        "for epoch in range(3):\n"
        "    kaimon_kernel.stash('loss', 1.0 / (epoch + 1))\n"
        "    kaimon_kernel.progress(f'epoch {epoch}/3')\n"
        "    print('epoch', epoch, flush=True)\n"
        "    time.sleep(0.4)\n"
        "'trained'"
    )
    async with stdio_client("--promote-after", "0.6") as client:
        # The server sends its comm_open (to a subshell) and may send ex's code (to the main
        # shell) before the gate has taken the comm: progress and stash sent meanwhile have
        # no server to go to. This test is about promotion: start once the gate knows it.
        await anyio.to_thread.run_sync(gate_knows_a_server, person)
        result = await client.call_tool("ex", {"code": code}, progress_callback=on_progress)
        eval_id = result.structured_content["eval_id"]
        assert f"eval_id: {eval_id}" in text_of(result)
        assert "epoch 0" in text_of(result)
        done = await wait_status(client, eval_id)
        jobs = await client.call_tool("list_jobs", {"stats": True})
    assert any("epoch 0/3" in m for m in progress)
    assert done.structured_content["status"] == "completed"
    assert done.structured_content["stash"] == {"loss": "0.3333333333333333"}
    assert done.structured_content["last_progress"] == "epoch 2/3"
    assert "epoch 2\n'trained'" in text_of(done)
    assert jobs.structured_content["jobs"][0]["eval_id"] == eval_id
    assert jobs.structured_content["stats"]["counts"]["completed"] >= 1
    _, listing = person.run("%kaimon jobs")
    assert eval_id in listing and "completed" in listing


async def test_cooperative_cancel_stops_code_that_checks_the_flag(person) -> None:
    code = (
        "import time, kaimon_kernel\nn = 0\n"
        "while not kaimon_kernel.is_cancelled():\n    n += 1\n    time.sleep(0.02)\n"
        "print('saw the flag')"
    )
    async with stdio_client("--promote-after", "0.3") as client:
        result = await client.call_tool("ex", {"code": code})
        eval_id = result.structured_content["eval_id"]
        cancel = await client.call_tool("cancel_eval", {"eval_id": eval_id})
        after = await client.call_tool("ex", {"code": "n > 0"})
        again = await client.call_tool("cancel_eval", {"eval_id": eval_id})
    assert "stopped cooperatively" in text_of(cancel)
    assert cancel.structured_content["status"] == "cancelled"
    assert "saw the flag" in text_of(cancel)
    assert text_of(after).strip() == "True"
    assert "already cancelled" in text_of(again)


@pytest.mark.parametrize("code", ["while True:\n    pass", "import time\ntime.sleep(120)"])
async def test_code_ignoring_the_flag_is_interrupted_and_ends_cancelled(person, code) -> None:
    async with stdio_client("--promote-after", "0.3", "--cancel-grace", "0.5") as client:
        result = await client.call_tool("ex", {"code": code})
        eval_id = result.structured_content["eval_id"]
        cancel = await client.call_tool("cancel_eval", {"eval_id": eval_id})
        check = await client.call_tool("check_eval", {"eval_id": eval_id})
        after = await client.call_tool("ex", {"code": "'usable'"})
    assert "kernel was interrupted" in text_of(cancel)
    assert check.structured_content["status"] == "cancelled"
    assert "KeyboardInterrupt" in text_of(check)
    assert text_of(after).strip() == "'usable'"


async def test_cancelling_a_queued_job_never_runs_it_and_spares_the_running_one(person) -> None:
    async with stdio_client("--promote-after", "0.3", "--cancel-grace", "0.5") as client:
        running = await client.call_tool("ex", {"code": "import time\ntime.sleep(2.5)\n'first'"})
        queued = await client.call_tool("ex", {"code": "ran_queued = True"})
        first_id, queued_id = (r.structured_content["eval_id"] for r in (running, queued))
        cancel = await client.call_tool("cancel_eval", {"eval_id": queued_id})
        check_queued = await client.call_tool("check_eval", {"eval_id": queued_id})
        check_first = await wait_status(client, first_id)
        ran = await client.call_tool("ex", {"code": "'ran_queued' in globals()"})
    assert "had not started" in text_of(cancel)
    assert check_queued.structured_content["status"] == "cancelled"
    # the job that was running when the queued one was cancelled was not interrupted
    assert check_first.structured_content["status"] == "completed", text_of(check_first)
    assert "'first'" in text_of(check_first)
    assert text_of(ran).strip() == "False"


async def test_a_job_whose_kernel_is_killed_becomes_lost_with_a_reason(person) -> None:
    async with stdio_client("--promote-after", "0.3") as client:
        result = await client.call_tool("ex", {"code": "import time\ntime.sleep(60)"})
        eval_id = result.structured_content["eval_id"]
        os.kill(person.pid, signal.SIGKILL)
        check = await wait_status(client, eval_id)
    assert check.structured_content["status"] == "lost"
    assert check.is_error
    assert "died" in text_of(check)


def http_client(server: HttpServer) -> Any:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    return http, Client(streamable_http_client(server.url, http_client=http))


async def test_a_server_killed_mid_job_finds_it_again_after_restart(make_person) -> None:
    make_person("--label slow")
    make_person("--label quick")
    env = {"KAIMON_TOKEN": TOKEN}
    first = HttpServer("--promote-after", "0.3", env=env)
    try:
        http, client = http_client(first)
        async with http, client:
            code = "import time\nprint('start', flush=True)\ntime.sleep({})\nprint('{}')"
            running = await client.call_tool(
                "ex", {"code": code.format(4, "end"), "session": "slow"}
            )
            finished = await client.call_tool(
                "ex", {"code": code.format(0.5, "quick one"), "session": "quick"}
            )
    finally:
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
    await asyncio.sleep(1.0)  # the quick job ends while no server runs
    second = HttpServer(env=env)
    try:
        http, client = http_client(second)
        async with http, client:
            late = await wait_status(client, running.structured_content["eval_id"])
            early = await wait_status(client, finished.structured_content["eval_id"])
    finally:
        second.stop()
    assert late.structured_content["status"] == "completed", text_of(late)
    assert "end" in text_of(late)
    assert "start" in text_of(late)  # printed before the kill: kept, not only what came after
    assert early.structured_content["status"] == "completed", text_of(early)
    assert "quick one" in text_of(early)
    assert "recovered from the kernel" in text_of(early)


async def test_fifty_concurrent_jobs_across_three_kernels_none_lost_or_mixed(make_person) -> None:
    labels = ["k0", "k1", "k2"]
    for label in labels:
        make_person(f"--label {label}")
    async with stdio_client("--promote-after", "0.2") as client:

        async def one(i: int) -> tuple[int, Any]:
            code = f"import time\ntime.sleep(0.05)\nprint('job-{i}')"
            return i, await client.call_tool("ex", {"code": code, "session": labels[i % 3]})

        started = await asyncio.gather(*(one(i) for i in range(50)))
        results = {}
        for i, result in started:
            if result.structured_content and "eval_id" in result.structured_content:
                result = await wait_status(client, result.structured_content["eval_id"], 120)
            results[i] = text_of(result)
    assert len(results) == 50
    for i, text in results.items():
        assert f"job-{i}\n" in text
        assert not any(f"job-{j}\n" in text for j in range(50) if j != i)


def test_stash_outside_an_agent_evaluation_says_so_once(person: PersonKernel) -> None:
    _, first = person.run("import kaimon_kernel\nkaimon_kernel.stash('x', 1)")
    _, second = person.run("kaimon_kernel.stash('x', 2)")
    assert "outside an agent's evaluation" in first
    assert second == ""


async def test_a_recovered_job_keeps_every_line_once_even_when_lines_repeat(make_person) -> None:
    make_person("--label ticking")
    env = {"KAIMON_TOKEN": TOKEN}
    first = HttpServer("--promote-after", "0.3", env=env)
    code = "import time\nfor i in range(16):\n    print('tick', flush=True)\n    time.sleep(0.25)"
    try:
        http, client = http_client(first)
        async with http, client:
            running = await client.call_tool("ex", {"code": code})
    finally:
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
    second = HttpServer(env=env)  # back while the job still prints
    try:
        http, client = http_client(second)
        async with http, client:
            done = await wait_status(client, running.structured_content["eval_id"])
    finally:
        second.stop()
    assert done.structured_content["status"] == "completed", text_of(done)
    assert text_of(done).count("tick") == 16, text_of(done)
