"""Kernels on this machine.

Served kernels announce themselves with session files in the runtime dir (watched with file
events). Kernels an agent asks for are started with jupyter_client's ``AsyncKernelManager``,
which knows the kernelspec's ``interrupt_mode``, restarts and connection files. A process is
known by its identity — pid plus creation time (psutil) — never by a bare pid, so a reused pid
is never signalled. This is the one module that signals processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import watchfiles
import zmq
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from pydantic import ValidationError

from ..._errors import KaimonError
from ..._paths import resume_file_for, sessions_dir, write_private
from ..._protocol import ProcessIdentity, SessionInfo
from ..._settings import LaunchSettings, load_settings
from .._launcher import kernel_prefix, supports_curve
from .._transport import ZmqTransport
from ._base import LaunchRequest

__all__ = ["LocalProvider", "ProcessIdentity", "pid_alive", "reap_orphans", "session_dirs"]

logger = logging.getLogger(__name__)

GATE_EXTENSION = "--ext=kaimon_kernel"
ALIVE_REUSE = 0.5  # seconds a "the kernel runs" answer is reused on the hot path
SSH_TIMEOUT = 20.0  # seconds to open the tunnels to a kernel on another machine
IPC_PATH_MAX = 107  # bytes of a unix socket's path (sun_path less its NUL)


def _process(identity: ProcessIdentity | None) -> psutil.Process | None:
    """The live process ``identity`` names, or None when it is gone or another one now (or
    on another machine: the same pid here is a stranger)."""
    if identity is None or identity.create_time is None or not identity.alive():
        return None
    if identity.host and identity.host != socket.gethostname():
        return None
    try:
        return psutil.Process(identity.pid)
    except psutil.Error:
        return None


def pid_alive(pid: int) -> bool:
    """Whether some live (non-zombie) process has ``pid``: only for cleaning stale files."""
    identity = ProcessIdentity.of(pid)
    return identity is not None and identity.alive()


def _read_session_file(path: Path) -> SessionInfo | None:
    try:
        return SessionInfo.model_validate_json(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError, ValueError) as err:
        logger.warning("ignoring unreadable session file %s: %s", path, err)
        return None


def session_dirs(runtime_dirs: list[Path] | None = None) -> list[Path]:
    """Where served kernels announce themselves: this process's runtime dir first, then the
    ``kaimon`` folder of each extra runtime dir (default: ``runtime_dirs`` from the settings).

    Clients that start the server without the person's ``JUPYTER_*`` variables (Codex, MCP
    Inspector 2.x) would otherwise miss kernels started with a non-default runtime dir.
    """
    extra = load_settings().runtime_dirs if runtime_dirs is None else runtime_dirs
    found = [sessions_dir()]
    for root in extra:
        path = Path(root) / "kaimon"
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as err:
            logger.warning("not watching %s for kernels: %s", path, err.strerror or err)
            continue
        if all(not path.samefile(seen) for seen in found):
            found.append(path)
    return found


class _KaimonKernelManager(AsyncKernelManager):
    """An AsyncKernelManager whose kernelspec is built here (the chosen Python, the gate)."""

    spec: KernelSpec | None = None

    @property
    def kernel_spec(self) -> KernelSpec | None:
        return self.spec


@dataclass
class _Owned:
    key: str
    manager: _KaimonKernelManager
    request: LaunchRequest
    log_file: Path
    log: Any  # kept open: a restart launches again with the same streams


def _endpoints(runtime: Path, key: str, *, sandboxed: bool) -> dict[str, str]:
    """Where a kernel listens: loopback TCP, or under a launcher (which may give the kernel a
    network of its own, as bwrap --unshare-net does) ipc sockets in the runtime dir."""
    if not sandboxed:
        return {"transport": "tcp", "ip": "127.0.0.1"}
    if sys.platform == "win32":
        raise KaimonError("kernel_launcher needs ipc sockets, which Windows lacks")
    ip = str(runtime / f"kaimon-ipc-{key}")
    if len(ip.encode()) + 7 > IPC_PATH_MAX:  # "-<port>" follows
        raise KaimonError(
            f"the runtime dir {runtime} is too long a path for the kernel's ipc sockets "
            f"({IPC_PATH_MAX} bytes at most); set JUPYTER_RUNTIME_DIR to a shorter one"
        )
    return {"transport": "ipc", "ip": ip}


_CHANNELS = ("shell", "iopub", "stdin", "hb", "control")


class _TunneledTransport(ZmqTransport):
    """A kernel's channels through the SSH process that forwards them (stopped with them)."""

    def __init__(self, connection: dict[str, Any], tunnel: subprocess.Popen[bytes]) -> None:
        super().__init__(connection)
        self._tunnel = tunnel

    def close(self) -> None:
        super().close()
        if self._tunnel.poll() is None:
            self._tunnel.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._tunnel.wait(3)


