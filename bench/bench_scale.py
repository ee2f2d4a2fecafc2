"""Scale in the number of sessions: a stdio server's start (spawn → `initialize` answered →
first `tools/list`) with 0, 8 and 30 served kernels, and an idle `kaimon serve --http`'s CPU
with 1 and 30 (or 100) sessions connected.

    python bench/bench_scale.py [--startup 0 8 30] [--idle 1 30] [--repeat 5] [--idle-seconds 10]

Kernels are real ipykernels served with `%kaimon serve`, one gate tool each, started once and
reused: the counts run in ascending order, each adding kernels to the ones before (a server
sees every served kernel, so a count is the number served at that point). `--startup` or
`--idle` with no count skips that part. Figures, not pass/fail; the machine's load average is
printed beside them, since the targets are absolute (≤ 0.5 s to start, < 1 % of a core idle).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass

import psutil
from _common import (  # isolates Jupyter dirs first
    ServedKernels,
    http_client,
    http_server,
    memory_mb,
)
from mcp import Client, StdioServerParameters


async def startup_once(expected: set[str]) -> tuple[float, float, int]:
    """Spawn a stdio server; seconds to `initialize` answered, to first tools/list answered,
    and how many of the expected gate tools that first list held."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "kaimon_kernel", "serve"], env=dict(os.environ)
    )
    t = time.perf_counter()
    async with Client(params, read_timeout_seconds=60, mode="legacy", cache=None) as client:
        init = time.perf_counter() - t
        names = {tool.name for tool in (await client.list_tools()).tools}
        listed = time.perf_counter() - t
    return init, listed, len(expected & names)


@dataclass
class Startup:
    init: float  # median seconds, spawn to initialize answered
    listed: float  # median seconds, spawn to first tools/list answered
    worst: float
    seen: str  # gate tools in the first list, min-max over the starts
    expected: int

    def row(self, count: int) -> str:
        return (
            f"{count:8d} {self.init * 1000:8.0f} {self.listed * 1000:8.0f} "
            f"{self.worst * 1000:9.0f}  {self.seen} of {self.expected} in the first list"
        )


@dataclass
class Idle:
    server: float  # % of a core
    kernels: float  # % of a core, all the kernels together
    rss: float
    load: float

    def row(self, count: int) -> str:
        return (
            f"{count:8d} {self.server:10.2f}% {self.kernels:11.2f}% "
            f"{self.rss:8.0f} MB {self.load:5.1f}"
        )


async def startup(kernels: ServedKernels, repeat: int) -> Startup:
    expected = {f"{ns}_ping" for ns in kernels.names}
    runs = [await startup_once(expected) for _ in range(repeat)]
    seen = [s for _, _, s in runs]
    return Startup(
        init=statistics.median(i for i, _, _ in runs),
        listed=statistics.median(t for _, t, _ in runs),
        worst=max(t for _, t, _ in runs),
        seen=f"{min(seen)}-{max(seen)}" if min(seen) != max(seen) else str(seen[0]),
        expected=len(expected),
    )


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


async def idle(kernels: ServedKernels, seconds: float) -> Idle:
    """An HTTP server with every served kernel connected (an `ex` in each), one client
    connected and silent: the server's CPU over ``seconds``."""
    with http_server() as (server, url):
        async with http_client(url, cache=None) as client:
            for ns in kernels.names:
                r = await client.call_tool("ex", {"code": "6*7", "session": ns})
                assert r.content[0].text.strip() == "42", (ns, r)
            proc = psutil.Process(server.pid)
            children = [psutil.Process(pid) for pid in kernels.pids()]
            load = os.getloadavg()[0]
            wall = time.perf_counter()
            cpu, kernel_cpu = cpu_seconds([proc]), cpu_seconds(children)
            await asyncio.sleep(seconds)  # the measurement window: nobody calls anything
            cpu, kernel_cpu = cpu_seconds([proc]) - cpu, cpu_seconds(children) - kernel_cpu
            wall = time.perf_counter() - wall
            rss = memory_mb(server.pid, "VmRSS")
    return Idle(
        server=100 * cpu / wall,
        kernels=100 * kernel_cpu / wall,
        rss=rss,
        load=load,
    )


async def main(args: argparse.Namespace) -> None:
    starts: dict[int, Startup] = {}
    idles: dict[int, Idle] = {}
    t0 = time.perf_counter()
    async with ServedKernels("s") as kernels:
        for count in sorted(set(args.startup) | set(args.idle)):
            t = time.perf_counter()
            await kernels.add(count - len(kernels.names))
            print(
                f"[{len(kernels.names)} kernels served; +{time.perf_counter() - t:.1f} s; "
                f"load {os.getloadavg()[0]:.1f}]",
                flush=True,
            )
            if count in args.startup:
                starts[count] = await startup(kernels, args.repeat)
            if count in args.idle:
                idles[count] = await idle(kernels, args.idle_seconds)
    if starts:
        print(
            "stdio server start, ms from spawn: initialize answered, first tools/list "
            f"answered; median of {args.repeat} (target <= 500 ms at any count)"
        )
        print(f"{'sessions':>8} {'init ms':>8} {'list ms':>8} {'worst ms':>9}  gate tools seen")
        for count, st in starts.items():
            print(st.row(count))
    if idles:
        print(
            f"idle `kaimon serve --http`, every session connected, {args.idle_seconds:g} s "
            "(target < 1 % of a core at 100 sessions)"
        )
        print(
            f"{'sessions':>8} {'server CPU':>11} {'all kernels':>12} {'server RSS':>11} {'load':>5}"
        )
        for count, idle_ in idles.items():
            print(idle_.row(count))
    print(f"[{time.perf_counter() - t0:.0f} s in all]")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--startup", type=int, nargs="*", default=[0, 8, 30], metavar="N")
    ap.add_argument("--idle", type=int, nargs="*", default=[1, 30], metavar="N")
    ap.add_argument("--repeat", type=int, default=5, help="stdio starts per count")
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    asyncio.run(main(ap.parse_args()))
