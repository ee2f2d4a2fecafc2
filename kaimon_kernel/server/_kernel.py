"""One served kernel as the server sees it: a transport to its channels, and its gate.

Every message from the kernel is routed by ``parent_header.msg_id`` to the execution that
caused it; messages of other clients (the person's cells) update :class:`Activity`. A session
is usable only once its gate has answered (a session file alone proves nothing); where the
kernel lives, and whether it is alive, is its provider's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from .._errors import DeadKernelError, KaimonError, KernelTimeout, ProtocolMismatch
from .._output import OutputCapture
from .._protocol import (
    COMM_TARGET,
    EVAL_METADATA_KEY,
    EvalCancelled,
    EvalRecord,
    EvalRecords,
    EvalUpdate,
    Hello,
    PanelUpdate,
    ProcessIdentity,
    Refused,
    Request,
    ServerCall,
    SessionChanged,
    SessionInfo,
    ToolsChanged,
    ToolSpec,
    Welcome,
    check_protocol,
)
from ._execution import Activity, ExecStatus, Execution
from ._gate_client import GateClient, GateClosed, GateEvent, PendingCall
from ._transport import Channel, Transport

if TYPE_CHECKING:
    from .providers import KernelProvider

__all__ = ["KernelSession", "PendingCall"]

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 15.0  # per attempt; a kernel busy starting up is tried again
WELCOME_TIMEOUT = 10.0
RETRY_AFTER = 5.0
CLOSE_TIMEOUT = 0.5
PROGRESS_KEPT = 100  # progress messages kept for the next progress notification


class KernelSession:
    """The server's connection to one served kernel."""

    def __init__(
        self,
        info: SessionInfo,
        provider: KernelProvider,
        *,
        server_pid: int | None = None,
    ) -> None:
        self.info = info
        self.provider = provider
        self.server_pid = server_pid or os.getpid()
        self.transport: Transport | None = None
        self.activity = Activity()
        self.executions: dict[str, Execution] = {}
        self.state: Literal["connecting", "ready", "refused", "dead", "closed"] = "connecting"
        self.problem = ""
        self.tools: list[ToolSpec] = []
        #: Called when the gate's tools, or the session's info, change (set by the registry).
        self.on_tools_changed: Callable[[], object] | None = None
        self.on_info_changed: Callable[[], object] | None = None
        #: Called with each tool call the kernel asks of the server (kaimon_kernel.call_tool).
        self.on_server_call: Callable[[ServerCall], object] | None = None
        #: The state its code pushed for its dashboard panel (kaimon_kernel.push_panel).
        self.panel: dict[str, Any] = {}
        #: Called with each push's values, once merged into :attr:`panel`.
        self.on_panel: Callable[[dict[str, Any]], object] | None = None
        self.subshell_id: str | None = None
        self._comm_id = uuid.uuid4().hex
        self.gate = self._new_gate()
        self._ready = asyncio.Event()
        self._welcomed = asyncio.Event()  # the gate answered the comm: tools are known
        self._gate_closed = asyncio.Event()  # the kernel closed our comm (no gate, or stopped)
        self.discovered_at = time.monotonic()
        self._waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._iopub_seen: dict[str, asyncio.Event] = {}
        self._handlers: dict[Channel, Callable[[dict[str, Any]], None]] = {
            "iopub": self._on_iopub,
            "shell": self._on_shell,
            "control": self._on_control,
        }

    @property
    def info(self) -> SessionInfo:
        """The session as its gate last told it, with where it lives (set by its provider)."""
        return self._info

    @info.setter
    def info(self, info: SessionInfo) -> None:
        self._info = _placed(info, getattr(self, "_info", info))

    @property
    def key(self) -> str:
        return self.info.key

    @property
    def calls(self) -> dict[str, PendingCall]:
        return self.gate.calls

    def _new_gate(self) -> GateClient:
        gate = GateClient(
            self._send_to_gate, name=f"session {self.info.key}", server=ProcessIdentity.current()
        )
        gate.listeners.append(self._on_gate_event)
        return gate

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the channels and greet the gate, trying again while the kernel lives and does
        not answer; never raises. ``state`` says how it went."""
        try:
            check_protocol(self.info.protocol_version, who=f"the gate of session {self.key}")
            self.transport = self.provider.connect(self.info)
            self.transport.open(self._on_message, idle=self._idle)
            while self.state == "connecting":
                try:
                    await self._greet()
                except KernelTimeout as err:
                    self.problem = f"{err}; trying again"
                    logger.info("session %s: %s", self.key, self.problem)
                    await asyncio.sleep(RETRY_AFTER)
        except ProtocolMismatch as err:
            self.state, self.problem = "refused", str(err)
        except DeadKernelError as err:
            self.state, self.problem = "dead", str(err)
        except KaimonError as err:
            self.state, self.problem = "dead", str(err)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            logger.exception("connecting to session %s failed", self.key)
            self.state, self.problem = "dead", f"connecting failed: {err}"
        finally:
            self._ready.set()

    async def _greet(self) -> None:
        features = await self._handshake(HANDSHAKE_TIMEOUT)
        if self.subshell_id is None:
            await self._create_subshell(features)
        self._open_gate_comm()
        closed = asyncio.ensure_future(self._gate_closed.wait())
        welcomed = asyncio.ensure_future(self._welcomed.wait())
        try:
            await asyncio.wait(
                {closed, welcomed}, timeout=WELCOME_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            closed.cancel()
            welcomed.cancel()
        if not self._welcomed.is_set():
            why = (
                "the kernel closed the gate's comm: it has not run %kaimon serve"
                if self._gate_closed.is_set()
                else f"the gate did not answer within {WELCOME_TIMEOUT:.0f} s (the kernel may "
                "be busy, or it never ran %kaimon serve)"
            )
            raise KernelTimeout(f"session {self.key}: {why}")
        if self.state == "connecting":  # not refused meanwhile
            self.state, self.problem = "ready", ""
            self._ready.set()

    async def wait_ready(self, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)

    async def wait_welcomed(self, timeout: float) -> None:
        """Until the gate has answered the comm (its tools are known), at most ``timeout``."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._welcomed.wait(), max(timeout, 0))

    async def _handshake(self, timeout: float) -> list[str]:
        """kernel_info on the control channel (answered even while a cell runs) until iopub
        shows its status message: then no output of ours can be missed. Asked again at
        growing intervals: a fresh iopub subscription misses what was published before it
        took. Returns the kernel's supported features."""
        deadline = time.monotonic() + timeout
        seen = asyncio.Event()
        features: list[str] = []
        sent: list[str] = []
        interval = 0.05
        try:
            while time.monotonic() < deadline:
                msg = self._transport().msg("kernel_info_request")
                msg_id = msg["header"]["msg_id"]
                sent.append(msg_id)
                self._iopub_seen[msg_id] = seen
                reply = self._waiters[msg_id] = asyncio.get_running_loop().create_future()
                reply.add_done_callback(
                    lambda f: (
                        features.extend(f.result()["content"].get("supported_features", []))
                        if not f.cancelled()
                        else None
                    )
                )
                self._transport().send("control", msg)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(seen.wait(), interval)
                if seen.is_set():
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(asyncio.shield(reply), 2.0)
                    return features
                if not self.alive():
                    raise DeadKernelError(f"the kernel of session {self.key} is not running")
                interval = min(interval * 2, 0.5)
        finally:
            for msg_id in sent:
                self._iopub_seen.pop(msg_id, None)
                waiter = self._waiters.pop(msg_id, None)
                if waiter is not None and not waiter.done():
                    waiter.cancel()
        raise KernelTimeout(
            f"the kernel of session {self.key} did not answer within {timeout:.0f} s"
        )

    async def _create_subshell(self, features: list[str]) -> None:
        """Gate traffic goes to a kernel subshell where the kernel has them (ipykernel 7),
        so tool calls are answered while the person's cell runs."""
        passes = getattr(self.transport, "passes_subshells", True)  # a Jupyter Server's WS: no
        if "kernel subshells" not in features or not passes:
            return
        try:
            reply = await self._control("create_subshell_request", {}, 5)
            self.subshell_id = reply["content"].get("subshell_id")
        except KaimonError as err:
            logger.info("no subshell for session %s: %s", self.key, err)

    def _transport(self) -> Transport:
        if self.transport is None:
            raise DeadKernelError(f"session {self.key} is not connected")
        return self.transport

    def _send_gate(self, msg_type: str, content: dict[str, Any]) -> None:
        msg = self._transport().msg(msg_type, content)
        if self.subshell_id:
            msg["header"]["subshell_id"] = self.subshell_id
        self._transport().send("shell", msg)

    def _send_to_gate(self, message: Request) -> None:
        """One protocol message to the gate: the hello opens the session's comm."""
        data = message.model_dump(mode="json")
        if isinstance(message, Hello):
            content = {"comm_id": self._comm_id, "target_name": COMM_TARGET, "data": data}
            self._send_gate("comm_open", content)
        else:
            self._send_gate("comm_msg", {"comm_id": self._comm_id, "data": data})

    def _open_gate_comm(self) -> None:
        if self.gate.state != "new":
            # Trying again: close the comm of the last try (a slow gate may still take it),
            # then a fresh comm and a fresh client (the old one is over).
            with contextlib.suppress(Exception):
                self._send_gate("comm_close", {"comm_id": self._comm_id, "data": {}})
            self._comm_id = uuid.uuid4().hex
            self.gate = self._new_gate()
            self._gate_closed.clear()
        self.gate.open()  # the Welcome (or Refused) arrives as an event

    async def close(self, reason: str = "closed") -> None:
        """Leave the kernel as we found it: our comm closed, our subshell deleted."""
        was = self.state
        if self.state != "dead":
            self.state = "closed"
        self._fail_pending("dead" if reason != "closed" else "aborted", reason)
        if self.transport is None:
            return
        try:
            if was in ("ready", "connecting", "refused") and self.alive():
                with contextlib.suppress(Exception):
                    self._send_gate("comm_close", {"comm_id": self._comm_id, "data": {}})
                if self.subshell_id:
                    with contextlib.suppress(Exception):
                        # the subshell handles messages in order: once it answers this, it has
                        # closed the comm, and can be deleted
                        await self._request("shell", "kernel_info_request", {}, CLOSE_TIMEOUT)
                        await self._control(
                            "delete_subshell_request",
                            {"subshell_id": self.subshell_id},
                            CLOSE_TIMEOUT,
                        )
        finally:  # even when cancelled: no sockets or readers left behind
            self.transport.close()
            self.transport = None

    def alive(self) -> bool:
        return self.state != "dead" and self.provider.alive(self.info)

    def mark_dead(self, reason: str) -> None:
        self.state = "dead"
        self.problem = reason
        self._fail_pending("dead", reason)

    def _fail_pending(self, status: ExecStatus, reason: str) -> None:
        for ex in list(self.executions.values()):
            ex.fail(status, reason)
        self.gate.fail_all(reason, DeadKernelError if status == "dead" else KaimonError)

    # -- routing ---------------------------------------------------------------------------

    def _on_message(self, channel: Channel, msg: dict[str, Any]) -> None:
        self._handlers[channel](msg)

    def _on_iopub(self, msg: dict[str, Any]) -> None:
        parent = msg["parent_header"]
        parent_id = parent.get("msg_id")
        kind = msg["header"]["msg_type"]
        if parent_id in self._iopub_seen:
            self._iopub_seen[parent_id].set()
        if kind in ("comm_msg", "comm_close"):
            content = self._transport().content(msg)
            if content.get("comm_id") == self._comm_id:
                self._on_gate_message(kind, content.get("data") or {})
            return
        ex = self.executions.get(parent_id)
        if ex is not None:
            self._transport().content(msg)
            ex.feed_iopub(msg)
            if ex.done.is_set():
                self.executions.pop(parent_id, None)
            return
        # another client's (the person's cells): only what the kernel is busy with matters,
        # and the rest is never unpacked (a person's 10 MB print costs nothing here)
        if parent.get("msg_type") != "execute_request":
            return
        if kind == "status":
            state = self._transport().content(msg)["execution_state"]
            if state == "busy":
                self.activity.busy_since = time.monotonic()
                self.activity.busy_parent = parent_id
                self.activity.busy_code = None
            elif parent_id == self.activity.busy_parent:
                self.activity.busy_since = None
                self.activity.busy_parent = self.activity.busy_code = None
        elif kind == "execute_input" and parent_id == self.activity.busy_parent:
            self.activity.busy_code = self._transport().content(msg).get("code", "")

    def _idle(self) -> bool:
        """Nothing of the server's under way: iopub may be read in lingering batches."""
        return (
            self.state == "ready"
            and not self.executions
            and not self.calls
            and not self._waiters
            and not self._iopub_seen
            and not self.gate.waiting()
        )

    def _on_shell(self, msg: dict[str, Any]) -> None:
        parent_id = msg["parent_header"].get("msg_id")
        fut = self._waiters.pop(parent_id, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)
            return
        ex = self.executions.get(parent_id)
        if ex is not None and msg["header"]["msg_type"] == "execute_reply":
            ex.feed_reply(msg)
            if ex.done.is_set():
                self.executions.pop(parent_id, None)

    def _on_control(self, msg: dict[str, Any]) -> None:
        fut = self._waiters.pop(msg["parent_header"].get("msg_id"), None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def _on_gate_message(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "comm_close":
            self.gate.closed()
        else:
            self.gate.feed(data)

    def _on_gate_event(self, event: GateEvent) -> None:
        if isinstance(event, ServerCall):
            if self.on_server_call is not None:
                self.on_server_call(event)
            return
        if isinstance(event, PanelUpdate):
            self.panel.update(event.values)
            if self.on_panel is not None:
                self.on_panel(event.values)
            return
        if isinstance(event, Welcome) and (
            event.session.key != self.info.key or event.session.session_id != self.info.session_id
        ):
            # the session file named another kernel than the one that answered (crafted or
            # stale): trust neither
            self.state = "refused"
            self.problem = (
                f"the session file for {self.info.key} points at a kernel whose gate serves "
                f"session {event.session.key}: ignoring it"
            )
            self._welcomed.set()
            return
        if isinstance(event, Refused | Welcome):
            self._welcomed.set()
        if isinstance(event, GateClosed):
            self._gate_closed.set()
            if self.state == "ready":  # %kaimon stop: withdrawn at once, not at the next scan
                self.state, self.problem = "closed", event.reason
                if self.on_info_changed:
                    self.on_info_changed()
            return
        if isinstance(event, Refused):
            self.state, self.problem = "refused", self.gate.problem
        elif isinstance(event, Welcome | SessionChanged):
            self.info = event.session
            self.tools = self.gate.tools
        elif isinstance(event, ToolsChanged):
            self.tools = event.tools
        elif isinstance(event, EvalRecords):
            for record in event.records:
                ex = self.executions.get(record.msg_id)
                if ex is not None and ex.reattached and not ex.done.is_set():
                    # what it printed before this server followed it: the gate's record holds
                    # exactly what came before this reply in the stream; what follows appends
                    ex.capture = OutputCapture(limit=ex.capture.limit)
                    ex.capture.add_text(record.output)
        elif isinstance(event, EvalUpdate):
            ex = self.executions.get(event.msg_id)
            if ex is not None:
                ex.stash.update(event.stash)
                if event.progress is not None:
                    ex.last_progress = event.progress
                    ex.new_progress.append(event.progress)
                    del ex.new_progress[:-PROGRESS_KEPT]  # nobody may be reading them
        if isinstance(event, SessionChanged) and self.on_info_changed:
            self.on_info_changed()
        # the namespace, hence the tool names, may change with the session's info
        if isinstance(event, Welcome | SessionChanged | ToolsChanged) and self.on_tools_changed:
            self.on_tools_changed()

    # -- requests --------------------------------------------------------------------------

    def usable(self) -> None:
        """Raise a clear error when this session cannot take requests."""
        if self.state == "refused":
            raise ProtocolMismatch(self.problem)
        if self.state == "dead" or not self.alive():
            raise DeadKernelError(
                self.problem
                or f"the kernel of session {self.key} died; its state is gone. Start a new "
                "session (start_session) or ask the person to restart it."
            )
        if self.state == "closed":
            raise KaimonError(f"session {self.key} was withdrawn by the person (%kaimon stop)")
        if self.state == "connecting":
            raise KernelTimeout(
                f"session {self.key} has not answered yet"
                + (f" ({self.problem})" if self.problem else "")
                + ": its kernel may be busy starting up. Try again in a few seconds."
            )

    def execute(
        self, code: str, *, max_output: int = 6000, quiet: bool = False, silent: bool = False
    ) -> Execution:
        """Send ``code`` to run; the returned :class:`Execution` fills in as the kernel works."""
        self.usable()
        msg = self._transport().msg(
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
        self._track(ex)
        self._transport().send("shell", msg)
        return ex

    def call_tool(self, name: str, arguments: dict[str, Any]) -> PendingCall:
        """Ask the gate to run tool ``name``; await ``.result`` (and read ``.progress``)."""
        self.usable()
        return self.gate.call_tool(name, arguments)

    def cancel_call(self, call_id: str) -> None:
        """Tell the gate the agent gave up: ``is_cancelled()`` turns true in the tool."""
        if self.state == "ready" and self.alive():
            self.gate.cancel_call(call_id)

    def follow(self, msg_id: str, code: str, *, max_output: int = 6000) -> Execution:
        """Pick up an evaluation another server started (its output still flows on iopub)."""
        ex = Execution(msg_id, code, OutputCapture(limit=max_output), reattached=True)
        ex.started_at = ex.sent_at
        ex.status = "running"
        self._track(ex)
        return ex

    async def query_evals(self, msg_ids: list[str], timeout: float = 10.0) -> list[EvalRecord]:
        """Ask the gate what became of these evaluations (it keeps the recent ones)."""
        self.usable()
        return await self.gate.query_evals(msg_ids, timeout)

    def _track(self, ex: Execution) -> None:
        self.executions[ex.msg_id] = ex
        ex.on_done.append(lambda: self.executions.pop(ex.msg_id, None))

    async def set_mirror(self, on: bool) -> None:
        """Turn the live view on or off (the gate refuses where the person forbade it)."""
        self.usable()
        await self.gate.set_mirror(on)

    def job_promoted(self, execution: Execution, eval_id: str) -> None:
        """Tell the gate (its live view) that ``execution`` is now a background job."""
        if self.state == "ready":
            self.gate.job_promoted(execution.msg_id, eval_id)

    async def set_info(self, label: str | None, description: str | None) -> SessionInfo:
        """Relabel the session (None keeps a field, "" clears it); returns it as it now is."""
        self.usable()
        self.info = await self.gate.set_info(label, description)
        return self.info

    async def cancel_eval(
        self, execution: Execution, timeout: float = 10.0
    ) -> EvalCancelled | None:
        """Cooperative cancel: ``is_cancelled()`` turns true in the running code, and the gate
        says whether it runs now, is still queued (then it never runs) or already finished.
        None when the gate cannot be asked (the kernel is gone)."""
        execution.cancel_requested = True
        if self.state != "ready" or not self.alive():
            return None
        return await self.gate.cancel_eval(execution.msg_id, timeout)

    async def interrupt(self) -> str:
        """Interrupt the kernel for real: an ``interrupt_request`` on the control channel
        (what ipykernel and Windows understand), else the provider's own means (a signal to
        the verified process)."""
        self.usable()
        if self.provider.owns(self.key):
            # its kernel manager knows the kernelspec's interrupt_mode (signal or message)
            await self.provider.interrupt_signal(self.info)
            return "the kernel manager's interrupt"
        try:
            reply = await self._control("interrupt_request", {}, 5.0)
            if reply["content"].get("status") == "ok":
                return "interrupt_request"
        except KernelTimeout:
            pass
        if await self.provider.interrupt_signal(self.info):
            return "signal"
        raise KaimonError(
            f"session {self.key}'s kernel did not take the interrupt; ask the person to "
            "interrupt it, or restart it with manage_repl"
        )

    async def control_request(
        self, msg_type: str, content: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        """A request on the control channel, answered even while code runs."""
        self.usable()
        return await self._control(msg_type, content or {}, timeout)

    async def _control(
        self, msg_type: str, content: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        return await self._request("control", msg_type, content, timeout)

    async def _request(
        self, channel: Channel, msg_type: str, content: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        """A request and its reply (on the shell channel: to our subshell)."""
        msg = self._transport().msg(msg_type, content)
        if channel == "shell" and self.subshell_id:
            msg["header"]["subshell_id"] = self.subshell_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[msg["header"]["msg_id"]] = fut
        self._transport().send(channel, msg)
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise KernelTimeout(
                f"session {self.key} did not answer {msg_type} within {timeout:g} s"
            ) from None
        finally:
            self._waiters.pop(msg["header"]["msg_id"], None)


def _placed(info: SessionInfo, where: SessionInfo) -> SessionInfo:
    """``info`` as the gate tells it, with where the kernel lives as the provider found it
    (the gate does not know its Jupyter Server's URL)."""
    if where.server_url is None or info.server_url is not None:
        return info
    return info.model_copy(
        update={
            "server_url": where.server_url,
            "kernel_id": where.kernel_id,
            "notebook_path": where.notebook_path,
        }
    )
