"""The extension supervisor's state machine against a fake process: fast and exact."""

from __future__ import annotations

import asyncio
import time

import pytest
from fakes import FakeExtensionProcess

from kaimon_kernel.extensions._supervisor import ExtensionStatus, Runner, describe_exit

pytestmark = pytest.mark.anyio

DEADLINE = 5.0


class Harness:
    """A runner whose every start is a new fake process; records each status change."""

    def __init__(self, backoff=(0.05, 0.1, 0.2), **fake) -> None:
        self.processes: list[FakeExtensionProcess] = []
        self.fake = fake
        self.history: list[tuple[float, ExtensionStatus]] = []
        self.runner = Runner(
            ExtensionStatus(name="notes", project_path="/p", key="xabc"),
            self.spawn,
            backoff=backoff,
            start_timeout=0.3,
            poll=0.01,
            on_change=lambda s: self.history.append((time.time(), s)),
        )

    def spawn(self) -> FakeExtensionProcess:
        process = FakeExtensionProcess(**self.fake)
        self.processes.append(process)
        return process

    @property
    def states(self) -> list[str]:
        out: list[str] = []
        for _, s in self.history:
            if not out or out[-1] != s.state:
                out.append(s.state)
        return out

    async def until(self, predicate, what: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.states}"
            await asyncio.sleep(0.005)


async def test_an_extension_is_starting_until_it_serves_then_running() -> None:
    h = Harness()
    h.runner.start()
    assert await h.runner.wait_state("running", timeout=DEADLINE)
    assert h.states == ["starting", "running"]
    assert h.runner.status.pid == h.processes[0].pid
    assert h.runner.status.started_at is not None
    await h.runner.stop()
    assert h.runner.state == "stopped"
    assert h.processes[0].stops >= 1


async def test_a_crash_is_restarted_after_5_10_30_60_style_growing_delays() -> None:
    h = Harness(backoff=(0.05, 0.1, 0.2))
    h.runner.start()
    for n in range(4):
        await h.until(lambda n=n: len(h.processes) > n and h.processes[n].served(), "serving")
        await h.runner.wait_state("running", timeout=DEADLINE)
        h.processes[n].crash(-9, f"Traceback: boom {n}")
        await h.until(lambda n=n: len(h.processes) > n + 1, "a restart")
    await h.runner.stop()
    delays = [round(s.next_start_at - at, 2) for at, s in h.history if s.state == "crashed"]
    assert delays == [0.05, 0.1, 0.2, 0.2]  # the last delay repeats
    crashed = [s for _, s in h.history if s.state == "crashed"]
    assert "was killed by SIGKILL" in crashed[0].errors
    assert "Traceback: boom 0" in crashed[0].errors
    assert h.runner.status.restarts == 4


async def test_a_process_that_exits_before_serving_is_a_crash_with_its_output() -> None:
    h = Harness(serves=False)
    h.runner.start()
    await h.until(lambda: h.processes, "a start")
    h.processes[0].crash(3, "ImportError: no module named notes_ext")
    assert await h.runner.wait_state("crashed", timeout=DEADLINE)
    errors = h.runner.status.errors
    assert "exited with code 3 before serving its tools" in errors
    assert "ImportError: no module named notes_ext" in errors
    await h.runner.stop()


async def test_a_process_that_never_serves_is_stopped_after_the_start_timeout() -> None:
    h = Harness(serves=False)
    h.runner.start()
    assert await h.runner.wait_state("crashed", timeout=DEADLINE)
    assert "did not serve its tools within 0.3 s" in h.runner.status.errors
    assert h.processes[0].stops == 1
    await h.runner.stop()


async def test_a_launch_failure_is_a_crash_that_says_why() -> None:
    h = Harness(fails_to_launch="no such interpreter")
    h.runner.start()
    assert await h.runner.wait_state("crashed", timeout=DEADLINE)
    assert "could not be started: no such interpreter" in h.runner.status.errors
    await h.runner.stop()


async def test_stop_during_the_backoff_stops_at_once() -> None:
    h = Harness(backoff=(30.0,))
    h.runner.start()
    assert await h.runner.wait_state("running", timeout=DEADLINE)
    h.processes[0].crash()
    assert await h.runner.wait_state("crashed", timeout=DEADLINE)
    began = time.monotonic()
    await h.runner.stop()
    assert time.monotonic() - began < 1.0
    assert h.runner.state == "stopped"
    assert len(h.processes) == 1


async def test_start_while_crashed_skips_the_rest_of_the_backoff() -> None:
    h = Harness(backoff=(30.0,))
    h.runner.start()
    assert await h.runner.wait_state("running", timeout=DEADLINE)
    h.processes[0].crash()
    assert await h.runner.wait_state("crashed", timeout=DEADLINE)
    h.runner.start()
    await h.until(lambda: len(h.processes) == 2 and h.runner.state == "running", "restart")
    await h.runner.stop()


async def test_a_run_longer_than_the_last_delay_starts_the_backoff_afresh() -> None:
    h = Harness(backoff=(0.02, 0.04))
    h.runner.start()
    for n in range(2):  # two quick crashes: 0.02, then 0.04
        await h.until(lambda n=n: len(h.processes) > n and h.processes[n].served(), "serving")
        await h.runner.wait_state("running", timeout=DEADLINE)
        h.processes[n].crash()
        await h.until(lambda n=n: len(h.processes) > n + 1, "a restart")
    await h.runner.wait_state("running", timeout=DEADLINE)
    await asyncio.sleep(0.1)  # the scenario itself: a run that lasts past the last delay
    h.processes[2].crash()
    await h.until(lambda: len(h.processes) > 3, "a restart")
    await h.runner.stop()
    delays = [round(s.next_start_at - at, 2) for at, s in h.history if s.state == "crashed"]
    assert delays == [0.02, 0.04, 0.02]


async def test_stopping_a_running_extension_stops_its_process_once() -> None:
    h = Harness()
    h.runner.start()
    assert await h.runner.wait_state("running", timeout=DEADLINE)
    await h.runner.stop()
    await h.runner.stop()
    assert h.processes[0].stops == 1
    assert h.states[-1] == "stopped"


def test_exits_are_described_by_signal_or_code() -> None:
    assert describe_exit(-15) == "was killed by SIGTERM"
    assert describe_exit(1) == "exited with code 1"


async def test_an_extension_that_cannot_be_made_is_a_crash_not_a_dead_runner() -> None:
    def spawn() -> FakeExtensionProcess:
        raise ValueError("its manifest is broken now")

    runner = Runner(
        ExtensionStatus(name="notes", project_path="/p", key="xabc"), spawn, backoff=(30.0,)
    )
    runner.start()
    assert await runner.wait_state("crashed", timeout=DEADLINE)
    assert "could not be started: its manifest is broken now" in runner.status.errors
    await runner.stop()
    assert runner.state == "stopped"
