"""One served kernel as the server sees it: an async jupyter_client over its own channels.

A reader task per channel routes every message by ``parent_header.msg_id`` to the execution
that caused it; messages of other clients (the person's cells) update :class:`Activity`.
A liveness task notices a dead kernel and fails whatever waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import zmq
from jupyter_client.asynchronous import AsyncKernelClient

from .._errors import DeadKernelError, KaimonError, KernelTimeout, ProtocolMismatch
from .._output import OutputCapture
from .._protocol import (
    COMM_TARGET,
    EVAL_METADATA_KEY,
    CallTool,
    CancelCall,
    CancelEval,
    EvalQuery,
    EvalRecord,
    EvalRecords,
    EvalUpdate,
    Hello,
    JobPromoted,
    Refused,
    SessionInfo,
    SetInfo,
    SetOption,
    TextBlock,
    ToolProgress,
    ToolResult,
    ToolsChanged,
    ToolSpec,
    Welcome,
    check_protocol,
    parse_gate_message,
)

__all__ = ["Activity", "Execution", "KernelSession", "PendingCall", "pid_alive"]

logger = logging.getLogger(__name__)

READ_POLL_MS = 250  # at worst, how late a message whose wake-up pyzmq missed is read
READ_BATCH = 200  # messages handled before the loop yields

ExecStatus = Literal["queued", "running", "ok", "error", "dead", "aborted", "cancelled"]


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


@dataclass
class Execution:
    """One execute_request sent by the server, and everything it produced."""

    msg_id: str
    code: str
    capture: OutputCapture
    sent_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    finished_at: float | None = None
    status: ExecStatus = "queued"
    execution_count: int | None = None
    reason: str = ""
    quiet: bool = False
    last_output_at: float | None = None
    stash: dict[str, str] = field(default_factory=dict)
    last_progress: str | None = None
    new_progress: list[str] = field(default_factory=list)
    cancel_requested: bool = False
    #: Picked up again after a server restart: the execute_reply went to the old server.
    reattached: bool = False
    #: Called once when the execution ends, whatever the outcome.
    on_done: list[Callable[[], object]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _reply: dict[str, Any] | None = None
    _idle: bool = False

    @property
    def elapsed(self) -> float:
        return (self.finished_at or time.monotonic()) - self.sent_at

    def feed_iopub(self, msg: dict[str, Any]) -> None:
        kind = msg["header"]["msg_type"]
        content = msg["content"]
        if kind == "status":
            if content["execution_state"] == "busy" and self.started_at is None:
                self.started_at = time.monotonic()
                self.status = "running"
            elif content["execution_state"] == "idle":
                self._idle = True
        elif kind == "stream":
            self.capture.add_text(content.get("text", ""))
        elif kind == "execute_result" and self.quiet:
            return
        elif kind in ("execute_result", "display_data", "update_display_data", "clear_output"):
            self.capture.add_message(kind, content)  # display ids and clears, as a notebook
        elif kind == "error":
            self.capture.add_error(
                content.get("ename", "Error"),
                content.get("evalue", ""),
                content.get("traceback", []),
            )
        else:
            return
        if kind != "status":
            self.last_output_at = time.monotonic()
        self._maybe_finish()

    def feed_reply(self, msg: dict[str, Any]) -> None:
        self._reply = msg["content"]
        self.execution_count = self._reply.get("execution_count")
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if not self._idle or self.done.is_set():
            return
        if self.cancel_requested:
            self.status = "cancelled"
            self.reason = self.reason or "cancelled by the agent"
            self._finish()
            return
        if self._reply is None:
            if not self.reattached:
                return
            self._reply = {"status": "error" if self.capture.error else "ok"}
        status = self._reply.get("status")
        if status == "ok":
            self.status = "ok"
        elif status == "aborted":
            self.status = "aborted"
            self.reason = (
                "the kernel aborted this request (an earlier cell failed or it was interrupted)"
            )
        else:
            self.status = "error"
            if self.capture.error is None:  # an error reply with no error message on iopub
                self.capture.add_error(
                    self._reply.get("ename", "Error"),
                    self._reply.get("evalue", ""),
                    self._reply.get("traceback", []),
                )
        self._finish()

    def finish_from(self, status: str, output: str) -> None:
        """End with what the gate recorded (the evaluation ended while no server listened)."""
        self.capture = OutputCapture(limit=self.capture.limit)
        self.capture.add_text(output)
        self.status = "ok" if status == "ok" else "error"
        self.reason = "finished while the server was down; recovered from the kernel"
        self._finish()

    def fail(self, status: ExecStatus, reason: str) -> None:
        if self.done.is_set():
            return
        self.status = status
        self.reason = reason
        self._finish()

    def _finish(self) -> None:
        self.finished_at = time.monotonic()
        self.done.set()
        for callback in self.on_done:
            try:
                callback()
            except Exception:
                logger.exception("an on_done callback failed")


@dataclass
class PendingCall:
    """A gate tool call on its way: progress updates queue up until the result arrives."""

    call_id: str
    name: str
    result: asyncio.Future[ToolResult]
    progress: asyncio.Queue[ToolProgress] = field(default_factory=asyncio.Queue)


@dataclass
class Activity:
    """What the kernel is doing for other clients (the person's cells), from iopub."""

    busy_code: str | None = None
    busy_since: float | None = None
    busy_parent: str | None = None

    def describe(self) -> str:
        if self.busy_since is None:
            return "idle"
        first = (self.busy_code or "").strip().splitlines()[:1]
        what = f" running {first[0][:80]!r}" if first else ""
        return f"busy{what} (the person's cell, for {time.monotonic() - self.busy_since:.0f} s)"


class KernelSession:
    """The server's connection to one served kernel."""

    def __init__(
        self,
        info: SessionInfo,
        *,
        server_pid: int | None = None,
        on_dead: Callable[[], object] | None = None,
    ) -> None:
        self.info = info
        self._on_dead = on_dead
        self.server_pid = server_pid or os.getpid()
        self.client = AsyncKernelClient()
        self.activity = Activity()
        self.executions: dict[str, Execution] = {}
        self.state: Literal["connecting", "ready", "refused", "dead", "closed"] = "connecting"
        self.problem = ""
        self.tools: list[ToolSpec] = []
        self.on_tools_changed: Callable[[], object] | None = None
        self.subshell_id: str | None = None
        self.calls: dict[str, PendingCall] = {}
        self._queries: list[asyncio.Future[list[EvalRecord]]] = []
        self._comm_id = uuid.uuid4().hex
        self._ready = asyncio.Event()
        self._welcomed = asyncio.Event()  # the gate answered the comm: tools are known
        self.discovered_at = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        self._control_waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._iopub_seen: dict[str, asyncio.Event] = {}

    @property
    def key(self) -> str:
        return self.info.key

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self, timeout: float = 15.0) -> None:
        """Open the kernel's channels and wait until iopub is delivering; never raises."""
        try:
            check_protocol(self.info.protocol_version, who=f"the gate of session {self.key}")
            with open(self.info.connection_file) as f:
                self.client.load_connection_info(json.load(f))
            self.client.start_channels(hb=False)
            for name, reader in (
                ("iopub", self._read_iopub),
                ("shell", self._read_shell),
                ("control", self._read_control),
            ):
                self._tasks.append(asyncio.create_task(reader(), name=f"{name}-{self.key}"))
            self._tasks.append(asyncio.create_task(self._watch_alive(), name=f"alive-{self.key}"))
            await self._handshake(timeout)
            await self._create_subshell()
            self._open_gate_comm()
            self.state = "ready"
        except ProtocolMismatch as err:
            self.state, self.problem = "refused", str(err)
        except KernelTimeout as err:
            self.problem = str(err)
            self.state = "dead" if not self.alive() else "connecting"
        except (OSError, ValueError) as err:
            self.state = "dead"
            self.problem = f"cannot read the connection file {self.info.connection_file}: {err}"
        except Exception as err:
            logger.exception("connecting to session %s failed", self.key)
            self.state, self.problem = "dead", f"connecting failed: {err}"
        finally:
            self._ready.set()

    async def wait_ready(self, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)

    async def wait_welcomed(self, timeout: float) -> None:
        """Until the gate has answered the comm (its tools are known), at most ``timeout``."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._welcomed.wait(), timeout)

    async def _handshake(self, timeout: float) -> None:
        """kernel_info on the control channel (answered even while a cell runs) until iopub
        shows its status message: then no output of ours can be missed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.client.session.msg("kernel_info_request")
            seen = self._iopub_seen[msg["header"]["msg_id"]] = asyncio.Event()
            self.client.control_channel.send(msg)
            try:
                await asyncio.wait_for(seen.wait(), 0.5)
                return
            except asyncio.TimeoutError:
                if not self.alive():
                    raise DeadKernelError(
                        f"the kernel of session {self.key} is not running"
                    ) from None
            finally:
                self._iopub_seen.pop(msg["header"]["msg_id"], None)
        raise KernelTimeout(
            f"the kernel of session {self.key} did not answer within {timeout:.0f} s"
        )

    async def _create_subshell(self) -> None:
        """Gate traffic goes to a kernel subshell where the kernel has them (ipykernel 7),
        so tool calls are answered while the person's cell runs."""
        try:
            reply = await self.control_request("kernel_info_request", timeout=5)
            if "kernel subshells" not in reply["content"].get("supported_features", []):
                return
            reply = await self.control_request("create_subshell_request", timeout=5)
            self.subshell_id = reply["content"].get("subshell_id")
        except KaimonError as err:
            logger.info("no subshell for session %s: %s", self.key, err)

    def _send_gate(self, msg_type: str, content: dict[str, Any]) -> None:
        msg = self.client.session.msg(msg_type, content)
        if self.subshell_id:
            msg["header"]["subshell_id"] = self.subshell_id
        self.client.shell_channel.send(msg)

    def _send_to_gate(self, message: Any) -> None:
        """One protocol message to the gate, on the session's comm."""
        self._send_gate("comm_msg", {"comm_id": self._comm_id, "data": message.model_dump()})

    def _open_gate_comm(self) -> None:
        hello = Hello(server_pid=self.server_pid).model_dump(mode="json")
        content = {"comm_id": self._comm_id, "target_name": COMM_TARGET, "data": hello}
        self._send_gate("comm_open", content)

    async def close(self, reason: str = "closed") -> None:
        self._fail_pending("dead" if reason != "closed" else "aborted", reason)
        if self.state != "dead":
            self.state = "closed"
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        with contextlib.suppress(Exception):
            self.client.stop_channels()

    def alive(self) -> bool:
        return pid_alive(self.info.pid)

    def mark_dead(self, reason: str) -> None:
        self.state = "dead"
        self.problem = reason
        self._fail_pending("dead", reason)

    def _fail_pending(self, status: ExecStatus, reason: str) -> None:
        for ex in list(self.executions.values()):
            ex.fail(status, reason)
        for call in list(self.calls.values()):
            if not call.result.done():
                text = f"{call.name} did not finish: {reason}"
                call.result.set_result(
                    ToolResult(call_id=call.call_id, content=[TextBlock(text=text)], is_error=True)
                )
        self.calls.clear()

    async def _watch_alive(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if not self.alive():
                self.mark_dead(
                    f"the kernel of session {self.key} (pid {self.info.pid}) died; "
                    "its state is gone. Start a new session or restart the kernel."
                )
                if self._on_dead is not None:
                    self._on_dead()
                return

    # -- readers ---------------------------------------------------------------------------

    async def _read(self, channel: Any, handle: Any) -> None:
        """Wait until the socket is readable, then take every message it holds.

        The wait has a deadline: pyzmq's asyncio wake-ups are edge-triggered, and with
        sends interleaved on the same socket one can be missed, which left kernel replies
        unread for good (50 concurrent jobs lost some every run). Draining without waiting
        per message is also what keeps a flood of output cheap."""
        session = channel.session
        socket = zmq.Socket.shadow(channel.socket.underlying)
        while True:
            await channel.socket.poll(READ_POLL_MS)
            for _ in range(READ_BATCH):
                try:
                    frames = socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    _, frames = session.feed_identities(frames)
                    msg = session.deserialize(frames)
                except Exception:
                    logger.warning("dropping an unreadable message from session %s", self.key)
                    continue
                try:
                    handle(msg)
                except Exception:
                    logger.exception("handling a %s message failed", msg["header"].get("msg_type"))
            await asyncio.sleep(0)  # a flood of messages must not starve the MCP side

    async def _read_iopub(self) -> None:
        await self._read(self.client.iopub_channel, self._on_iopub)

    async def _read_shell(self) -> None:
        await self._read(self.client.shell_channel, self._on_shell)

    async def _read_control(self) -> None:
        await self._read(self.client.control_channel, self._on_control)

    def _on_iopub(self, msg: dict[str, Any]) -> None:
        parent = msg["parent_header"]
        parent_id = parent.get("msg_id")
        kind = msg["header"]["msg_type"]
        if parent_id in self._iopub_seen:
            self._iopub_seen[parent_id].set()
        if kind in ("comm_msg", "comm_close"):
            if msg["content"].get("comm_id") == self._comm_id:
                self._on_gate_message(kind, msg["content"].get("data") or {})
            return
        ex = self.executions.get(parent_id)
        if ex is not None:
            ex.feed_iopub(msg)
            if ex.done.is_set():
                self.executions.pop(parent_id, None)
            return
        if parent.get("msg_type") != "execute_request":
            return
        if kind == "status" and msg["content"]["execution_state"] == "busy":
            self.activity.busy_since = time.monotonic()
            self.activity.busy_parent = parent_id
            self.activity.busy_code = None
        elif kind == "execute_input" and parent_id == self.activity.busy_parent:
            self.activity.busy_code = msg["content"].get("code", "")
        elif kind == "status" and parent_id == self.activity.busy_parent:
            self.activity.busy_since = self.activity.busy_parent = self.activity.busy_code = None

    def _on_shell(self, msg: dict[str, Any]) -> None:
        parent_id = msg["parent_header"].get("msg_id")
        ex = self.executions.get(parent_id)
        if ex is not None and msg["header"]["msg_type"] == "execute_reply":
            ex.feed_reply(msg)
            if ex.done.is_set():
                self.executions.pop(parent_id, None)

    def _on_control(self, msg: dict[str, Any]) -> None:
        fut = self._control_waiters.pop(msg["parent_header"].get("msg_id"), None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def _on_gate_message(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "comm_close":
            return
        message = parse_gate_message(data)
        if isinstance(message, Refused | Welcome):
            self._welcomed.set()
        if isinstance(message, Refused):
            self.state, self.problem = "refused", message.reason
        elif isinstance(message, Welcome | ToolsChanged):
            if isinstance(message, Welcome):
                self.info = message.session
            self.tools = message.tools
            if self.on_tools_changed is not None:
                self.on_tools_changed()
        elif isinstance(message, EvalUpdate):
            ex = self.executions.get(message.msg_id)
            if ex is not None:
                ex.stash.update(message.stash)
                if message.progress is not None:
                    ex.last_progress = message.progress
                    ex.new_progress.append(message.progress)
        elif isinstance(message, EvalRecords):
            for fut in self._queries:
                if not fut.done():
                    fut.set_result(message.records)
            self._queries.clear()
        elif isinstance(message, ToolProgress):
            call = self.calls.get(message.call_id)
            if call is not None:
                call.progress.put_nowait(message)
        elif isinstance(message, ToolResult):
            call = self.calls.pop(message.call_id, None)
            if call is not None and not call.result.done():
                call.result.set_result(message)

    # -- requests --------------------------------------------------------------------------

    def usable(self) -> None:
        """Raise a clear error when this session cannot take requests."""
        if self.state == "refused":
            raise ProtocolMismatch(self.problem)
        if self.state == "dead" or not self.alive():
            raise DeadKernelError(
                self.problem or f"the kernel of session {self.key} (pid {self.info.pid}) is dead"
            )
        if self.state == "closed":
            raise KaimonError(f"session {self.key} was withdrawn by the person (%kaimon stop)")

    def execute(
        self, code: str, *, max_output: int = 6000, quiet: bool = False, silent: bool = False
    ) -> Execution:
        """Send ``code`` to run; the returned :class:`Execution` fills in as the kernel works."""
        self.usable()
        msg = self.client.session.msg(
            "execute_request",
            {
                "code": code,
                "silent": silent,
                "store_history": not silent,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": False,
            },
            metadata={EVAL_METADATA_KEY: {"server_pid": self.server_pid}},
        )
        ex = Execution(msg["header"]["msg_id"], code, OutputCapture(limit=max_output), quiet=quiet)
        self.executions[ex.msg_id] = ex
        self.client.shell_channel.send(msg)
        return ex

    def call_tool(self, name: str, arguments: dict[str, Any]) -> PendingCall:
        """Ask the gate to run tool ``name``; await ``.result`` (and read ``.progress``)."""
        self.usable()
        call_id = uuid.uuid4().hex
        future: asyncio.Future[ToolResult] = asyncio.get_running_loop().create_future()
        call = self.calls[call_id] = PendingCall(call_id, name, future)
        request = CallTool(call_id=call_id, name=name, arguments=arguments)
        self._send_to_gate(request)
        return call

    def cancel_call(self, call_id: str) -> None:
        """Tell the gate the agent gave up: ``is_cancelled()`` turns true in the tool."""
        if self.state == "ready" and self.alive():
            self._send_to_gate(CancelCall(call_id=call_id))

    def follow(self, msg_id: str, code: str, *, max_output: int = 6000) -> Execution:
        """Pick up an evaluation another server started (its output still flows on iopub)."""
        ex = Execution(msg_id, code, OutputCapture(limit=max_output), reattached=True)
        ex.started_at = ex.sent_at
        ex.status = "running"
        self.executions[msg_id] = ex
        return ex

    async def query_evals(self, msg_ids: list[str], timeout: float = 10.0) -> list[EvalRecord]:
        """Ask the gate what became of these evaluations (it keeps the recent ones)."""
        self.usable()
        fut: asyncio.Future[list[EvalRecord]] = asyncio.get_running_loop().create_future()
        self._queries.append(fut)
        self._send_to_gate(EvalQuery(msg_ids=msg_ids))
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise KernelTimeout(
                f"session {self.key}'s gate did not answer within {timeout:.0f} s"
            ) from None

    def set_mirror(self, on: bool) -> None:
        self.usable()
        self._send_to_gate(SetOption(mirror=on))

    def job_promoted(self, execution: Execution, eval_id: str) -> None:
        """Tell the gate (its live view) that ``execution`` is now a background job."""
        if self.state == "ready":
            self._send_to_gate(JobPromoted(msg_id=execution.msg_id, eval_id=eval_id))

    def set_info(self, label: str | None, description: str | None) -> None:
        """Ask the gate to relabel the session; the session file it rewrites carries it."""
        self.usable()
        self._send_to_gate(SetInfo(label=label, description=description))

    def cancel_eval(self, execution: Execution) -> None:
        """Cooperative cancel: ``is_cancelled()`` turns true in the running code."""
        execution.cancel_requested = True
        if self.state == "ready" and self.alive():
            self._send_to_gate(CancelEval(msg_id=execution.msg_id))

    async def interrupt(self) -> str:
        """Interrupt the kernel for real: SIGINT to a local kernel, else an interrupt_request."""
        self.usable()
        try:
            os.kill(self.info.pid, signal.SIGINT)
            return "signal"
        except (OSError, AttributeError):
            await self.control_request("interrupt_request", timeout=5)
            return "message"

    async def control_request(
        self, msg_type: str, content: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        self.usable()
        msg = self.client.session.msg(msg_type, content or {})
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._control_waiters[msg["header"]["msg_id"]] = fut
        self.client.control_channel.send(msg)
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise KernelTimeout(
                f"session {self.key} did not answer {msg_type} within {timeout:.0f} s"
            ) from None
        finally:
            self._control_waiters.pop(msg["header"]["msg_id"], None)
