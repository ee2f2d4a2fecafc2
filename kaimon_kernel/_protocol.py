"""The one contract between the gate (in the kernel) and the server.

Every message either side sends the other is a model defined here; neither side builds dicts
by hand. Session files are :class:`SessionInfo`; comm messages on :data:`COMM_TARGET` are the
``ServerMessage`` / ``GateMessage`` unions, told apart by their ``type`` field.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from ._errors import ProtocolMismatch

__all__ = [
    "COMM_TARGET",
    "PROTOCOL_VERSION",
    "GateMessage",
    "Hello",
    "ServerMessage",
    "SessionInfo",
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


class Refused(_Model):
    """Gate → server: the gate will not talk to this server (e.g. protocol mismatch)."""

    type: Literal["refused"] = "refused"
    protocol_version: int = PROTOCOL_VERSION
    reason: str


ServerMessage = Annotated[Hello, Field(discriminator="type")]
GateMessage = Annotated[Welcome | Refused, Field(discriminator="type")]

_server_adapter: TypeAdapter[Hello] = TypeAdapter(ServerMessage)
_gate_adapter: TypeAdapter[Welcome | Refused] = TypeAdapter(GateMessage)


def parse_server_message(data: object) -> Hello:
    return _server_adapter.validate_python(data)


def parse_gate_message(data: object) -> Welcome | Refused:
    return _gate_adapter.validate_python(data)


def check_protocol(theirs: int, *, who: str) -> None:
    """Raise :class:`ProtocolMismatch` with a plain explanation when versions differ."""
    if theirs != PROTOCOL_VERSION:
        raise ProtocolMismatch(
            f"{who} speaks kaimon protocol {theirs}, this side speaks {PROTOCOL_VERSION}: "
            "install the same kaimon-kernel version in the kernel's environment and the "
            "server's, then restart the kernel."
        )
