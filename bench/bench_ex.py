"""ex("1+1") through kaimon (stdio, HTTP) against the raw jupyter_client floor, same kernel.

    python bench/bench_ex.py [--n 200]

Prints p50/p99 in ms and the ratio to the raw round trip, then the time for a 10 MB print
to reach the agent and the server's peak memory. Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

from _common import http_client, http_server, memory_mb, pct  # isolates Jupyter dirs first
from jupyter_client.manager import KernelManager
from mcp import Client, StdioServerParameters


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

    async def once(self) -> float:
        # what kaimon's rounds put on iopub meanwhile is not this round's work: untimed
        while await self.kc.iopub_channel.msg_ready():
            await self.kc.get_iopub_msg(timeout=1)
        t = time.perf_counter()
        msg_id = self.kc.execute("1+1")
        idle = reply = False
        while not (idle and reply):
            if not reply:
                r = await self.kc.get_shell_msg(timeout=10)
                reply = r["parent_header"].get("msg_id") == msg_id
            if not idle:
                m = await self.kc.get_iopub_msg(timeout=10)
                idle = (
                    m["parent_header"].get("msg_id") == msg_id
                    and m["msg_type"] == "status"
                    and m["content"]["execution_state"] == "idle"
                )
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


async def main(n: int) -> None:
    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=30)
    kc.execute_interactive("%load_ext kaimon_kernel\n%kaimon serve --label bench", timeout=30)

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "kaimon_kernel", "serve"], env=dict(os.environ)
    )
    try:
        with http_server() as (server, url):
            async with (
                RawClient(km.connection_file) as raw,
                Client(params, read_timeout_seconds=60) as stdio,
                http_client(url) as client,
            ):
                results = await interleaved(
                    {
                        "raw jupyter_client": raw.once,
                        "kaimon stdio": mcp_once(stdio),
                        "kaimon HTTP": mcp_once(client),
                    },
                    n,
                )
                before = memory_mb(server.pid)
                t = time.perf_counter()
                r = await client.call_tool("ex", {"code": "print('x' * 10_000_000)"})
                big = time.perf_counter() - t
                after = memory_mb(server.pid)
                t = time.perf_counter()
                await client.call_tool("ex", {"code": "for i in range(100_000): print('y' * 99)"})
                lines = time.perf_counter() - t
                lines_peak = memory_mb(server.pid)
                chars = len(r.content[0].text)
    finally:
        km.shutdown_kernel(now=True)

    floor = statistics.median(results["raw jupyter_client"])
    print(f"ex('1+1'), n={n} per path, same kernel, interleaved rounds of 10")
    print(f"{'path':22} {'p50 ms':>8} {'p99 ms':>8} {'p50 ratio':>10}")
    for name, samples in results.items():
        print(
            f"{name:22} {pct(samples, 0.5):8.2f} {pct(samples, 0.99):8.2f} "
            f"{statistics.median(samples) / floor:9.2f}x"
        )
    print(
        f"10 MB print (one write) over HTTP: {big * 1000:.0f} ms to the agent's answer "
        f"({chars} chars returned); server peak RSS {before:.0f} MB -> {after:.0f} MB"
    )
    print(
        f"10 MB print (100k lines) over HTTP: {lines * 1000:.0f} ms; peak RSS {lines_peak:.0f} MB"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    asyncio.run(main(ap.parse_args().n))
