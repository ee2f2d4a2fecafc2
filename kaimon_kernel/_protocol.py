"""The one contract between the gate (in the kernel) and the server.

Every message either side sends the other is a model defined here; neither side builds dicts
by hand. Session files are :class:`SessionInfo`; comm messages on :data:`COMM_TARGET` are the
``ServerMessage`` / ``GateMessage`` unions, told apart by their ``type`` field.

Requests and replies: every server → gate message is a :class:`Request` with an ``id``, and
the gate answers each one with a :class:`Reply` carrying that id as ``request_id`` (a typed
one where there is something to say, else :class:`Ack`; ``ok=False`` plus ``error`` when it
could not do it). :class:`CallTool` is answered by its :class:`ToolResult` (``call_id`` is the
request's id), with :class:`ToolProgress` before it. Gate → server events (tools, session
info, evaluation updates, :class:`PanelUpdate`) need no answer. The one gate → server request,
:class:`ServerCall` (a kernel calling the server's tools), is answered by a
:class:`ServerCallResult` carrying its ``call_id``.

Versions: ``major.minor`` plus a list of features. A peer of another minor version works:
unknown fields are ignored, an unknown request is answered ``ok=False``, and either side uses
an optional message only when the other lists its feature. A different major is refused,
said plainly. On the wire ``protocol_version`` stays an integer (the major) beside
``protocol_minor``, so that a 1.x peer, which reads it as an integer, still reports the
mismatch plainly instead of dropping the message as unreadable.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from ._errors import ProtocolMismatch

__all__ = [
    "COMM_TARGET",
    "EVAL_METADATA_KEY",
    "PROTOCOL_FEATURES",
    "PROTOCOL_MAJOR",
    "PROTOCOL_MINOR",
    "PROTOCOL_VERSION",
    "Ack",
    "Block",
    "CallTool",
    "CancelCall",
    "CancelEval",
    "EvalCancelled",
    "EvalQuery",
    "EvalRecord",
    "EvalRecords",
    "EvalUpdate",
    "GateMessage",
    "Hello",
    "ImageBlock",
    "InfoQuery",
    "InfoReply",
    "JobPromoted",
    "PanelUpdate",
    "ProcessIdentity",
    "Refused",
    "Reply",
    "Request",
    "ResumeMarker",
    "ServerCall",
    "ServerCallResult",
    "ServerMessage",
    "SessionChanged",
    "SessionInfo",
    "SetInfo",
    "SetOption",
    "TextBlock",
    "ToolProgress",
    "ToolResult",
    "ToolSpec",
    "ToolsChanged",
    "TopicEvent",
    "Welcome",
    "check_protocol",
    "parse_gate_message",
    "parse_server_message",
]

#: Bumped when a model below changes incompatibly (a peer of another major is refused).
PROTOCOL_MAJOR = 2
#: Bumped when something optional is added (peers one minor apart still work).
PROTOCOL_MINOR = 1
#: ``"major.minor"``: what both sides report.
PROTOCOL_VERSION = f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}"
#: Optional parts of the protocol this side speaks; a peer uses one only if both list it.
PROTOCOL_FEATURES: frozenset[str] = frozenset(
    {
        "tool_calls",  # CallTool / CancelCall / ToolProgress / ToolResult
        "eval_query",  # EvalQuery → EvalRecords
        "cancel_state",  # CancelEval → EvalCancelled says running / queued / finished
        "session_changed",  # the gate announces every change of its SessionInfo
        "set_info",  # SetInfo → InfoReply; empty strings clear
        "info_query",  # InfoQuery → InfoReply
        "set_option",
        "job_promoted",
        "events",  # TopicEvent: the server forwards its events to an extension's gate
        "server_calls",  # ServerCall → ServerCallResult: kaimon_kernel.call_tool()
        "panel",  # PanelUpdate: kaimon_kernel.push_panel() state for an extension's panel
    }
)
#: The Jupyter comm target the gate registers in the kernel.
COMM_TARGET = "kaimon.gate"


def _new_id() -> str:
    return uuid.uuid4().hex


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ProcessIdentity(_Model):
    """A process as psutil knows it: its pid and its start time (pids are reused; the pair
    is not)."""

    pid: int
    #: ``psutil.Process(pid).create_time()``; None where it could not be read.
    create_time: float | None = None
    #: The machine it runs on (its pid means nothing elsewhere); "" where unknown.
    host: str = ""

    @classmethod
    def current(cls) -> ProcessIdentity:
        """This process."""
        return cls.of(os.getpid()) or cls(pid=os.getpid(), host=socket.gethostname())

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        """The live process ``pid`` on this machine (None when there is none)."""
        import psutil

        try:
            created = psutil.Process(pid).create_time()
        except (psutil.Error, OSError, ValueError):
            return None
        return cls(pid=pid, create_time=created, host=socket.gethostname())

    @classmethod
    def parent_of_current(cls) -> ProcessIdentity | None:
        """The process that started this one (a kernel's: its kernel manager)."""
        import psutil

        try:
            parent = psutil.Process().parent()
            if parent is None:
                return None
            return cls(pid=parent.pid, create_time=parent.create_time(), host=socket.gethostname())
        except (psutil.Error, OSError):
            return None

    def alive(self) -> bool:
        """Whether this very process still runs (not a zombie, not a newer one with its pid).

        A process on another machine counts as alive: there is no telling from here."""
        import psutil

        if self.host and self.host != socket.gethostname():
            return True
        try:
            process = psutil.Process(self.pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return False
            return self.create_time is None or abs(process.create_time() - self.create_time) < 0.05
        except (psutil.Error, OSError):
            return False


class SessionInfo(_Model):
    """What a served kernel tells the world, stored 0600 as its session file."""

    session_id: str
    key: str
    pid: int
    connection_file: str
    namespace: str
    label: str
    description: str = ""
    cwd: str
    python_version: str
    #: The protocol's major version (an integer, see the module docstring) and minor.
    protocol_version: int = PROTOCOL_MAJOR
    protocol_minor: int = PROTOCOL_MINOR
    started_at: float
    started_by: Literal["person", "agent", "extension"] = "person"
    allow_mirror: bool = True
    allow_restart: bool = True
    #: Overrides the server's promote_after for this session (seconds; <=0 never).
    promote_after: float | None = None
    #: The kernel process, as the gate states it (pid and start time).
    kernel: ProcessIdentity | None = None
    #: Where a kernel behind a Jupyter Server lives (its base URL, never the token), its id
    #: there and its notebook (from /api/sessions). Set by the server's provider, not the gate.
    server_url: str | None = None
    kernel_id: str | None = None
    notebook_path: str | None = None


class ResumeMarker(SessionInfo):
    """Marks a served kernel so that a restart by the same kernel manager serves it again.

    A kernel started on the same connection file by another process is not the one served:
    the marker names the served kernel's parent, and when it exited cleanly."""

    parent: ProcessIdentity | None = None
    exited_at: float | None = None


class ToolSpec(_Model):
    """A gate tool as the server lists it (before namespacing)."""

    name: str
    description: str = ""
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None = None
    timeout: float | None = None
    #: MCP tool annotations (hints for the client; None: not said).
    read_only: bool | None = None
    destructive: bool | None = None
    idempotent: bool | None = None
    open_world: bool | None = None


class TextBlock(_Model):
    type: Literal["text"] = "text"
    text: str


class ImageBlock(_Model):
    type: Literal["image"] = "image"
    data: str  # base64
    mime_type: str


Block = Annotated[TextBlock | ImageBlock, Field(discriminator="type")]


# -- the two bases ---------------------------------------------------------------------------


class Request(_Model):
    """Server → gate: every one has an id, and the gate answers it with a :class:`Reply`."""

    id: str = Field(default_factory=_new_id)


class Reply(_Model):
    """Gate → server: the answer to the request ``request_id``."""

    request_id: str = ""
    ok: bool = True
    #: What went wrong, for the agent, when ``ok`` is false.
    error: str = ""


# -- server → gate ---------------------------------------------------------------------------


class Hello(Request):
    """Server → gate, as the comm_open data: who connects, in which protocol.

    Answered by :class:`Welcome`, or :class:`Refused`."""

    type: Literal["hello"] = "hello"
    protocol_version: int = PROTOCOL_MAJOR
    protocol_minor: int = PROTOCOL_MINOR
    features: list[str] = Field(default_factory=lambda: sorted(PROTOCOL_FEATURES))
    #: The server process: the gate forgets it once it is gone.
    server: ProcessIdentity


class CallTool(Request):
    """Server → gate: run a tool with the agent's JSON arguments. The request's id is the
    call's id; answered by :class:`ToolResult` (progress comes as :class:`ToolProgress`)."""

    type: Literal["call_tool"] = "call_tool"
    name: str
    arguments: dict[str, Any] = {}

    @property
    def call_id(self) -> str:
        return self.id


class CancelCall(Request):
    """Server → gate: the agent cancelled (or the call timed out); ``is_cancelled()`` turns
    true. Answered by :class:`Ack` (``ok=False`` when no such call runs)."""

    type: Literal["cancel_call"] = "cancel_call"
    call_id: str


class CancelEval(Request):
    """Server → gate: the agent cancelled an evaluation. Answered by :class:`EvalCancelled`.

    Running: ``is_cancelled()`` turns true in it. Not started yet: it is skipped when its turn
    comes. Asking again is harmless, and says whether it still runs."""

    type: Literal["cancel_eval"] = "cancel_eval"
    msg_id: str


class EvalQuery(Request):
    """Server → gate, after a server restart: what became of these evaluations?

    Answered by :class:`EvalRecords`."""

    type: Literal["eval_query"] = "eval_query"
    msg_ids: list[str]


class SetInfo(Request):
    """Server → gate: the agent relabels the session (``set_session_info``).

    None leaves a field as it is; an empty string clears it (an empty label falls back to the
    namespace). Answered by :class:`InfoReply` with the session as it now is."""

    type: Literal["set_info"] = "set_info"
    label: str | None = None
    description: str | None = None


class InfoQuery(Request):
    """Server → gate: the session as it is now. Answered by :class:`InfoReply`."""

    type: Literal["info_query"] = "info_query"


class SetOption(Request):
    """Server → gate: turn the live view (mirror) on or off, where the session allows it.

    Answered by :class:`Ack` (``ok=False`` where the person served with ``--no-mirror``)."""

    type: Literal["set_option"] = "set_option"
    mirror: bool


class TopicEvent(Request):
    """Something happened on the server (an extension's ``event_topics``): the gate hands it
    to its event listeners. Sent only where the gate lists the ``events`` feature."""

    type: Literal["event"] = "event"
    topic: str
    data: dict[str, Any] = {}
    #: The key of the session it concerns.
    session: str = ""


class ServerCallResult(Request):
    """The answer to a gate's :class:`ServerCall` (it needs no answer itself)."""

    type: Literal["server_call_result"] = "server_call_result"
    call_id: str
    content: list[Block] = []
    structured: dict[str, Any] | None = None
    is_error: bool = False
    #: For a listing: the tools the server offers (names as agents see them).
    tools: list[ToolSpec] | None = None


class JobPromoted(Request):
    """Server → gate: an agent evaluation became a background job (the live view says so).

    Sent when it is promoted, which may be before the kernel has started it (queued).
    Answered by :class:`Ack`."""

    type: Literal["job_promoted"] = "job_promoted"
    msg_id: str
    eval_id: str


# -- gate → server: replies ------------------------------------------------------------------


class Ack(Reply):
    """Gate → server: the request was done (or, with ``ok=False``, why not)."""

    type: Literal["ack"] = "ack"


class Welcome(Reply):
    """Gate → server, the answer to :class:`Hello`."""

    type: Literal["welcome"] = "welcome"
    protocol_version: int = PROTOCOL_MAJOR
    protocol_minor: int = PROTOCOL_MINOR
    features: list[str] = Field(default_factory=lambda: sorted(PROTOCOL_FEATURES))
    session: SessionInfo
    tools: list[ToolSpec] = []
    #: The kernel process itself, as the gate sees it: trust this, not a session file.
    kernel: ProcessIdentity


class Refused(Reply):
    """Gate → server: the gate will not talk to this server (e.g. protocol mismatch)."""

    type: Literal["refused"] = "refused"
    ok: bool = False
    protocol_version: int = PROTOCOL_MAJOR
    protocol_minor: int = PROTOCOL_MINOR
    reason: str


class EvalRecord(_Model):
    """What the gate remembers of one recent agent evaluation."""

    msg_id: str
    status: Literal["running", "ok", "error"]
    output: str = ""
    stash: dict[str, str] = {}
    progress: str | None = None


class EvalRecords(Reply):
    """Gate → server: the answer to :class:`EvalQuery` (unknown ids are left out)."""

    type: Literal["eval_records"] = "eval_records"
    records: list[EvalRecord] = []


class EvalCancelled(Reply):
    """Gate → server: the answer to :class:`CancelEval`, from what the kernel knows now.

    ``running``: it runs now and was flagged. ``queued``: the kernel has not started it; it
    will be skipped. ``finished``: it had already ended (``status`` says how)."""

    type: Literal["eval_cancelled"] = "eval_cancelled"
    msg_id: str
    state: Literal["running", "queued", "finished"]
    status: Literal["ok", "error"] | None = None


class InfoReply(Reply):
    """Gate → server: the session as it now is (answers :class:`SetInfo`, :class:`InfoQuery`)."""

    type: Literal["info_reply"] = "info_reply"
    session: SessionInfo


class ToolResult(_Model):
    """Gate → server: a tool call's outcome (the answer to :class:`CallTool`)."""

    type: Literal["tool_result"] = "tool_result"
    call_id: str
    content: list[Block]
    structured: dict[str, Any] | None = None
    is_error: bool = False


# -- gate → server: events -------------------------------------------------------------------


class ToolsChanged(_Model):
    """Gate → server: the session's tools were registered, replaced or removed."""

    type: Literal["tools_changed"] = "tools_changed"
    tools: list[ToolSpec]


class SessionChanged(_Model):
    """Gate → server: the session's info changed (served again with other settings, relabelled):
    sent to every connected server."""

    type: Literal["session_changed"] = "session_changed"
    session: SessionInfo


class ToolProgress(_Model):
    """Gate → server: ``progress(...)`` inside a running tool."""

    type: Literal["tool_progress"] = "tool_progress"
    call_id: str
    message: str
    progress: float | None = None
    total: float | None = None


class ServerCall(_Model):
    """Gate → server: call a tool the server offers, as an agent would
    (``kaimon_kernel.call_tool``); answered by :class:`ServerCallResult`."""

    type: Literal["server_call"] = "server_call"
    call_id: str = Field(default_factory=_new_id)
    name: str = ""
    arguments: dict[str, Any] = {}
    timeout: float = 60.0
    #: List the tools instead of calling one.
    listing: bool = False
    #: Sent from the kernel's main thread (a cell): code for this session would wait on it.
    from_main_thread: bool = False


class PanelUpdate(_Model):
    """Gate → server: state for the session's dashboard panel (``kaimon_kernel.push_panel``),
    already reduced to JSON values; merged key by key into what the server holds."""

    type: Literal["panel_update"] = "panel_update"
    values: dict[str, Any]


class EvalUpdate(_Model):
    """Gate → server: ``stash()`` / ``progress()`` called inside an agent's evaluation."""

    type: Literal["eval_update"] = "eval_update"
    msg_id: str
    stash: dict[str, str] = {}
    progress: str | None = None


#: Session-level marker in an execute_request's metadata: this code is the agent's.
EVAL_METADATA_KEY = "kaimon"

ServerMessage = Annotated[
    Hello
    | CallTool
    | CancelCall
    | CancelEval
    | EvalQuery
    | SetInfo
    | InfoQuery
    | SetOption
    | JobPromoted
    | TopicEvent
    | ServerCallResult,
    Field(discriminator="type"),
]
GateMessage = Annotated[
    Ack
    | Welcome
    | Refused
    | EvalRecords
    | EvalCancelled
    | InfoReply
    | ToolResult
    | ToolsChanged
    | SessionChanged
    | ToolProgress
    | EvalUpdate
    | ServerCall
    | PanelUpdate,
    Field(discriminator="type"),
]

_server_adapter: TypeAdapter[Any] = TypeAdapter(ServerMessage)
_gate_adapter: TypeAdapter[Any] = TypeAdapter(GateMessage)


def parse_server_message(data: object) -> Request:
    """A server → gate message from its JSON form (raises pydantic's ValidationError)."""
    return _server_adapter.validate_python(data)


def parse_gate_message(data: object) -> BaseModel:
    """A gate → server message from its JSON form (raises pydantic's ValidationError)."""
    return _gate_adapter.validate_python(data)


def check_protocol(theirs: int | str, *, who: str) -> None:
    """Raise :class:`ProtocolMismatch` with a plain explanation when the majors differ.

    ``theirs`` is a major (``2``) or ``"major.minor"``; another minor is fine."""
    try:
        major = int(str(theirs).split(".", 1)[0])
    except ValueError:
        major = -1
    if major != PROTOCOL_MAJOR:
        raise ProtocolMismatch(
            f"{who} speaks kaimon protocol {theirs}, this side speaks {PROTOCOL_VERSION}: "
            "install the same kaimon-kernel version in the kernel's environment and the "
            "server's, then restart the kernel."
        )
