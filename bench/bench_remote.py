"""Kernels behind a real Jupyter Server: ex("1+1") through kaimon against a raw WebSocket
execute round trip on the same kernel (the floor for remote), a 10 MB print over the
WebSocket, and list_sessions with many remote sessions.

    python bench/bench_remote.py [--n 100] [--sessions 20]

Prints p50/p99 in ms and the ratio to the raw round trip (target <= 1.3x), the 10 MB print's
time and the servers' memory, and list_sessions' latency. Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from typing import Any

from _common import ROOT, http_client, http_server, interleaved, mcp_once, memory_mb, pct
from _common import print_table as table
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

JTOKEN = "bench-jupyter-token-0123"


class JupyterServer:
    """A real jupyter_server with token auth; its kernels write their files out of the local
    provider's sight (another runtime dir), as on another machine."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        root = ROOT / "jroot"
        root.mkdir(exist_ok=True)
        runtime = ROOT / "remote-runtime"
        runtime.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter_server",
                "--no-browser",
                f"--port={self.port}",
                f"--IdentityProvider.token={JTOKEN}",
                f"--ServerApp.root_dir={root}",
                "--ServerApp.ip=127.0.0.1",
                "--ServerApp.iopub_data_rate_limit=1e12",  # the 10 MB must pass
                "--allow-root",
            ],
            env={**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(600):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("the Jupyter server did not start")

    def api(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"token {JTOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


class RawWebSocket:
    """The floor: execute_request → execute_reply + iopub idle over the kernel's WebSocket
    (JSON framing), straight tornado, nothing of kaimon's."""

    def __init__(self, server: JupyterServer, kernel_id: str) -> None:
        self.url = (
            f"ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels"
            f"?session_id={uuid.uuid4().hex}"
        )
        self.session = uuid.uuid4().hex
        self.conn: Any = None

    async def __aenter__(self) -> RawWebSocket:
        request = HTTPRequest(self.url, headers={"Authorization": f"token {JTOKEN}"})
        self.conn = await websocket_connect(request, max_message_size=256 * 1024 * 1024)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.conn.close()

    async def run(self, code: str, silent: bool = False) -> str:
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "username": "bench",
            "session": self.session,
            "version": "5.3",
            "date": "",
        }
        content = {"code": code, "silent": silent, "store_history": not silent}
        msg = {"channel": "shell", "header": header, "parent_header": {}, "metadata": {}}
        await self.conn.write_message(json.dumps({**msg, "content": content}))
        answer, idle, reply = "", False, False
        while not (idle and reply):
            raw = await asyncio.wait_for(self.conn.read_message(), 60)
            if not isinstance(raw, str):
                continue
            m = json.loads(raw)
            if m["parent_header"].get("msg_id") != msg_id:
                continue
            kind = m["msg_type"]
            if kind == "execute_result":
                answer = m["content"]["data"].get("text/plain", "")
            elif kind == "error":
                raise RuntimeError(m["content"]["evalue"])
            reply = reply or kind == "execute_reply"
            idle = idle or (kind == "status" and m["content"]["execution_state"] == "idle")
        return answer

    async def once(self) -> float:
        t = time.perf_counter()
        assert await self.run("1+1") == "2"
        return time.perf_counter() - t


SERVE = "%load_ext kaimon_kernel\n%kaimon serve --label {label}"


async def start_served(server: JupyterServer, labels: list[str], parallel: int = 4) -> list[str]:
    """Notebook sessions on the server, each served by the person's cell; their kernel ids."""
    gate = asyncio.Semaphore(parallel)

    async def one(label: str) -> str:
        async with gate:
            model = await asyncio.to_thread(
                server.api,
                "POST",
                "api/sessions",
                {"path": f"{label}.ipynb", "type": "notebook", "kernel": {"name": "python3"}},
            )
            kernel_id = model["kernel"]["id"]
            async with RawWebSocket(server, kernel_id) as ws:
                await ws.run(SERVE.format(label=label))
            return kernel_id

    return await asyncio.gather(*(one(label) for label in labels))


async def main(n: int, sessions: int) -> None:
    server = JupyterServer()
    try:
        (kernel_id,) = await start_served(server, ["bench"])
        os.environ["JUPYTER_TOKEN"] = JTOKEN  # how kaimon serve gets it
        with http_server("--no-auto-start", "--jupyter", server.url) as (proc, url):
            async with http_client(url) as client, RawWebSocket(server, kernel_id) as raw:
                for _ in range(300):
                    listing = await client.call_tool("list_sessions", {})
                    rows = listing.structured_content["sessions"]
                    if rows and rows[0]["status"].startswith("idle"):
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise RuntimeError(f"the served kernel was not listed: {listing}")
                results = await interleaved(
                    {"raw WebSocket": raw.once, "kaimon ex (HTTP)": mcp_once(client)}, n
                )
                table("ex('1+1') to a kernel behind a Jupyter Server", results)

                kaimon_before = memory_mb(proc.pid, "VmRSS")
                jserver_before = memory_mb(server.proc.pid, "VmRSS")
                t = time.perf_counter()
                r = await client.call_tool("ex", {"code": "print('x' * 10_000_000)"})
                took = time.perf_counter() - t
                assert "x" in r.content[0].text
                t = time.perf_counter()
                await raw.run("print('x' * 10_000_000)")
                raw_took = time.perf_counter() - t
                print(
                    f"\n10 MB print over the WebSocket: kaimon {took * 1000:.0f} ms "
                    f"(raw WebSocket {raw_took * 1000:.0f} ms); kaimon server RSS "
                    f"{kaimon_before:.0f} -> {memory_mb(proc.pid, 'VmRSS'):.0f} MB (peak "
                    f"{memory_mb(proc.pid):.0f} MB); jupyter server RSS {jserver_before:.0f} -> "
                    f"{memory_mb(server.proc.pid, 'VmRSS'):.0f} MB"
                )

                labels = [f"s{i:02d}" for i in range(sessions - 1)]
                t = time.perf_counter()
                await start_served(server, labels)
                for _ in range(600):
                    listing = await client.call_tool("list_sessions", {})
                    rows = listing.structured_content["sessions"]
                    ready = [r for r in rows if r["status"].startswith("idle")]
                    if len(ready) >= sessions:
                        break
                    await asyncio.sleep(0.2)
                found = time.perf_counter() - t
                samples = []
                for _ in range(20):
                    t = time.perf_counter()
                    listing = await client.call_tool("list_sessions", {})
                    samples.append(time.perf_counter() - t)
                print(
                    f"\nlist_sessions with {len(listing.structured_content['sessions'])} remote "
                    f"sessions: p50 {pct(samples, 0.5):.1f} ms, p99 {pct(samples, 0.99):.1f} ms "
                    f"({sessions - 1} served kernels started and all listed in {found:.1f} s); "
                    f"kaimon server RSS {memory_mb(proc.pid, 'VmRSS'):.0f} MB"
                )
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--sessions", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.sessions))
