"""The gate: makes the kernel it runs in a session that the kaimon server can reach.

Serving writes a session file (0600) next to the kernel's connection file and answers the
server on the :data:`~kaimon_kernel._protocol.COMM_TARGET` comm. Nothing new is bound: the
server talks to the kernel over the kernel's own channels.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import platform
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from ipykernel.kernelbase import Kernel
from pydantic import ValidationError

from .._errors import KaimonError, ProtocolMismatch
from .._paths import resume_file_for, sessions_dir, write_private
from .._protocol import (
    COMM_TARGET,
    PROTOCOL_FEATURES,
    PROTOCOL_VERSION,
    Ack,
    CallTool,
    CancelCall,
    CancelEval,
    EvalCancelled,
    EvalQuery,
    EvalRecords,
    Hello,
    InfoQuery,
    InfoReply,
    JobPromoted,
    PanelUpdate,
    ProcessIdentity,
    Refused,
    Reply,
    Request,
    ResumeMarker,
    ServerCall,
    ServerCallResult,
    ServerMessage,
    SessionChanged,
    SessionInfo,
    SetInfo,
    SetOption,
    TextBlock,
    ToolProgress,
    ToolResult,
    ToolsChanged,
    TopicEvent,
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


#: How often, at most, broadcasts look for servers whose process is gone.
PRUNE_INTERVAL = 1.0
#: A marked kernel that exited longer ago than this is not restarted by its manager: a kernel
#: starting on its connection file now is another one.
RESUME_WINDOW = 300.0


@dataclass
class ServerLink:
    """A kaimon server that opened the gate's comm."""

    server: ProcessIdentity
    since: float
    comm: Any
    #: The optional protocol parts both sides speak.
    features: frozenset[str] = PROTOCOL_FEATURES
    #: The kernel subshell its messages come through (ipykernel 7), if any.
    subshell_id: str | None = None

    @property
    def server_pid(self) -> int:
        return self.server.pid


#: Every request a server may send, by its ``type``; ``Gate._on_<type>`` handles it.
REQUESTS: dict[str, type[Request]] = {
    cls.model_fields["type"].default: cls
    for cls in get_args(get_args(ServerMessage)[0])
    if cls is not Hello  # the comm_open, answered by the comm target itself
}


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
    """Serve again, with the same key and label, a kernel restarted while it was served.

    Only the kernel that was served: its marker names the process that started it (its
    kernel manager), which starts the restarted kernel too. A kernel another process started
    on the same connection file is not served, and the stale marker goes."""
    try:
        path = resume_file_for(_connection_file())
        marker = ResumeMarker.model_validate_json(path.read_text())
    except (KaimonError, OSError, ValueError):
        return None
    why = _not_the_served_kernel(marker)
    if why:
        logger.info("kaimon: not serving again (%s)", why)
        path.unlink(missing_ok=True)
        return None
    return current_gate(shell).serve_as(marker)


