"""A no-op gate tool call through MCP (stdio, HTTP) against the raw comm round trip, same
kernel, same run; and tools/list with 200 tools across 10 sessions.

    python bench/bench_tools.py [--n 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid

from _common import http_client, http_server, pct  # isolates Jupyter dirs first
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.manager import KernelManager
from mcp import Client, StdioServerParameters

from kaimon_kernel._protocol import COMM_TARGET, CallTool, Hello

SERVE = (
    "import kaimon_kernel\n"
    "def noop() -> str:\n    return 'ok'\n"
    "kaimon_kernel.serve(namespace={ns!r}, tools=[kaimon_kernel.GateTool('noop', noop)]"
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


async def raw_comm(cf: str, n: int) -> list[float]:
    """The floor: our own comm to the gate, one CallTool → ToolResult round trip at a time."""
    kc = AsyncKernelClient(connection_file=cf)
    kc.load_connection_file()
    kc.start_channels()
    await kc.wait_for_ready(timeout=30)
    comm_id = uuid.uuid4().hex
    hello = Hello(server_pid=os.getpid()).model_dump()
    kc.shell_channel.send(
        kc.session.msg("comm_open", {"comm_id": comm_id, "target_name": COMM_TARGET, "data": hello})
    )

    async def next_gate_message(kind: str) -> None:
        while True:
            m = await kc.get_iopub_msg(timeout=10)
            if m["msg_type"] == "comm_msg" and m["content"]["data"].get("type") == kind:
                return

    await next_gate_message("welcome")
    out = []
    for _ in range(n + 10):
        call = CallTool(call_id=uuid.uuid4().hex, name="noop").model_dump()
        t = time.perf_counter()
        kc.shell_channel.send(kc.session.msg("comm_msg", {"comm_id": comm_id, "data": call}))
        await next_gate_message("tool_result")
        out.append(time.perf_counter() - t)
    kc.stop_channels()
    return out[10:]


async def mcp_calls(client: Client, n: int) -> list[float]:
    for _ in range(100):
        if "bench_noop" in [t.name for t in (await client.list_tools()).tools]:
            break
        await asyncio.sleep(0.05)
    out = []
    for _ in range(n + 10):
        t = time.perf_counter()
        r = await client.call_tool("bench_noop", {})
        out.append(time.perf_counter() - t)
        assert r.content[0].text == "ok", r
    return out[10:]


async def main(n: int) -> None:
    km = start_kernel("bench", 0)
    results = {"raw comm round trip": await raw_comm(km.connection_file, n)}
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "kaimon_kernel", "serve"], env=dict(os.environ)
    )
    async with Client(params, read_timeout_seconds=60, cache=None) as client:
        results["gate tool via stdio"] = await mcp_calls(client, n)

    extra = []
    try:
        with http_server() as (_server, url):
            async with http_client(url, cache=None) as client:
                results["gate tool via HTTP"] = await mcp_calls(client, n)
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

    floor = statistics.median(results["raw comm round trip"])
    print(f"no-op gate tool call, n={n}, same kernel, same run")
    print(f"{'path':22} {'p50 ms':>8} {'p99 ms':>8} {'p50 ratio':>10}")
    for name, samples in results.items():
        print(
            f"{name:22} {pct(samples, 0.5):8.2f} {pct(samples, 0.99):8.2f} "
            f"{statistics.median(samples) / floor:9.2f}x"
        )
    print(
        f"tools/list over HTTP, {count} tools ({gate_count} gate tools, 11 sessions): "
        f"p50 {pct(list_times, 0.5):.2f} ms, p99 {pct(list_times, 0.99):.2f} ms"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    asyncio.run(main(ap.parse_args().n))
