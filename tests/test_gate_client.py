"""The server's GateClient against the real gate's handler table, in one process.

The gate runs on a fake kernel (its comm and iopub are a few lines here); everything it
answers goes back to the client across threads, as it does over ZMQ. Fast and deterministic.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import anyio
import pytest

from kaimon_kernel import DeadKernelError, KaimonError, KernelTimeout, ProtocolMismatch
from kaimon_kernel._output import OutputCapture
from kaimon_kernel._protocol import (
    PROTOCOL_FEATURES,
    PROTOCOL_VERSION,
    EvalCancelled,
    Hello,
    ProcessIdentity,
    Request,
    SessionChanged,
    Welcome,
)
from kaimon_kernel.gate import _gate as gate_module
from kaimon_kernel.gate._context import is_cancelled, progress, set_tracker
from kaimon_kernel.gate._gate import Gate
from kaimon_kernel.gate._tools import GateTool
from kaimon_kernel.server._core import Kaimon, ServerOptions, TrackedEval
from kaimon_kernel.server._gate_client import GateClient, GateClosed
from kaimon_kernel.server._kernel import Execution

pytestmark = pytest.mark.anyio

DEADLINE = 5.0


# -- a fake kernel for the real gate -----------------------------------------------------------


class FakeComm:
    def __init__(self, comm_id: str, kernel: FakeKernel) -> None:
        self.comm_id = comm_id
        self.kernel = kernel
        self.topic = b"comm"
        self.closed = False
        self.msg_handler: Any = None
        self.close_handler: Any = None

    def on_msg(self, handler: Any) -> None:
        self.msg_handler = handler

    def on_close(self, handler: Any) -> None:
        self.close_handler = handler

    def close(self) -> None:  # the gate closes it: the server hears comm_close
        if not self.closed:
            self.closed = True
            self.kernel.deliver_close(self.comm_id)


class FakeKernel:
    """What the gate touches of ipykernel: comm targets, the iopub session, the parent."""

    def __init__(self) -> None:
        self.comm_manager = SimpleNamespace(register_target=self._register_target)
        self.session = SimpleNamespace(send=self._send)
        self.iopub_socket = object()
        self.parent: dict[str, Any] = {}
        self.target: Any = None
        self.wires: dict[str, Wire] = {}

    def _register_target(self, name: str, handler: Any) -> None:
        self.target = handler

    def get_parent(self) -> dict[str, Any]:
        return self.parent

    def _send(self, socket: Any, msg_type: str, content: dict[str, Any], **kw: Any) -> None:
        wire = self.wires[content["comm_id"]]
        wire.loop.call_soon_threadsafe(wire.client.feed, content["data"])

    def deliver_close(self, comm_id: str) -> None:
        wire = self.wires[comm_id]
        wire.loop.call_soon_threadsafe(wire.client.closed)


class FakeShell:
    def __init__(self) -> None:
        self.kernel = FakeKernel()
        self.events = SimpleNamespace(register=lambda *_: None)
        self.input_transformers_post: list[Any] = []
        self.profile_dir = None


class Wire:
    """One server's comm: a GateClient whose messages reach the gate as comm_open/comm_msg."""

    def __init__(self, kernel: FakeKernel, server: ProcessIdentity | None = None) -> None:
        self.kernel = kernel
        self.loop = asyncio.get_running_loop()
        self.comm = FakeComm(f"comm-{len(kernel.wires)}", kernel)
        kernel.wires[self.comm.comm_id] = self
        self.drop = False  # a gate that never answers
        self.client = GateClient(self.send, name="session unit", server=server)
        self.events: list[Any] = []
        self.client.listeners.append(self.events.append)

    def send(self, message: Request) -> None:
        if self.drop:
            return
        self.send_raw(message.model_dump(mode="json"), opening=isinstance(message, Hello))

    def send_raw(self, data: dict[str, Any], opening: bool = False) -> None:
        msg = {"content": {"comm_id": self.comm.comm_id, "data": data}}
        if opening:
            self.kernel.target(self.comm, msg)
        else:
            self.comm.msg_handler(msg)


