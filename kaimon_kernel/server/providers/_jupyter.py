"""Kernels on a Jupyter Server (a remote ``jupyter lab``, JupyterHub, a kernel gateway).

The second implementation of the provider seam. Its :meth:`watch` loop polls ``/api/kernels``
and probes each kernel for the gate: the gate's own handshake (a comm to ``COMM_TARGET``)
answers with the session's :class:`SessionInfo`, or the kernel closes the comm (not served).
Nothing is guessed: a kernel that did not answer is never exposed. ``discover`` and ``alive``
answer from what the loop last saw; liveness is the server's word (the kernel is listed),
not a pid. Restart, interrupt and shutdown go through REST, so the kernel id stays and the
person's JupyterLab sees an ordinary "Restarting".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from jupyter_core.paths import jupyter_runtime_dir

from ..._errors import InvalidArgument, KaimonError, NotAllowed
from ..._protocol import COMM_TARGET, Hello, ProcessIdentity, Request, SessionInfo
from .._gate_client import GateClient
from .._jupyter_api import JupyterAPI, JupyterServerError, RemoteKernel
from .._ws_transport import V1_PROTOCOL, WebSocketTransport
from ._base import LaunchRequest

__all__ = ["JupyterServerProvider", "jupyter_owner", "through_jupyter_owner"]

logger = logging.getLogger(__name__)

POLL_INTERVAL = 2.0
PROBE_TIMEOUT = 10.0
PROBE_AGAIN_AFTER = 10.0  # a served kernel's activity is looked at again at most this often
KAIMON_KERNELSPEC = "python3-kaimon"
START_TIMEOUT = 60.0
OWNER_TIMEOUT = 3.0


class JupyterServerProvider:
    """Kernels on one Jupyter Server, reached by REST and the kernel WebSocket."""

    def __init__(
        self,
        api: JupyterAPI,
        *,
        poll_interval: float = POLL_INTERVAL,
        protocol: str | None = V1_PROTOCOL,
        projects: Sequence[str] = (),
    ) -> None:
        self.api = api
        #: Directories under the server's root where agents may start kernels (the person's
        #: kaimon.json); none: start_session is refused there.
        self.projects = [_clean(p, "projects") for p in projects]
        self.name = f"jupyter server {api.url}"
        self.poll_interval = poll_interval
        self.protocol = protocol
        #: What the last poll said went wrong (unreachable, token refused), or "".
        self.problem = ""
        self._kernels: dict[str, RemoteKernel] = {}
        self._served: dict[str, SessionInfo] = {}  # by kernel id
        self._probed: dict[str, tuple[str, float]] = {}  # kernel id: (last_activity, when)
        self._lost: dict[str, str] = {}  # kernel id: why its WebSocket is lost for good
        self._stale: set[str] = set()  # kernels to probe at the next poll whatever happened
        self._started: dict[str, str] = {}  # session key: kernel id (kernels we started)
        self._me = ProcessIdentity.current()
        self._looked = False
        self._announced: dict[str, SessionInfo] = {}

    def __repr__(self) -> str:
        return f"JupyterServerProvider({self.api.url!r})"

    # -- discovery -------------------------------------------------------------------------

    def where(self) -> list[str]:
        """The server (never its token), and what went wrong there."""
        return [self.api.url + (f" ({self.problem})" if self.problem else "")]

    def discover(self) -> dict[str, SessionInfo]:
        return {
            info.key: info
            for kernel_id, info in self._served.items()
            if kernel_id in self._kernels and kernel_id not in self._lost
        }

    async def watch(self, changed: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                if await self.refresh():
                    await changed()
            except Exception:  # one bad answer must not end the watch for good
                logger.exception("looking at %s failed", self.name)
            await asyncio.sleep(self.poll_interval)

    async def refresh(self) -> bool:
        """Poll the server and probe kernels that may have changed; whether what it
        announces changed since the last call (a lost WebSocket counts too)."""
        try:
            kernels = {k.id: k for k in await self.api.kernels()}
            if self.problem:
                logger.info("%s answers again", self.name)
            self.problem = ""
        except JupyterServerError as err:
            if str(err) != self.problem:
                logger.warning("%s", err)
            self.problem = str(err)
            return self._announce()
        self._kernels = kernels
        self._looked = True
        for gone in set(self._served) - set(kernels):
            del self._served[gone]
        for gone in set(self._probed) - set(kernels):
            del self._probed[gone]
        to_probe = [k for k in kernels.values() if self._should_probe(k)]
        if to_probe:
            paths: dict[str, str] = {}
            with contextlib.suppress(JupyterServerError):
                paths = await self.api.sessions()
            await asyncio.gather(*(self._probe_and_keep(k, paths) for k in to_probe))
        return self._announce()

    def _announce(self) -> bool:
        now = self.discover()
        changed, self._announced = now != self._announced, now
        return changed

    def pending(self) -> bool:
        """Not looked yet, or a listed kernel busy since before it could be probed (maybe
        with a job of ours)."""
        if not self._looked and not self.problem:
            return True
        return any(
            k.execution_state == "busy" and k.id not in self._probed for k in self._kernels.values()
        )

    def _should_probe(self, kernel: RemoteKernel) -> bool:
        if kernel.execution_state == "busy":
            return False  # the probe would queue behind the running cell (no subshells here)
        if kernel.id in self._stale:
            return True
        probed = self._probed.get(kernel.id)
        if probed is None:
            return True
        activity, at = probed
        if activity == kernel.last_activity:
            return False
        # a served kernel's activity is mostly the agent's own work: look again sometimes
        return kernel.id not in self._served or time.monotonic() - at > PROBE_AGAIN_AFTER

    async def _probe_and_keep(self, kernel: RemoteKernel, paths: dict[str, str]) -> None:
        self._stale.discard(kernel.id)
        try:
            info = await self.probe(kernel.id)
        except (asyncio.TimeoutError, KaimonError, ConnectionError) as err:
            # busy (the person's cell holds the shell) or unreachable: ask again later
            logger.debug("probing kernel %s on %s: %s", kernel.id, self.api.url, err)
            return
        self._probed[kernel.id] = (kernel.last_activity, time.monotonic())
        if info is None:
            self._served.pop(kernel.id, None)
            return
        self._lost.pop(kernel.id, None)
        self._served[kernel.id] = info.model_copy(
            update={
                "server_url": self.api.url,
                "kernel_id": kernel.id,
                "notebook_path": paths.get(kernel.id) or None,
            }
        )

    async def probe(self, kernel_id: str) -> SessionInfo | None:
        """The gate's own answer: its session, or None when the kernel did not serve."""
        transport = WebSocketTransport(
            self.api, kernel_id, protocol=self.protocol, reconnect_deadline=0
        )
        comm_id = uuid.uuid4().hex

        def send(message: Request) -> None:
            data = message.model_dump(mode="json")
            if isinstance(message, Hello):
                content = {"comm_id": comm_id, "target_name": COMM_TARGET, "data": data}
                transport.send("shell", transport.msg("comm_open", content))
            else:
                content = {"comm_id": comm_id, "data": data}
                transport.send("shell", transport.msg("comm_msg", content))

        gate = GateClient(send, name=f"kernel {kernel_id} on {self.api.url}", server=self._me)

        def on_message(channel: str, msg: dict[str, Any]) -> None:
            if channel != "iopub" or msg["msg_type"] not in ("comm_msg", "comm_close"):
                return
            content = transport.content(msg)
            if content.get("comm_id") != comm_id:
                return
            if msg["msg_type"] == "comm_close":
                gate.closed("not served")
            else:
                gate.feed(content.get("data") or {})

        transport.open(on_message)
        try:
            if not await transport.wait_connected(PROBE_TIMEOUT) or transport.lost:
                raise ConnectionError(transport.lost or "the WebSocket did not open")
            try:
                welcome = await gate.connect(PROBE_TIMEOUT)
            except KaimonError:
                if gate.state == "closed" and gate.problem == "not served":
                    return None  # no gate: the kernel closed the comm
                if gate.state == "refused":  # withdrawn (%kaimon stop), or another protocol
                    logger.info("kernel %s on %s: %s", kernel_id, self.api.url, gate.problem)
                    return None
                raise
            return welcome.session
        finally:
            if gate.state != "new" and gate.problem != "not served":
                # also when it timed out: the kernel takes the close after the queued open,
                # so the gate keeps no link to a probe that is gone
                with contextlib.suppress(Exception):
                    transport.send("shell", transport.msg("comm_close", {"comm_id": comm_id}))
                    await asyncio.sleep(0)
            transport.close()

    def connect(self, info: SessionInfo) -> WebSocketTransport:
        kernel_id = _kernel_id(info)

        def lost(reason: str) -> None:
            self._lost[kernel_id] = reason
            self._stale.add(kernel_id)  # probed again: the server may be back

        return WebSocketTransport(self.api, kernel_id, protocol=self.protocol, on_lost=lost)

    def alive(self, info: SessionInfo, *, fresh: bool = False) -> bool:
        """The server lists the kernel, and its gate is the one ``info`` names."""
        kernel_id = info.kernel_id
        if kernel_id is None or kernel_id not in self._kernels or kernel_id in self._lost:
            return False
        served = self._served.get(kernel_id)
        return served is None or (served.pid, served.session_id) == (info.pid, info.session_id)

    # -- what the agent asks for -----------------------------------------------------------

    def owns(self, key: str) -> bool:
        """Every served kernel here is restarted, interrupted and stopped through REST."""
        return any(info.key == key for info in self._served.values()) or key in self._started

    def _kernel_of(self, key: str) -> str:
        for kernel_id, info in self._served.items():
            if info.key == key:
                return kernel_id
        if key in self._started:
            return self._started[key]
        raise KaimonError(f"session {key} is not on {self.name}")

    async def interrupt_signal(self, info: SessionInfo) -> bool:
        await self.api.interrupt(_kernel_id(info))
        return True

    async def restart(self, key: str) -> None:
        kernel_id = self._kernel_of(key)
        old = self._served.pop(kernel_id, None)
        await self.api.restart(kernel_id)
        self._stale.add(kernel_id)
        if old is not None:
            self._probed.pop(kernel_id, None)

    async def shutdown(self, key: str) -> None:
        kernel_id = self._kernel_of(key)
        self._served.pop(kernel_id, None)
        self._started.pop(key, None)
        await self.api.shutdown(kernel_id)
        self._kernels.pop(kernel_id, None)

    def exited(self, key: str) -> str | None:
        """Why a kernel started here is gone before serving, or None."""
        kernel_id = self._started.get(key)
        if kernel_id is not None and self._kernels and kernel_id not in self._kernels:
            return f"the Jupyter server at {self.api.url} no longer lists kernel {kernel_id}"
        return None

    def log_file(self, key: str) -> str:
        return f"the Jupyter server's log ({self.api.url})"

    def allowed_path(self, project_path: str | None) -> str:
        """``project_path`` (relative to the server's root) if the person allowed it."""
        listing = "\n".join(f"  {p or '.'}" for p in self.projects) or "  (none)"
        if project_path is None:
            raise NotAllowed(
                f"Projects on {self.api.url} where you may start a session:\n{listing}"
            )
        path = _clean(project_path, "project_path")
        if not any(path == p or path.startswith(p + "/") or p == "" for p in self.projects):
            raise NotAllowed(
                f"{path!r} is not an allowed project on {self.api.url}. The person can allow "
                'it in kaimon.json: "jupyter": [{"url": ..., "projects": ["' + path + '"]}]. '
                f"Allowed:\n{listing}"
            )
        return path

    async def launch(self, request: LaunchRequest) -> None:
        """A kernel of the Kaimon kernelspec if the server has it, else ``python3``, in
        ``request.cwd`` (relative to the server's root); the gate is served under the key."""
        specs = await self.api.kernelspecs()
        name = KAIMON_KERNELSPEC if KAIMON_KERNELSPEC in specs else "python3"
        if name not in specs:
            raise KaimonError(
                f"{self.name} has neither the {KAIMON_KERNELSPEC} nor the python3 kernelspec "
                f"(it has: {', '.join(sorted(specs)) or 'none'})"
            )
        kernel = await self.api.start_kernel(name, request.cwd)
        self._started[request.key] = kernel.id
        try:
            await self._serve_in(kernel.id, request)
        except BaseException:
            self._started.pop(request.key, None)
            with contextlib.suppress(Exception):
                await self.api.shutdown(kernel.id)
            raise
        self._stale.add(kernel.id)
        await self.refresh()

    async def _serve_in(self, kernel_id: str, request: LaunchRequest) -> None:
        """Serve the gate in a fresh kernel by running one silent cell (no history)."""
        args = {"key": request.key, "started_by": "agent"}
        if request.label:
            args["label"] = request.label
        code = (
            "import kaimon_kernel as _k\n"
            "from kaimon_kernel.gate._gate import current_gate as _cg\n"
            f"_cg().serve(**{json.dumps(args)})\n"
            "del _k, _cg\n"
        )
        transport = WebSocketTransport(self.api, kernel_id, protocol=self.protocol)
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        errors: list[str] = []
        msg = transport.msg(
            "execute_request",
            {"code": code, "silent": True, "store_history": False, "allow_stdin": False},
        )

        def on_message(channel: str, reply: dict[str, Any]) -> None:
            if reply["parent_header"].get("msg_id") != msg["header"]["msg_id"]:
                return
            if reply["msg_type"] == "error":
                content = transport.content(reply)
                errors.append(f"{content.get('ename')}: {content.get('evalue')}")
            if channel == "shell" and not done.done():
                done.set_result(transport.content(reply))

        transport.open(on_message)
        try:
            transport.send("shell", msg)
            reply = await asyncio.wait_for(done, START_TIMEOUT)
        except asyncio.TimeoutError:
            raise KaimonError(
                f"the kernel started on {self.api.url} did not serve the gate within "
                f"{START_TIMEOUT:g} s"
            ) from None
        finally:
            transport.close()
        if reply.get("status") != "ok":
            raise KaimonError(
                f"serving the gate in the kernel started on {self.api.url} failed: "
                + ("; ".join(errors) or str(reply.get("evalue")))
                + " (is kaimon-kernel installed in that server's Python?)"
            )

    async def close(self) -> None:
        for key in list(self._started):
            with contextlib.suppress(Exception):
                await self.shutdown(key)
        await self.api.aclose()


