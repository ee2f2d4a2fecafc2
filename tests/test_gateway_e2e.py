"""``kaimon serve --jupyter`` pointed at a real Jupyter Kernel Gateway and a real Enterprise
Gateway (token auth): the same listing, ex and restart as against a Jupyter Server.

Enterprise Gateway needs jupyter_server 1 and jupyter_client 6, so it lives in a venv of its
own: KAIMON_TEST_EG_JUPYTER names that venv's ``jupyter`` (``python -m venv V && V/bin/pip
install jupyter-enterprise-gateway``); without it that test is skipped."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import stdio_client, text_of
from remote import EnterpriseGateway, KernelGateway, RemoteNotebook, env
from test_remote_e2e import listed

pytestmark = pytest.mark.anyio

EG_JUPYTER = os.environ.get("KAIMON_TEST_EG_JUPYTER", "")


@pytest.fixture(params=["kernel gateway", "enterprise gateway"])
def gateway(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    with env(JUPYTER_RUNTIME_DIR=str(runtime)):
        if request.param == "kernel gateway":
            pytest.importorskip("kernel_gateway", reason="jupyter-kernel-gateway: test extra")
            server = KernelGateway(tmp_path)
        else:
            if not EG_JUPYTER:
                pytest.skip("set KAIMON_TEST_EG_JUPYTER to an Enterprise Gateway venv's jupyter")
            server = EnterpriseGateway(tmp_path, EG_JUPYTER)
    yield server
    server.stop()


async def test_a_served_kernel_on_a_gateway_runs_code_and_restarts_by_rest(gateway: Any) -> None:
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
