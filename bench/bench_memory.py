"""Memory: a job printing 100 MB in one burst, as one write and as 1,000,000 lines; the peak
RSS of `kaimon serve --http` (VmHWM, a fresh server per case), and that no output was dropped
(the block's total in read_block against the characters printed).

    python bench/bench_memory.py [--mb 100] [--promote-after 0.5]

Target: peak <= 150 MB with every character kept. "CUT" means the block store kept part and
its note counts the rest (a cap, said in the block); "DROPPED", characters gone unsaid.
Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from _common import (  # isolates Jupyter dirs first
    ServedKernels,
    http_client,
    http_server,
    memory_mb,
)
from mcp import Client

# the block store's own note where it stops keeping a block (a cap, said in the block)
CUT_NOTE = re.compile(r"\n… \[([\d,]+) more characters were not kept\] …\n$")


def kept_or_not(total: int, tail: str, printed: int, letter: str) -> str:
    """Whether the block holds every character printed, or says how many it did not keep."""
    if total == printed and not set(tail) - {letter, "\n"}:
        return "all kept"
    if m := CUT_NOTE.search(tail):
        cut = int(m.group(1).replace(",", ""))
        kept = total - len(m.group(0))
        verdict = "accounted for" if kept + cut == printed else f"{printed - kept - cut:,} lost"
        return f"CUT: {kept:,} kept, a note for the other {cut:,}: {verdict}"
    return f"DROPPED {printed - total:,}; the last page ends {tail[-60:]!r}"


WAIT = 300.0  # seconds a job or its block may take to finish before the bench gives up


def give_up_after(what: str) -> Callable[[], None]:
    deadline = time.monotonic() + WAIT

    def check() -> None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} still running after {WAIT:g} s")

    return check


async def wait_done(client: Client, eval_id: str) -> None:
    """Until check_eval says the job is no longer running."""
    check = give_up_after(f"job {eval_id}")
    while True:
        check()
        r = await client.call_tool("check_eval", {"eval_id": eval_id})
        if r.structured_content["status"] != "running":
            return
        await asyncio.sleep(0.2)


async def block_total(client: Client, session: str) -> tuple[int, str]:
    """The newest block of ``session`` once finished: its total characters and last page."""
    check = give_up_after(f"the newest block of {session}")
    while True:
        check()
        h = await client.call_tool("history", {"session": session, "limit": 1})
        block = h.structured_content["blocks"][0]
        if block["status"] != "running":
            break
        await asyncio.sleep(0.2)
    first = await client.call_tool("read_block", {"block_id": block["block_id"], "limit": 100})
    total = first.structured_content["total"]
    last = await client.call_tool(
        "read_block", {"block_id": block["block_id"], "offset": max(total - 100, 0), "limit": 100}
    )
    return total, last.content[0].text.split("]\n", 1)[-1]  # the page, not its header


@dataclass
class Case:
    code: str
    printed: int  # characters the code prints
    letter: str  # the one letter it prints
    promoted: bool = False  # the ex became a job
    took: float = 0.0  # seconds from the ex to the job's end
    base: float = 0.0  # server RSS before, MB
    peak: float = 0.0  # server VmHWM after, MB
    total: int = 0  # the block's characters, as read_block counts them
    tail: str = ""  # the block's last page

    def row(self, name: str, width: int) -> str:
        return (
            f"{name:{width}} {'yes' if self.promoted else 'no':>4} {self.took:7.1f} "
            f"{self.base:8.0f} MB {self.peak:6.0f} MB  {self.total:,} / {self.printed:,} "
            f"({kept_or_not(self.total, self.tail, self.printed, self.letter)})"
        )


def cases(mb: int) -> dict[str, Case]:
    n = mb * 1_000_000
    return {
        f"{mb} MB, one write": Case(f"print('x' * {n})", n + 1, "x"),
        f"{mb} MB, {n // 100:,} lines": Case(
            f"for _ in range({n // 100}):\n    print('y' * 99)", n, "y"
        ),
    }


async def run_case(session: str, case: Case, promote_after: float) -> None:
    with http_server("--promote-after", str(promote_after)) as (server, url):
        async with http_client(url, cache=None) as client:
            r = await client.call_tool("ex", {"code": "1+1", "session": session})
            assert r.content[0].text.strip() == "2", r
            case.base = memory_mb(server.pid, "VmRSS")
            t = time.perf_counter()
            r = await client.call_tool("ex", {"code": case.code, "session": session})
            case.promoted = bool(r.structured_content and "eval_id" in r.structured_content)
            if case.promoted:
                await wait_done(client, r.structured_content["eval_id"])
            case.took = time.perf_counter() - t
            case.total, case.tail = await block_total(client, session)
            case.peak = memory_mb(server.pid)


async def main(args: argparse.Namespace) -> None:
    results = cases(args.mb)
    async with ServedKernels("m") as kernels:
        await kernels.add(1)
        for case in results.values():
            await run_case(kernels.names[0], case, args.promote_after)
    print(
        f"one job printing {args.mb} MB in one burst; a fresh `kaimon serve --http` per case "
        "(target: peak <= 150 MB, nothing dropped)"
    )
    width = max(len(name) for name in results) + 2
    print(
        f"{'case':{width}} {'job':>4} {'done s':>7} {'RSS before':>11} {'peak RSS':>9}  "
        "block chars / printed"
    )
    for name, case in results.items():
        print(case.row(name, width))
    print(f"[load average {os.getloadavg()[0]:.1f}]")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100, help="megabytes each case prints")
    ap.add_argument(
        "--promote-after", type=float, default=0.5, help="seconds before the ex becomes a job"
    )
    asyncio.run(main(ap.parse_args()))
