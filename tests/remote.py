"""The person's side on a Jupyter Server: notebooks whose kernels run cells over the WebSocket.

A plain client (``websocket-client``, JSON framing), independent of kaimon's own transport.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import websocket
from conftest import DEADLINE, JupyterServer, free_port, wait_until


class RemoteNotebook:
    """A notebook session on ``server``: its kernel, driven like JupyterLab does."""

    def __init__(self, server: Any, path: str | None = "analysis.ipynb") -> None:
        self.server = server
        self.path = path
        if path is None:  # a gateway: a bare kernel, no notebook session
            self.kernel_id: str = server.api("POST", "/api/kernels", {"name": "python3"})["id"]
        else:
            model = server.api(
                "POST",
                "/api/sessions",
                {"path": path, "name": path, "type": "notebook", "kernel": {"name": "python3"}},
            )
            self.kernel_id = model["kernel"]["id"]
        self.key: str | None = None

    def run(self, code: str, timeout: float = DEADLINE) -> tuple[str, str]:
        """Run a cell; (status, what it printed or showed, as text)."""
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{self.server.port}{getattr(self.server, 'prefix', '')}"
            f"/api/kernels/{self.kernel_id}/channels"
            f"?session_id={uuid.uuid4().hex}",
            header=[f"Authorization: token {self.server.token}"],
            timeout=timeout,
        )
        msg_id = uuid.uuid4().hex
        ws.send(
            json.dumps(
                {
                    "channel": "shell",
                    "header": {
                        "msg_id": msg_id,
                        "msg_type": "execute_request",
                        "username": "person",
                        "session": uuid.uuid4().hex,
                        "version": "5.3",
                        "date": "",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "content": {"code": code, "silent": False, "store_history": True},
                }
            )
        )
        parts: list[str] = []
        status, idle = None, False
        deadline = time.monotonic() + timeout
        try:
            while status is None or not idle:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the cell did not finish within {timeout} s")
                raw = ws.recv()
                msg = json.loads(raw) if isinstance(raw, str) else None
                if msg is None or msg["parent_header"].get("msg_id") != msg_id:
                    continue
                kind, c = msg["msg_type"], msg["content"]
                if kind == "stream":
                    parts.append(c["text"])
                elif kind in ("execute_result", "display_data"):
                    parts.append(c["data"].get("text/plain", "") + "\n")
                elif kind == "error":
                    parts.append(f"{c['ename']}: {c['evalue']}\n")
                elif kind == "execute_reply":
                    status = c["status"]
                elif kind == "status" and c["execution_state"] == "idle":
                    idle = True
        finally:
            ws.close()
        return status, "".join(parts)

    def listen(self) -> Any:
        """A WebSocket on the kernel that sees its iopub, as the person's open notebook does."""
        return websocket.create_connection(
            f"ws://127.0.0.1:{self.server.port}{getattr(self.server, 'prefix', '')}"
            f"/api/kernels/{self.kernel_id}/channels?session_id={uuid.uuid4().hex}",
            header=[f"Authorization: token {self.server.token}"],
            timeout=DEADLINE,
        )

    def serve(self, args: str = "") -> str:
        status, out = self.run(f"%load_ext kaimon_kernel\n%kaimon serve {args}")
        assert status == "ok", out
        assert "serving session" in out, out
        self.key = out.split("serving session ", 1)[1].split()[0]
        return self.key

    def model(self) -> dict[str, Any]:
        return self.server.api("GET", f"/api/kernels/{self.kernel_id}")


class DelayingProxy:
    """A TCP proxy on loopback that adds ``delay`` seconds to every chunk, and can cut every
    connection (a dropped link). Bounded: it serves until :meth:`close`."""

    def __init__(self, target_port: int, delay: float = 0.0) -> None:
        self.target_port = target_port
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Drop every open connection (new ones are still accepted)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._closed = True
        try:  # wakes the accept() under way (a bare close does not, on Linux)
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self.cut()


@contextmanager
def env(**values: str | None) -> Iterator[None]:
    """Set (or, with None, remove) environment variables for a block."""
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class KernelGateway(JupyterServer):
    """A real Jupyter Kernel Gateway with token auth (KG_AUTH_TOKEN) that lists its kernels."""

    def __init__(self, root: Path) -> None:
        self.log = root / "kernel_gateway.log"
        self.port = free_port()
        self.token = "kgtoken0123456789"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kernel_gateway",
                f"--KernelGatewayApp.port={self.port}",
                "--KernelGatewayApp.ip=127.0.0.1",
                "--KernelGatewayApp.port_retries=0",
            ],
            cwd=root,
            env={**os.environ, "KG_AUTH_TOKEN": self.token, "KG_LIST_KERNELS": "True"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
        )
        wait_until(self._up, 60, "the kernel gateway")


