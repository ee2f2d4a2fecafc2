"""``kaimon serve --jupyter https://hub/user/alice/`` against a real JupyterHub: the person's
served kernel on her single-user server is listed and runs code, with her API token.

JupyterHub needs a venv of its own here (and configurable-http-proxy from npm):
KAIMON_TEST_HUB_BIN names that venv's bin directory (``python -m venv V && V/bin/pip install
jupyterhub jupyter_server``; ``npm install -g configurable-http-proxy``); without it, skipped."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import stdio_client, text_of
from remote import JupyterHub, RemoteNotebook, env
from test_remote_e2e import listed

pytestmark = pytest.mark.anyio

HUB_BIN = os.environ.get("KAIMON_TEST_HUB_BIN", "")
if not HUB_BIN or not shutil.which("configurable-http-proxy"):
    pytest.skip(
        "set KAIMON_TEST_HUB_BIN to a JupyterHub venv's bin (and install configurable-http-proxy)",
        allow_module_level=True,
    )


async def test_a_served_kernel_on_a_jupyterhub_single_user_server_is_listed_and_runs_code(
    tmp_path: Path,
) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    with env(JUPYTER_RUNTIME_DIR=str(runtime)):
        hub = JupyterHub(tmp_path, Path(HUB_BIN))
    try:
        nb = RemoteNotebook(hub, "alice.ipynb")
        key = nb.serve("--label alice")
        url = f"http://127.0.0.1:{hub.port}/user/alice/"
        with env(JUPYTER_TOKEN=hub.token):
            async with stdio_client("--no-auto-start", "--jupyter", url) as client:
                row = await listed(client, key)
                assert row["server_url"] == url and row["notebook_path"] == "alice.ipynb"
                assert "2" in text_of(await client.call_tool("ex", {"code": "1+1"}))
                listing = await client.call_tool("list_sessions", {})
                assert hub.token not in text_of(listing)
    finally:
        hub.stop()