@pytest.fixture
def gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    connection_file = tmp_path / "kernel-unit.json"
    connection_file.write_text("{}")
    monkeypatch.setattr(gate_module, "_connection_file", lambda: str(connection_file))
    g = Gate(FakeShell())
    g.serve(namespace="unit", label="first")
    yield g
    g.stop()
    set_tracker(None)


@pytest.fixture
async def wire(gate: Gate) -> AsyncIterator[Wire]:
    w = Wire(gate.shell.kernel)
    await w.client.connect(DEADLINE)
    yield w


def agent_cell(gate: Gate, msg_id: str) -> None:
    """The kernel starts running the agent's execute_request ``msg_id``."""
    gate.shell.kernel.parent = {"header": {"msg_id": msg_id}, "metadata": {"kaimon": {}}}
    gate.evals._pre_run_cell(SimpleNamespace(raw_cell="x = 1"))


def cell_finished(gate: Gate) -> None:
    result = SimpleNamespace(error_before_exec=None, error_in_exec=None, result=None)
    gate.evals._post_run_cell(result)


async def until(predicate: Any, what: str) -> None:
    try:
        with anyio.fail_after(DEADLINE):
            while not predicate():
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


# -- opening -----------------------------------------------------------------------------------


async def test_the_welcome_brings_the_session_its_tools_and_the_kernels_identity(
    gate: Gate,
) -> None:
    gate.tools.add(GateTool("double", lambda x: 2 * x))
    w = Wire(gate.shell.kernel)
    welcome = await w.client.connect(DEADLINE)
    assert w.client.state == "ready"
    assert welcome.session.label == "first" and w.client.info == welcome.session
    assert [t.name for t in w.client.tools] == ["double"]
    assert w.client.kernel == ProcessIdentity.current()  # the gate runs in this process
    assert w.client.features == PROTOCOL_FEATURES
    assert w.client.peer_version == PROTOCOL_VERSION == "2.1"
    assert isinstance(w.events[0], Welcome)
    assert gate.servers[w.comm.comm_id].server == ProcessIdentity.current()


async def test_a_gate_not_serving_refuses_and_requests_then_fail_with_its_reason(
    gate: Gate,
) -> None:
    gate.stop()
    w = Wire(gate.shell.kernel)
    with pytest.raises(KaimonError, match="not served"):
        await w.client.connect(DEADLINE)
    assert w.client.state == "refused" and w.comm.closed
    with pytest.raises(KaimonError, match="not served"):
        await w.client.get_info()


async def test_a_server_of_another_major_version_is_refused_plainly(gate: Gate) -> None:
    w = Wire(gate.shell.kernel)
    # what a 1.x server sends: no id, no identity
    w.send_raw({"type": "hello", "protocol_version": 1, "server_pid": 1}, opening=True)
    await until(lambda: w.events, "the gate's answer")
    refused = w.events[0]
    assert refused.type == "refused"
    assert "the kaimon server speaks kaimon protocol 1, this side speaks 2.1" in refused.reason
    assert "same kaimon-kernel version" in refused.reason and w.comm.closed


