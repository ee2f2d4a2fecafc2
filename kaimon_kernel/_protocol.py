"""The one contract between the gate (in the kernel) and the server.

Every message either side sends the other is a model defined here; neither side builds dicts
by hand. Session files are :class:`SessionInfo`; comm messages on :data:`COMM_TARGET` are the
``ServerMessage`` / ``GateMessage`` unions, told apart by their ``type`` field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from ._errors import ProtocolMismatch

__all__ = [
    "COMM_TARGET",
    "EVAL_METADATA_KEY",
    "PROTOCOL_VERSION",
    "Block",
    "CallTool",
    "CancelCall",
    "CancelEval",
    "EvalQuery",
    "EvalRecord",
    "EvalRecords",
    "EvalUpdate",
    "GateMessage",
    "Hello",
    "ImageBlock",
    "JobPromoted",
    "ServerMessage",
    "SessionInfo",
    "SetInfo",
    "SetOption",
    "TextBlock",
    "ToolProgress",
    "ToolResult",
    "ToolSpec",
    "ToolsChanged",
    "Welcome",
    "check_protocol",
    "parse_gate_message",
    "parse_server_message",
]

#: Bumped whenever a model below changes incompatibly.
PROTOCOL_VERSION = 1
#: The Jupyter comm target the gate registers in the kernel.
COMM_TARGET = "kaimon.gate"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


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
    protocol_version: int = PROTOCOL_VERSION
    started_at: float
    started_by: Literal["person", "agent"] = "person"
    allow_mirror: bool = True
    allow_restart: bool = True
    #: Overrides the server's promote_after for this session (seconds; <=0 never).
    promote_after: float | None = None


class ToolSpec(_Model):
    """A gate tool as the server lists it (before namespacing)."""

    name: str
    description: str = ""
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None = None
    timeout: float | None = None


class TextBlock(_Model):
    type: Literal["text"] = "text"
    text: str


class ImageBlock(_Model):
    type: Literal["image"] = "image"
    data: str  # base64
    mime_type: str


Block = Annotated[TextBlock | ImageBlock, Field(discriminator="type")]


class Hello(_Model):
    """Server → gate, as the comm_open data: who is connecting, in which protocol."""

    type: Literal["hello"] = "hello"
    protocol_version: int = PROTOCOL_VERSION
    server_pid: int


class Welcome(_Model):
    """Gate → server, the answer to :class:`Hello`."""

    type: Literal["welcome"] = "welcome"
    protocol_version: int = PROTOCOL_VERSION
    session: SessionInfo
    tools: list[ToolSpec] = []


class ToolsChanged(_Model):
    """Gate → server: the session's tools were registered, replaced or removed."""

    type: Literal["tools_changed"] = "tools_changed"
    tools: list[ToolSpec]


class CallTool(_Model):
    """Server → gate: run a tool with the agent's JSON arguments."""

    type: Literal["call_tool"] = "call_tool"
    call_id: str
    name: str
    arguments: dict[str, Any] = {}


class CancelCall(_Model):
    """Server → gate: the agent cancelled (or the call timed out); ``is_cancelled()`` turns true."""

    type: Literal["cancel_call"] = "cancel_call"
    call_id: str


class ToolProgress(_Model):
    """Gate → server: ``progress(...)`` inside a running tool."""

    type: Literal["tool_progress"] = "tool_progress"
    call_id: str
    message: str
    progress: float | None = None
    total: float | None = None


class ToolResult(_Model):
    """Gate → server: a tool call's outcome."""

    type: Literal["tool_result"] = "tool_result"
    call_id: str
    content: list[Block]
    structured: dict[str, Any] | None = None
    is_error: bool = False


class Refused(_Model):
    """Gate → server: the gate will not talk to this server (e.g. protocol mismatch)."""

    type: Literal["refused"] = "refused"
    protocol_version: int = PROTOCOL_VERSION
    reason: str


class CancelEval(_Model):
    """Server → gate: the agent cancelled an evaluation; ``is_cancelled()`` turns true in it."""

    type: Literal["cancel_eval"] = "cancel_eval"
    msg_id: str


class EvalQuery(_Model):
    """Server → gate, after a server restart: what became of these evaluations?"""

    type: Literal["eval_query"] = "eval_query"
    msg_ids: list[str]


class EvalUpdate(_Model):
    """Gate → server: ``stash()`` / ``progress()`` called inside an agent's evaluation."""

    type: Literal["eval_update"] = "eval_update"
    msg_id: str
    stash: dict[str, str] = {}
    progress: str | None = None


class EvalRecord(_Model):
    """What the gate remembers of one recent agent evaluation."""

    msg_id: str
    status: Literal["running", "ok", "error"]
    output: str = ""
    stash: dict[str, str] = {}
    progress: str | None = None


class EvalRecords(_Model):
    """Gate → server: the answer to :class:`EvalQuery` (unknown ids are left out)."""

    type: Literal["eval_records"] = "eval_records"
    records: list[EvalRecord]


class SetInfo(_Model):
    """Server → gate: the agent relabels the session (``set_session_info``)."""

    type: Literal["set_info"] = "set_info"
    label: str | None = None
    description: str | None = None


class SetOption(_Model):
    """Server → gate: turn the live view (mirror) on or off, where the session allows it."""

    type: Literal["set_option"] = "set_option"
    mirror: bool


class JobPromoted(_Model):
    """Server → gate: an agent evaluation became a background job (the live view says so).

    Sent when it is promoted, which may be before the kernel has started it (queued)."""

    type: Literal["job_promoted"] = "job_promoted"
    msg_id: str
    eval_id: str


#: Session-level marker in an execute_request's metadata: this code is the agent's.
EVAL_METADATA_KEY = "kaimon"

ServerMessage = Annotated[
    Hello | CallTool | CancelCall | CancelEval | EvalQuery | SetInfo | SetOption | JobPromoted,
    Field(discriminator="type"),
]
GateMessage = Annotated[
    Welcome | Refused | ToolsChanged | ToolProgress | ToolResult | EvalUpdate | EvalRecords,
    Field(discriminator="type"),
]

_server_adapter: TypeAdapter[Any] = TypeAdapter(ServerMessage)
_gate_adapter: TypeAdapter[Any] = TypeAdapter(GateMessage)


def parse_server_message(
    data: object,
) -> Hello | CallTool | CancelCall | CancelEval | EvalQuery | SetInfo | SetOption | JobPromoted:
    return _server_adapter.validate_python(data)


def parse_gate_message(
    data: object,
) -> Welcome | Refused | ToolsChanged | ToolProgress | ToolResult | EvalUpdate | EvalRecords:
    return _gate_adapter.validate_python(data)


def check_protocol(theirs: int, *, who: str) -> None:
    """Raise :class:`ProtocolMismatch` with a plain explanation when versions differ."""
    if theirs != PROTOCOL_VERSION:
        raise ProtocolMismatch(
            f"{who} speaks kaimon protocol {theirs}, this side speaks {PROTOCOL_VERSION}: "
            "install the same kaimon-kernel version in the kernel's environment and the "
            "server's, then restart the kernel."
        )
