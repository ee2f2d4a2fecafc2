"""Shared fixtures: isolated Jupyter dirs, the person's kernels, kaimon servers over MCP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

# Isolate every Jupyter/IPython location before anything reads them; subprocesses inherit it.
_ROOT = Path(tempfile.mkdtemp(prefix="kaimon-tests-"))
for _name in ("JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR", "IPYTHONDIR"):
    os.environ[_name] = str(_ROOT / _name.lower())
    Path(os.environ[_name]).mkdir(parents=True, exist_ok=True)
os.environ.pop("KAIMON_TOKEN", None)
os.environ["JUPYTER_PLATFORM_DIRS"] = "1"

from jupyter_client.manager import KernelManager  # noqa: E402
from mcp import Client, StdioServerParameters  # noqa: E402

DEADLINE = 30.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def sessions_dir() -> Path:
    return Path(os.environ["JUPYTER_RUNTIME_DIR"]) / "kaimon"


def wait_until(predicate: Any, timeout: float = DEADLINE, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def eventually(
    predicate: Any, what: str, timeout: float = DEADLINE, interval: float = 0.1
) -> Any:
    """Until ``predicate()`` (awaited when it returns a coroutine) is truthy; its value.
    An AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


class PersonKernel:
    """A real ipykernel driven like a frontend would: the person's side."""

    def __init__(self, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.km = KernelManager(kernel_name="python3")
        kwargs: dict[str, Any] = {}
        if cwd is not None:
            kwargs["cwd"] = str(cwd)
        if env:
            kwargs["env"] = {**os.environ, **env}
        self.km.start_kernel(**kwargs)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=DEADLINE)
        self.key: str | None = None

    @property
    def pid(self) -> int:
        return self.km.provisioner.process.pid  # type: ignore[union-attr]

    def run(self, code: str, timeout: float = DEADLINE) -> tuple[str, str]:
        """Run a cell; returns (status, everything it printed/showed as text)."""
        parts: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            c = msg["content"]
            if msg["msg_type"] == "stream":
                parts.append(c["text"])
            elif msg["msg_type"] in ("execute_result", "display_data"):
                parts.append(c["data"].get("text/plain", "") + "\n")
            elif msg["msg_type"] == "error":
                parts.append(f"{c['ename']}: {c['evalue']}\n")

        reply = self.kc.execute_interactive(code, timeout=timeout, output_hook=hook)
        return reply["content"]["status"], "".join(parts)

    def serve(self, args: str = "") -> str:
        status, out = self.run(f"%load_ext kaimon_kernel\n%kaimon serve {args}")
        assert status == "ok", out
        assert "serving session" in out, out
        self.key = out.split("serving session ", 1)[1].split()[0]
        return self.key

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.kc.stop_channels()
        with contextlib.suppress(Exception):
            self.km.shutdown_kernel(now=True)


@pytest.fixture
def person() -> Iterator[PersonKernel]:
    kernel = PersonKernel()
    kernel.serve("--label person")
    yield kernel
    kernel.shutdown()


@pytest.fixture
def make_person() -> Iterator[Any]:
    kernels: list[PersonKernel] = []

    def make(args: str = "", serve: bool = True, **kwargs: Any) -> PersonKernel:
        k = PersonKernel(**kwargs)
        kernels.append(k)
        if serve:
            k.serve(args)
        return k

    yield make
    for k in kernels:
        k.shutdown()


def server_args(*extra: str) -> list[str]:
    return ["-m", "kaimon_kernel", "serve", *extra]


@contextlib.asynccontextmanager
async def stdio_client(*extra: str, cwd: Path | None = None, **kw: Any) -> AsyncIterator[Client]:
    params = StdioServerParameters(
        command=sys.executable,
        args=server_args(*extra),
        env=dict(os.environ),
        cwd=str(cwd) if cwd else None,
    )
    async with Client(params, read_timeout_seconds=120, **kw) as client:
        yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HttpServer:
    def __init__(self, *extra: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.proc = subprocess.Popen(
            [sys.executable, *server_args("--http", "--port", str(self.port), *extra)],
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        wait_until(self._listening, what="the HTTP server to listen")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited: {self.proc.stderr.read().decode()}")  # type: ignore[union-attr]
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def text_of(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


class JupyterServer:
    """A real Jupyter server (``app="jupyter_server"``) or JupyterLab (``app="jupyterlab"``)."""

    def __init__(self, root: Path, app: str = "jupyter_server", *extra: str) -> None:
        self.log = root / f"{app}.log"
        self.port = free_port()
        self.token = "jstoken0123456789"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                app,
                "--no-browser",
                f"--port={self.port}",
                f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={root}",
                "--ServerApp.ip=127.0.0.1",
                "--allow-root",
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
        )
        wait_until(self._up, 60, "the Jupyter server")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(self.log.read_text())
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def api(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def jupyter_server(tmp_path: Path) -> Iterator[JupyterServer]:
    """A real Jupyter server in ``tmp_path``, stopped after the test."""
    server = JupyterServer(tmp_path)
    yield server
    server.stop()
