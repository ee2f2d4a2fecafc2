"""What every benchmark shares: isolated Jupyter dirs, percentiles, process memory, and a
`kaimon serve --http` to talk to, the raw jupyter_client floor, and interleaved timing rounds.
Import it before anything that reads Jupyter paths."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

ROOT = Path(tempfile.mkdtemp(prefix="kaimon-bench-"))
for _name in ("JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR", "IPYTHONDIR"):
    os.environ[_name] = str(ROOT / _name.lower())
os.environ["JUPYTER_PLATFORM_DIRS"] = "1"
TOKEN = "bench-token-0123456789abcdef"

import httpx2  # noqa: E402
from jupyter_client.manager import AsyncKernelManager  # noqa: E402
from mcp import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402


def pct(samples: list[float], q: float) -> float:
    """The q-quantile of ``samples`` (seconds), in milliseconds."""
    s = sorted(samples)
    return s[min(int(len(s) * q), len(s) - 1)] * 1000


def memory_mb(pid: int, field: str = "VmHWM") -> float:
    """A process's memory from /proc: VmHWM (peak) or VmRSS (now), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def http_server(*extra: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`kaimon serve --http` on a free port; yields the process and its /mcp URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "kaimon_kernel", "serve", "--http", "--port", str(port), *extra],
        env={**os.environ, "KAIMON_TOKEN": TOKEN},
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield server, f"http://127.0.0.1:{port}/mcp"
    finally:
        server.terminate()
        server.wait(15)


@contextlib.asynccontextmanager
async def http_client(url: str, **kwargs: object) -> AsyncIterator[Client]:
    """An MCP client over streamable HTTP with the benchmark's token."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=120) as http,
        Client(streamable_http_client(url, http_client=http), **kwargs) as client,  # type: ignore[arg-type]
    ):
        yield client


class RawClient:
    """The floor: execute_request → execute_reply + iopub idle, straight jupyter_client."""

    def __init__(self, connection_file: str) -> None:
        from jupyter_client.asynchronous import AsyncKernelClient

        self.kc = AsyncKernelClient(connection_file=connection_file)
        self.kc.load_connection_file()

    async def __aenter__(self) -> RawClient:
        self.kc.start_channels()
        await self.kc.wait_for_ready(timeout=30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.kc.stop_channels()

    async def drain(self) -> None:
        """Drop what kaimon's rounds put on iopub meanwhile: not this round's work, untimed."""
        while await self.kc.iopub_channel.msg_ready():
            await self.kc.get_iopub_msg(timeout=1)

    async def run(self, code: str, timeout: float = 10) -> str:
        """Run ``code`` until its reply and iopub idle; the text of its execute_result."""
        msg_id = self.kc.execute(code)
        answer = ""
        idle = reply = False
        while not (idle and reply):
            if not reply:
                r = await self.kc.get_shell_msg(timeout=timeout)
                reply = r["parent_header"].get("msg_id") == msg_id
            if not idle:
                m = await self.kc.get_iopub_msg(timeout=timeout)
                if m["parent_header"].get("msg_id") != msg_id:
                    continue
                if m["msg_type"] == "execute_result":
                    answer = m["content"]["data"].get("text/plain", "")
                idle = m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
        return answer

    async def once(self) -> float:
        await self.drain()
        t = time.perf_counter()
        await self.run("1+1")
        return time.perf_counter() - t


def mcp_once(client: Client) -> Callable[[], Awaitable[float]]:
    async def once() -> float:
        t = time.perf_counter()
        r = await client.call_tool("ex", {"code": "1+1"})
        took = time.perf_counter() - t
        assert r.content[0].text.strip() == "2", r
        return took

    return once


async def interleaved(paths: dict[str, Callable[[], Awaitable[float]]], n: int) -> dict:
    """Rounds of 10 calls per path, in turn, so a drifting machine moves every path alike."""
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for once in paths.values():  # warm-up
        for _ in range(10):
            await once()
    for _ in range(max(n // 10, 1)):
        for name, once in paths.items():
            for _ in range(10):
                samples[name].append(await once())
    return samples


def print_table(title: str, results: dict[str, list[float]]) -> None:
    """p50/p99 per path and the p50 ratio to the first path (the floor)."""
    floor = statistics.median(next(iter(results.values())))
    width = max(len(name) for name in results) + 2
    print(f"{title}; {len(next(iter(results.values())))} calls per path")
    print(f"{'path':{width}} {'p50 ms':>8} {'p99 ms':>8} {'p50 ratio':>10}")
    for name, samples in results.items():
        print(
            f"{name:{width}} {pct(samples, 0.5):8.2f} {pct(samples, 0.99):8.2f} "
            f"{statistics.median(samples) / floor:9.2f}x"
        )


SERVE_WITH_TOOL = """\
%load_ext kaimon_kernel
import kaimon_kernel
@kaimon_kernel.tool
def ping() -> str:
    \"\"\"Answer pong.\"\"\"
    return "pong"
%kaimon serve --namespace {ns} --label {ns}
"""


class ServedKernels:
    """Real kernels served the person's way (`%load_ext kaimon_kernel`, `%kaimon serve`), each
    with one gate tool, `<ns>_ping`; namespaces and labels are `<prefix>000`, `<prefix>001`, …"""

    def __init__(self, prefix: str = "k") -> None:
        self.prefix = prefix
        self.kernels: list[tuple[str, AsyncKernelManager]] = []

    async def __aenter__(self) -> ServedKernels:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(
            *(km.shutdown_kernel(now=True) for _, km in self.kernels),
            return_exceptions=True,
        )

    @property
    def names(self) -> list[str]:
        return [ns for ns, _ in self.kernels]

    def pids(self) -> list[int]:
        return [km.provisioner.process.pid for _, km in self.kernels]  # type: ignore[union-attr]

    async def add(self, n: int, parallel: int = 4) -> None:
        """Start and serve ``n`` more kernels, ``parallel`` at a time."""
        gate = asyncio.Semaphore(parallel)

        async def one(ns: str) -> None:
            async with gate:
                km = AsyncKernelManager(kernel_name="python3")
                self.kernels.append((ns, km))
                # the kernels' "TCP without encryption" warnings would bury the figures
                await km.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                kc = km.client()
                kc.start_channels()
                try:
                    await kc.wait_for_ready(timeout=60)
                    errors: list[str] = []

                    def hook(msg: dict) -> None:
                        if msg["msg_type"] == "error":
                            errors.append("\n".join(msg["content"]["traceback"]))

                    reply = await kc.execute_interactive(
                        SERVE_WITH_TOOL.format(ns=ns), timeout=60, output_hook=hook
                    )
                    if reply["content"]["status"] != "ok" or errors:
                        raise RuntimeError(f"serving {ns} failed: {errors}")
                finally:
                    kc.stop_channels()

        start = len(self.kernels)
        await asyncio.gather(*(one(f"{self.prefix}{i:03d}") for i in range(start, start + n)))