class EnterpriseGateway(JupyterServer):
    """A real Jupyter Enterprise Gateway (its own venv: it needs jupyter_server 1), launching
    kernels with this Python (``kernelspecs`` holds a python3 spec that says so)."""

    def __init__(self, root: Path, jupyter: str) -> None:
        spec = root / "share" / "jupyter" / "kernels" / "python3"
        spec.mkdir(parents=True)
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        spec.joinpath("kernel.json").write_text(
            json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"})
        )
        self.log = root / "enterprise_gateway.log"
        self.port = free_port()
        self.token = "egtoken0123456789"
        self.proc = subprocess.Popen(
            [
                jupyter,
                "enterprisegateway",
                "--ip=127.0.0.1",
                f"--port={self.port}",
                "--port_retries=0",
                "--EnterpriseGatewayApp.unauthorized_users=[]",  # tests run as root
            ],
            cwd=root,
            env={
                **os.environ,
                "EG_AUTH_TOKEN": self.token,
                "EG_LIST_KERNELS": "True",
                "JUPYTER_PATH": str(root / "share" / "jupyter"),
            },
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
        )
        wait_until(self._up, 60, "the enterprise gateway")


class JupyterHub(JupyterServer):
    """A real JupyterHub (its own venv; configurable-http-proxy from npm) with a dummy
    authenticator and local single-user servers; alice's server runs, and ``token`` is an API
    token of alice's. ``api`` and the WebSocket go through the hub's proxy to her server."""

    def __init__(self, root: Path, bin_dir: Path) -> None:
        import urllib.request

        self.root = root
        self.log = root / "jupyterhub.log"
        self.port = free_port()
        self.prefix = "/user/alice"
        admin = "hubadmin0123456789"
        spec = root / "share" / "jupyter" / "kernels" / "python3"
        spec.mkdir(parents=True)
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        spec.joinpath("kernel.json").write_text(
            json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"})
        )
        (root / "notebooks").mkdir()
        config = {
            "ip": "127.0.0.1",
            "port": self.port,
            "hub_port": free_port(),
            "proxy_api": free_port(),
            "singleuser": str(bin_dir / "jupyterhub-singleuser"),
            "root": str(root / "notebooks"),
            "env": {
                k: os.environ[k]
                for k in ("PYTHONPATH", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR", "JUPYTER_CONFIG_DIR")
                if k in os.environ
            }
            | {"JUPYTER_PATH": str(root / "share" / "jupyter")},
            "admin": admin,
            "db": str(root / "hub.sqlite"),
        }
        (root / "jupyterhub_config.py").write_text(
            "import json\n"
            f"k = json.loads({json.dumps(json.dumps(config))})\n"
            "c.JupyterHub.ip = k['ip']\nc.JupyterHub.port = k['port']\n"
            "c.JupyterHub.hub_ip = '127.0.0.1'\nc.JupyterHub.hub_port = k['hub_port']\n"
            "c.ConfigurableHTTPProxy.api_url = f\"http://127.0.0.1:{k['proxy_api']}\"\n"
            "c.JupyterHub.authenticator_class = 'dummy'\nc.Authenticator.allow_all = True\n"
            "c.JupyterHub.spawner_class = 'simple'\n"
            "c.Spawner.cmd = [k['singleuser']]\n"
            "c.Spawner.args = ['--allow-root', '--ServerApp.root_dir=' + k['root']]\n"
            "c.Spawner.environment = k['env']\n"
            "c.Spawner.http_timeout = 60\n"
            "c.JupyterHub.db_url = 'sqlite:///' + k['db']\n"
            "c.JupyterHub.services = [{'name': 'test', 'api_token': k['admin']}]\n"
            "c.JupyterHub.load_roles = [{'name': 'test-admin', 'services': ['test'], "
            "'scopes': ['admin:users', 'admin:servers', 'tokens']}]\n"
        )
        self.proc = subprocess.Popen(
            [str(bin_dir / "jupyterhub"), "-f", str(root / "jupyterhub_config.py")],
            cwd=root,
            env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
        )
        wait_until(self._up, 60, "JupyterHub")

        def hub(method: str, path: str, body: Any = None) -> Any:
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.port}/hub/api{path}",
                method=method,
                data=json.dumps(body).encode() if body is not None else None,
                headers={"Authorization": f"token {admin}"},
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
            return json.loads(raw) if raw else None

        wait_until(lambda: _answers(hub), 60, "the hub's API")
        hub("POST", "/users/alice")
        hub("POST", "/users/alice/server")
        wait_until(
            lambda: hub("GET", "/users/alice")["servers"].get("", {}).get("ready"),
            90,
            "alice's server",
        )
        self.token = hub("POST", "/users/alice/tokens", {"note": "kaimon"})["token"]

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return super().api(method, self.prefix + path, body)


def _answers(hub: Any) -> bool:
    try:
        hub("GET", "/")
    except OSError:
        return False
    return True
