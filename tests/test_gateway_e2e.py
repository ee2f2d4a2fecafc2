"""``kaimon serve --jupyter`` pointed at a real Jupyter Kernel Gateway (token auth): the
same listing, ex, restart and interrupt as against a Jupyter Server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import stdio_client, text_of
from remote import KernelGateway, RemoteNotebook, env
from test_remote_e2e import listed

pytestmark = pytest.mark.anyio

pytest.importorskip("kernel_gateway", reason="jupyter-kernel-gateway is in the test extra")


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[KernelGateway]:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    with env(JUPYTER_RUNTIME_DIR=str(runtime)):
        server = KernelGateway(tmp_path)
    yield server
    server.stop()


async def test_a_served_kernel_on_a_kernel_gateway_runs_code_and_restarts_by_rest(
    gateway: KernelGateway,
) -> None:
    nb = RemoteNotebook(gateway, path=None)
    key = nb.serve("--label gw")
    url = f"http://127.0.0.1:{gateway.port}/"
    with env(JUPYTER_TOKEN=gateway.token):
        async with stdio_client("--no-auto-start", "--jupyter", url) as client:
            row = await listed(client, key)
            assert row["server_url"] == url and row["notebook_path"] is None
            assert "2" in text_of(await client.call_tool("ex", {"code": "1+1"}))
            restarted = await client.call_tool("manage_repl", {"command": "restart"})
            assert not restarted.is_error, text_of(restarted)
            assert restarted.structured_content["pid"] != row["pid"]
            assert nb.model()["id"] == nb.kernel_id
            result = await client.call_tool("ex", {"code": "import os; os.getpid()"})
            assert str(restarted.structured_content["pid"]) in text_of(result)
