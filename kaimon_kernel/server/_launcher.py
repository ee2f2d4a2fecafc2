"""Kernels the server starts itself (for an agent): ipykernel with the gate served at start."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from jupyter_client.connect import write_connection_file
from jupyter_client.launcher import launch_kernel

from .._errors import KaimonError
from .._paths import resume_file_for, sessions_dir, write_private
from ._discovery import Registry
from ._kernel import KernelSession, pid_alive

__all__ = ["Launcher", "OwnedKernel", "project_python", "reap_orphans"]

logger = logging.getLogger(__name__)

START_TIMEOUT = 60.0
PROBE_TIMEOUT = 60.0


@dataclass
class OwnedKernel:
    key: str
    process: subprocess.Popen[bytes]
    connection_file: str
    log_file: Path
    cwd: str
    python: str
    label: str | None


async def project_python(project: Path) -> tuple[str | None, str]:
    """The project's own interpreter when its ``.venv`` can run a kaimon kernel, and why.

    Runs that interpreter (which runs the project's code: ``.pth`` files, sitecustomize), so
    call it only for a project the person allowed. It does not block the event loop.
    """
    for candidate in (
        project / ".venv" / "bin" / "python",
        project / ".venv" / "Scripts" / "python.exe",
    ):
        if not candidate.exists():
            continue
        try:
            probe = await asyncio.create_subprocess_exec(
                str(candidate),
                "-c",
                "import ipykernel, kaimon_kernel",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError as err:
            return None, f"the project's .venv ({candidate}) could not be run: {err}"
        try:
            code = await asyncio.wait_for(probe.wait(), PROBE_TIMEOUT)
        except asyncio.TimeoutError:
            return None, (
                f"the project's .venv ({candidate}) did not answer within {PROBE_TIMEOUT:g} s"
            )
        finally:
            if probe.returncode is None:  # timed out, or the call was cancelled
                with contextlib.suppress(ProcessLookupError):
                    probe.kill()
                await probe.wait()
        if code == 0:
            return str(candidate), f"the project's .venv ({candidate})"
        return None, (
            f"the project's .venv ({candidate}) lacks ipykernel or kaimon-kernel "
            "(`pip install kaimon-kernel` there to use it)"
        )
    return None, "no project .venv"


class Launcher:
    """Starts kernels with the gate served and shuts them down when the server exits."""

    def __init__(self, registry: Registry, python: str | None = None) -> None:
        self.registry = registry
        self.python = python or sys.executable
        self.owned: dict[str, OwnedKernel] = {}

    async def start(
        self,
        cwd: str,
        *,
        name: str | None = None,
        python: str | None = None,
        key: str | None = None,
    ) -> KernelSession:
        """Start a kernel with the gate served in ``cwd``; returns once it answers."""
        key = key or uuid.uuid4().hex[:8]
        python = python or self.python
        connection_file, _ = write_connection_file(
            fname=str(Path(sessions_dir()).parent / f"kernel-kaimon-{key}.json"), ip="127.0.0.1"
        )
        log_file = sessions_dir() / f"kernel-{key}.log"
        env = dict(os.environ)
        env.update(
            KAIMON_AUTOSERVE="1",
            KAIMON_STARTED_BY="agent",
            KAIMON_SESSION_KEY=key,
        )
        if name:
            env["KAIMON_LABEL"] = name
        cmd = [python, "-m", "ipykernel_launcher", "-f", connection_file, "--ext=kaimon_kernel"]
        with open(log_file, "wb", opener=_private_opener) as log:
            # The kernel's own stdout must never reach ours: over stdio it is the MCP stream.
            process = launch_kernel(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
            )
        owned = OwnedKernel(key, process, connection_file, log_file, cwd, python, name)
        self.owned[key] = owned
        write_private(
            _owner_file(key),
            json.dumps(
                {
                    "server_pid": os.getpid(),
                    "kernel_pid": process.pid,
                    "connection_file": connection_file,
                }
            ),
        )
        session = await self._wait_served(owned)
        return session

    async def _wait_served(self, owned: OwnedKernel) -> KernelSession:
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        while True:
            session = await self.registry.wait_for(owned.key, 0.5)
            if session is not None:
                return session
            if owned.process.poll() is not None:
                self.owned.pop(owned.key, None)
                raise KaimonError(
                    f"the kernel exited with code {owned.process.returncode} before serving; "
                    f"its log ({owned.log_file}) ends with:\n{_tail(owned.log_file)}"
                )
            if asyncio.get_running_loop().time() > deadline:
                await self.shutdown(owned.key)
                raise KaimonError(
                    f"the kernel did not serve the gate within {START_TIMEOUT:.0f} s; "
                    f"log: {owned.log_file}"
                )

    async def restart(self, key: str) -> KernelSession:
        """A fresh kernel for an owned session: same key, label, directory and Python."""
        owned = self.owned[key]
        label = self.registry.sessions[key].info.label if key in self.registry.sessions else None
        await self.shutdown(key)
        return await self.start(owned.cwd, name=label or owned.label, python=owned.python, key=key)

    async def shutdown(self, key: str) -> None:
        owned = self.owned.pop(key, None)
        if owned is None:
            return
        # Withdraw the session first: if this server is killed midway, nothing stale is left
        # but the owner record, which the next server uses to stop the kernel.
        (sessions_dir() / f"session-{key}.json").unlink(missing_ok=True)
        resume_file_for(owned.connection_file).unlink(missing_ok=True)
        session = self.registry.sessions.get(key)
        if session is not None and session.state == "ready":
            with contextlib.suppress(Exception):
                await session.control_request("shutdown_request", {"restart": False}, timeout=2)
        try:
            await asyncio.wait_for(asyncio.to_thread(owned.process.wait), 3)
        except asyncio.TimeoutError:
            owned.process.kill()
            await asyncio.to_thread(owned.process.wait)
        with contextlib.suppress(OSError):
            os.unlink(owned.connection_file)
        _owner_file(key).unlink(missing_ok=True)
        await self.registry.scan()

    async def shutdown_all(self) -> None:
        await asyncio.gather(*(self.shutdown(k) for k in list(self.owned)), return_exceptions=True)


def _private_opener(path: str, flags: int) -> int:
    # 0600 whatever the umask, and also when the file is left from an earlier kernel.
    fd = os.open(path, flags, 0o600)
    if hasattr(os, "fchmod"):  # not on Windows
        os.fchmod(fd, 0o600)
    return fd


def _owner_file(key: str) -> Path:
    return sessions_dir() / f"owned-{key}.json"


def reap_orphans() -> list[int]:
    """Kill kernels whose starting server died without shutting them down; returns pids."""
    killed = []
    for path in sessions_dir().glob("owned-*.json"):
        try:
            record = json.loads(path.read_text())
            server_pid, kernel_pid = int(record["server_pid"]), int(record["kernel_pid"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if pid_alive(server_pid):
            continue  # another running server's kernel
        if pid_alive(kernel_pid):
            logger.warning("stopping kernel pid %s: the server that started it is gone", kernel_pid)
            with contextlib.suppress(OSError):
                os.kill(kernel_pid, signal.SIGKILL)
            killed.append(kernel_pid)
        with contextlib.suppress(OSError, KeyError):
            os.unlink(record["connection_file"])
        key = path.stem.removeprefix("owned-")
        (sessions_dir() / f"session-{key}.json").unlink(missing_ok=True)
        path.unlink(missing_ok=True)
    return killed


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
