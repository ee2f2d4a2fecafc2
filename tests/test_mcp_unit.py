"""The MCP layer in-process (the SDK's in-memory client) over a core whose kernels are fakes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio
import pytest
from fakes import FakeKernel, FakeProvider, job, session_info
from mcp import Client

from kaimon_kernel._protocol import ToolSpec
from kaimon_kernel.server import _core, _mcp
from kaimon_kernel.server._core import Kaimon, ServerOptions
from kaimon_kernel.server._events import SessionChanged, ToolCallFinished
from kaimon_kernel.server._sessions import Registry

pytestmark = pytest.mark.anyio

HANG = ToolSpec(name="hang", input_schema={"type": "object", "properties": {}})


@pytest.fixture
async def kaimon() -> AsyncIterator[Kaimon]:
    provider = FakeProvider()
    kernel = provider.add(FakeKernel(session_info("k1", namespace="fake")))
    kernel.tools = [HANG]
    core = Kaimon(ServerOptions(auto_start=False), Registry([provider]))
    await core.registry.first()
    await core.registry.sessions["k1"].wait_ready(5)
    yield core
    await core.registry.close()
    await core.store.aclose()


async def test_a_gate_tool_on_a_frozen_kernel_returns_at_its_deadline(
    kaimon: Kaimon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_core, "DEFAULT_TOOL_TIMEOUT", 0.3)
    finished: list[ToolCallFinished] = []
    kaimon.bus.subscribe(finished.append, ToolCallFinished)
    async with Client(_mcp.build_mcp(kaimon)) as client:
        result = await asyncio.wait_for(client.call_tool("fake_hang", {}), 10)
    assert result.is_error
    assert "timed out after 0.3 s" in result.content[0].text  # type: ignore[union-attr]
    assert finished and finished[0].is_error


async def test_a_core_error_reaches_the_agent_as_what_to_do(kaimon: Kaimon) -> None:
    async with Client(_mcp.build_mcp(kaimon)) as client:
        result = await client.call_tool("check_eval", {"eval_id": "zz"})
        unknown = await client.call_tool("list_jobs", {"limt": 3})
    assert result.is_error
    assert "is not an eval id" in result.content[0].text  # type: ignore[union-attr]
    assert unknown.is_error
    text = unknown.content[0].text  # type: ignore[union-attr]
    assert "unknown argument 'limt'" in text and "limit" in text


async def test_a_relabelled_session_is_announced_on_the_bus(kaimon: Kaimon) -> None:
    seen: list[object] = []
    kaimon.bus.subscribe(seen.append, SessionChanged)
    session = kaimon.registry.sessions["k1"]
    kernel = session.provider.kernels["k1"]  # type: ignore[attr-defined]
    from kaimon_kernel._protocol import SessionChanged as GateSessionChanged

    changed = GateSessionChanged(session=session.info.model_copy(update={"label": "new"}))
    kernel.iopub(None, "comm_msg", {"comm_id": session._comm_id, "data": changed.model_dump()})
    assert session.info.label == "new"
    assert SessionChanged("k1") in seen


async def test_a_new_server_leaves_alone_the_jobs_another_live_server_follows(
    kaimon: Kaimon,
) -> None:
    import os

    from kaimon_kernel._protocol import ProcessIdentity

    alive = ProcessIdentity.of(os.getppid())  # another live process: that server runs
    dead = ProcessIdentity(pid=999_999, create_time=1.0)
    assert alive is not None
    for job_id, server in (("aa01", alive), ("aa02", dead)):  # kernel 999999: gone
        kaimon.jobs.add(job(job_id, kernel_pid=999_999, server=server.model_dump_json()))
    await kaimon.recover_jobs()
    followed, orphan = await kaimon.jobs.get("aa01"), await kaimon.jobs.get("aa02")
    assert followed is not None and followed.status == "running"
    assert orphan is not None and orphan.status == "lost"


async def test_a_store_moved_aside_at_start_is_told_to_the_agent_once(kaimon: Kaimon) -> None:
    from pathlib import Path

    kaimon.store.moved_aside = Path("/tmp/jobs.sqlite3.corrupt-1")
    first = await kaimon.execute("1", session="k1")
    second = await kaimon.execute("2", session="k1")
    assert "moved aside to /tmp/jobs.sqlite3.corrupt-1" in first.note
    assert "moved aside" not in second.note


async def test_sessions_are_still_found_when_watching_for_them_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kaimon_kernel.server import _sessions

    monkeypatch.setattr(_sessions, "LIVENESS_INTERVAL", 0.05)

    class BlindProvider(FakeProvider):
        async def watch(self, changed: object) -> None:
            raise OSError("inotify watch limit reached")

    provider = BlindProvider()
    registry = Registry([provider])
    await registry.first()
    runner = asyncio.create_task(registry.run())
    try:
        provider.add(FakeKernel(session_info("late")))  # served after the server started
        with anyio.fail_after(5):
            while "late" not in registry.sessions:
                await asyncio.sleep(0.02)
    finally:
        runner.cancel()
        await registry.close()


async def test_an_unknown_session_names_every_place_kernels_are_looked_for(
    kaimon: Kaimon,
) -> None:
    class Remote(FakeProvider):
        def where(self) -> list[str]:
            return ["https://hub.example.org/user/alice/"]

    kaimon.registry.providers.append(Remote())
    async with Client(_mcp.build_mcp(kaimon)) as client:
        result = await client.call_tool("ex", {"code": "1", "session": "nosuch"})
    assert result.is_error
    text = result.content[0].text  # type: ignore[union-attr]
    assert "the fake kernels, https://hub.example.org/user/alice/" in text, text
