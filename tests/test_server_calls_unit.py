"""A kernel's tool calls (``kaimon_kernel.call_tool``) where no MCP front runs: answered at
once with an error, never left to time out."""

from __future__ import annotations

import pytest
from fakes import FakeKernel, FakeProvider, session_info

from kaimon_kernel._protocol import ServerCall
from kaimon_kernel.server._core import Kaimon, ServerOptions
from kaimon_kernel.server._sessions import Registry

pytestmark = pytest.mark.anyio


async def test_a_process_without_an_mcp_front_refuses_a_kernels_call_at_once() -> None:
    provider = FakeProvider()
    kernel = provider.add(FakeKernel(session_info("k1")))
    core = Kaimon(ServerOptions(auto_start=False), Registry([provider]))
    try:
        await core.registry.first()
        session = core.registry.sessions["k1"]
        await session.wait_ready(5)
        call = ServerCall(name="ex", arguments={"code": "1"})
        kernel.iopub(
            None, "comm_msg", {"comm_id": session._comm_id, "data": call.model_dump(mode="json")}
        )
        answers = [
            m["content"]["data"]
            for _, m in kernel.sent
            if m["header"]["msg_type"] == "comm_msg"
            and m["content"]["data"].get("type") == "server_call_result"
        ]
    finally:
        await core.registry.close()
        await core.store.aclose()
    (answer,) = answers
    assert answer["call_id"] == call.call_id and answer["is_error"]
    assert "takes no tool calls" in answer["content"][0]["text"]
