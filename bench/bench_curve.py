"""ex("1+1") on a CurveZMQ-encrypted kernel against a plain one, both through one kaimon
server over stdio, with the raw jupyter_client round trip on each as the floor.

    python bench/bench_curve.py [--n 200]

Prints p50/p99 in ms and each path's ratio to the plain raw round trip. Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import zmq
from _common import RawClient, interleaved, print_table  # isolates Jupyter dirs first
from jupyter_client.manager import KernelManager
from mcp import Client, StdioServerParameters


def served(label: str, curve: bool) -> KernelManager:
    km = KernelManager(kernel_name="python3")
    if curve:
        km.curve_publickey, km.curve_secretkey = zmq.curve_keypair()
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=30)
    kc.execute_interactive(f"%load_ext kaimon_kernel\n%kaimon serve --label {label}", timeout=30)
    kc.stop_channels()
    return km


def ex_once(client: Client, session: str):  # type: ignore[no-untyped-def]
    async def once() -> float:
        t = time.perf_counter()
        r = await client.call_tool("ex", {"code": "1+1", "session": session})
        took = time.perf_counter() - t
        assert r.content[0].text.strip() == "2", r
        return took

    return once


async def main(n: int) -> None:
    plain, curve = served("plain", False), served("curve", True)
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "kaimon_kernel", "serve"], env=dict(os.environ)
    )
    try:
        async with (
            RawClient(plain.connection_file) as raw_plain,
            RawClient(curve.connection_file) as raw_curve,
            Client(params, read_timeout_seconds=60) as stdio,
        ):
            results = await interleaved(
                {
                    "raw, plain TCP": raw_plain.once,
                    "raw, CurveZMQ": raw_curve.once,
                    "kaimon ex, plain TCP": ex_once(stdio, "plain"),
                    "kaimon ex, CurveZMQ": ex_once(stdio, "curve"),
                },
                n,
            )
    finally:
        plain.shutdown_kernel(now=True)
        curve.shutdown_kernel(now=True)
    print_table("ex('1+1'), plain vs encrypted kernel, interleaved rounds of 10", results)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    asyncio.run(main(ap.parse_args().n))
