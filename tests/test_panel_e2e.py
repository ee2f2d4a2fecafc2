"""``push_panel``: a session's code sends panel state; every connected server holds it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from conftest import PersonKernel

from kaimon_kernel._protocol import ToolResult
from kaimon_kernel.server._core import Kaimon, ServerOptions
from kaimon_kernel.server._events import PanelUpdated

pytestmark = pytest.mark.anyio

CODE = """\
import dataclasses, datetime, kaimon_kernel

@dataclasses.dataclass
class Reading:
    probe: str
    value: float

def measure(probe: str) -> str:
    kaimon_kernel.push_panel("last", Reading(probe, 7.4))
    return "ok"

kaimon_kernel.register(kaimon_kernel.GateTool("measure", measure))
greetings = ["hi"]
kaimon_kernel.push_panel("status", "ready")
kaimon_kernel.push_panel({"greetings": greetings, "day": datetime.date(2026, 11, 21)})
greetings.append("changed after the push")
"""


async def until(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_pushed_panel_state_reaches_the_server_from_cells_and_tool_handlers(
    person: PersonKernel,
) -> None:
    kaimon = Kaimon(ServerOptions(auto_start=False))
    seen: list[PanelUpdated] = []
    kaimon.bus.subscribe(seen.append, PanelUpdated)
    async with kaimon.running():
        session = await kaimon.resolve("person")
        status, out = await asyncio.to_thread(person.run, CODE)
        assert status == "ok", out
        await until(lambda: "day" in session.panel, "the pushes")
        assert session.panel == {
            "status": "ready",
            "greetings": ["hi"],  # as it was at the call
            "day": "2026-11-21",
        }
        ref = next(r for r in kaimon.gate_tools().values() if r.spec.name == "measure")
        async for update in kaimon.call_tool(ref, {"probe": "pH"}):
            if isinstance(update, ToolResult):
                assert not update.is_error
        await until(lambda: "last" in session.panel, "the push from the tool handler")
        assert session.panel["last"] == {"probe": "pH", "value": 7.4}
        assert seen[0] == PanelUpdated(person.key, {"status": "ready"})


def test_a_value_that_cannot_be_sent_is_refused_at_the_call(person: PersonKernel) -> None:
    status, out = person.run(
        "import threading, kaimon_kernel\nkaimon_kernel.push_panel('lock', threading.Lock())"
    )
    assert status == "error"
    assert "TypeError: push_panel: the value for 'lock' (lock) cannot be sent as JSON" in out
    status, out = person.run("kaimon_kernel.push_panel('nan', float('nan'))")
    assert status == "error" and "'nan'" in out
    status, out = person.run("kaimon_kernel.push_panel('no value')")
    assert status == "error" and "needs a value" in out
