"""Concurrency: 8 agents over HTTP, each with its own MCP client and its own kernel
(session=key), running `ex` in a loop, against 8 raw jupyter_client loops on the same kernels
in the same run; phases interleaved (raw, kaimon, raw, kaimon, …).

    python bench/bench_concurrency.py [--agents 8] [--rounds 3] [--seconds 5]

Every call answers a number unique to its agent and call (`i * 1_000_000 + k`) and the pid of
the kernel that ran it, both checked: a reply crossed to another agent, code run in another
agent's kernel, or a call lost (an error, or no answer within 30 s) is counted. Prints calls/s
and p50/p99 per path and kaimon's ratios to the raw loops' (targets: throughput >= 0.9x,
p50 <= 1.5x, none crossed or lost).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from _common import (  # isolates Jupyter dirs first
    RawClient,
    ServedKernels,
    http_client,
    http_server,
    pct,
)
from mcp import Client

CALL_TIMEOUT = 30.0


def code_for(agent: int, k: int, pid: int) -> tuple[str, str]:
    """The code of an agent's k-th call and the only answer that belongs to it: its number,
    and the pid of the agent's own kernel (run in another kernel, the pid differs)."""
    return (
        f"{agent} * 1_000_000 + {k}, __import__('os').getpid()",
        f"({agent * 1_000_000 + k}, {pid})",
    )


@dataclass
class Tally:
    samples: list[float] = field(default_factory=list)
    wall: float = 0.0
    crossed: int = 0
    lost: int = 0
    calls: int = 0


class RawLoop(RawClient):
    """One raw jupyter_client agent: its answer is compared like kaimon's."""

    async def call(self, code: str) -> str:
        await self.drain()
        return await self.run(code, CALL_TIMEOUT)


def mcp_call(client: Client, key: str) -> Callable[[str], Awaitable[str]]:
    async def call(code: str) -> str:
        r = await client.call_tool("ex", {"code": code, "session": key})
        if r.is_error:  # no answer to compare: lost, not crossed
            raise RuntimeError(r.content[0].text if r.content else "error")
        return r.content[0].text.strip()

    return call


async def phase(
    agents: list[Callable[[str], Awaitable[str]]],
    pids: list[int],
    seconds: float,
    tally: Tally,
    counter: list[int],
) -> None:
    """Every agent calls in a loop until ``seconds`` pass; a call started is waited for."""
    deadline = time.perf_counter() + seconds

    async def loop(agent: int, call: Callable[[str], Awaitable[str]]) -> None:
        while time.perf_counter() < deadline:
            counter[agent] += 1
            code, expected = code_for(agent + 1, counter[agent], pids[agent])
            t = time.perf_counter()
            try:
                answer = await asyncio.wait_for(call(code), CALL_TIMEOUT)
            except Exception:  # an error or no answer: lost, and the loop goes on
                tally.lost += 1
                continue
            tally.samples.append(time.perf_counter() - t)
            tally.calls += 1
            tally.crossed += answer != expected

    t = time.perf_counter()
    await asyncio.gather(*(loop(i, call) for i, call in enumerate(agents)))
    tally.wall += time.perf_counter() - t


async def main(args: argparse.Namespace) -> None:
    async with ServedKernels("c") as kernels:
        await kernels.add(args.agents)
        files = [km.connection_file for _, km in kernels.kernels]
        pids = kernels.pids()
        with http_server() as (_server, url):
            async with AsyncExitStack() as stack:
                clients = [
                    await stack.enter_async_context(http_client(url, cache=None))
                    for _ in range(args.agents)
                ]
                sessions = (await clients[0].call_tool("list_sessions", {})).structured_content
                keys = {row["label"]: row["key"] for row in sessions["sessions"]}
                raws = [await stack.enter_async_context(RawLoop(f)) for f in files]
                paths = {
                    "raw jupyter_client": [r.call for r in raws],
                    "kaimon HTTP": [
                        mcp_call(c, keys[ns]) for c, ns in zip(clients, kernels.names, strict=True)
                    ],
                }
                counters = {name: [0] * args.agents for name in paths}
                for name, agents in paths.items():  # warm-up, not counted
                    await phase(agents, pids, 1.0, Tally(), counters[name])
                tallies = {name: Tally() for name in paths}
                for _ in range(args.rounds):
                    for name, agents in paths.items():
                        await phase(agents, pids, args.seconds, tallies[name], counters[name])

    floor = tallies["raw jupyter_client"]
    floor_rate = floor.calls / floor.wall
    floor_p50 = statistics.median(floor.samples)
    print(
        f"{args.agents} agents, each on its own kernel, all at once; {args.rounds} interleaved "
        f"rounds of {args.seconds:g} s per path (targets: calls/s >= 0.9x, p50 <= 1.5x)"
    )
    width = max(len(name) for name in tallies) + 2
    print(
        f"{'path':{width}} {'calls':>6} {'calls/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'rate ratio':>10} {'p50 ratio':>9} {'crossed':>7} {'lost':>5}"
    )
    for name, t in tallies.items():
        rate = t.calls / t.wall
        if not t.samples:
            print(f"{name:{width}} no call answered; {t.lost} lost")
            continue
        print(
            f"{name:{width}} {t.calls:6d} {rate:8.1f} {pct(t.samples, 0.5):7.2f} "
            f"{pct(t.samples, 0.99):7.2f} {rate / floor_rate:9.2f}x "
            f"{statistics.median(t.samples) / floor_p50:8.2f}x {t.crossed:7d} {t.lost:5d}"
        )
    print(f"[load average {os.getloadavg()[0]:.1f}]")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    asyncio.run(main(ap.parse_args()))
