"""The server's side of the gate comm: a state machine that does no I/O of its own.

The session gives it a ``send`` callable (one protocol message to the gate: the
:class:`~kaimon_kernel._protocol.Hello` as the comm_open, anything else as a comm_msg) and
feeds it every comm_msg the gate sends (:meth:`GateClient.feed`). It matches replies to
requests by id, keeps what the gate said (session info, tools, the kernel's identity), runs
tool calls, and hands the gate's events to its listeners.

States: ``new`` → ``opening`` (hello sent) → ``ready`` (welcomed) or ``refused``;
``closed`` once the gate closed the comm or the kernel died (:meth:`GateClient.fail_all`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from .._errors import DeadKernelError, KaimonError, KernelTimeout, ProtocolMismatch
from .._protocol import (
    PROTOCOL_FEATURES,
    CallTool,
    CancelCall,
    CancelEval,
    EvalCancelled,
    EvalQuery,
    EvalRecord,
    EvalRecords,
    EvalUpdate,
    Hello,
    InfoQuery,
    InfoReply,
    JobPromoted,
    PanelUpdate,
    ProcessIdentity,
    Refused,
    Reply,
    Request,
    ServerCall,
    SessionChanged,
    SessionInfo,
    SetInfo,
    SetOption,
    TextBlock,
    ToolProgress,
    ToolResult,
    ToolsChanged,
    ToolSpec,
    TopicEvent,
    Welcome,
    check_protocol,
    parse_gate_message,
)

__all__ = ["GateClient", "GateClosed", "GateEvent", "GateState", "PendingCall"]

logger = logging.getLogger(__name__)

#: How long a request waits for the gate's answer unless told otherwise (seconds).
DEFAULT_TIMEOUT = 10.0
#: Fire-and-forget requests remembered until answered; beyond this the oldest are forgotten.
POSTED_LIMIT = 1000

GateState = Literal["new", "opening", "ready", "refused", "closed"]
R = TypeVar("R", bound=Reply)


@dataclass
class PendingCall:
    """A gate tool call on its way: progress updates queue up until the result arrives."""

    call_id: str
    name: str
    result: asyncio.Future[ToolResult]
    progress: asyncio.Queue[ToolProgress] = field(default_factory=asyncio.Queue)


@dataclass(frozen=True)
class GateClosed:
    """Event: the comm is over (the gate closed it, or the kernel died)."""

    reason: str


#: What listeners receive: the gate's own messages, and :class:`GateClosed`.
GateEvent = (
    Welcome
    | Refused
    | ToolsChanged
    | SessionChanged
    | EvalUpdate
    | EvalRecords
    | GateClosed
    | ServerCall
    | PanelUpdate
)


@dataclass
class _Waiter:
    kind: str
    future: asyncio.Future[Reply] | None  # None: posted, nobody waits


class GateClient:
    """The server's end of one session's gate comm.

    ``send(message)`` puts one protocol message on the wire; ``name`` says which session in
    errors ("session 3f9a1c02"); ``server`` is this process, as the gate should know it.
    """

    def __init__(
        self,
        send: Callable[[Request], object],
        *,
        name: str = "the session",
        server: ProcessIdentity | None = None,
        default_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._send = send
        self.name = name
        self.server = server or ProcessIdentity.current()
        self.default_timeout = default_timeout
        self.state: GateState = "new"
        #: Why the gate refused, or why the comm is closed.
        self.problem = ""
        #: What the gate last said of its session, its tools, and the kernel process.
        self.info: SessionInfo | None = None
        self.tools: list[ToolSpec] = []
        self.kernel: ProcessIdentity | None = None
        #: The gate's protocol version ("2.0") and the optional parts both sides speak.
        self.peer_version: str | None = None
        self.features: frozenset[str] = frozenset()
        self.calls: dict[str, PendingCall] = {}
        #: Called with every :data:`GateEvent`, in order; a failing listener is logged.
        self.listeners: list[Callable[[GateEvent], object]] = []
        self.welcomed = asyncio.Event()  # set once the gate answered the hello, either way
        self._pending: dict[str, _Waiter] = {}
        self._hello: asyncio.Future[Welcome] | None = None
        self._error: type[KaimonError] = KaimonError  # what requests raise once it is over
        self._over = False
        # ipykernel's way: one handler per message type, found by name
        self._handlers: dict[str, Callable[[Any], None]] = {
            kind: getattr(self, f"_on_{kind}")
            for kind in (
                "welcome",
                "refused",
                "tool_result",
                "tool_progress",
                "tools_changed",
                "session_changed",
                "eval_update",
                "server_call",
                "panel_update",
            )
        }

    # -- opening -------------------------------------------------------------------------------

    def open(self) -> asyncio.Future[Welcome]:
        """Say hello (the comm_open); the future ends with the :class:`Welcome`, or raises
        :class:`ProtocolMismatch` / :class:`KaimonError` when the gate refuses."""
        hello = Hello(server=self.server)
        self._hello = asyncio.get_running_loop().create_future()
        self._hello.add_done_callback(_retrieved)
        self.state = "opening"
        self._send(hello)
        return self._hello

    async def connect(self, timeout: float | None = None) -> Welcome:
        """:meth:`open`, and wait for the answer at most ``timeout`` seconds."""
        timeout = self.default_timeout if timeout is None else timeout
        future = self.open()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            raise KernelTimeout(
                f"the gate of {self.name} did not answer within {timeout:g} s"
            ) from None

    def waiting(self) -> bool:
        """Whether an answer from the gate is awaited (a request, a tool call, the welcome)."""
        return bool(self._pending or self.calls) or self.state in ("new", "opening")

    def supports(self, feature: str) -> bool:
        """Whether both sides speak ``feature`` (see ``PROTOCOL_FEATURES``)."""
        return feature in self.features

    # -- from the gate -------------------------------------------------------------------------

    def feed(self, data: Any) -> None:
        """One comm_msg's data from the gate. Never raises: what cannot be read is logged."""
        try:
            message = parse_gate_message(data)
        except ValidationError:
            self._unreadable(data)
            return
        kind: str = message.type  # type: ignore[attr-defined]
        handler = self._handlers.get(kind, self._on_reply)
        try:
            handler(message)
        except Exception:
            logger.exception("handling the gate's %s message for %s failed", kind, self.name)

    def closed(self, reason: str = "") -> None:
        """The gate closed the comm (the person ran ``%kaimon stop``)."""
        reason = reason or f"{self.name} was withdrawn by the person (%kaimon stop)"
        self.fail_all(reason, error=KaimonError)

    def _unreadable(self, data: Any) -> None:
        # A newer minor version may send a reply type this side does not know: a reply still.
        request_id = data.get("request_id") if isinstance(data, dict) else None
        if request_id and request_id in self._pending:
            with contextlib.suppress(ValidationError):
                self._on_reply(Reply.model_validate(data))
                return
        kind = data.get("type") if isinstance(data, dict) else type(data).__name__
        logger.info("ignoring a %r message from the gate of %s", kind, self.name)

    def _on_welcome(self, message: Welcome) -> None:
        if self._over:  # too late: the comm is over
            return
        peer = f"{message.protocol_version}.{message.protocol_minor}"
        try:
            check_protocol(peer, who=f"the gate of {self.name}")
        except ProtocolMismatch as err:
            self._refuse(str(err), ProtocolMismatch)
            self._emit(Refused(request_id=message.request_id, reason=str(err), error=str(err)))
            return
        self.peer_version = peer
        self.features = frozenset(message.features) & PROTOCOL_FEATURES
        self.info = message.session
        self.tools = list(message.tools)
        self.kernel = message.kernel
        self.state = "ready"
        self.welcomed.set()
        if self._hello is not None and not self._hello.done():
            self._hello.set_result(message)
        self._emit(message)

    def _on_refused(self, message: Refused) -> None:
        peer = f"{message.protocol_version}.{message.protocol_minor}"
        try:
            check_protocol(peer, who=f"the gate of {self.name}")
        except ProtocolMismatch as err:
            self._refuse(str(err), ProtocolMismatch)
        else:
            self._refuse(message.reason or message.error, KaimonError)
        self._emit(message)

    def _refuse(self, reason: str, error: type[KaimonError]) -> None:
        self.state, self.problem, self._error = "refused", reason, error
        self.welcomed.set()
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(error(reason))
        self._fail_waiting(reason, error)

    def _on_tools_changed(self, message: ToolsChanged) -> None:
        self.tools = list(message.tools)
        self._emit(message)

    def _on_session_changed(self, message: SessionChanged) -> None:
        self.info = message.session
        self._emit(message)

    def _on_eval_update(self, message: EvalUpdate) -> None:
        self._emit(message)

    def _on_tool_progress(self, message: ToolProgress) -> None:
        call = self.calls.get(message.call_id)
        if call is not None:
            call.progress.put_nowait(message)

    def _on_tool_result(self, message: ToolResult) -> None:
        call = self.calls.pop(message.call_id, None)
        if call is not None and not call.result.done():
            call.result.set_result(message)

    def _on_reply(self, message: BaseModel) -> None:
        if not isinstance(message, Reply):
            return
        if isinstance(message, InfoReply):
            self.info = message.session
        if isinstance(message, EvalRecords):
            # at its place in the message stream: output before it is in the records, output
            # after it is not (listeners join the two exactly)
            self._emit(message)
        waiter = self._pending.pop(message.request_id, None)
        if waiter is None:
            if not message.ok and message.request_id in self.calls:  # a call it could not start
                call = self.calls.pop(message.request_id)
                _end_call(call, f"{call.name} did not run: {message.error}")
            return
        if waiter.future is None:
            if not message.ok:
                logger.warning(
                    "the gate of %s refused %s: %s", self.name, waiter.kind, message.error
                )
        elif not waiter.future.done():
            waiter.future.set_result(message)

    def _emit(self, event: GateEvent) -> None:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:
                logger.exception(
                    "a gate listener of %s failed on %s", self.name, type(event).__name__
                )

    # -- to the gate ---------------------------------------------------------------------------

    async def request(self, message: Request, timeout: float | None = None) -> Reply:
        """Send ``message`` and wait for its reply, at most ``timeout`` seconds.

        Raises :class:`KernelTimeout` past the deadline, :class:`KaimonError` when the gate
        answers ``ok=False`` (its error says why) or the comm is over, and
        :class:`DeadKernelError` when the kernel died meanwhile."""
        timeout = self.default_timeout if timeout is None else timeout
        self._check_open()
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[message.id] = _Waiter(message.type, future)  # type: ignore[attr-defined]
        try:
            self._send(message)
            reply = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise KernelTimeout(
                f"the gate of {self.name} did not answer {message.type} within {timeout:g} s"  # type: ignore[attr-defined]
            ) from None
        finally:
            self._pending.pop(message.id, None)
        if not reply.ok:
            raise KaimonError(reply.error or f"the gate of {self.name} refused the request")
        return reply

    def post(self, message: Request) -> None:
        """Send ``message`` without waiting; should the gate answer ``ok=False``, it is logged."""
        self._check_open()
        self._pending[message.id] = _Waiter(message.type, None)  # type: ignore[attr-defined]
        posted = [k for k, w in self._pending.items() if w.future is None]
        for request_id in posted[: max(0, len(posted) - POSTED_LIMIT)]:
            self._pending.pop(request_id, None)
        self._send(message)

    def _check_open(self) -> None:
        if self.state in ("refused", "closed"):
            raise self._error(self.problem or f"the gate comm of {self.name} is closed")
        if self.state == "new":
            raise KaimonError(f"{self.name} is still connecting; try again in a moment")

    def call_tool(self, name: str, arguments: dict[str, Any]) -> PendingCall:
        """Ask the gate to run tool ``name``; await ``.result`` (and read ``.progress``)."""
        self._check_open()
        request = CallTool(name=name, arguments=arguments)
        future: asyncio.Future[ToolResult] = asyncio.get_running_loop().create_future()
        call = self.calls[request.id] = PendingCall(request.id, name, future)
        self._send(request)
        return call

    def cancel_call(self, call_id: str) -> None:
        """Tell the gate the agent gave up on a call: ``is_cancelled()`` turns true in it."""
        if self.state in ("opening", "ready"):
            self.post(CancelCall(call_id=call_id))

    async def cancel_eval(self, msg_id: str, timeout: float | None = None) -> EvalCancelled:
        """Cancel the evaluation ``msg_id``; the gate says whether it was running, still
        queued (it will be skipped) or finished. Asking again says whether it still runs."""
        return _as(EvalCancelled, await self.request(CancelEval(msg_id=msg_id), timeout))

    async def query_evals(
        self, msg_ids: list[str], timeout: float | None = None
    ) -> list[EvalRecord]:
        """What the gate remembers of these evaluations (unknown ids are left out)."""
        reply = _as(EvalRecords, await self.request(EvalQuery(msg_ids=msg_ids), timeout))
        return reply.records

    async def set_info(
        self, label: str | None, description: str | None, timeout: float | None = None
    ) -> SessionInfo:
        """Relabel the session (None keeps a field, "" clears it); returns it as it now is."""
        request = SetInfo(label=label, description=description)
        return _as(InfoReply, await self.request(request, timeout)).session

    async def get_info(self, timeout: float | None = None) -> SessionInfo:
        """The session as the gate has it now (after anything it sent before)."""
        return _as(InfoReply, await self.request(InfoQuery(), timeout)).session

    async def set_mirror(self, on: bool, timeout: float | None = None) -> None:
        """Turn the live view on or off (refused where the person served ``--no-mirror``)."""
        await self.request(SetOption(mirror=on), timeout)

    def job_promoted(self, msg_id: str, eval_id: str) -> None:
        """Tell the gate's live view that ``msg_id`` is now the background job ``eval_id``."""
        if self.state == "ready":
            self.post(JobPromoted(msg_id=msg_id, eval_id=eval_id))

    def _on_panel_update(self, message: PanelUpdate) -> None:
        if self.state == "ready":
            self._emit(message)

    def _on_server_call(self, message: ServerCall) -> None:
        if self.state == "ready":
            self._emit(message)

    def post_event(self, topic: str, data: dict[str, Any], session: str) -> None:
        """Forward a server event to the gate (an extension's event_topics), unanswered."""
        if self.state == "ready" and self.supports("events"):
            self.post(TopicEvent(topic=topic, data=data, session=session))

    # -- the end -------------------------------------------------------------------------------

    def fail_all(self, reason: str, error: type[KaimonError] = DeadKernelError) -> None:
        """The comm is over: every waiting request raises ``error(reason)``, every tool call
        ends with an error result, and listeners get :class:`GateClosed`."""
        if self._over:
            return
        self._over = True
        if self.state != "refused":  # a refusal says more than the comm closing after it
            self.state, self.problem, self._error = "closed", reason, error
        self.welcomed.set()
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(error(reason))
        self._fail_waiting(reason, error)
        self._emit(GateClosed(reason))

    def _fail_waiting(self, reason: str, error: type[KaimonError]) -> None:
        for waiter in self._pending.values():
            if waiter.future is not None and not waiter.future.done():
                waiter.future.set_exception(error(reason))
                waiter.future.add_done_callback(_retrieved)
        self._pending.clear()
        for call in self.calls.values():
            _end_call(call, f"{call.name} did not finish: {reason}")
        self.calls.clear()


def _end_call(call: PendingCall, text: str) -> None:
    if not call.result.done():
        call.result.set_result(
            ToolResult(call_id=call.call_id, content=[TextBlock(text=text)], is_error=True)
        )


def _as(kind: type[R], reply: Reply) -> R:
    if not isinstance(reply, kind):
        raise KaimonError(
            f"the gate answered {type(reply).__name__} where {kind.__name__} was expected"
        )
    return reply


def _retrieved(future: asyncio.Future[Any]) -> None:
    # nobody may await it: mark its exception seen, so asyncio does not log it at exit
    if not future.cancelled():
        future.exception()