def _tunneled(connection: dict[str, Any], path: str) -> _TunneledTransport:
    """The kernel of ``connection`` reached through SSH: its ``"ssh"`` field names the server
    as ``jupyter console --ssh`` takes it (``user@host[:port]`` or a ~/.ssh/config alias), its
    optional ``"ssh_key"`` a key file. One ``ssh -N`` forwards the five ports to loopback here
    (jupyter_client's pexpect tunnels did not outlive the call that opened them here).
    Key-based login only: a password prompt would have no one to answer it (BatchMode)."""
    from jupyter_client.ssh.tunnel import select_random_ports

    server, key = str(connection["ssh"]), connection.get("ssh_key")
    host, _, port = server.partition(":")
    where = f"the kernel of {path} over SSH via {server}"
    local = select_random_ports(len(_CHANNELS))
    command = ["ssh", "-N", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes"]
    command += ["-o", f"ConnectTimeout={SSH_TIMEOUT:.0f}"]
    command += ["-p", port] if port else []
    command += ["-i", str(key)] if key else []
    for lport, channel in zip(local, _CHANNELS, strict=True):
        command += ["-L", f"127.0.0.1:{lport}:{connection['ip']}:{connection[channel + '_port']}"]
    with tempfile.TemporaryFile() as errors:  # a pipe nobody reads would fill, stalling ssh
        try:
            tunnel = subprocess.Popen(
                [*command, host], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors
            )
        except OSError as err:
            raise KaimonError(f"cannot reach {where}: ssh could not be run: {err}") from None
        deadline = time.monotonic() + SSH_TIMEOUT
        while not all(_listening(p) for p in local):
            if tunnel.poll() is not None:
                errors.seek(0)
                said = errors.read().decode(errors="replace").strip() or f"code {tunnel.returncode}"
                raise KaimonError(f"cannot reach {where}: ssh exited: {said}")
            if time.monotonic() > deadline:
                tunnel.kill()
                tunnel.wait()
                raise KaimonError(f"cannot reach {where}: no tunnel within {SSH_TIMEOUT:g} s")
            time.sleep(0.02)
    ports = {f"{c}_port": p for c, p in zip(_CHANNELS, local, strict=True)}
    forwarded = {**connection, "ip": "127.0.0.1", "transport": "tcp", **ports}
    return _TunneledTransport(forwarded, tunnel)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _owner_file(key: str) -> Path:
    return sessions_dir() / f"owned-{key}.json"


class LocalProvider:
    """Kernels on this machine: session files, ``AsyncKernelManager``, psutil identities."""

    name = "local"

    def __init__(
        self,
        directory: Path | None = None,
        python: str | None = None,
        runtime_dirs: list[Path] | None = None,
    ) -> None:
        self.directory = directory or sessions_dir()  # where the kernels it starts announce
        # Watched for served kernels: the runtime dir, and kaimon.json's runtime_dirs.
        self.directories = [self.directory] if directory is not None else session_dirs(runtime_dirs)
        self.python = python or sys.executable
        self.owned: dict[str, _Owned] = {}
        self._identities: dict[tuple[str, int], ProcessIdentity | None] = {}
        self._alive_at: dict[int, float] = {}
        self._me = ProcessIdentity.of(os.getpid())

    def where(self) -> list[str]:
        return [str(d) for d in self.directories]

    # -- discovery -------------------------------------------------------------------------

    def discover(self) -> dict[str, SessionInfo]:
        found: dict[str, SessionInfo] = {}
        for directory in self.directories:
            for marker in directory.glob("resume-*.json"):
                info = _read_session_file(marker)
                if info is None or not Path(info.connection_file).exists():
                    marker.unlink(missing_ok=True)  # its kernel is gone for good
            for path in sorted(directory.glob("session-*.json")):
                info = _read_session_file(path)
                if info is None or info.key in found:
                    continue
                if not self.alive(info):
                    logger.info("removing stale session file %s (pid %s is gone)", path, info.pid)
                    path.unlink(missing_ok=True)
                    continue
                found[info.key] = info
        return found

    async def refresh(self) -> bool:
        return False  # discover() reads the session files each time

    def pending(self) -> bool:
        return False  # every served kernel has its session file

    async def watch(self, changed: Callable[[], Awaitable[None]]) -> None:
        # step: how often the watcher thread looks for events (a wake-up each time when idle)
        async for _ in watchfiles.awatch(*self.directories, debounce=50, step=250, recursive=False):
            await changed()

    def connect(self, info: SessionInfo) -> ZmqTransport:
        try:
            with open(info.connection_file) as f:
                connection = json.load(f)
        except (OSError, ValueError) as err:
            raise KaimonError(
                f"cannot read the connection file {info.connection_file}: {err}"
            ) from None
        if isinstance(connection, dict) and connection.get("ssh"):
            return _tunneled(connection, info.connection_file)
        return ZmqTransport(connection)

    def identity(self, info: SessionInfo) -> ProcessIdentity | None:
        """The identity of the kernel ``info`` names (the gate states it; else as first
        seen), None when it is gone."""
        cache_key = (info.key, info.pid)
        if cache_key not in self._identities:
            stated = info.kernel
            if stated is not None and stated.pid == info.pid and stated.create_time:
                self._identities[cache_key] = stated
            else:
                self._identities[cache_key] = ProcessIdentity.of(info.pid)
        return self._identities[cache_key]

    def alive(self, info: SessionInfo, *, fresh: bool = False) -> bool:
        """Whether the kernel runs; a recent answer is reused (every ex asks, and a psutil
        look costs 0.3 ms), unless ``fresh``. The registry's liveness loop asks fresh."""
        identity = self.identity(info)
        if identity is None:
            return False
        now = time.monotonic()
        seen = self._alive_at.get(identity.pid)
        if not fresh and seen is not None and now - seen < ALIVE_REUSE:
            return True
        if identity.alive():
            self._alive_at[identity.pid] = now
            return True
        self._alive_at.pop(identity.pid, None)
        return False

    # -- kernels this server starts --------------------------------------------------------

    def owns(self, key: str) -> bool:
        return key in self.owned

    async def launch(self, request: LaunchRequest) -> None:
        key = request.key
        python = request.python or self.python
        log_file = self.directory / f"kernel-{key}.log"
        env = dict(os.environ)
        launch = LaunchSettings(
            autoserve=True, started_by="agent", session_key=key, label=request.label
        )
        env.update(launch.to_env())
        runtime = self.directory.parent
        # read afresh, like the allowed projects: a launcher the person sets applies at once
        prefix = kernel_prefix(
            load_settings().kernel_launcher, project=request.cwd, runtime_dir=str(runtime)
        )
        # CurveZMQ keys in the connection file, where this ipykernel reads them
        encrypt = zmq.has("curve") and await supports_curve(python)
        manager = _KaimonKernelManager(
            connection_file=str(runtime / f"kernel-kaimon-{key}.json"),
            **({"transport_encryption": "required"} if encrypt else {}),
            **_endpoints(runtime, key, sandboxed=bool(prefix)),
        )
        manager.spec = KernelSpec(
            argv=[
                *prefix,
                python,
                "-m",
                "ipykernel_launcher",
                "-f",
                "{connection_file}",
                GATE_EXTENSION,
            ],
            display_name="Python 3 (Kaimon)",
            language="python",
            # a SIGINT to the process group would also end the launcher (bwrap dies of it);
            # an interrupt_request makes the kernel signal itself
            interrupt_mode="message" if prefix else "signal",
            metadata={"supported_encryption": ["curve"]} if encrypt else {},
        )
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.chmod(log_file, 0o600)
        log = os.fdopen(fd, "wb")
        try:
            # The kernel's own stdout must never reach ours: over stdio it is the MCP stream.
            await manager.start_kernel(
                env=env,
                cwd=request.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        except BaseException:
            log.close()
            raise
        self.owned[key] = _Owned(key, manager, request, log_file, log)
        self._write_owner_record(key)

    def exited(self, key: str) -> str | None:
        """Why an owned kernel exited before serving (its log's tail), or None if it runs."""
        owned = self.owned.get(key)
        if owned is None:
            return None
        process = getattr(owned.manager.provisioner, "process", None)
        code = process.poll() if process is not None else None
        if code is None:
            return None
        return f"the kernel exited with code {code}; its log ({owned.log_file}) ends with:\n" + (
            _tail(owned.log_file)
        )

    def log_file(self, key: str) -> Path | None:
        owned = self.owned.get(key)
        return owned.log_file if owned else None

    def _write_owner_record(self, key: str) -> None:
        owned = self.owned[key]
        process = getattr(owned.manager.provisioner, "process", None)
        kernel = ProcessIdentity.of(process.pid) if process is not None else None
        write_private(
            _owner_file(key),
            json.dumps(
                {
                    "server": self._me.model_dump() if self._me else None,
                    "kernel": kernel.model_dump() if kernel else None,
                    "connection_file": owned.manager.connection_file,
                    # the recorded process is the launcher (bwrap): the kernel is its child
                    "launcher": owned.manager.transport == "ipc",
                }
            ),
        )

    async def interrupt_signal(self, info: SessionInfo) -> bool:
        owned = self.owned.get(info.key)
        if owned is not None:
            await owned.manager.interrupt_kernel()
            return True
        proc = _process(self.identity(info))
        if proc is None or sys.platform == "win32":  # SIGINT would terminate it there
            return False
        proc.send_signal(signal.SIGINT)
        return True

    async def restart(self, key: str) -> None:
        owned = self.owned[key]
        resume_file_for(owned.manager.connection_file).unlink(missing_ok=True)
        (self.directory / f"session-{key}.json").unlink(missing_ok=True)
        await owned.manager.restart_kernel(now=False)
        self._write_owner_record(key)

    async def shutdown(self, key: str) -> None:
        owned = self.owned.pop(key, None)
        if owned is None:
            return
        # Withdraw the session first: if this server is killed midway, nothing stale is left
        # but the owner record, which the next server uses to stop the kernel.
        (self.directory / f"session-{key}.json").unlink(missing_ok=True)
        resume_file_for(owned.manager.connection_file).unlink(missing_ok=True)
        owned.manager.shutdown_wait_time = 3.0
        try:
            await owned.manager.shutdown_kernel(now=False)
        except Exception:
            logger.warning("stopping the kernel of session %s failed", key, exc_info=True)
            with contextlib.suppress(Exception):
                await owned.manager.shutdown_kernel(now=True)
        owned.log.close()
        _owner_file(key).unlink(missing_ok=True)

    async def close(self) -> None:
        await asyncio.gather(*(self.shutdown(k) for k in list(self.owned)), return_exceptions=True)


def _identity_from(record: Any) -> ProcessIdentity | None:
    if not isinstance(record, dict):
        return None
    try:
        return ProcessIdentity(pid=int(record["pid"]), create_time=float(record["create_time"]))
    except (KeyError, TypeError, ValueError):
        return None


def reap_orphans(directory: Path | None = None) -> list[int]:
    """Stop kernels whose starting server died without stopping them; returns their pids.

    Only a process whose identity matches the record (pid and creation time) is stopped: after
    a reboot the same pid belongs to someone else."""
    directory = directory or sessions_dir()
    stopped = []
    for path in directory.glob("owned-*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if not isinstance(record, dict):
            path.unlink(missing_ok=True)
            continue
        server = _identity_from(record.get("server"))
        if server is not None and server.alive():
            continue  # another running server's kernel
        proc = _process(_identity_from(record.get("kernel")))
        if proc is not None:
            logger.warning("stopping kernel pid %s: the server that started it is gone", proc.pid)
            with contextlib.suppress(psutil.Error):
                # under a launcher the kernel is a child, which may outlive its parent
                family = proc.children(recursive=True) if record.get("launcher") else []
                for member in [proc, *family]:
                    with contextlib.suppress(psutil.Error):
                        member.kill()
                psutil.wait_procs([proc, *family], timeout=3)
            stopped.append(proc.pid)
        connection_file = record.get("connection_file")
        if isinstance(connection_file, str):
            _remove_ipc_sockets(connection_file)
            with contextlib.suppress(OSError):
                os.unlink(connection_file)
        key = path.stem.removeprefix("owned-")
        (directory / f"session-{key}.json").unlink(missing_ok=True)
        path.unlink(missing_ok=True)
    return stopped


def _remove_ipc_sockets(connection_file: str) -> None:
    """The socket files of an ipc kernel (``<ip>-<port>``), which outlive a killed kernel."""
    try:
        info = json.loads(Path(connection_file).read_text())
    except (OSError, ValueError):
        return
    if not isinstance(info, dict) or info.get("transport") != "ipc":
        return
    for channel in _CHANNELS:
        with contextlib.suppress(OSError, TypeError):
            os.unlink(f"{info['ip']}-{info[channel + '_port']}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
