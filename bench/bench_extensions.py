"""An extension's tool call against a gate tool call in a person's kernel (the same path: an
extension is a served kernel), same server, same run; and the time from starting
`kaimon serve` to the extension's tools being listed.

    python bench/bench_extensions.py [--n 200] [--starts 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from _common import ROOT, interleaved, print_table  # isolates Jupyter dirs first
from jupyter_client.manager import KernelManager
from mcp import Client, StdioServerParameters

SERVE = (
    "import kaimon_kernel\n"
    "def noop() -> str:\n    return 'ok'\n"
    "_ = kaimon_kernel.serve(namespace='k', tools=[kaimon_kernel.GateTool('noop', noop)])"
)
EXTENSION = """\
from kaimon_kernel import GateTool

def noop() -> str:
    return "ok"

def create_tools():
    return [GateTool("noop", noop)]
"""


def make_extension() -> None:
    project = ROOT / "ext"
    project.mkdir()
    (project / "kaimon.toml").write_text(
        '[extension]\nnamespace = "ext"\nmodule = "bench_ext"\ntools_function = "create_tools"\n'
    )
    (project / "bench_ext.py").write_text(EXTENSION)
    subprocess.run(
        [sys.executable, "-m", "kaimon_kernel", "extensions", "add", str(project)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def server() -> Client:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "kaimon_kernel", "serve", "--no-auto-start"],
        env=dict(os.environ),
    )
    return Client(params, read_timeout_seconds=120)


async def listed(client: Client, name: str, deadline: float) -> None:
    while name not in {t.name for t in (await client.list_tools()).tools}:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} was not listed in time")
        await asyncio.sleep(0.02)


def call(client: Client, name: str) -> Callable[[], Awaitable[float]]:
    async def once() -> float:
        t = time.perf_counter()
        r = await client.call_tool(name, {})
        took = time.perf_counter() - t
        assert not r.is_error, r
        return took

    return once


async def main(n: int, starts: int) -> None:
    make_extension()
    km = KernelManager(kernel_name="python3")
    km.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=30)
    kc.execute_interactive(SERVE, timeout=30)
    kc.stop_channels()
    try:
        times = []
        for _ in range(starts):
            began = time.monotonic()
            async with server() as client:
                await listed(client, "ext_noop", began + 120)
                times.append(time.monotonic() - began)
        print(
            f"kaimon serve started → ext_noop listed: median {statistics.median(times):.2f} s "
            f"(of {', '.join(f'{t:.2f}' for t in times)} s; server, extension kernel and "
            "gate start included)"
        )
        async with server() as client:
            await listed(client, "ext_noop", time.monotonic() + 120)
            await listed(client, "k_noop", time.monotonic() + 30)
            results = await interleaved(
                {
                    "gate tool in a person's kernel (k_noop)": call(client, "k_noop"),
                    "extension tool (ext_noop)": call(client, "ext_noop"),
                },
                n,
            )
        print_table("no-op tool call over stdio", results)
    finally:
        km.shutdown_kernel(now=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--starts", type=int, default=3)
    args = p.parse_args()
    asyncio.run(main(args.n, args.starts))
