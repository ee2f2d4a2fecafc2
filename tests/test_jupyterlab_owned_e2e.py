"""A person's kernel owned by a Jupyter Server on this machine (their JupyterLab): kaimon finds
the server from its jpserver-*.json and restarts the kernel through its REST API."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import JupyterServer, stdio_client, text_of
from remote import RemoteNotebook
from test_remote_e2e import listed

pytestmark = pytest.mark.anyio


async def test_restart_and_shutdown_go_through_the_owning_servers_rest_api(
    tmp_path: Path,
) -> None:
    server = JupyterServer(tmp_path)  # shares this machine's runtime dir, as JupyterLab does
    try:
        nb = RemoteNotebook(server, "mine.ipynb")
        key = nb.serve("--label mine")
        async with stdio_client("--no-auto-start") as client:
            row = await listed(client, key)
            assert row["server_url"] is None  # found as a local kernel (its session file)
            await client.call_tool("ex", {"code": "x = 1", "session": key})
            restarted = await client.call_tool("manage_repl", {"command": "restart"})
            assert not restarted.is_error, text_of(restarted)
            assert restarted.structured_content["key"] == key
            assert restarted.structured_content["pid"] != row["pid"]
            result = await client.call_tool("ex", {"code": "'x' in globals()", "session": key})
            assert "False" in text_of(result)
            assert nb.model()["id"] == nb.kernel_id
            done = await client.call_tool("manage_repl", {"command": "shutdown"})
            assert "through its Jupyter server" in text_of(done), text_of(done)
        assert nb.kernel_id not in [k["id"] for k in server.api("GET", "/api/kernels")]
    finally:
        server.stop()
    log = server.log.read_text()
    # an automatic restart (the kernel died) is logged "KernelRestarter: restarting kernel
    # (1/5)" and shows the person "kernel appears to have died"; a REST restart is not one
    assert "KernelRestarter: restarting kernel" not in log, log[-2000:]
