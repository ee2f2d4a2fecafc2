"""The kernel WebSocket transport against a real Jupyter Server: both framings, a dropped
link mid-execution, a kernel gone, a refused token; and the REST client's errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import DEADLINE, JupyterServer, free_port
from remote import DelayingProxy, RemoteNotebook, env

from kaimon_kernel.server._jupyter_api import (
    JupyterAPI,
    KernelGone,
    TokenRefused,
    Unreachable,
    redact,
)
from kaimon_kernel.server._ws_transport import V1_PROTOCOL, WebSocketTransport

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def jserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    with env(JUPYTER_RUNTIME_DIR=str(tmp_path_factory.mktemp("remote-runtime"))):
        server = JupyterServer(tmp_path_factory.mktemp("jroot"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def kernel(jserver: JupyterServer) -> RemoteNotebook:
    return RemoteNotebook(jserver, "transport.ipynb")


def api_for(jserver: JupyterServer, port: int | None = None) -> JupyterAPI:
    return JupyterAPI(f"http://127.0.0.1:{port or jserver.port}/", jserver.token)


class Run:
    """One execute_request over a transport, collecting what comes back for it."""

    def __init__(self, transport: WebSocketTransport) -> None:
        self.transport = transport
        self.text: list[str] = []
        self.reply: dict[str, Any] | None = None
        self.idle = asyncio.Event()
        self.msg_id = ""
        self.iopub_packed = False

    def on_message(self, channel: str, msg: dict[str, Any]) -> None:
        if msg["parent_header"].get("msg_id") != self.msg_id:
            return
        if channel == "iopub" and isinstance(msg["content"], bytes | memoryview):
            self.iopub_packed = True
        content = self.transport.content(msg)
        if msg["msg_type"] == "stream":
            self.text.append(content["text"])
        elif msg["msg_type"] == "execute_result":
            self.text.append(content["data"]["text/plain"])
        elif msg["msg_type"] == "execute_reply":
            self.reply = content
        elif msg["msg_type"] == "status" and content["execution_state"] == "idle":
            self.idle.set()

    def send(self, code: str) -> None:
        msg = self.transport.msg("execute_request", {"code": code, "silent": False})
        self.msg_id = msg["header"]["msg_id"]
        self.transport.send("shell", msg)

    async def finished(self, timeout: float = DEADLINE) -> str:
        await asyncio.wait_for(self.idle.wait(), timeout)
        return "".join(self.text)


@pytest.mark.parametrize("protocol", [V1_PROTOCOL, None], ids=["v1", "json"])
async def test_both_framings_carry_an_execution_and_its_output(
    jserver: JupyterServer, kernel: RemoteNotebook, protocol: str | None
) -> None:
    transport = WebSocketTransport(api_for(jserver), kernel.kernel_id, protocol=protocol)
    run = Run(transport)
    transport.open(run.on_message)
    try:
        run.send("print('hello'); 1+1")
        text = await run.finished()
    finally:
        transport.close()
    assert "hello" in text and "2" in text
    assert run.reply is not None and run.reply["status"] == "ok"
    # over v1, iopub content stays packed until someone looks (as over ZMQ)
    assert run.iopub_packed == (protocol is not None)


async def test_a_websocket_cut_mid_execution_reconnects_and_says_output_may_be_missing(
    jserver: JupyterServer, kernel: RemoteNotebook
) -> None:
    proxy = DelayingProxy(jserver.port)
    transport = WebSocketTransport(api_for(jserver, proxy.port), kernel.kernel_id)
    run = Run(transport)
    transport.open(run.on_message)
    try:
        run.send("import time\nprint('before', flush=True)\ntime.sleep(2)\nprint('after')")
        for _ in range(200):
            if run.text:
                break
            await asyncio.sleep(0.05)
        proxy.cut()  # the link drops while the cell runs
        text = await run.finished()
    finally:
        transport.close()
        proxy.close()
    assert transport.drops == 1
    assert "before" in text
    assert "dropped" in text and "may be missing" in text, text
    assert "after" in text, text  # the server kept it for our session and replayed it
    assert run.reply is not None and run.reply["status"] == "ok"


async def test_a_link_that_never_comes_back_ends_the_execution_with_the_reason(
    jserver: JupyterServer, kernel: RemoteNotebook
) -> None:
    proxy = DelayingProxy(jserver.port)
    lost: list[str] = []
    transport = WebSocketTransport(
        api_for(jserver, proxy.port), kernel.kernel_id, reconnect_deadline=1.0, on_lost=lost.append
    )
    run = Run(transport)
    transport.open(run.on_message)
    try:
        run.send("import time; time.sleep(1.5)")
        assert await transport.wait_connected(DEADLINE)
        await asyncio.sleep(0.3)
        proxy.close()  # no new connections either
        await asyncio.wait_for(run.idle.wait(), DEADLINE)
    finally:
        transport.close()
    assert run.reply is not None and run.reply["status"] == "error"
    assert "cannot reach" in run.reply["evalue"] and lost, run.reply
    assert jserver.token not in run.reply["evalue"]


async def test_rest_errors_say_what_to_check_and_never_show_the_token(
    jserver: JupyterServer,
) -> None:
    dead = JupyterAPI(f"http://127.0.0.1:{free_port()}/", "secret-token-9")
    with pytest.raises(Unreachable) as unreachable:
        await dead.kernels()
    assert "cannot reach" in str(unreachable.value) and dead.url in str(unreachable.value)
    wrong = JupyterAPI(f"http://127.0.0.1:{jserver.port}/", "secret-token-9")
    with pytest.raises(TokenRefused) as refused:
        await wrong.kernels()
    assert "refused the token" in str(refused.value) and "JUPYTER_TOKEN" in str(refused.value)
    good = api_for(jserver)
    with pytest.raises(KernelGone):
        await good.kernel("00000000-0000-0000-0000-000000000000")
    for shown in (str(unreachable.value), str(refused.value), repr(wrong), repr(good)):
        assert "secret-token-9" not in shown and jserver.token not in shown
    for api in (dead, wrong, good):
        await api.aclose()


def test_a_url_with_the_token_in_its_query_is_kept_without_it() -> None:
    api = JupyterAPI("https://hub.example.org/user/alice/lab?token=abc123", "abc123")
    assert api.url == "https://hub.example.org/user/alice/lab/"
    assert "abc123" not in repr(api)
    assert redact("GET /x?token=abc123 failed", "abc123") == "GET /x?token=<token> failed"


def test_the_v1_framing_is_jupyter_servers_own() -> None:
    from jupyter_server.services.kernels.connection.base import (
        deserialize_msg_from_ws_v1,
        serialize_msg_to_ws_v1,
    )

    from kaimon_kernel.server._ws_transport import pack_v1, unpack_v1

    parts = [b'{"msg_id": "1"}', b"{}", b"{}", b'{"code": "1+1"}', b"\x00buffer"]
    assert pack_v1("shell", parts) == serialize_msg_to_ws_v1(parts, "shell")
    channel, theirs = deserialize_msg_from_ws_v1(serialize_msg_to_ws_v1(parts, "iopub"))
    ours = unpack_v1(serialize_msg_to_ws_v1(parts, "iopub"))
    assert ours[0] == channel == "iopub"
    assert [bytes(p) for p in ours[1]] == theirs == parts


def test_the_json_framings_binary_form_is_jupyter_servers_own() -> None:
    from jupyter_server.services.kernels.connection.base import serialize_binary_message

    from kaimon_kernel.server._ws_transport import _unpack_legacy_binary

    msg = {"header": {"msg_id": "1"}, "parent_header": {}, "content": {}, "channel": "iopub"}
    packed = serialize_binary_message({**msg, "buffers": [b"one", b"\x00two"]})
    unpacked = _unpack_legacy_binary(packed)
    assert [bytes(b) for b in unpacked.pop("buffers")] == [b"one", b"\x00two"]
    assert unpacked == msg
