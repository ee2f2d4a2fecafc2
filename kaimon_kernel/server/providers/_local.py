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
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import watchfiles
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from pydantic import ValidationError

from ..._errors import KaimonError
from ..._paths import resume_file_for, sessions_dir, write_private
from ..._protocol import ProcessIdentity, SessionInfo
from ..._settings import LaunchSettings
from .._transport import ZmqTransport
from ._base import LaunchRequest

__all__ = ["LocalProvider", "ProcessIdentity", "pid_alive", "reap_orphans"]

logger = logging.getLogger(__name__)

GATE_EXTENSION = "--ext=kaimon_kernel"
ALIVE_REUSE = 0.5  # seconds a "the kernel runs" answer is reused on the hot path


def _process(identity: ProcessIdentity | None) -> psutil.Process | None:
    """The live process ``identity`` names, or None when it is gone or another one now."""
    if identity is None or identity.create_time is None or not identity.alive():
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


def _owner_file(key: str) -> Path:
    return sessions_dir() / f"owned-{key}.json"


class LocalProvider:
    """Kernels on this machine: session files, ``AsyncKernelManager``, psutil identities."""

    name = "local"

    def __init__(self, directory: Path | None = None, python: str | None = None) -> None:
        self.directory = directory or sessions_dir()
        self.python = python or sys.executable
        self.owned: dict[str, _Owned] = {}
        self._identities: dict[tuple[str, int], ProcessIdentity | None] = {}
        self._alive_at: dict[int, float] = {}
        self._me = ProcessIdentity.of(os.getpid())

    # -- discovery -------------------------------------------------------------------------

    def discover(self) -> dict[str, SessionInfo]:
        for marker in self.directory.glob("resume-*.json"):
            info = _read_session_file(marker)
            if info is None or not Path(info.connection_file).exists():
                marker.unlink(missing_ok=True)  # its kernel is gone for good
        found: dict[str, SessionInfo] = {}
        for path in sorted(self.directory.glob("session-*.json")):
            info = _read_session_file(path)
            if info is None:
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
        async for _ in watchfiles.awatch(self.directory, debounce=50, step=250, recursive=False):
            await changed()

    def connect(self, info: SessionInfo) -> ZmqTransport:
        try:
            with open(info.connection_file) as f:
                return ZmqTransport(json.load(f))
        except (OSError, ValueError) as err:
            raise KaimonError(
                f"cannot read the connection file {info.connection_file}: {err}"
            ) from None

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
        manager = _KaimonKernelManager(
            connection_file=str(self.directory.parent / f"kernel-kaimon-{key}.json"),
            ip="127.0.0.1",
        )
        manager.spec = KernelSpec(
            argv=[python, "-m", "ipykernel_launcher", "-f", "{connection_file}", GATE_EXTENSION],
            display_name="Python 3 (Kaimon)",
            language="python",
            interrupt_mode="signal",
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
                proc.kill()
                proc.wait(3)
            stopped.append(proc.pid)
        connection_file = record.get("connection_file")
        if isinstance(connection_file, str):
            with contextlib.suppress(OSError):
                os.unlink(connection_file)
        key = path.stem.removeprefix("owned-")
        (directory / f"session-{key}.json").unlink(missing_ok=True)
        path.unlink(missing_ok=True)
    return stopped


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
