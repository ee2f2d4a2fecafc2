"""The gate: makes the kernel it runs in a session that the kaimon server can reach.

Serving writes a session file (0600) next to the kernel's connection file and answers the
server on the :data:`~kaimon_kernel._protocol.COMM_TARGET` comm. Nothing new is bound: the
server talks to the kernel over the kernel's own channels.
"""

from __future__ import annotations

import atexit
import logging
import os
import platform
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ipykernel.kernelbase import Kernel

from .._errors import KaimonError, ProtocolMismatch
from .._paths import resume_file_for, sessions_dir, write_private
from .._protocol import (
    COMM_TARGET,
    CallTool,
    CancelCall,
    CancelEval,
    EvalQuery,
    EvalRecords,
    Hello,
    JobPromoted,
    Refused,
    SessionInfo,
    SetInfo,
    SetOption,
    ToolProgress,
    ToolsChanged,
    Welcome,
    check_protocol,
    parse_server_message,
)
from ._context import CallContext, EvalTracker, set_tracker
from ._mirror import LiveView
from ._tools import GateTool, ToolRegistry, check_tools, run_call

__all__ = [
    "Gate",
    "current_gate",
    "list_tools",
    "register",
    "resume_after_restart",
    "serve",
    "stop",
    "tool",
    "unregister",
]

logger = logging.getLogger(__name__)


@dataclass
class ServerLink:
    """A kaimon server that opened the gate's comm."""

    server_pid: int
    since: float
    comm: Any


def send(comm: Any, message: Any) -> None:
    """Send a protocol message to the server on ``comm``, from any thread.

    Not ``comm.send``: ipykernel 7 routes a comm's *incoming* messages to the subshell of
    the last thread that sent on it, so a send from the person's cell would queue the
    server's next message (a cancel, a tool call) behind that very cell."""
    kernel = getattr(comm, "kernel", None) or Kernel.instance()
    content = {"data": message.model_dump(mode="json"), "comm_id": comm.comm_id}
    kernel.session.send(kernel.iopub_socket, "comm_msg", content, parent=None, ident=comm.topic)


def session_file_for(key: str) -> Path:
    return sessions_dir() / f"session-{key}.json"


RESUME_HOOK = "50-kaimon-resume.py"
_RESUME_SOURCE = """\
# Written by kaimon-kernel when a kernel was shared with agents (%kaimon serve).
# It does nothing unless this very kernel was served before a restart: then it serves again.
try:
    from kaimon_kernel.gate import resume_after_restart
    resume_after_restart(get_ipython())
except Exception:
    pass
"""


def _install_resume_hook(shell: Any) -> None:
    profile_dir = getattr(shell, "profile_dir", None)
    if profile_dir is None:
        return
    path = Path(profile_dir.startup_dir) / RESUME_HOOK
    try:
        if not path.exists() or path.read_text() != _RESUME_SOURCE:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_RESUME_SOURCE)
    except OSError as err:
        logger.warning("kaimon: cannot write %s (%s): a restart will not re-serve", path, err)


def resume_after_restart(shell: Any) -> SessionInfo | None:
    """Serve again, with the same key and label, a kernel restarted while it was served."""
    try:
        marker = resume_file_for(_connection_file())
        previous = SessionInfo.model_validate_json(marker.read_text())
    except (KaimonError, OSError, ValueError):
        return None
    return current_gate(shell).serve_as(previous)


def _connection_file() -> str:
    try:
        from ipykernel.connect import get_connection_file

        return os.path.abspath(get_connection_file())
    except Exception as err:  # not in a kernel started by ipykernel
        raise KaimonError(
            "the gate needs a Jupyter kernel (ipykernel) with a connection file; "
            "run it in a notebook, a console or `kaimon serve`'s own kernels"
        ) from err


def default_namespace(cwd: str | None = None) -> str:
    """The namespace a session gets when none is given: its project directory's name."""
    name = Path(cwd or os.getcwd()).resolve().name or "session"
    cleaned = "".join(c if c.isalnum() or c in "_-" else "_" for c in name).strip("_-")
    return cleaned or "session"


