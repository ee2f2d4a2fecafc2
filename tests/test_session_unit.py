"""The session and execution state machines against a fake kernel: fast and deterministic."""

from __future__ import annotations

import asyncio

import pytest
from fakes import FakeKernel, FakeProvider, session_info

from kaimon_kernel import DeadKernelError, KernelTimeout
from kaimon_kernel._output import OutputCapture
from kaimon_kernel.server import _kernel
from kaimon_kernel.server._events import EventBus, SessionCame, ToolsChanged
from kaimon_kernel.server._execution import Execution
from kaimon_kernel.server._kernel import KernelSession
from kaimon_kernel.server._sessions import Registry

pytestmark = pytest.mark.anyio


async def connected(kernel: FakeKernel) -> KernelSession:
    provider = FakeProvider()
    provider.add(kernel)
    session = KernelSession(kernel.info, provider)
    await asyncio.wait_for(session.connect(), 5)
    return session


async def test_a_session_is_usable_once_its_gate_answers() -> None:
    session = await connected(FakeKernel(session_info()))
    assert session.state == "ready"
    session.usable()
    assert session.subshell_id == "sub-1"


async def test_a_kernel_whose_gate_never_answers_is_not_usable_and_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_kernel, "WELCOME_TIMEOUT", 0.05)
    monkeypatch.setattr(_kernel, "RETRY_AFTER", 0.01)
    kernel = FakeKernel(session_info(), gate=False)
    provider = FakeProvider()
    provider.add(kernel)
    session = KernelSession(kernel.info, provider)
    task = asyncio.create_task(session.connect())
    for _ in range(200):
        if kernel.sent_types().count("comm_open") >= 2:
            break
        await asyncio.sleep(0.01)
    assert kernel.sent_types().count("comm_open") >= 2  # tried again
    assert session.state == "connecting"
    with pytest.raises(KernelTimeout, match="has not answered yet"):
        session.usable()
    with pytest.raises(KernelTimeout):
        session.execute("1")
    kernel.gate = True  # the person runs %kaimon serve at last
    await asyncio.wait_for(task, 5)
    assert session.state == "ready"


async def test_closing_a_session_closes_its_comm_and_deletes_its_subshell() -> None:
    kernel = FakeKernel(session_info())
    session = await connected(kernel)
    assert kernel.comms and kernel.subshells
    await session.close()
    assert not kernel.comms
    assert not kernel.subshells
    assert kernel.closed


async def test_an_execution_collects_its_output_and_ends_with_the_reply() -> None:
    kernel = FakeKernel(session_info())
    session = await connected(kernel)
    ex = session.execute("print('hi'); 1+1")
    request = kernel.sent[-1][1]
    kernel.iopub(request, "status", {"execution_state": "busy"})
    kernel.iopub(request, "stream", {"name": "stdout", "text": "hi\n"})
    kernel.iopub(request, "execute_result", {"data": {"text/plain": "2"}, "execution_count": 1})
    kernel.iopub(request, "status", {"execution_state": "idle"})
    assert not ex.done.is_set()  # the reply is still to come
    kernel.reply("shell", request, "execute_reply", {"status": "ok", "execution_count": 1})
    assert ex.done.is_set() and ex.status == "ok"
    assert ex.capture.text() == "hi\n2\n"
    assert ex.msg_id not in session.executions


async def test_an_error_reply_without_an_error_message_still_reports_the_error() -> None:
    ex = Execution("m1", "boom", OutputCapture())
    ex.feed_iopub(_msg("status", {"execution_state": "busy"}))
    ex.feed_iopub(_msg("status", {"execution_state": "idle"}))
    ex.feed_reply(_msg("execute_reply", {"status": "error", "ename": "X", "evalue": "y"}))
    assert ex.status == "error"
    assert ex.capture.error == "X: y"


async def test_an_aborted_request_says_why() -> None:
    ex = Execution("m1", "x", OutputCapture())
    ex.feed_iopub(_msg("status", {"execution_state": "idle"}))
    ex.feed_reply(_msg("execute_reply", {"status": "aborted"}))
    assert ex.status == "aborted"
    assert "aborted" in ex.reason


async def test_a_dead_kernel_fails_what_waits_on_it() -> None:
    kernel = FakeKernel(session_info())
    session = await connected(kernel)
    ex = session.execute("while True: pass")
    kernel.alive = False
    session.mark_dead("the kernel died")
    assert ex.done.is_set() and ex.status == "dead"
    with pytest.raises(DeadKernelError):
        session.usable()


async def test_interrupt_goes_by_message_first_and_signals_only_without_an_answer() -> None:
    kernel = FakeKernel(session_info())
    session = await connected(kernel)
    assert await session.interrupt() == "interrupt_request"
    assert not session.provider.signalled  # type: ignore[attr-defined]


async def test_the_registry_announces_a_session_once_its_gate_answered() -> None:
    provider = FakeProvider()
    provider.add(FakeKernel(session_info("a")))
    provider.add(FakeKernel(session_info("b"), gate=False))
    bus = EventBus()
    seen: list[object] = []
    bus.subscribe(seen.append, SessionCame, ToolsChanged)
    registry = Registry([provider], bus)
    await registry.first()
    assert registry.first_scan == {"a", "b"}
    await asyncio.wait_for(registry.sessions["a"].wait_ready(5), 5)
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.01)
    assert SessionCame("a") in seen
    assert all(getattr(e, "session", None) == "a" for e in seen)
    await registry.close()


def _msg(kind: str, content: dict[str, object]) -> dict[str, object]:
    return {"header": {"msg_type": kind}, "parent_header": {}, "content": content}
