"""A fake kernel behind the transport seam: fast, deterministic tests of the state machines.

It answers the way ipykernel does on each channel (kernel_info, subshells, interrupt, the
gate's comm) and lets a test play the kernel's side of an execution message by message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from jupyter_client.session import Session

from kaimon_kernel._protocol import COMM_TARGET, ProcessIdentity, SessionInfo, ToolSpec, Welcome
from kaimon_kernel.server._jobs import Job


def session_info(key: str = "k1", **changes: Any) -> SessionInfo:
    data: dict[str, Any] = {
        "session_id": f"{key}-id",
        "key": key,
        "pid": 4242,
        "connection_file": f"/nonexistent/kernel-{key}.json",
        "namespace": "demo",
        "label": key,
        "cwd": "/tmp",
        "python_version": "3.11",
        "started_at": time.time(),
    }
    data.update(changes)
    return SessionInfo(**data)


class FakeKernel:
    """The kernel's side of the wire. ``gate=False``: a kernel that never served."""

    def __init__(self, info: SessionInfo, *, gate: bool = True, answers: bool = True) -> None:
        self.info = info
        self.gate = gate
        self.answers = answers
        self.session = Session(key=b"")
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.on_message: Callable[[str, dict[str, Any]], None] | None = None
        self.subshells: set[str] = set()
        self.comms: set[str] = set()
        self.closed = False
        self.alive = True
        self.tools: list[ToolSpec] = []

    # -- Transport -----------------------------------------------------------------------------

    def open(self, on_message: Callable[[str, dict[str, Any]], None], **_: Any) -> None:
        self.on_message = on_message

    def content(self, msg: dict[str, Any]) -> dict[str, Any]:
        return msg["content"]

    def msg(self, msg_type: str, content: Any = None, metadata: Any = None) -> dict[str, Any]:
        return self.session.msg(msg_type, content or {}, metadata=metadata)

    def send(self, channel: str, msg: dict[str, Any]) -> None:
        self.sent.append((channel, msg))
        if self.answers:
            self._answer(channel, msg)

    def close(self) -> None:
        self.closed = True

    # -- the kernel's side ---------------------------------------------------------------------

    def reply(self, channel: str, parent: dict[str, Any], msg_type: str, content: Any) -> None:
        msg = self.session.msg(msg_type, content, parent=parent)
        assert self.on_message is not None
        self.on_message(channel, msg)

    def iopub(self, parent: dict[str, Any] | None, msg_type: str, content: Any) -> None:
        self.reply("iopub", parent or {}, msg_type, content)

    def _answer(self, channel: str, msg: dict[str, Any]) -> None:
        kind = msg["header"]["msg_type"]
        content = msg["content"]
        if kind == "kernel_info_request":
            self.iopub(msg, "status", {"execution_state": "busy"})
            self.iopub(msg, "status", {"execution_state": "idle"})
            features = {"supported_features": ["kernel subshells"], "status": "ok"}
            self.reply(channel, msg, "kernel_info_reply", features)
        elif kind == "create_subshell_request":
            self.subshells.add("sub-1")
            self.reply(channel, msg, "create_subshell_reply", {"subshell_id": "sub-1"})
        elif kind == "delete_subshell_request":
            self.subshells.discard(content["subshell_id"])
            self.reply(channel, msg, "delete_subshell_reply", {"status": "ok"})
        elif kind == "interrupt_request":
            self.reply(channel, msg, "interrupt_reply", {"status": "ok"})
        elif kind == "comm_open" and content["target_name"] == COMM_TARGET and self.gate:
            self.comms.add(content["comm_id"])
            hello = content["data"]
            kernel = ProcessIdentity(pid=self.info.pid, create_time=1.0)
            welcome = Welcome(
                request_id=hello["id"], session=self.info, kernel=kernel, tools=self.tools
            )
            welcome = welcome.model_dump(mode="json")
            self.iopub(None, "comm_msg", {"comm_id": content["comm_id"], "data": welcome})
        elif kind == "comm_close":
            self.comms.discard(content["comm_id"])

    def sent_types(self) -> list[str]:
        return [m["header"]["msg_type"] for _, m in self.sent]


class FakeProvider:
    """A provider whose kernels are :class:`FakeKernel` s."""

    name = "fake"

    def where(self) -> list[str]:
        return ["the fake kernels"]

    def __init__(self) -> None:
        self.kernels: dict[str, FakeKernel] = {}
        self.announced: dict[str, SessionInfo] = {}
        self.signalled: list[str] = []

    def add(self, kernel: FakeKernel) -> FakeKernel:
        self.kernels[kernel.info.key] = kernel
        self.announced[kernel.info.key] = kernel.info
        return kernel

    def discover(self) -> dict[str, SessionInfo]:
        return {k: i for k, i in self.announced.items() if self.kernels[k].alive}

    async def refresh(self) -> bool:
        return False

    def pending(self) -> bool:
        return False

    async def watch(self, changed: Any) -> None:
        return None

    def connect(self, info: SessionInfo) -> FakeKernel:
        return self.kernels[info.key]

    def alive(self, info: SessionInfo, *, fresh: bool = False) -> bool:
        kernel = self.kernels.get(info.key)
        return kernel is not None and kernel.alive

    def owns(self, key: str) -> bool:
        return False

    async def interrupt_signal(self, info: SessionInfo) -> bool:
        self.signalled.append(info.key)
        return True


def job(job_id: str, status: str = "running", **kw: object) -> Job:
    """A job row for the store, with whatever fields a test sets."""
    fields: dict = dict(
        id=job_id,
        msg_id=f"m-{job_id}",
        session_key="k",
        session_id="s",
        kernel_pid=1,
        code="1",
        status=status,
        created_at=time.time(),
    )
    fields.update(kw)
    return Job(**fields)


class FakeExtensionProcess:
    """An extension's process for the supervisor's state machine: the test decides when it
    serves and when it exits (see kaimon_kernel.extensions._supervisor.ExtensionProcess)."""

    def __init__(self, *, serves: bool = True, fails_to_launch: str = "") -> None:
        self.serves = serves
        self.fails_to_launch = fails_to_launch
        self.code: int | None = None
        self.started = False
        self.stops = 0
        self.output = ""
        self.pid: int | None = None

    async def start(self) -> None:
        if self.fails_to_launch:
            raise OSError(self.fails_to_launch)
        self.started = True
        self.pid = 40000 + id(self) % 1000

    def exit_code(self) -> int | None:
        return self.code

    def served(self) -> bool:
        return self.started and self.serves and self.code is None

    async def stop(self) -> None:
        self.stops += 1
        if self.code is None:
            self.code = 0

    def recent_output(self) -> str:
        return self.output

    def crash(self, code: int = -9, output: str = "") -> None:
        self.output = output
        self.code = code
