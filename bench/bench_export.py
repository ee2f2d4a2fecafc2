"""One agent's ex("1+1") while another agent exports 2,000 blocks, over HTTP, one server.

    python bench/bench_export.py [--n 200] [--blocks 2000]

Agent A runs ex on its kernel; agent B's session holds --blocks blocks (written straight
into the store after A's idle phase) and exports them as a notebook, again and again,
while A is measured. Prints A's p50/p99 idle and during the exports, the raw jupyter_client
floor on A's kernel in both phases, and how long an export takes. Target: A's p99 during
the exports <= 2x its idle p99. Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from _common import (  # isolates Jupyter dirs first
    ROOT,
    RawClient,
    http_client,
    http_server,
    interleaved,
    pct,
    print_table,
)
from jupyter_client.manager import KernelManager
from mcp import Client

from kaimon_kernel._paths import data_dir
from kaimon_kernel.server._blocks import BlockStore
from kaimon_kernel.server._db import Database


def start_kernel(label: str, cwd: Path) -> tuple[KernelManager, str]:
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(cwd))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=30)
    out: list[str] = []
    kc.execute_interactive(
        f"%load_ext kaimon_kernel\n%kaimon serve --label {label}",
        timeout=30,
        output_hook=lambda m: out.append(m["content"].get("text", "")),
    )
    kc.stop_channels()
    key = "".join(out).split("serving session ", 1)[1].split()[0]
    return km, key


async def fill(session_key: str, count: int) -> None:
    """``count`` finished blocks of varied output (a few large) for ``session_key``."""
    db = Database(data_dir() / "jobs.sqlite3")
    store = BlockStore(db)
    rng = random.Random(9)
    for i in range(count):
        block_id, writer = await store.start(session_key, f"step_{i} = compute({i})")
        size = 1_000_000 if i % 100 == 99 else rng.randint(50, 4000)
        writer.write((f"row {i} " + "v" * 70 + "\n") * (size // 78 + 1))
        writer.close()
        store.finish(block_id, status="ok", duration=0.01, chars=writer.chars)
    await db.aclose()


def ex_once(client: Client, session: str) -> Callable[[], Awaitable[float]]:
    async def once() -> float:
        t = time.perf_counter()
        r = await client.call_tool("ex", {"code": "1+1", "session": session})
        took = time.perf_counter() - t
        assert r.content[0].text.strip() == "2", r
        return took

    return once


async def main(n: int, blocks: int) -> None:
    project = ROOT / "project"
    project.mkdir()
    os.chdir(ROOT)  # the server's folder: the allowed root that holds B's project
    km_a, key_a = start_kernel("agent-a", project)
    km_b, key_b = start_kernel("agent-b", project)
    exports: list[float] = []
    cells: list[int] = []
    try:
        with http_server() as (_server, url):
            async with (
                RawClient(km_a.connection_file) as raw,
                http_client(url) as a,
                http_client(url) as b,
            ):
                idle = await interleaved(
                    {"raw jupyter_client": raw.once, "kaimon HTTP (A)": ex_once(a, key_a)}, n
                )
                # B's blocks are written after A's idle phase: the store keeps the newest
                # 2,000 blocks of all sessions, and A's calls add blocks too.
                t = time.perf_counter()
                await fill(key_b, blocks)
                filled = time.perf_counter() - t
                stop = asyncio.Event()
                first = asyncio.Event()

                async def export_forever() -> None:
                    args = {"path": "export.ipynb", "session": key_b, "overwrite": True}
                    while not stop.is_set():
                        t = time.perf_counter()
                        r = await b.call_tool("export_notebook", args)
                        exports.append(time.perf_counter() - t)
                        assert not r.is_error, r
                        cells.append(r.structured_content["cells"])
                        first.set()

                exporter = asyncio.create_task(export_forever())
                waiting = asyncio.create_task(first.wait())
                await asyncio.wait({waiting, exporter}, return_when=asyncio.FIRST_COMPLETED)
                if exporter.done():
                    exporter.result()  # the export failed: say why
                busy = await interleaved(
                    {
                        "raw jupyter_client": raw.once,
                        "kaimon HTTP (A), B exporting": ex_once(a, key_a),
                    },
                    n,
                )
                stop.set()
                await exporter
    finally:
        km_a.shutdown_kernel(now=True)
        km_b.shutdown_kernel(now=True)

    print(f"{blocks} blocks written to the store in {filled:.1f} s")
    print_table("idle: ex('1+1') of agent A, interleaved rounds of 10", idle)
    print_table(f"while agent B exports {blocks} blocks again and again", busy)
    idle_p99 = pct(idle["kaimon HTTP (A)"], 0.99)
    busy_p99 = pct(busy["kaimon HTTP (A), B exporting"], 0.99)
    print(
        f"A's p99: idle {idle_p99:.2f} ms, during exports {busy_p99:.2f} ms: "
        f"{busy_p99 / idle_p99:.2f}x (target <= 2x)"
    )
    print(
        f"export of {min(cells)}-{max(cells)} blocks (A's calls evict B's oldest): "
        f"{len(exports)} runs, median {statistics.median(exports):.2f} s, "
        f"first {exports[0]:.2f} s"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--blocks", type=int, default=2000)
    args = ap.parse_args()
    asyncio.run(main(args.n, args.blocks))
