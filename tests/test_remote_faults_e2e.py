"""Faults between kaimon and a Jupyter Server, through the real MCP client: a 10 MB output,
a slow link beside a fast one, a token that stops working."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from conftest import JupyterServer, stdio_client, text_of, wait_until
from remote import DelayingProxy, RemoteNotebook, env
from test_remote_e2e import listed

pytestmark = pytest.mark.anyio


class TokenServer(JupyterServer):
    """A Jupyter server on a given port with a given token (to restart it with another)."""

    def __init__(self, root: Path, port: int, token: str, *extra: str) -> None:
        self.log = root / "jupyter_server.log"
        self.port, self.token = port, token
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter_server",
                "--no-browser",
                f"--port={port}",
                f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={root}",
                "--ServerApp.ip=127.0.0.1",
                "--ServerApp.port_retries=0",
                "--allow-root",
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
        )
        wait_until(self._up, 60, "the Jupyter server")


@pytest.fixture
def remote_env(tmp_path: Path) -> Path:
    (tmp_path / "remote-runtime").mkdir()
    return tmp_path


def remote(make: Any, root: Path, *args: Any) -> Any:
    """A server whose kernels write their files out of the local provider's sight."""
    with env(JUPYTER_RUNTIME_DIR=str(root / "remote-runtime")):
        return make(*args)


def kaimon_server_process() -> psutil.Process:
    children = [
        p for p in psutil.Process().children(recursive=True) if "kaimon_kernel" in p.cmdline()
    ]
    assert len(children) == 1, children
    return children[0]


async def test_a_10_mb_output_over_the_websocket_is_cut_to_max_output_in_bounded_memory(
    remote_env: Path,
) -> None:
    # the server's own output rate limit (1 MB/s by default) off: the 10 MB pass through
    server = remote(
        TokenServer,
        remote_env,
        remote_env,
        _free(),
        "tok",
        "--ServerApp.iopub_data_rate_limit=1e12",
    )
    try:
        nb = RemoteNotebook(server)
        nb.serve()
        with env(JUPYTER_TOKEN=server.token):
            url = f"http://127.0.0.1:{server.port}/"
            async with stdio_client("--no-auto-start", "--jupyter", url) as client:
                await listed(client, nb.key)
                rss_before = kaimon_server_process().memory_info().rss
                started = time.monotonic()
                result = await client.call_tool(
                    "ex", {"code": "print('x' * 10_000_000)\nprint('tail')", "max_output": 2000}
                )
                took = time.monotonic() - started
                rss_after = kaimon_server_process().memory_info().rss
                text = text_of(result)
                assert "tail" in text and len(text) < 10_000, text[:500]
                assert "42" in text_of(await client.call_tool("ex", {"code": "40 + 2"}))
    finally:
        server.stop()
    assert took < 30
    # a 10 MB message passes through whole (as over ZMQ), nothing more is kept
    assert rss_after - rss_before < 120 * 1024 * 1024, (rss_before, rss_after)


async def test_a_slow_link_to_one_server_does_not_stall_a_session_on_another(
    remote_env: Path,
) -> None:
    (remote_env / "fast").mkdir()
    (remote_env / "slow").mkdir()
    fast = remote(JupyterServer, remote_env, remote_env / "fast")
    slow = remote(TokenServer, remote_env, remote_env / "slow", _free(), fast.token)
    proxy = DelayingProxy(slow.port, delay=0.2)
    try:
        fast_nb, slow_nb = RemoteNotebook(fast), RemoteNotebook(slow)
        fast_nb.serve("--label fast")
        slow_nb.serve("--label slow")
        with env(JUPYTER_TOKEN=fast.token):
            async with stdio_client(
                "--no-auto-start",
                "--jupyter",
                f"http://127.0.0.1:{fast.port}/",
                "--jupyter",
                f"http://127.0.0.1:{proxy.port}/",
            ) as client:
                await listed(client, fast_nb.key)
                await listed(client, slow_nb.key)
                times: list[float] = []
                async with anyio.create_task_group() as tg:
                    tg.start_soon(
                        client.call_tool,
                        "ex",
                        {"code": "for i in range(40): print(i, flush=True)", "session": "slow"},
                    )
                    for _ in range(5):
                        started = time.monotonic()
                        result = await client.call_tool("ex", {"code": "1+1", "session": "fast"})
                        times.append(time.monotonic() - started)
                        assert "2" in text_of(result)
    finally:
        proxy.close()
        slow.stop()
        fast.stop()
    assert max(times) < 1.0, times


async def test_a_token_that_stops_working_is_said_as_refused(remote_env: Path) -> None:
    port = _free()
    server = remote(TokenServer, remote_env, remote_env, port, "first-token-abc")
    try:
        nb = RemoteNotebook(server)
        nb.serve()
        with env(JUPYTER_TOKEN="first-token-abc"):
            async with stdio_client(
                "--no-auto-start", "--jupyter", f"http://127.0.0.1:{port}/"
            ) as client:
                await listed(client, nb.key)
                server.stop()  # the server comes back with another token (its kernels gone)
                server = remote(TokenServer, remote_env, remote_env, port, "second-token-xyz")

                seen: list[str] = []

                async def refused() -> Any:
                    result = await client.call_tool("ex", {"code": "1+1"})
                    seen.append(text_of(result))
                    return result if "refused the token" in seen[-1] else None

                deadline = anyio.current_time() + 60
                while (result := await refused()) is None:
                    assert anyio.current_time() < deadline, seen[-3:]
                    await anyio.sleep(0.3)
    finally:
        server.stop()
    assert result.is_error
    text = text_of(result)
    assert "JUPYTER_TOKEN" in text and "first-token-abc" not in text, text


def _free() -> int:
    from conftest import free_port

    return free_port()
