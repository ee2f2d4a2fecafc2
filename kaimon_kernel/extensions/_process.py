"""An extension's process: an ipykernel that serves the gate with the extension's tools.

Started like the kernels agents ask for (jupyter_client's ``AsyncKernelManager``, the chosen
Python, stdout and stderr to a log), with ``--ext=kaimon_kernel.extensions._host`` instead of
the plain gate. Stopping is jupyter_client's: a shutdown request (the gate runs the manifest's
shutdown_function, bounded by :data:`~._host.SHUTDOWN_LIMIT`), then SIGTERM, then SIGKILL, to
its own child process. A record names the supervising server and the kernel by identity, so
that a server taking over from one that died stops the orphan it left (:func:`reap_orphans`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager

from .._paths import resume_file_for, sessions_dir, write_private
from .._protocol import ProcessIdentity
from ._host import KEY_ENV, LOG_ENV, NAME_ENV, PROJECT_ENV, SHUTDOWN_LIMIT
from ._registry import Extension

__all__ = ["KernelProcess", "log_file", "reap_orphans"]

logger = logging.getLogger(__name__)

HOST_EXTENSION = "--ext=kaimon_kernel.extensions._host"
#: After the shutdown hook's limit, how long the process may take to exit before SIGTERM.
EXIT_GRACE = 2.0
START_MARK = "=== kaimon: starting extension"


class _Manager(AsyncKernelManager):
    spec: KernelSpec | None = None

    @property
    def kernel_spec(self) -> KernelSpec | None:
        return self.spec


def log_file(name: str) -> Path:
    """Where an extension's output goes (appended; each start is marked)."""
    return sessions_dir() / f"extension-{name}.log"


def _record_file(key: str) -> Path:
    return sessions_dir() / f"ext-owned-{key}.json"


def tail_since_start(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines the extension wrote since its last start."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    start = text.rfind(START_MARK)
    if start >= 0:
        text = text[start:].split("\n", 1)[1] if "\n" in text[start:] else ""
    return "\n".join(text.splitlines()[-lines:])


class KernelProcess:
    """One start of an extension (see the module docstring)."""

    def __init__(self, ext: Extension, server: ProcessIdentity | None = None) -> None:
        if ext.manifest is None:
            raise ValueError(ext.problem or "no manifest")
        self.ext = ext
        self.manifest = ext.manifest
        self.server = server or ProcessIdentity.current()
        self.log_file = log_file(ext.name)
        self.manager: _Manager | None = None
        self._log: Any = None
        self._stopped = False

    @property
    def session_file(self) -> Path:
        return sessions_dir() / f"session-{self.ext.key}.json"

    @property
    def _process(self) -> subprocess.Popen[bytes] | None:
        return getattr(self.manager.provisioner, "process", None) if self.manager else None

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None else None

    async def start(self) -> None:
        key, python = self.ext.key, self.manifest.interpreter()
        self.session_file.unlink(missing_ok=True)  # a killed predecessor's
        env = {
            **os.environ,
            **self.manifest.environment(),
            PROJECT_ENV: str(self.manifest.project),
            KEY_ENV: key,
            NAME_ENV: self.ext.name,
            LOG_ENV: str(self.log_file),
        }
        fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._log = os.fdopen(fd, "ab", buffering=0)
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        self._log.write(f"{START_MARK} {self.ext.name} at {when} with {python} ===\n".encode())
        manager = self.manager = _Manager(
            connection_file=str(
                sessions_dir().parent / f"kernel-kaimon-ext-{key}-{secrets.token_hex(3)}.json"
            ),
            ip="127.0.0.1",
        )
        manager.spec = KernelSpec(
            # quiet=False: what its code prints reaches the log too (its recent errors)
            argv=[
                python,
                "-m",
                "ipykernel_launcher",
                "-f",
                "{connection_file}",
                HOST_EXTENSION,
                "--IPKernelApp.quiet=False",
            ],
            display_name=f"kaimon extension {self.ext.name}",
            language="python",
            interrupt_mode="signal",
        )
        await manager.start_kernel(
            env=env,
            cwd=str(self.manifest.project),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        kernel = ProcessIdentity.of(self.pid) if self.pid else None
        write_private(
            _record_file(key),
            json.dumps(
                {
                    "server": self.server.model_dump(),
                    "kernel": kernel.model_dump() if kernel else None,
                    "connection_file": manager.connection_file,
                }
            ),
        )

    def exit_code(self) -> int | None:
        process = self._process
        return process.poll() if process is not None else None

    def served(self) -> bool:
        return self.session_file.exists()

    async def stop(self) -> None:
        if self._stopped or self.manager is None:
            return
        self._stopped = True
        manager = self.manager
        # jupyter_client waits half of this before SIGTERM, the other half before SIGKILL.
        manager.shutdown_wait_time = 2 * (SHUTDOWN_LIMIT + EXIT_GRACE)
        try:
            await manager.shutdown_kernel(now=self.exit_code() is not None)
        except Exception:
            logger.warning("stopping extension %s failed", self.ext.name, exc_info=True)
            with contextlib.suppress(Exception):
                await manager.shutdown_kernel(now=True)
        self.session_file.unlink(missing_ok=True)
        resume_file_for(manager.connection_file).unlink(missing_ok=True)
        _record_file(self.ext.key).unlink(missing_ok=True)
        if self._log is not None:
            self._log.close()

    def recent_output(self) -> str:
        return tail_since_start(self.log_file)


def _identity(record: Any) -> ProcessIdentity | None:
    try:
        return ProcessIdentity.model_validate(record) if record else None
    except ValueError:
        return None


def reap_orphans() -> list[int]:
    """Stop extension processes whose supervising server is gone; returns their pids.

    Only a process whose identity (pid and creation time) matches the record is killed."""
    stopped = []
    for path in sessions_dir().glob("ext-owned-*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        server = _identity(record.get("server")) if isinstance(record, dict) else None
        if server is not None and server.alive():
            continue
        kernel = _identity(record.get("kernel")) if isinstance(record, dict) else None
        if kernel is not None and kernel.create_time is not None and kernel.alive():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(kernel.pid)
                logger.warning("stopping extension pid %s: its supervisor is gone", kernel.pid)
                proc.kill()
                proc.wait(3)
                stopped.append(kernel.pid)
        connection = record.get("connection_file") if isinstance(record, dict) else None
        if isinstance(connection, str):
            with contextlib.suppress(OSError):
                os.unlink(connection)
        key = path.stem.removeprefix("ext-owned-")
        (sessions_dir() / f"session-{key}.json").unlink(missing_ok=True)
        path.unlink(missing_ok=True)
    return stopped
