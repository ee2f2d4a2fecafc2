"""What sharing costs the person: their own cell on a served kernel versus an unserved one.

    python bench/bench_person.py [--n 400]

Two kernels with the same imports (kaimon_kernel imported, the extension loaded); one ran
`%kaimon serve` and a kaimon server (stdio) is connected to it, the other was never served.
The person's cell is `x = 1` through a raw jupyter_client (execute_request to execute_reply
and iopub idle), interleaved rounds on both kernels. Prints p50/p99 in ms and the ratio to
the unserved kernel, then the CPU the kaimon server spends per cell of the person's (steadier
than the ratio on a busy machine: on two cores the server's CPU is what the person pays).
Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from _common import RawClient, interleaved, print_table  # isolates Jupyter dirs first
from jupyter_client.manager import KernelManager
from mcp import Client, StdioServerParameters

SETUP = "import kaimon_kernel\n%load_ext kaimon_kernel"


def person_once(raw: RawClient, code: str = "x = 1") -> Callable[[], Awaitable[float]]:
    """One cell of the person's, timed from execute_request to reply and iopub idle."""
    kc = raw.kc

    async def once() -> float:
        while await kc.iopub_channel.msg_ready():  # what else came on iopub: not this cell's
            await kc.get_iopub_msg(timeout=1)
        t = time.perf_counter()
        msg_id = kc.execute(code)
        idle = reply = False
        while not (idle and reply):
            if not reply:
                r = await kc.get_shell_msg(timeout=10)
                reply = r["parent_header"].get("msg_id") == msg_id
            if not idle:
                m = await kc.get_iopub_msg(timeout=10)
                idle = (
                    m["parent_header"].get("msg_id") == msg_id
                    and m["msg_type"] == "status"
                    and m["content"]["execution_state"] == "idle"
                )
        return time.perf_counter() - t

    return once


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_pid() -> int:
    """The `kaimon serve` this process started (the stdio client's child)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if ppid == os.getpid() and b"kaimon_kernel" in cmdline and b"serve" in cmdline:
            return int(proc.name)
    raise RuntimeError("the kaimon server's process was not found")


def start_kernel(setup: str) -> KernelManager:
    km = KernelManager(kernel_name="python3")
    km.start_kernel(stderr=subprocess.DEVNULL)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=30)
    reply = kc.execute_interactive(setup, timeout=30, output_hook=lambda msg: None)
    assert reply["content"]["status"] == "ok", reply
    kc.stop_channels()
    return km


async def main(n: int) -> None:
    served = start_kernel(SETUP + "\n%kaimon serve --label person-bench")
    unserved = start_kernel(SETUP)
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "kaimon_kernel", "serve"], env=dict(os.environ)
    )
    try:
        async with (
            Client(params, read_timeout_seconds=60) as agent,
            RawClient(served.connection_file) as on_served,
            RawClient(unserved.connection_file) as on_unserved,
        ):
            # the server is connected (its gate comm open) once an ex went through
            r = await agent.call_tool("ex", {"code": "1+1", "session": "person-bench"})
            assert r.content[0].text.strip() == "2", r
            results = await interleaved(
                {
                    "unserved kernel": person_once(on_unserved),
                    "served, server connected": person_once(on_served),
                },
                n,
            )
            pid, once = server_pid(), person_once(on_served)
            before = cpu_seconds(pid)
            for _ in range(n):
                await once()
            server_cpu = (cpu_seconds(pid) - before) / n
    finally:
        served.shutdown_kernel(now=True)
        unserved.shutdown_kernel(now=True)
    print_table("the person's cell `x = 1`, raw jupyter_client, interleaved rounds of 10", results)
    print(f"kaimon server CPU per cell of the person's: {server_cpu * 1e6:.0f} µs ({n} cells)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    asyncio.run(main(ap.parse_args().n))