class Gate:
    """The gate of one IPython kernel. Use :func:`serve` / :func:`stop` rather than this."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.info: SessionInfo | None = None
        self.servers: dict[str, ServerLink] = {}
        self.tools = ToolRegistry()
        self.tools.listeners.append(self._broadcast_tools)
        self._calls: dict[str, CallContext] = {}
        self._registered = False
        self.evals = EvalTracker(shell, self._broadcast)
        set_tracker(self.evals)
        self.view = LiveView(shell)
        self.evals.view = self.view
        atexit.register(self._remove_session_file)

    @property
    def serving(self) -> bool:
        return self.info is not None

    def serve(
        self,
        *,
        namespace: str | None = None,
        label: str | None = None,
        description: str = "",
        allow_mirror: bool = True,
        allow_restart: bool = True,
        started_by: Literal["person", "agent"] = "person",
        key: str | None = None,
        tools: Iterable[GateTool] = (),
        promote_after: float | None = None,
    ) -> SessionInfo:
        self._register_target()
        new_tools = check_tools(tools)
        session_id = self.info.session_id if self.info else uuid.uuid4().hex
        ns = namespace or (self.info.namespace if self.info else default_namespace())
        self.info = SessionInfo(
            session_id=session_id,
            key=key or (self.info.key if self.info else session_id[:8]),
            pid=os.getpid(),
            connection_file=_connection_file(),
            namespace=ns,
            label=label or (self.info.label if self.info else ns),
            description=description or (self.info.description if self.info else ""),
            cwd=os.getcwd(),
            python_version=platform.python_version(),
            started_at=self.info.started_at if self.info else time.time(),
            started_by=started_by,
            allow_mirror=allow_mirror,
            allow_restart=allow_restart,
            promote_after=promote_after,
        )
        write_private(session_file_for(self.info.key), self.info.model_dump_json(indent=1))
        write_private(resume_file_for(self.info.connection_file), self.info.model_dump_json())
        _install_resume_hook(self.shell)
        if new_tools:
            self.tools.add(*new_tools)
        return self.info

    def serve_as(self, info: SessionInfo) -> SessionInfo:
        """Serve (again) with every setting of ``info``, its key included."""
        return self.serve(
            namespace=info.namespace,
            label=info.label,
            description=info.description,
            allow_mirror=info.allow_mirror,
            allow_restart=info.allow_restart,
            started_by=info.started_by,
            key=info.key,
            promote_after=info.promote_after,
        )

    def stop(self) -> bool:
        """Withdraw the kernel from agents. Returns whether it was served."""
        if self.info is None:
            return False
        for link in list(self.servers.values()):
            try:
                link.comm.close()
            except Exception:
                logger.debug("closing comm failed", exc_info=True)
        self.servers.clear()
        self._remove_session_file()
        resume_file_for(self.info.connection_file).unlink(missing_ok=True)
        self.info = None
        return True

    def _remove_session_file(self) -> None:
        if self.info is not None:
            session_file_for(self.info.key).unlink(missing_ok=True)

    def _register_target(self) -> None:
        if self._registered:
            return
        kernel = getattr(self.shell, "kernel", None)
        comm_manager = getattr(kernel, "comm_manager", None)
        if comm_manager is None:
            raise KaimonError("this IPython shell has no Jupyter kernel; the gate needs one")
        comm_manager.register_target(COMM_TARGET, self._on_comm_open)
        self._registered = True

    def _on_comm_open(self, comm: Any, msg: dict[str, Any]) -> None:
        data = msg["content"].get("data") or {}
        try:
            hello = parse_server_message(data)
            if not isinstance(hello, Hello):
                raise ValueError("a kaimon comm must open with a hello")
            check_protocol(hello.protocol_version, who="the kaimon server")
            if self.info is None:
                raise KaimonError("this kernel is not served (run %kaimon serve)")
        except (ProtocolMismatch, KaimonError, ValueError) as err:
            send(comm, Refused(reason=str(err)))
            comm.close()
            return
        self.servers[comm.comm_id] = ServerLink(hello.server_pid, time.time(), comm)
        comm.on_close(lambda _msg: self.servers.pop(comm.comm_id, None))
        comm.on_msg(lambda msg: self._on_comm_msg(comm, msg))
        send(comm, Welcome(session=self.info, tools=self.tools.specs()))

    def _on_comm_msg(self, comm: Any, msg: dict[str, Any]) -> None:
        try:
            message = parse_server_message(msg["content"].get("data") or {})
        except ValueError:
            logger.warning("kaimon: ignoring a malformed message from the server")
            return
        if isinstance(message, CallTool):
            self._start_call(comm, message)
        elif isinstance(message, CancelCall):
            call = self._calls.get(message.call_id)
            if call is not None:
                call.cancelled.set()
        elif isinstance(message, CancelEval):
            self.evals.cancel(message.msg_id)
            self.view.job_cancelled(message.msg_id)
        elif isinstance(message, JobPromoted):
            ev = self.evals.recent.get(message.msg_id)
            if ev is None or ev.status == "running":  # not one that ended as it was promoted
                self.view.job_promoted(message.msg_id, message.eval_id)
        elif isinstance(message, SetOption) and self.info is not None:
            if self.info.allow_mirror:
                self.view.enabled = message.mirror
        elif isinstance(message, SetInfo) and self.info is not None:
            changes = {"label": message.label or self.info.label}
            if message.description is not None:
                changes["description"] = message.description
            self.serve_as(self.info.model_copy(update=changes))
        elif isinstance(message, EvalQuery):
            records = EvalRecords(records=self.evals.query(message.msg_ids))
            send(comm, records)

    def _start_call(self, comm: Any, request: CallTool) -> None:
        def send_progress(text: str, value: float | None, total: float | None) -> None:
            update = ToolProgress(
                call_id=request.call_id, message=text, progress=value, total=total
            )
            send(comm, update)

        call = CallContext(request.call_id, send_progress)
        self._calls[request.call_id] = call

        def work() -> None:
            started = time.monotonic()
            try:
                result = run_call(
                    self.tools.get(request.name), request.name, request.arguments, call
                )
                self.view.tool_finished(
                    request.name,
                    request.arguments,
                    "error" if result.is_error else "ok",
                    time.monotonic() - started,
                )
                send(comm, result)
            finally:
                self._calls.pop(request.call_id, None)

        # A worker thread: a long tool never holds up the comm (cancel must get through).
        threading.Thread(target=work, name=f"kaimon-tool-{request.name}", daemon=True).start()

    def _broadcast_tools(self) -> None:
        self._broadcast(ToolsChanged(tools=self.tools.specs()))

    def _broadcast(self, message: Any) -> None:
        """Send a protocol message to every connected server."""
        if self.info is None:
            return
        for link in list(self.servers.values()):
            try:
                send(link.comm, message)
            except Exception:
                logger.debug("sending %s failed", message.type, exc_info=True)

    def status_text(self) -> str:
        if self.info is None:
            return "kaimon: not serving. Run `%kaimon serve` to share this kernel with agents."
        i = self.info
        lines = [
            f"kaimon: serving session {i.key} (label {i.label!r}, namespace {i.namespace!r})",
            f"  session file:    {session_file_for(i.key)}",
            f"  connection file: {i.connection_file}",
            f"  allow_mirror={i.allow_mirror} allow_restart={i.allow_restart}"
            f" started_by={i.started_by}",
        ]
        if self.servers:
            for link in self.servers.values():
                age = time.time() - link.since
                lines.append(f"  connected: kaimon server pid {link.server_pid} ({age:.0f} s ago)")
        else:
            lines.append("  no kaimon server has connected yet (start one with `kaimon serve`)")
        return "\n".join(lines)


_gate: Gate | None = None


def current_gate(shell: Any | None = None) -> Gate:
    """The gate of the running kernel, created on first use."""
    global _gate
    if _gate is None:
        if shell is None:
            from IPython import get_ipython

            shell = get_ipython()
        if shell is None:
            raise KaimonError("kaimon's gate runs inside an IPython kernel; none is running here")
        _gate = Gate(shell)
        from ._magics import KaimonMagics  # serving from code brings %kaimon too

        shell.register_magics(KaimonMagics)
    return _gate


def serve(
    *,
    tools: Iterable[GateTool] = (),
    namespace: str | None = None,
    label: str | None = None,
    description: str = "",
    allow_mirror: bool = True,
    allow_restart: bool = True,
    promote_after: float | None = None,
) -> SessionInfo:
    """Share this kernel with agents: the kaimon server will list it and run code in it.

    ``tools`` are :class:`GateTool` s the agent sees as ``<namespace>_<name>``.
    ``namespace`` prefixes the session's tool names (default: the working directory's name);
    ``label`` is the name agents use to pick the session (default: the namespace).
    ``allow_mirror`` / ``allow_restart`` say whether an agent may turn on mirroring or
    restart the kernel. ``promote_after`` (seconds) overrides the server's for this session.
    Calling it again updates the session and keeps its key.
    """
    return current_gate().serve(
        tools=tools,
        namespace=namespace,
        label=label,
        description=description,
        allow_mirror=allow_mirror,
        allow_restart=allow_restart,
        promote_after=promote_after,
    )


def stop() -> bool:
    """Withdraw this kernel from agents. Returns whether it was being served."""
    return current_gate().stop()


def register(*tools: GateTool) -> None:
    """Add or replace tools of this kernel's session; connected agents see the change."""
    current_gate().tools.add(*check_tools(tools))


def unregister(*names: str) -> list[str]:
    """Remove tools by name; returns the names that were registered."""
    return current_gate().tools.remove(*names)


def list_tools() -> list[GateTool]:
    """The tools this kernel serves."""
    return current_gate().tools.list()


def tool(fn: Any = None, *, name: str | None = None, timeout: float | None = None) -> Any:
    """Decorator: register a function as a tool of this kernel (``@tool`` or ``@tool(name=…)``)."""

    def wrap(f: Any) -> Any:
        register(GateTool(name or f.__name__, f, timeout=timeout))
        return f

    return wrap(fn) if fn is not None else wrap
