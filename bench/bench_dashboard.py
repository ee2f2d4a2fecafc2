"""kaimon dashboard: events shown per second with 10 busy agents, idle CPU over 60 s, and the
dashboard's memory with 100,000 activity rows in the store.

1. Busy: 10 agents — 10 `kaimon serve` stdio servers, each with its own MCP SDK client —
   call `ex` as fast as they can on 2 served kernels for BUSY_SECONDS, while the dashboard
   (headless, in this process) follows the store. Reported: calls made, rows the dashboard
   showed, shown per second, how long after the last call it had shown every call, and its
   memory before and after.
2. Idle: `kaimon dashboard` in a real terminal (tmux), nothing happening; its CPU time over
   IDLE_SECONDS (psutil), as % of one core.
3. Memory: 100,000 activity rows in the store; the dashboard's RSS once it has shown them
   (it keeps at most 500 rows), and after 20 more reloads.

Run: PYTHONPATH=. python bench/bench_dashboard.py   (about 2 minutes)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid

import psutil
from _common import ROOT, ServedKernels  # noqa: F401 (isolates the Jupyter dirs first)
from mcp import Client, StdioServerParameters

from kaimon_kernel._paths import data_dir
from kaimon_kernel.dashboard import Dashboard
from kaimon_kernel.server._db import Database

AGENTS = 10
BUSY_SECONDS = float(os.environ.get("BUSY_SECONDS", 20))
IDLE_SECONDS = float(os.environ.get("IDLE_SECONDS", 60))
ROWS = 100_000


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


class Start:
    """Every agent connected first; then the clock starts for all."""

    def __init__(self, agents: int) -> None:
        self.waiting = agents
        self.all_ready = asyncio.Event()
        self.stop = 0.0
        self.start = 0.0

    def ready(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.start = time.monotonic()
            self.stop = self.start + BUSY_SECONDS
            self.all_ready.set()


async def agent(
    name: str, session: str, start: Start, done: list[float], returned: dict[str, float]
) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "kaimon_kernel", "serve", "--no-auto-start"],
        env=dict(os.environ),
    )
    async with Client(params, read_timeout_seconds=120) as client:
        await client.call_tool("ex", {"code": "1", "session": session})  # connected
        start.ready()
        await start.all_ready.wait()
        n = 0
        while time.monotonic() < start.stop:
            n += 1
            tag = f"{name}-{n}"
            code = f"x = 1 + 1  # {tag}"
            result = await client.call_tool("ex", {"code": code, "session": session})
            assert not result.is_error
            returned[tag] = time.monotonic()
            done.append(returned[tag])


async def busy() -> None:
    async with ServedKernels() as kernels:
        await kernels.add(2)
        app = Dashboard()
        finished_seen: dict[str, float] = {}
        show = app._show_activity

        def seen(new: list, changed: list) -> None:  # when each call shows as finished
            show(new, changed)
            now = time.monotonic()
            for row in [*new, *changed]:
                if row.status != "running" and "# " in row.arguments:
                    tag = row.arguments.rsplit("# ", 1)[1].split('"')[0]
                    finished_seen.setdefault(tag, now)

        app._show_activity = seen  # type: ignore[method-assign]
        async with app.run_test(size=(140, 40)):
            base = app.shown
            before = rss_mb()
            done: list[float] = []
            returned: dict[str, float] = {}
            start = Start(AGENTS)
            samples: list[tuple[float, int, int]] = []

            async def sample() -> None:
                while True:
                    samples.append((time.monotonic(), len(done), app.shown - base))
                    await asyncio.sleep(0.5)

            sampler = asyncio.create_task(sample())
            await asyncio.gather(
                *(
                    agent(f"a{i}", kernels.names[i % 2], start, done, returned)
                    for i in range(AGENTS)
                )
            )
            last = max(done)
            # every call made by the agents, plus their first (connecting) ex each
            want = len(done) + AGENTS
            deadline = time.monotonic() + 30
            while len(finished_seen) < len(returned) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            sampler.cancel()
            lags = sorted(
                max(finished_seen[t] - r, 0.0) for t, r in returned.items() if t in finished_seen
            )
            missing = len(returned) - len(lags)
            after = rss_mb()
            shown = app.shown - base
            behind = max(made - seen for _, made, seen in samples) if samples else 0
            print(f"busy: {AGENTS} agents (stdio servers) x ex for {BUSY_SECONDS:g} s on 2 kernels")
            print(f"  calls made        {want}  ({len(done) / (last - start.start):.0f}/s)")
            print(f"  rows shown        {shown}  ({(shown - AGENTS) / (last - start.start):.0f}/s)")
            print(f"  shown finished    {len(lags)} of {len(returned)} calls ({missing} never)")
            print(
                f"  lag call->shown   p50 {lags[len(lags) // 2] * 1000:.0f} ms, "
                f"p95 {lags[int(len(lags) * 0.95)] * 1000:.0f} ms, max {lags[-1] * 1000:.0f} ms"
            )
            print(f"  most behind       {behind} rows (sampled every 0.5 s)")
            print(
                f"  dashboard RSS     {before:.1f} MB -> {after:.1f} MB (rows kept: "
                f"{len(app._activity)})"
            )


def idle() -> None:
    if shutil.which("tmux") is None:
        print("idle: skipped (no tmux)")
        return
    name = f"bench-dash-{uuid.uuid4().hex[:6]}"
    env = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("JUPYTER"))
    pythonpath = os.environ.get("PYTHONPATH", "")
    command = (
        f"env {env} PYTHONPATH={pythonpath} TERM=xterm-256color "
        f"{sys.executable} -m kaimon_kernel dashboard"
    )
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", name, "-x", "140", "-y", "40", command], check=True
    )
    try:
        pane_pid = int(
            subprocess.run(
                ["tmux", "list-panes", "-t", name, "-F", "#{pane_pid}"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()[0]
        )
        shell = psutil.Process(pane_pid)
        deadline = time.monotonic() + 30
        proc = None
        while time.monotonic() < deadline:
            found = [
                p
                for p in [shell, *shell.children(recursive=True)]
                if "kaimon_kernel" in " ".join(p.cmdline())
            ]
            if found:
                proc = found[0]
                break
            time.sleep(0.1)
        assert proc is not None, "the dashboard did not start"
        time.sleep(5)  # past its start-up
        t0, c0 = time.monotonic(), sum(proc.cpu_times()[:2])
        time.sleep(IDLE_SECONDS)
        t1, c1 = time.monotonic(), sum(proc.cpu_times()[:2])
        cpu = (c1 - c0) / (t1 - t0) * 100
        print(f"idle: `kaimon dashboard` in tmux, {t1 - t0:.0f} s with nothing happening")
        print(f"  CPU               {c1 - c0:.3f} s = {cpu:.2f} % of one core")
        print(f"  RSS               {proc.memory_info().rss / 2**20:.1f} MB")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


async def memory() -> None:
    path = data_dir() / "jobs.sqlite3"
    Database(path).close()
    now = time.time()
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO activity (started_at, client, server_pid, transport, tool, arguments,"
            " session_key, block_id, duration, status) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                (
                    now - ROWS + i,
                    f"agent-{i % 10}",
                    1000 + i % 10,
                    "stdio",
                    "ex",
                    '{"code": "x = 1 + 1"}',
                    "k000",
                    None,
                    0.004,
                    "ok",
                )
                for i in range(ROWS)
            ),
        )
        count = db.execute("SELECT COUNT(*) FROM activity").fetchone()[0]
    before = rss_mb()
    app = Dashboard(watch=False)
    async with app.run_test(size=(140, 40)):
        t0 = time.monotonic()
        while len(app._activity) < min(count, app.max_rows):
            await asyncio.sleep(0.01)
        loaded = time.monotonic() - t0
        first = rss_mb()
        for _ in range(20):
            await app.reload({"store"})
        again = rss_mb()
    print(f"memory: {count:,} activity rows in the store")
    print(f"  first view in     {loaded * 1000:.0f} ms (rows kept: {len(app._activity)})")
    print(
        f"  RSS               {before:.1f} MB before the app, {first:.1f} MB shown, "
        f"{again:.1f} MB after 20 reloads"
    )


def main() -> None:
    asyncio.run(busy())
    idle()
    asyncio.run(memory())


if __name__ == "__main__":
    main()
