"""ex("1+1") through kaimon (stdio, HTTP) against the raw jupyter_client floor, same kernel.

    python bench/bench_ex.py [--n 200]

Prints p50/p99 in ms and the ratio to the raw round trip, then the time for a 10 MB print
to reach the agent and the server's peak memory. Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from _common import (  # isolates Jupyter dirs first
    RawClient,
    http_client,
    http_server,
    interleaved,
    mcp_once,
    memory_mb,
    print_table,
)
from jupyter_client.manager import KernelManager
from mcp import Client, StdioServerParameters


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

    print_table("ex('1+1'), same kernel, interleaved rounds of 10", results)
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
