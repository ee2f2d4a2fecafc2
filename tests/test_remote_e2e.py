"""Kernels behind a real Jupyter Server (token auth), reached by ``kaimon serve --jupyter URL``
through the real MCP client: listing, ex, gate tools, restart/interrupt/shutdown by REST,
start_session there, and the faults (unreachable, token refused, kernel deleted)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import DEADLINE, JupyterServer, stdio_client, text_of
from remote import RemoteNotebook, env

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def jserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    # its own runtime dir: its kernels' session files are out of the local provider's sight,
    # as on another machine
    with env(JUPYTER_RUNTIME_DIR=str(tmp_path_factory.mktemp("remote-runtime"))):
        server = JupyterServer(tmp_path_factory.mktemp("jroot"))
    yield server
    server.stop()


@pytest.fixture
def url(jserver: JupyterServer) -> str:
    return f"http://127.0.0.1:{jserver.port}/"


@pytest.fixture
def notebooks(jserver: JupyterServer) -> Iterator[Any]:
    made: list[RemoteNotebook] = []

    def make(path: str = "analysis.ipynb", serve: str | None = "--label remote") -> Any:
        nb = RemoteNotebook(jserver, path)
        made.append(nb)
        if serve is not None:
            nb.serve(serve)
        return nb

    yield make
    for nb in made:
        try:
            jserver.api("DELETE", f"/api/kernels/{nb.kernel_id}")
        except Exception:
            pass


async def until(predicate: Any, what: str, timeout: float = DEADLINE) -> Any:
    with anyio.fail_after(timeout):
        while True:
            value = await predicate()
            if value:
                return value
            await anyio.sleep(0.2)


async def listed(client: Any, key: str) -> Any:
    async def find() -> Any:
        result = await client.call_tool("list_sessions", {})
        rows = [r for r in result.structured_content["sessions"] if r["key"] == key]
        return rows[0] if rows and rows[0]["status"] != "connecting" else None

    return await until(find, f"session {key} to be listed")


@pytest.fixture
async def kaimon(url: str, jserver: JupyterServer) -> AsyncIterator[Any]:
    with env(JUPYTER_TOKEN=jserver.token):
        async with stdio_client("--no-auto-start", "--jupyter", url) as client:
            yield client


async def test_a_served_remote_kernel_is_listed_with_its_server_and_notebook_and_runs_code(
    kaimon: Any, notebooks: Any, jserver: JupyterServer, url: str
) -> None:
    served = notebooks("lab/served.ipynb")
    unserved = notebooks("lab/plain.ipynb", serve=None)
    row = await listed(kaimon, served.key)
    assert row["server_url"] == url
    assert row["notebook_path"] == "lab/served.ipynb"
    assert row["status"].startswith("idle"), row
    listing = await kaimon.call_tool("list_sessions", {})
    assert unserved.kernel_id not in text_of(listing)
    assert len(listing.structured_content["sessions"]) == 1  # the unserved one never shows

    result = await kaimon.call_tool("ex", {"code": "1+1", "session": served.key})
    assert "2" in text_of(result), text_of(result)
    result = await kaimon.call_tool(
        "ex", {"code": "import os\nfor i in range(3): print('line', i)\nos.getpid()"}
    )
    text = text_of(result)
    assert "line 2" in text and str(row["pid"]) in text, text
    # what the person defined is there for the agent: it is their kernel
    served.run("shared = 41")
    result = await kaimon.call_tool("ex", {"code": "shared + 1"})
    assert "42" in text_of(result)
    for text in (text_of(listing), str(listing.structured_content), text):
        assert jserver.token not in text