async def test_a_gate_one_minor_version_ahead_still_works_and_a_major_apart_is_refused() -> None:
    sent: list[Request] = []
    client = GateClient(sent.append, name="session x")
    opened = client.open()
    welcome = Welcome(request_id=sent[0].id, session=_info(), kernel=ProcessIdentity(pid=1))
    newer = welcome.model_dump(mode="json") | {
        "protocol_minor": 7,
        "features": [*PROTOCOL_FEATURES, "telepathy"],
        "a_field_from_the_future": {"x": 1},
    }
    client.feed(newer)
    assert (await opened).protocol_minor == 7
    assert client.state == "ready" and client.peer_version == "2.7"
    assert not client.supports("telepathy") and client.supports("cancel_state")
    # an event type this side does not know yet is ignored; a reply of an unknown type still
    # answers its request
    client.feed({"type": "weather_report", "sunny": True})
    asking = asyncio.ensure_future(client.get_info(timeout=DEADLINE))
    await until(lambda: len(sent) == 2, "the request to go out")
    client.feed({"type": "info_reply_v3", "request_id": sent[1].id, "ok": False, "error": "no"})
    with pytest.raises(KaimonError, match="no"):
        await asking

    other = GateClient(sent.append, name="session y")
    opened = other.open()
    far = Welcome(request_id=sent[-1].id, session=_info(), kernel=ProcessIdentity(pid=1))
    other.feed(far.model_dump(mode="json") | {"protocol_version": 3, "protocol_minor": 0})
    mismatch = r"speaks kaimon protocol 3\.0, this side speaks 2\.1"
    with pytest.raises(ProtocolMismatch, match=mismatch):
        await opened
    assert other.state == "refused"


async def test_a_server_one_minor_version_ahead_is_welcomed_and_spoken_to_in_common_features(
    gate: Gate,
) -> None:
    w = Wire(gate.shell.kernel)
    hello = Hello(server=ProcessIdentity.current()).model_dump(mode="json")
    w.send_raw(
        hello | {"protocol_minor": 9, "features": ["tool_calls", "telepathy"], "mood": "good"},
        opening=True,
    )
    await until(lambda: w.events, "the welcome")
    assert isinstance(w.events[0], Welcome)
    assert gate.servers[w.comm.comm_id].features == {"tool_calls"}
    gate.serve(label="changed")  # not announced to a server that did not ask for it
    await w.client.get_info(DEADLINE)  # a barrier: whatever the gate sent before has arrived
    assert not any(isinstance(e, SessionChanged) for e in w.events)


# -- requests and replies ----------------------------------------------------------------------


async def test_a_request_the_gate_does_not_know_is_answered_with_an_error(wire: Wire) -> None:
    class Frobnicate(Request):
        type: Literal["frobnicate"] = "frobnicate"

    with pytest.raises(KaimonError, match=r"protocol 2\.1\) does not know 'frobnicate'"):
        await wire.client.request(Frobnicate(), timeout=DEADLINE)
    assert (await wire.client.get_info(DEADLINE)).label == "first"  # still talking