def _kernel_id(info: SessionInfo) -> str:
    if not info.kernel_id:
        raise KaimonError(f"session {info.key} has no kernel id on its Jupyter server")
    return info.kernel_id


def _clean(path: str, what: str) -> str:
    """A server-relative directory as the REST API takes it ('' is the server's root)."""
    pure = PurePosixPath(path.strip().replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts:
        raise InvalidArgument(
            f"{what} {path!r} must be relative to the Jupyter server's root, without '..'"
        )
    return "" if str(pure) == "." else str(pure)


async def jupyter_owner(connection_file: str) -> tuple[JupyterAPI, str] | None:
    """The Jupyter Server on this machine that runs the kernel of ``connection_file`` (the
    person's JupyterLab), with the kernel's id there; None when no server claims it.

    Servers announce themselves in ``jpserver-*.json`` in the runtime dir (URL and token); a
    kernel they start has the connection file ``kernel-<id>.json``."""
    name = Path(connection_file).name
    if not (name.startswith("kernel-") and name.endswith(".json")):
        return None
    kernel_id = name[len("kernel-") : -len(".json")]
    for path in sorted(Path(jupyter_runtime_dir()).glob("jpserver-*.json")):
        try:
            record = json.loads(path.read_text())
            url, token = str(record["url"]), str(record.get("token") or "") or None
        except (OSError, ValueError, KeyError, TypeError):
            continue
        api = JupyterAPI(url, token, timeout=OWNER_TIMEOUT, token_source=str(path))
        try:
            await api.kernel(kernel_id)
        except KaimonError:
            await api.aclose()
            continue
        return api, kernel_id
    return None


async def through_jupyter_owner(connection_file: str, *, restart: bool) -> str | None:
    """Restart or shut down the kernel of ``connection_file`` through the Jupyter Server on
    this machine that runs it (so it counts no automatic restart, and the person's notebook
    shows an ordinary "Restarting"); that server's URL, or None when none claims it."""
    owner = await jupyter_owner(connection_file)
    if owner is None:
        return None
    api, kernel_id = owner
    try:
        if restart:
            await api.restart(kernel_id)
        else:
            await api.shutdown(kernel_id)
    finally:
        await api.aclose()
    return api.url
