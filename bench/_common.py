"""What every benchmark shares: isolated Jupyter dirs, percentiles, process memory, and a
`kaimon serve --http` to talk to. Import it before anything that reads Jupyter paths."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

ROOT = Path(tempfile.mkdtemp(prefix="kaimon-bench-"))
for _name in ("JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR", "IPYTHONDIR"):
    os.environ[_name] = str(ROOT / _name.lower())
os.environ["JUPYTER_PLATFORM_DIRS"] = "1"
TOKEN = "bench-token-0123456789abcdef"

import httpx2  # noqa: E402
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