async def test_a_failing_handler_is_answered_with_its_error_and_kills_nothing(
    gate: Gate, wire: Wire, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(link: Any, request: Any) -> None:
        raise RuntimeError("boom")

    gate._handlers["eval_query"] = boom
    with pytest.raises(KaimonError, match="RuntimeError: boom"):
        await wire.client.query_evals(["m1"], timeout=DEADLINE)
    assert "handling a eval_query request failed" in caplog.text
    assert (await wire.client.get_info(DEADLINE)).label == "first"


async def test_a_gate_that_does_not_answer_makes_the_request_time_out(wire: Wire) -> None:
    wire.drop = True
    with pytest.raises(KernelTimeout, match=r"did not answer set_info within 0\.05 s"):
        await wire.client.set_info("x", None, timeout=0.05)
    assert not wire.client._pending  # nothing left behind


async def test_when_the_kernel_dies_every_waiter_fails_with_the_reason(wire: Wire) -> None:
    wire.drop = True
    waiting = asyncio.ensure_future(wire.client.get_info(timeout=DEADLINE))
    call = wire.client.call_tool("anything", {})
    await asyncio.sleep(0)
    wire.client.fail_all("the kernel died")
    with pytest.raises(DeadKernelError, match="the kernel died"):
        await waiting
    result = await call.result
    assert result.is_error and "did not finish: the kernel died" in result.content[0].text
    assert isinstance(wire.events[-1], GateClosed)
    with pytest.raises(DeadKernelError):
        await wire.client.get_info()


# -- session info: every server hears of a change (defects 2 and 16) -------------------------


async def test_serving_again_reaches_every_connected_server_at_once(gate: Gate) -> None:
    first, second = Wire(gate.shell.kernel), Wire(gate.shell.kernel)
    await first.client.connect(DEADLINE)
    await second.client.connect(DEADLINE)
    gate.serve(label="renamed", allow_restart=False, allow_mirror=False)
    for w in (first, second):
        await until(lambda w=w: isinstance(w.events[-1], SessionChanged), "the change")
        assert w.client.info is not None
        assert (w.client.info.label, w.client.info.allow_restart) == ("renamed", False)
    # a change another server asked for reaches this one too
    await first.client.set_info(None, "for the report")
    await until(lambda: second.client.info.description == "for the report", "the new info")


async def test_empty_label_and_description_clear_them(gate: Gate, wire: Wire) -> None:
    info = await wire.client.set_info("analysis", "Q3 cleanup", timeout=DEADLINE)
    assert (info.label, info.description) == ("analysis", "Q3 cleanup")
    info = await wire.client.set_info("", "", timeout=DEADLINE)
    assert (info.label, info.description) == ("unit", "")  # the label falls back to namespace
    assert gate.info == info
    info = await wire.client.set_info(None, "kept label", timeout=DEADLINE)
    assert (info.label, info.description) == ("unit", "kept label")


async def test_mirror_is_refused_with_a_reason_where_the_person_said_no(
    gate: Gate, wire: Wire
) -> None:
    await wire.client.set_mirror(False, timeout=DEADLINE)
    assert not gate.view.enabled
    gate.serve(allow_mirror=False)
    with pytest.raises(KaimonError, match="--no-mirror"):
        await wire.client.set_mirror(True, timeout=DEADLINE)


# -- tool calls --------------------------------------------------------------------------------


async def test_a_tool_call_streams_progress_and_can_be_cancelled(gate: Gate, wire: Wire) -> None:
    started = threading.Event()

    def patient(steps: int) -> str:
        progress("warming up", 0, steps)
        started.set()
        while not is_cancelled():
            threading.Event().wait(0.005)
        return "stopped"

    gate.tools.add(GateTool("patient", patient))
    call = wire.client.call_tool("patient", {"steps": 3})
    update = await asyncio.wait_for(call.progress.get(), DEADLINE)
    assert (update.message, update.progress, update.total) == ("warming up", 0, 3)
    wire.client.cancel_call(call.call_id)
    result = await asyncio.wait_for(call.result, DEADLINE)
    assert result.content[0].text == "stopped" and not result.is_error
    assert not wire.client.calls


async def test_a_call_the_gate_cannot_start_ends_with_its_error(gate: Gate, wire: Wire) -> None:
    gate._handlers["call_tool"] = lambda link, request: 1 / 0
    call = wire.client.call_tool("anything", {})
    result = await asyncio.wait_for(call.result, DEADLINE)
    assert result.is_error and "ZeroDivisionError" in result.content[0].text


# -- cancelling evaluations: the gate says where the job is (defect 14) ----------------------


async def test_cancel_says_whether_the_evaluation_runs_is_queued_or_finished(
    gate: Gate, wire: Wire
) -> None:
    queued = await wire.client.cancel_eval("not-started", timeout=DEADLINE)
    assert queued.state == "queued"
    assert "not-started" in gate.evals.cancelled_early  # skipped when its turn comes

    agent_cell(gate, "job-1")
    running = await wire.client.cancel_eval("job-1", timeout=DEADLINE)
    assert running.state == "running" and gate.evals.current.cancelled.is_set()
    cell_finished(gate)
    finished = await wire.client.cancel_eval("job-1", timeout=DEADLINE)
    assert (finished.state, finished.status) == ("finished", "ok")


class FakeSession:
    """What Kaimon._cancel uses of a session: the gate's answers, and the interrupt."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.interrupted = 0
        self.key = "fake"
        self.state = "ready"

    def cancel_eval(self, execution: Execution, timeout: float = 10.0) -> Any:
        # a future, not a coroutine: the pre-fix code called this without awaiting it
        execution.cancel_requested = True
        state = self.answers.pop(0)
        loop = asyncio.get_running_loop()
        if state == "finished":  # its execute_reply is on its way
            loop.call_soon(_ends_ok, execution)
        answer: asyncio.Future[EvalCancelled] = loop.create_future()
        answer.set_result(EvalCancelled(msg_id=execution.msg_id, state=state))  # type: ignore
        return answer

    async def interrupt(self) -> str:
        self.interrupted += 1
        return "signal"


def _ends_ok(execution: Execution) -> None:
    execution.status = "ok"
    execution._finish()


def _tracked(session: FakeSession, started: bool) -> TrackedEval:
    execution = Execution("m1", "work()", OutputCapture(limit=100))
    if started:
        execution.started_at, execution.status = execution.sent_at, "running"
    return TrackedEval("e1", session, execution)  # type: ignore[arg-type]


async def _cancel(tracked: TrackedEval) -> str:
    kaimon = SimpleNamespace(options=ServerOptions(cancel_grace=0.05))
    return await Kaimon._cancel(kaimon, tracked)  # type: ignore[arg-type]


async def test_a_job_this_server_thinks_queued_but_the_gate_runs_is_not_marked_skipped() -> None:
    session = FakeSession(["running", "finished"])
    tracked = _tracked(session, started=False)  # the busy status has not reached us yet
    how = await asyncio.wait_for(_cancel(tracked), 15)
    assert "had not started" not in how
    assert tracked.execution.status == "ok", tracked.execution.reason


async def test_no_interrupt_once_the_job_is_no_longer_the_one_running() -> None:
    session = FakeSession(["running", "finished"])  # it ended as the grace period ran out
    tracked = _tracked(session, started=True)
    how = await asyncio.wait_for(_cancel(tracked), 15)
    assert session.interrupted == 0, how


async def test_a_job_still_running_after_the_grace_period_is_interrupted() -> None:
    session = FakeSession(["running", "running"])
    tracked = _tracked(session, started=True)
    task = asyncio.ensure_future(_cancel(tracked))
    await until(lambda: session.interrupted == 1, "the interrupt")
    tracked.execution.fail("cancelled", "interrupted")
    assert "interrupted (signal)" in await task


async def test_a_job_the_gate_reports_queued_is_cancelled_without_an_interrupt() -> None:
    session = FakeSession(["queued"])
    tracked = _tracked(session, started=False)
    assert "will not run" in await _cancel(tracked)
    assert tracked.execution.status == "cancelled" and session.interrupted == 0


# -- servers that are gone (defect 5, gate side) -----------------------------------------------


async def test_a_server_whose_process_is_gone_is_forgotten(gate: Gate) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = ProcessIdentity.of(gone.pid)
    gone.wait()
    assert identity is not None and not identity.alive()
    dead, live = Wire(gate.shell.kernel, server=identity), Wire(gate.shell.kernel)
    await dead.client.connect(DEADLINE)
    await live.client.connect(DEADLINE)
    assert len(gate.servers) == 2
    status = gate.status_text()
    assert f"server pid {gone.pid}" not in status
    assert f"server pid {ProcessIdentity.current().pid}" in status
    assert list(gate.servers) == [live.comm.comm_id] and dead.comm.closed


async def test_a_server_closing_its_comm_is_dropped(gate: Gate, wire: Wire) -> None:
    assert wire.comm.comm_id in gate.servers
    wire.comm.close_handler({"content": {"comm_id": wire.comm.comm_id, "data": {}}})
    assert not gate.servers
    assert "no kaimon server has connected" in gate.status_text()


def _info() -> Any:
    from kaimon_kernel._protocol import SessionInfo

    return SessionInfo(
        session_id="s" * 32,
        key="ssssssss",
        pid=1,
        connection_file="/nonexistent/kernel.json",
        namespace="x",
        label="x",
        cwd="/",
        python_version="3.11.0",
        started_at=0.0,
    )