def _not_the_served_kernel(marker: ResumeMarker) -> str:
    """Why this kernel is not a restart of the one ``marker`` was written for ('' if it is)."""
    parent = ProcessIdentity.parent_of_current()
    if marker.parent is None or parent is None:
        return "the marker does not say which process started the served kernel"
    if parent.pid != marker.parent.pid or not marker.parent.alive():
        return f"started by pid {parent.pid}, the served kernel by pid {marker.parent.pid}"
    if marker.exited_at is not None and time.time() - marker.exited_at > RESUME_WINDOW:
        return f"the served kernel exited {time.time() - marker.exited_at:.0f} s ago"
    return ""


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
        self._identity = ProcessIdentity.current()
        self._pruned_at = 0.0
        self.evals = EvalTracker(shell, self._broadcast)
        set_tracker(self.evals)
        self.view = LiveView(shell)
        self.evals.view = self.view
        # ipykernel's way: one handler per message type, found by name
        self._handlers: dict[str, Any] = {t: getattr(self, f"_on_{t}") for t in REQUESTS}
        self._server_calls: dict[str, Future[ServerCallResult]] = {}
        #: Called as listener(topic, data, session) for each server event (extensions).
        self.event_listeners: list[Any] = []
        atexit.register(self._at_exit)

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
        started_by: Literal["person", "agent", "extension"] = "person",
        key: str | None = None,
        tools: Iterable[GateTool] = (),
        promote_after: float | None = None,
    ) -> SessionInfo:
        self._register_target()
        new_tools = check_tools(tools)
        session_id = self.info.session_id if self.info else uuid.uuid4().hex
        ns = namespace or (self.info.namespace if self.info else default_namespace())
        self._publish(
            SessionInfo(
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
                kernel=self._identity,
            )
        )
        _install_resume_hook(self.shell)
        if new_tools:
            self.tools.add(*new_tools)
        assert self.info is not None
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

    def _publish(self, info: SessionInfo) -> None:
        """Make ``info`` the session's: its files, and every connected server, know it."""
        previous, self.info = self.info, info
        write_private(session_file_for(info.key), info.model_dump_json(indent=1))
        marker = ResumeMarker(**info.model_dump(), parent=ProcessIdentity.parent_of_current())
        write_private(resume_file_for(info.connection_file), marker.model_dump_json())
        if previous is not None and previous != info:
            self._broadcast(SessionChanged(session=info), feature="session_changed")

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

    def _at_exit(self) -> None:
        """The kernel exits: its session ends; the marker says when (a restart comes soon)."""
        if self.info is None:
            return
        self._remove_session_file()
        path = resume_file_for(self.info.connection_file)
        try:
            marker = ResumeMarker.model_validate_json(path.read_text())
            marker.exited_at = time.time()
            write_private(path, marker.model_dump_json())
        except (OSError, ValueError):
            pass

    def _register_target(self) -> None:
        if self._registered:
            return
        kernel = getattr(self.shell, "kernel", None)
        comm_manager = getattr(kernel, "comm_manager", None)
        if comm_manager is None:
            raise KaimonError("this IPython shell has no Jupyter kernel; the gate needs one")
        comm_manager.register_target(COMM_TARGET, self._on_comm_open)
        self._registered = True

    # -- the comm ----------------------------------------------------------------------------

    def _on_comm_open(self, comm: Any, msg: dict[str, Any]) -> None:
        data = msg["content"].get("data") or {}
        request_id = str(data.get("id", "")) if isinstance(data, dict) else ""
        try:
            if not isinstance(data, dict) or data.get("type") != "hello":
                raise ValueError("a kaimon comm must open with a hello")
            # the version first: a peer of another major may not even parse
            check_protocol(data.get("protocol_version", "unknown"), who="the kaimon server")
            hello = parse_server_message(data)
            if self.info is None:
                raise KaimonError("this kernel is not served (run %kaimon serve)")
        except (ProtocolMismatch, KaimonError, ValueError) as err:
            reason = str(err)
            send(comm, Refused(request_id=request_id, reason=reason, error=reason))
            comm.close()
            return
        assert isinstance(hello, Hello)
        features = frozenset(hello.features) & PROTOCOL_FEATURES
        subshell_id = (msg.get("header") or {}).get("subshell_id")
        link = ServerLink(hello.server, time.time(), comm, features, subshell_id)
        self.servers[comm.comm_id] = link
        comm.on_close(lambda _msg: self.servers.pop(comm.comm_id, None))
        comm.on_msg(lambda msg: self._on_comm_msg(link, msg))
        welcome = Welcome(
            request_id=hello.id,
            session=self.info,
            tools=self.tools.specs(),
            kernel=self._identity,
        )
        send(comm, welcome)

    def _on_comm_msg(self, link: ServerLink, msg: dict[str, Any]) -> None:
        """Dispatch one request to its handler; whatever happens, the server gets an answer."""
        data = msg["content"].get("data") or {}
        try:
            request = parse_server_message(data)
        except ValidationError as err:
            kind = data.get("type") if isinstance(data, dict) else None
            request_id = data.get("id") if isinstance(data, dict) else None
            logger.warning("kaimon: cannot read a %r message from the server", kind)
            if request_id:
                error = (
                    f"this gate (protocol {PROTOCOL_VERSION}) does not know {kind!r} requests"
                    if kind not in REQUESTS
                    else f"malformed {kind!r} request: {err}"
                )
                send(link.comm, Ack(request_id=str(request_id), ok=False, error=error))
            return
        kind: str = request.type  # type: ignore[attr-defined]
        try:
            reply = self._handlers[kind](link, request)
        except Exception as err:
            logger.exception("kaimon: handling a %s request failed", kind)
            reply = Ack(request_id=request.id, ok=False, error=f"{type(err).__name__}: {err}")
        if reply is not None:
            send(link.comm, reply)

    # -- one handler per request type (a reply, or None when the answer comes later) ---------

    def _on_call_tool(self, link: ServerLink, request: CallTool) -> Reply | None:
        def send_progress(text: str, value: float | None, total: float | None) -> None:
            update = ToolProgress(call_id=request.id, message=text, progress=value, total=total)
            send(link.comm, update)

        call = CallContext(request.id, send_progress)
        self._calls[request.id] = call

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
            except Exception as err:  # run_call answers the tool's own errors; this is ours
                logger.exception("kaimon: tool call %s failed", request.name)
                text = f"{request.name} failed in the gate: {type(err).__name__}: {err}"
                result = ToolResult(
                    call_id=request.id, content=[TextBlock(text=text)], is_error=True
                )
            finally:
                self._calls.pop(request.id, None)
            send(link.comm, result)

        # A worker thread: a long tool never holds up the comm (cancel must get through).
        threading.Thread(target=work, name=f"kaimon-tool-{request.name}", daemon=True).start()
        return None

    def _on_cancel_call(self, link: ServerLink, request: CancelCall) -> Reply:
        call = self._calls.get(request.call_id)
        if call is None:
            return Ack(request_id=request.id, ok=False, error="no such call runs (it ended)")
        call.cancelled.set()
        return Ack(request_id=request.id)

    def _on_cancel_eval(self, link: ServerLink, request: CancelEval) -> Reply:
        state = self.evals.cancel(request.msg_id)
        self.view.job_cancelled(request.msg_id)
        ev = self.evals.recent.get(request.msg_id)
        status = ev.status if ev is not None and state == "finished" else None
        return EvalCancelled(
            request_id=request.id,
            msg_id=request.msg_id,
            state=state,
            status=status,  # type: ignore[arg-type]
        )

    def _on_eval_query(self, link: ServerLink, request: EvalQuery) -> Reply:
        return EvalRecords(request_id=request.id, records=self.evals.query(request.msg_ids))

    def _on_job_promoted(self, link: ServerLink, request: JobPromoted) -> Reply:
        ev = self.evals.recent.get(request.msg_id)
        if ev is None or ev.status == "running":  # not one that ended as it was promoted
            self.view.job_promoted(request.msg_id, request.eval_id)
        return Ack(request_id=request.id)

    def _on_server_call_result(self, link: ServerLink, request: ServerCallResult) -> None:
        waiter = self._server_calls.get(request.call_id)
        if waiter is not None:
            with contextlib.suppress(InvalidStateError):  # a second answer: the first counts
                waiter.set_result(request)

    def call_server(
        self, name: str, arguments: dict[str, Any], timeout: float, *, listing: bool = False
    ) -> ServerCallResult:
        """Ask a connected server to call tool ``name`` (or list its tools); waits for it."""
        links = [
            link
            for link in self.live_servers(at_most_every=PRUNE_INTERVAL)
            if "server_calls" in link.features
        ]
        if not links:
            raise KaimonError(
                "no kaimon server is connected to this kernel (or none is new enough to take "
                "calls from it): serve it (`%kaimon serve`) and let an agent's server connect"
            )
        link = max(links, key=lambda link: link.since)
        call = ServerCall(
            name=name,
            arguments=arguments,
            timeout=timeout,
            listing=listing,
            from_main_thread=threading.current_thread() is threading.main_thread(),
        )
        waiter: Future[ServerCallResult] = Future()
        self._server_calls[call.call_id] = waiter
        try:
            send(link.comm, call)
            try:  # the server enforces the timeout itself; this margin covers the way back
                return waiter.result(timeout + 5)
            except FutureTimeout:
                raise KaimonError(
                    f"the kaimon server (pid {link.server_pid}) did not answer the call of "
                    f"{name or 'its tool list'} within {timeout:g} s"
                ) from None
        finally:
            self._server_calls.pop(call.call_id, None)

    def push_panel(self, values: dict[str, Any]) -> None:
        """Send panel state (JSON values already) to every connected server."""
        self._broadcast(PanelUpdate(values=values), feature="panel")

    def _on_event(self, link: ServerLink, request: TopicEvent) -> Reply:
        """Hand a server event to the listeners (an extension's on_event), off this thread."""
        for listener in list(self.event_listeners):
            threading.Thread(
                target=_call_listener,
                args=(listener, request.topic, request.data, request.session),
                name="kaimon-event",
                daemon=True,
            ).start()
        return Ack(request_id=request.id)

    def _on_set_option(self, link: ServerLink, request: SetOption) -> Reply:
        if self.info is None:
            return Ack(request_id=request.id, ok=False, error="this kernel is not served")
        if not self.info.allow_mirror:
            return Ack(
                request_id=request.id,
                ok=False,
                error="the person served this session with --no-mirror",
            )
        self.view.enabled = request.mirror
        return Ack(request_id=request.id)

    def _on_set_info(self, link: ServerLink, request: SetInfo) -> Reply:
        if self.info is None:
            return Ack(request_id=request.id, ok=False, error="this kernel is not served")
        changes: dict[str, str] = {}
        if request.label is not None:
            changes["label"] = request.label.strip() or self.info.namespace  # "" clears
        if request.description is not None:
            changes["description"] = request.description.strip()
        self._publish(self.info.model_copy(update=changes))
        return InfoReply(request_id=request.id, session=self.info)

    def _on_info_query(self, link: ServerLink, request: InfoQuery) -> Reply:
        if self.info is None:
            return Ack(request_id=request.id, ok=False, error="this kernel is not served")
        return InfoReply(request_id=request.id, session=self.info)

    # -- to every server ---------------------------------------------------------------------

    def _broadcast_tools(self) -> None:
        self._broadcast(ToolsChanged(tools=self.tools.specs()))

    def _broadcast(self, message: Any, *, feature: str | None = None) -> None:
        """Send a protocol message to every connected server (that speaks ``feature``)."""
        if self.info is None:
            return
        for link in self.live_servers(at_most_every=PRUNE_INTERVAL):
            if feature is not None and feature not in link.features:
                continue
            try:
                send(link.comm, message)
            except Exception:
                logger.debug("sending %s failed", message.type, exc_info=True)

    def live_servers(self, at_most_every: float = 0.0) -> list[ServerLink]:
        """The connected servers, less those whose process is gone (their comm is closed).

        A server killed outright never closes its comm; this is how the gate forgets it.
        ``at_most_every`` (seconds) spares frequent callers the process lookups."""
        links = list(self.servers.values())
        now = time.monotonic()
        if now - self._pruned_at < at_most_every:
            return links
        self._pruned_at = now
        live = []
        for link in links:
            if link.server.alive():
                live.append(link)
                continue
            logger.info("kaimon: server pid %s is gone; forgetting it", link.server.pid)
            self.servers.pop(link.comm.comm_id, None)
            try:
                link.comm.close()
            except Exception:
                logger.debug("closing comm failed", exc_info=True)
            if link.subshell_id:
                _delete_subshell(link.subshell_id)
        return live

    def status_text(self) -> str:
        if self.info is None:
            return "kaimon: not serving. Run `%kaimon serve` to share this kernel with agents."
        i = self.info
        lines = [
            f"kaimon: serving session {i.key} (label {i.label!r}, namespace {i.namespace!r})",
            f"  session file:    {session_file_for(i.key)}",
            f"  connection file: {i.connection_file}",
            f"  allow_mirror={i.allow_mirror} allow_restart={i.allow_restart}"
            f" started_by={i.started_by}  protocol {PROTOCOL_VERSION}",
        ]
        servers = self.live_servers()
        if servers:
            for link in servers:
                age = time.time() - link.since
                lines.append(f"  connected: kaimon server pid {link.server_pid} ({age:.0f} s ago)")
        else:
            lines.append("  no kaimon server has connected yet (start one with `kaimon serve`)")
        return "\n".join(lines)


