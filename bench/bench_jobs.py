"""Job bookkeeping: a short ex with and without the promotion machinery against the raw
jupyter_client floor (same kernel, same run); server memory with 1,000 finished jobs and
with one job printing 100 MB over its life.

    python bench/bench_jobs.py [--n 200]
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


def stdio(*extra: str) -> Client:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "kaimon_kernel", "serve", *extra], env=dict(os.environ)
    )
    return Client(params, read_timeout_seconds=60)


async def main(n: int) -> None:
    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=30)
    kc.execute_interactive("%load_ext kaimon_kernel\n%kaimon serve --label bench", timeout=30)

    async with (
        RawClient(km.connection_file) as raw,
        stdio("--promote-after", "0") as never,
        stdio() as after_30,
    ):
        paths = {
            "raw jupyter_client": raw.once,
            "ex, promotion off": mcp_once(never),
            "ex, promote after 30 s": mcp_once(after_30),
        }
        results = await interleaved(paths, n)

    try:
        with http_server("--promote-after", "0.001") as (server, url):
            async with http_client(url) as client:
                await client.call_tool("list_sessions", {})
                base = memory_mb(server.pid, "VmRSS")
                t = time.perf_counter()
                promoted = 0
                for i in range(1000):
                    r = await client.call_tool("ex", {"code": f"print({i})"})
                    promoted += bool(r.structured_content and "eval_id" in r.structured_content)
                running = {"status": "running"}
                while (await client.call_tool("list_jobs", running)).structured_content["jobs"]:
                    await asyncio.sleep(0.1)
                thousand = time.perf_counter() - t
                after_jobs = memory_mb(server.pid, "VmRSS")
                stats = (await client.call_tool("list_jobs", {"stats": True})).structured_content
                r = await client.call_tool(
                    "ex", {"code": "for i in range(100):\n    print('x' * 1_000_000)"}
                )
                eval_id = r.structured_content["eval_id"]
                t = time.perf_counter()
                check = {"eval_id": eval_id}
                while (await client.call_tool("check_eval", check)).structured_content[
                    "status"
                ] == "running":
                    await asyncio.sleep(0.1)
                big = time.perf_counter() - t
                peak = memory_mb(server.pid)
    finally:
        km.shutdown_kernel(now=True)

    print_table("short ex('1+1'), same kernel, interleaved (stdio)", results)
    print(
        f"1,000 ex calls ({promoted} promoted to jobs, the rest done within 1 ms) in "
        f"{thousand:.1f} s; jobs counted {stats['stats']['counts']}; "
        f"server RSS {base:.0f} MB -> {after_jobs:.0f} MB"
    )
    print(
        f"one job printing 100 MB: done {big:.1f} s after promotion; server peak RSS {peak:.0f} MB"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    asyncio.run(main(ap.parse_args().n))
