"""`kaimon serve` as a process: it binds before it announces, and any stop signal is clean."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import psutil
import pytest
from conftest import (
    HttpServer,
    free_port,
    server_args,
    sessions_dir,
    stdio_client,
    text_of,
    wait_until,
)
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from kaimon_kernel._errors import KaimonError
from kaimon_kernel._paths import resume_file_for
from kaimon_kernel.server._run import bind

pytestmark = pytest.mark.anyio

TOKEN = "run-token-" + "x" * 20


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def leftovers(key: str) -> list[Path]:
    connection_file = sessions_dir().parent / f"kernel-kaimon-{key}.json"
    files = [
        sessions_dir() / f"session-{key}.json",
        sessions_dir() / f"owned-{key}.json",
        connection_file,
        resume_file_for(str(connection_file)),
    ]
    return [f for f in files if f.exists()]


async def start_a_kernel(client: Client, project: Path) -> tuple[str, int, int]:
    """Start an agent kernel; returns its key, its pid and its parent's (the server's) pid."""
    started = await client.call_tool("start_session", {"project_path": str(project)})
    assert not started.is_error, text_of(started)
    key = started.structured_content["key"]
    pids = await client.call_tool(
        "ex", {"code": "import os; print(os.getpid(), os.getppid())", "session": key}
    )
    kernel_pid, server_pid = map(int, text_of(pids).split())
    assert leftovers(key)  # they exist while it runs
    return key, kernel_pid, server_pid


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
async def test_a_signalled_stdio_server_stops_its_kernels_and_removes_their_files(
    tmp_path: Path, sig: signal.Signals
) -> None:
    async with stdio_client(cwd=tmp_path) as client:
        key, kernel_pid, server_pid = await start_a_kernel(client, tmp_path)
        os.kill(server_pid, sig)
        wait_until(lambda: gone(server_pid), what="the server to exit")
    wait_until(lambda: gone(kernel_pid), 10, "the agent's kernel to stop")
    assert leftovers(key) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
async def test_a_signalled_http_server_stops_its_kernels_and_exits_cleanly(
    tmp_path: Path, sig: signal.Signals
) -> None:
    server = HttpServer(env={"KAIMON_TOKEN": TOKEN})
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http,
            Client(streamable_http_client(server.url, http_client=http)) as client,
        ):
            # the server runs in the test's directory, which it allows
            key, kernel_pid, server_pid = await start_a_kernel(client, Path.cwd())
            assert server_pid == server.proc.pid
            server.proc.send_signal(sig)
            code = server.proc.wait(30)
    finally:
        server.stop()
    assert code == 0, server.proc.stderr.read().decode()  # type: ignore[union-attr]
    wait_until(lambda: gone(kernel_pid), 10, "the agent's kernel to stop")
    assert leftovers(key) == []


def test_a_port_in_use_is_an_error_naming_it_and_nothing_is_announced() -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = subprocess.run(
            [sys.executable, *server_args("--http", "--port", str(port))],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "KAIMON_TOKEN": TOKEN},
            stdin=subprocess.DEVNULL,
        )
    assert done.returncode != 0
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr
    assert "MCP over streamable HTTP at" not in done.stderr


def test_bind_names_the_port_in_use_and_an_unknown_host() -> None:
    (first,) = bind("127.0.0.1", 0)
    port = first.getsockname()[1]
    try:
        with pytest.raises(KaimonError, match=f"port {port} on 127.0.0.1 is already in use"):
            bind("127.0.0.1", port)
    finally:
        first.close()
    with pytest.raises(KaimonError, match=r"cannot serve HTTP on 'no-such-host\.invalid'"):
        bind("no-such-host.invalid", 2828)


def test_a_bad_setting_stops_serve_with_the_source_named(tmp_path: Path) -> None:
    env: dict[str, Any] = {**os.environ, "KAIMON_PROMOTE_AFTER": "soon"}
    done = subprocess.run(
        [sys.executable, *server_args()],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "KAIMON_PROMOTE_AFTER='soon': Input should be a valid number" in done.stderr