def _delete_subshell(subshell_id: str) -> None:
    """Ask this kernel, as any client would, to drop the subshell of a server that is gone
    (the server would have, had it closed cleanly). In a thread: it waits for the reply."""

    def work() -> None:
        from jupyter_client import BlockingKernelClient

        client = BlockingKernelClient(connection_file=_connection_file())
        try:
            client.load_connection_file()
            client.start_channels(shell=False, iopub=False, stdin=False, hb=False, control=True)
            msg = client.session.msg("delete_subshell_request", {"subshell_id": subshell_id})
            client.control_channel.send(msg)
            client.control_channel.get_msg(timeout=10)
        except Exception as err:
            logger.info("kaimon: could not delete subshell %s: %s", subshell_id, err)
        finally:
            client.stop_channels()

    threading.Thread(target=work, name="kaimon-drop-subshell", daemon=True).start()


def _call_listener(listener: Any, topic: str, data: dict[str, Any], session: str) -> None:
    try:
        listener(topic, data, session)
    except Exception:
        logger.warning("kaimon: an event listener failed on %r", topic, exc_info=True)


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


def tool(
    fn: Any = None,
    *,
    name: str | None = None,
    timeout: float | None = None,
    read_only: bool | None = None,
    destructive: bool | None = None,
    idempotent: bool | None = None,
    open_world: bool | None = None,
) -> Any:
    """Decorator: register a function as a tool of this kernel (``@tool`` or ``@tool(name=…)``).

    The keyword options are :class:`GateTool`'s."""

    def wrap(f: Any) -> Any:
        register(
            GateTool(
                name or f.__name__,
                f,
                timeout=timeout,
                read_only=read_only,
                destructive=destructive,
                idempotent=idempotent,
                open_world=open_world,
            )
        )
        return f

    return wrap(fn) if fn is not None else wrap
