"""A no-op gate tool call through MCP (stdio, HTTP) against the raw comm round trip, same
kernel, same run; and tools/list with 200 tools across 10 sessions.

    python bench/bench_tools.py [--n 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

from _common import (  # isolates Jupyter dirs first
    http_client,
    http_server,
    interleaved,
    pct,
    print_table,
)
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.manager import KernelManager
from mcp import Client, StdioServerParameters

from kaimon_kernel._protocol import COMM_TARGET, CallTool, Hello, ProcessIdentity

SERVE = (
    "import kaimon_kernel\n"
    "def noop() -> str:\n    return 'ok'\n"
    "_ = kaimon_kernel.serve(namespace={ns!r}, tools=[kaimon_kernel.GateTool('noop', noop)]"
    " + [kaimon_kernel.GateTool(f't{{i}}', noop) for i in range({extra})])"
)


def start_kernel(ns: str, extra: int) -> KernelManager:
    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=30)
    kc.execute_interactive(SERVE.format(ns=ns, extra=extra), timeout=30)
    kc.stop_channels()
    return km


class RawComm:
    """The floor: our own comm to the gate, one CallTool → ToolResult round trip at a time."""

    def __init__(self, connection_file: str) -> None:
        self.kc = AsyncKernelClient(connection_file=connection_file)
        self.kc.load_connection_file()
        self.comm_id = uuid.uuid4().hex

    async def __aenter__(self) -> RawComm:
        self.kc.start_channels()
        await self.kc.wait_for_ready(timeout=30)
        hello = Hello(server=ProcessIdentity.current()).model_dump(mode="json")
        content = {"comm_id": self.comm_id, "target_name": COMM_TARGET, "data": hello}
        self.kc.shell_channel.send(self.kc.session.msg("comm_open", content))
        await self._next_gate_message("welcome")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.kc.stop_channels()

    async def _next_gate_message(self, kind: str) -> None:
        while True:
            m = await self.kc.get_iopub_msg(timeout=10)
            if m["msg_type"] == "comm_msg" and m["content"]["data"].get("type") == kind:
                return

    async def once(self) -> float:
        while await self.kc.iopub_channel.msg_ready():  # other paths' traffic: untimed
            await self.kc.get_iopub_msg(timeout=1)
        call = CallTool(name="noop").model_dump(mode="json")
        t = time.perf_counter()
        self.kc.shell_channel.send(
            self.kc.session.msg("comm_msg", {"comm_id": self.comm_id, "data": call})
        )
        await self._next_gate_message("tool_result")
        return time.perf_counter() - t


def tool_once(client: Client) -> Callable[[], Awaitable[float]]:
    async def once() -> float:
        t = time.perf_counter()
        r = await client.call_tool("bench_noop", {})
        took = time.perf_counter() - t
        assert r.content[0].text == "ok", r
        return took

    return once


async def wait_for_noop(client: Client) -> None:
    for _ in range(100):
        if "bench_noop" in [t.name for t in (await client.list_tools()).tools]:
            return
        await asyncio.sleep(0.05)


async def main(n: int) -> None:
    km = start_kernel("bench", 0)
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "kaimon_kernel", "serve"], env=dict(os.environ)
    )
    extra = []
    try:
        with http_server() as (_server, url):
            async with (
                RawComm(km.connection_file) as raw,
                Client(params, read_timeout_seconds=60, cache=None) as stdio,
                http_client(url, cache=None) as client,
            ):
                await wait_for_noop(stdio)
                await wait_for_noop(client)
                paths = {
                    "raw comm round trip": raw.once,
                    "gate tool via stdio": tool_once(stdio),
                    "gate tool via HTTP": tool_once(client),
                }
                results = await interleaved(paths, n)
                # 10 more sessions x 21 tools: 211 gate tools in all
                extra = [start_kernel(f"ns{i}", 20) for i in range(10)]
                for _ in range(400):
                    names = [t.name for t in (await client.list_tools()).tools]
                    gate_count = sum(n.startswith(("bench_", "ns")) for n in names)
                    if gate_count >= 211:
                        break
                    await asyncio.sleep(0.05)
                list_times = []
                for _ in range(50):
                    t = time.perf_counter()
                    count = len((await client.list_tools()).tools)
                    list_times.append(time.perf_counter() - t)
    finally:
        for k in [km, *extra]:
            k.shutdown_kernel(now=True)

    print_table("no-op gate tool call, same kernel, interleaved", results)
    print(
        f"tools/list over HTTP, {count} tools ({gate_count} gate tools, 11 sessions): "
        f"p50 {pct(list_times, 0.5):.2f} ms, p99 {pct(list_times, 0.99):.2f} ms"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    asyncio.run(main(ap.parse_args().n))
