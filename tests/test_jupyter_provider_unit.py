"""The Jupyter Server provider's bookkeeping, against a fake server and scripted probes: what
is probed when, what is exposed, and what counts as alive."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import session_info

from kaimon_kernel._protocol import SessionInfo
from kaimon_kernel.server._jupyter_api import JupyterAPI, RemoteKernel, Unreachable
from kaimon_kernel.server.providers import JupyterServerProvider

pytestmark = pytest.mark.anyio


class FakeServer(JupyterAPI):
    """``/api/kernels`` and ``/api/sessions`` from memory; ``down`` makes it unreachable."""

    def __init__(self) -> None:
        super().__init__("http://hub.example.org/user/alice/", "tok")
        self.listed: dict[str, RemoteKernel] = {}
        self.down = False

    def put(self, kernel_id: str, activity: str = "t0", state: str = "idle") -> None:
        self.listed[kernel_id] = RemoteKernel(kernel_id, "python3", state, activity)

    async def kernels(self) -> list[RemoteKernel]:
        if self.down:
            raise Unreachable(f"cannot reach the Jupyter server at {self.url}")
        return list(self.listed.values())

    async def sessions(self) -> dict[str, str]:
        return {k: f"{k}.ipynb" for k in self.listed}


class ScriptedProvider(JupyterServerProvider):
    """Probes answer from ``gates`` (kernel id: its session, or None: not served)."""

    def __init__(self, server: FakeServer) -> None:
        super().__init__(server)
        self.gates: dict[str, SessionInfo | None] = {}
        self.probes: list[str] = []

    async def probe(self, kernel_id: str) -> SessionInfo | None:
        self.probes.append(kernel_id)
        return self.gates.get(kernel_id)


@pytest.fixture
def setup() -> tuple[FakeServer, ScriptedProvider]:
    server = FakeServer()
    return server, ScriptedProvider(server)


async def test_only_kernels_whose_gate_answered_are_exposed_with_where_they_live(
    setup: Any,
) -> None:
    server, provider = setup
    server.put("a")
    server.put("b")
    provider.gates["a"] = session_info("ka", pid=11)
    assert await provider.refresh()
    (info,) = provider.discover().values()
    assert info.key == "ka" and info.kernel_id == "a"
    assert info.server_url == server.url and info.notebook_path == "a.ipynb"
    assert provider.alive(info) and provider.owns("ka") and not provider.owns("kb")


async def test_an_unserved_kernel_is_probed_again_only_when_it_ran_something(setup: Any) -> None:
    server, provider = setup
    server.put("b")
    await provider.refresh()
    await provider.refresh()
    assert provider.probes == ["b"]
    server.put("b", state="busy", activity="t1")  # running the person's cell: not now
    await provider.refresh()
    assert provider.probes == ["b"]
    provider.gates["b"] = session_info("kb")
    server.put("b", activity="t2")  # the person ran %kaimon serve
    assert await provider.refresh()
    assert provider.probes == ["b", "b"] and "kb" in provider.discover()


async def test_a_restart_by_rest_makes_the_old_info_dead_and_the_new_gate_served(
    setup: Any,
) -> None:
    server, provider = setup
    server.put("a")
    provider.gates["a"] = session_info("ka", pid=11)
    await provider.refresh()
    old = provider.discover()["ka"]

    async def restart(kernel_id: str) -> RemoteKernel:
        return server.listed[kernel_id]

    server.restart = restart  # type: ignore[method-assign]
    await provider.restart("ka")
    assert "ka" not in provider.discover()  # withdrawn until its gate answers again
    provider.gates["a"] = session_info("ka", pid=12)
    await provider.refresh()
    assert provider.discover()["ka"].pid == 12
    assert not provider.alive(old)


async def test_a_kernel_gone_from_the_server_is_not_alive_and_an_outage_keeps_the_rest(
    setup: Any,
) -> None:
    server, provider = setup
    server.put("a")
    server.put("b")
    provider.gates["a"] = session_info("ka")
    provider.gates["b"] = session_info("kb")
    await provider.refresh()
    a, b = provider.discover()["ka"], provider.discover()["kb"]
    del server.listed["a"]  # culled
    await provider.refresh()
    assert not provider.alive(a) and provider.alive(b)
    server.down = True
    assert not await provider.refresh()
    assert "cannot reach" in provider.problem and server.url in provider.where()[0]
    assert provider.alive(b)  # a blip is not a death: the WebSocket decides that


async def test_a_lost_websocket_makes_the_session_dead_and_its_kernel_probed_again(
    setup: Any,
) -> None:
    server, provider = setup
    server.put("a")
    provider.gates["a"] = session_info("ka")
    await provider.refresh()
    info = provider.discover()["ka"]
    transport = provider.connect(info)
    assert transport.on_lost is not None
    transport.on_lost("cannot reach kernel a")
    assert not provider.alive(info) and provider.discover() == {}
    await provider.refresh()  # the server answers again: the gate too
    assert provider.alive(provider.discover()["ka"])
