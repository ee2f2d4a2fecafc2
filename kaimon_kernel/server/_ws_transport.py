"""The wire to a kernel behind a Jupyter Server: its ``/api/kernels/{id}/channels`` WebSocket.

It yields the same message dicts as :class:`~kaimon_kernel.server._transport.ZmqTransport`
(iopub content left packed until :meth:`content`), so sessions, executions, jobs and gate
tools do not know which wire they use. Both framings are spoken: the default JSON one and
``v1.kernel.websocket.jupyter.org`` (binary, offsets then the message's parts).

The client is tornado's (``websocket_connect``): tornado is already here (ipykernel and
jupyter_server run on it), jupyter_server's own gateway client uses it, and it speaks
subprotocols, binary frames, pings and a message-size limit. ``jupyter-kernel-client`` was
read too: it is a synchronous client on ``websocket-client`` threads, a poor fit for an
asyncio server with many sessions.

A dropped WebSocket is connected again (same ``session_id``: the server replays what it
buffered meanwhile) with backoff until a deadline. An execution under way at the drop is told
in its own output that some of it may be missing: never silently lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from jupyter_client.session import Session
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, websocket_connect

from ._jupyter_api import JupyterAPI, redact
from ._transport import Channel

__all__ = ["V1_PROTOCOL", "WebSocketTransport", "pack_v1", "unpack_v1"]

logger = logging.getLogger(__name__)

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
MAX_MESSAGE = 256 * 1024 * 1024  # one kernel message (a 10 MB print is one)
CONNECT_TIMEOUT = 10.0
RECONNECT_DEADLINE = 30.0
PING_INTERVAL = 15.0
CHANNELS: tuple[Channel, ...] = ("shell", "control", "iopub")


def pack_v1(channel: str, parts: list[bytes]) -> bytes:
    """One message in the v1 framing: count, offsets (8-byte little endian), channel, parts."""
    chan = channel.encode()
    offsets = [8 * (1 + 1 + len(parts) + 1)]
    offsets.append(offsets[-1] + len(chan))
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    head = len(offsets).to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in offsets)
    return b"".join([head, chan, *parts])


def unpack_v1(data: bytes) -> tuple[str, list[memoryview]]:
    """The channel and the parts (header, parent header, metadata, content, buffers…)."""
    view = memoryview(data)
    count = int.from_bytes(view[:8], "little")
    # the offsets: where the channel starts, where each part starts, where the last one ends
    offsets = [int.from_bytes(view[8 * (i + 1) : 8 * (i + 2)], "little") for i in range(count)]
    channel = bytes(view[offsets[0] : offsets[1]]).decode()
    return channel, [view[offsets[i] : offsets[i + 1]] for i in range(1, count - 1)]


def _unpack_legacy_binary(data: bytes) -> dict[str, Any]:
    """JSON framing with buffers: count, 4-byte big-endian offsets, the JSON, the buffers."""
    view = memoryview(data)
    count = int.from_bytes(view[:4], "big")
    offsets = [int.from_bytes(view[4 * (i + 1) : 4 * (i + 2)], "big") for i in range(count)]
    offsets.append(len(data))
    msg = json.loads(bytes(view[offsets[0] : offsets[1]]))
    msg["buffers"] = [view[offsets[i] : offsets[i + 1]] for i in range(1, count)]
    return msg


class WebSocketTransport:
    """A kernel's channels over a Jupyter Server's WebSocket."""

    #: Subshells do not pass the server's WebSocket: gate calls queue behind the person's cell.
    passes_subshells = False

    def __init__(
        self,
        api: JupyterAPI,
        kernel_id: str,
        *,
        protocol: str | None = V1_PROTOCOL,
        reconnect_deadline: float = RECONNECT_DEADLINE,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.api = api
        self.kernel_id = kernel_id
        self.protocol = protocol  # asked for; the server may answer with the JSON framing
        self.reconnect_deadline = reconnect_deadline
        #: Called once when the WebSocket cannot be connected again (the reason as text).
        self.on_lost = on_lost
        # the server signs what it forwards; a key of our own only keeps Session from
        # warning that signing is off (nothing we send is signed by it)
        self.session = Session(key=uuid.uuid4().hex.encode())
        self.lost: str | None = None
        self._conn: WebSocketClientConnection | None = None
        self._v1 = False
        self._on_message: Callable[[Channel, dict[str, Any]], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._queue: list[str | bytes] = []  # sent while (re)connecting
        self._in_flight: dict[str, float] = {}  # execute requests without their reply yet
        self._connected = asyncio.Event()
        self._closed = False
        self.drops = 0

    def __repr__(self) -> str:
        return f"WebSocketTransport({self.api.url!r}, kernel {self.kernel_id})"

    # -- Transport -------------------------------------------------------------------------

    def open(
        self,
        on_message: Callable[[Channel, dict[str, Any]], None],
        *,
        idle: Callable[[], bool] | None = None,
    ) -> None:
        self._on_message = on_message
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"ws-{self.kernel_id[:8]}"
        )

    async def wait_connected(self, timeout: float) -> bool:
        """Whether the WebSocket is up within ``timeout`` (False once it is lost for good)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout)
        return self._connected.is_set()

    def msg(
        self,
        msg_type: str,
        content: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return self.session.msg(msg_type, content or {}, metadata=metadata)

    def content(self, msg: dict[str, Any]) -> dict[str, Any]:
        content = msg["content"]
        if isinstance(content, bytes | memoryview):
            content = msg["content"] = json.loads(bytes(content))
        return content

    def send(self, channel: Channel, msg: dict[str, Any]) -> None:
        if self._closed or self.lost:
            raise ConnectionError(self.lost or "the kernel's WebSocket is closed")
        if msg["header"]["msg_type"] == "execute_request":
            self._in_flight[msg["header"]["msg_id"]] = time.monotonic()
        self._write(self._serialize(channel, msg))  # queued while (re)connecting

    def close(self) -> None:
        self._closed = True
        self._on_message = None
        if self._task is not None:
            self._task.cancel()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    # -- the connection --------------------------------------------------------------------

    def _serialize(self, channel: Channel, msg: dict[str, Any]) -> str | bytes:
        pack = self.session.pack
        if self._v1:
            parts = [pack(msg["header"]), pack(msg["parent_header"]), pack(msg["metadata"])]
            parts += [pack(msg["content"]), *msg.get("buffers", [])]
            return pack_v1(channel, parts)
        body = {k: msg[k] for k in ("header", "parent_header", "metadata", "content")}
        body["channel"] = channel
        return pack(body).decode()

    def _write(self, data: str | bytes) -> None:
        conn = self._conn
        if conn is None:
            self._queue.append(data)
            return
        try:
            conn.write_message(data, binary=isinstance(data, bytes))
        except WebSocketClosedError:
            self._queue.append(data)

    async def _connect(self) -> WebSocketClientConnection:
        request = HTTPRequest(
            self.api.channels_url(self.kernel_id, self.session.session),
            headers=self.api.headers(),
            connect_timeout=CONNECT_TIMEOUT,
            request_timeout=CONNECT_TIMEOUT,
        )
        return await websocket_connect(
            request,
            subprotocols=[self.protocol] if self.protocol else None,
            max_message_size=MAX_MESSAGE,
            ping_interval=PING_INTERVAL,
            ping_timeout=PING_INTERVAL,
        )

    async def _run(self) -> None:
        try:
            await self._follow()
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a bug here must end what waits, not hang it
            logger.exception("the WebSocket to kernel %s failed", self.kernel_id)
            self._give_up(f"the WebSocket to kernel {self.kernel_id} failed: {err}")

    async def _follow(self) -> None:
        first = True
        while not self._closed:
            dropped_at = time.monotonic()
            try:
                conn = await self._connect_with_retries(first)
            except _Lost as err:
                self._give_up(str(err))
                return
            first = False
            self._conn = conn
            self._v1 = conn.selected_subprotocol == V1_PROTOCOL
            # requests serialized while down were framed for the old framing: reframe
            pending, self._queue = self._queue, []
            for data in pending:
                self._write(self._reframe(data))
            self._connected.set()
            if self.drops:
                self._report_missed(time.monotonic() - dropped_at)
            await self._read(conn)
            self._connected.clear()
            self._conn = None
            if self._closed:
                return
            self.drops += 1
            logger.warning(
                "the WebSocket to kernel %s at %s dropped; connecting again",
                self.kernel_id,
                self.api.url,
            )

    def _reframe(self, data: str | bytes) -> str | bytes:
        if isinstance(data, bytes) == self._v1:
            return data
        if isinstance(data, bytes):
            channel, parts = unpack_v1(data)
            msg = {
                "header": json.loads(bytes(parts[0])),
                "parent_header": json.loads(bytes(parts[1])),
                "metadata": json.loads(bytes(parts[2])),
                "content": json.loads(bytes(parts[3])),
            }
        else:
            msg = json.loads(data)
            channel = msg.pop("channel")
        return self._serialize(channel, msg)  # type: ignore[arg-type]

    async def _connect_with_retries(self, first: bool) -> WebSocketClientConnection:
        deadline = time.monotonic() + self.reconnect_deadline
        delay = 0.1
        while True:
            try:
                return await self._connect()
            except HTTPClientError as err:
                if err.code in (401, 403):
                    raise _Lost(
                        f"the Jupyter server at {self.api.url} refused the token for kernel "
                        f"{self.kernel_id}'s WebSocket (HTTP {err.code}); the token comes from "
                        f"{self.api.token_source}"
                    ) from None
                if err.code == 404:
                    raise _Lost(
                        f"kernel {self.kernel_id} is gone from the Jupyter server at "
                        f"{self.api.url} (culled or shut down); its state is lost"
                    ) from None
                problem = f"HTTP {err.code}"
            except (OSError, asyncio.TimeoutError, WebSocketClosedError) as err:
                problem = redact(f"{type(err).__name__}: {err}", self.api.token)
            if time.monotonic() + delay > deadline:
                raise _Lost(
                    f"cannot reach kernel {self.kernel_id}'s WebSocket at {self.api.url} "
                    f"({problem}) for {self.reconnect_deadline:g} s: check that the server "
                    "runs and is reachable"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _read(self, conn: WebSocketClientConnection) -> None:
        while True:
            data = await conn.read_message()
            if data is None:
                return
            try:
                channel, msg = self._deserialize(data)
            except Exception:
                logger.warning("dropping an unreadable message from kernel %s", self.kernel_id)
                continue
            if channel not in CHANNELS:
                continue
            self._deliver(channel, msg)  # type: ignore[arg-type]

    def _deliver(self, channel: Channel, msg: dict[str, Any]) -> None:
        if channel == "shell" and msg["msg_type"] == "execute_reply":
            self._in_flight.pop(msg["parent_header"].get("msg_id"), None)
        handler = self._on_message
        if handler is None:
            return
        try:
            handler(channel, msg)
        except Exception:
            logger.exception("handling a %s message failed", msg["msg_type"])

    def _deserialize(self, data: str | bytes) -> tuple[str, dict[str, Any]]:
        if isinstance(data, str):
            raw = json.loads(data)
            raw.setdefault("buffers", [])
        elif self._v1:
            channel, parts = unpack_v1(data)
            header = json.loads(bytes(parts[0]))
            return channel, {
                "header": header,
                "msg_id": header.get("msg_id"),
                "msg_type": header.get("msg_type"),
                "parent_header": json.loads(bytes(parts[1])),
                "metadata": json.loads(bytes(parts[2])),
                # iopub content stays packed until someone looks (as over ZMQ)
                "content": parts[3] if channel == "iopub" else json.loads(bytes(parts[3])),
                "buffers": parts[4:],
            }
        else:
            raw = _unpack_legacy_binary(data)
        header = raw["header"]
        return raw.pop("channel", "shell"), {
            "header": header,
            "msg_id": header.get("msg_id"),
            "msg_type": header.get("msg_type"),
            "parent_header": raw.get("parent_header") or {},
            "metadata": raw.get("metadata") or {},
            "content": raw.get("content") or {},
            "buffers": raw.get("buffers", []),
        }

    def _report_missed(self, down_for: float) -> None:
        """Each execution under way hears, in its own output, that some may be missing."""
        for msg_id in list(self._in_flight):
            note = self.msg(
                "stream",
                {
                    "name": "stderr",
                    "text": f"\n[kaimon: the WebSocket to the Jupyter server dropped for "
                    f"{down_for:.1f} s while this ran; output printed meanwhile may be "
                    "missing (the server replays what it kept)]\n",
                },
            )
            note["parent_header"] = {"msg_id": msg_id, "msg_type": "execute_request"}
            self._deliver("iopub", _as_received(note))

    def _give_up(self, reason: str) -> None:
        self.lost = reason
        self._connected.set()  # wake waiters: they see ``lost``
        logger.warning("%s", reason)
        for msg_id in list(self._in_flight):
            # the execution ends with the reason, instead of waiting for a reply that can't come
            reply = self.msg(
                "execute_reply",
                {"status": "error", "ename": "ConnectionLost", "evalue": reason, "traceback": []},
            )
            idle = self.msg("status", {"execution_state": "idle"})
            for channel, msg in (("shell", reply), ("iopub", idle)):
                msg["parent_header"] = {"msg_id": msg_id, "msg_type": "execute_request"}
                self._deliver(channel, _as_received(msg))  # type: ignore[arg-type]
        if self.on_lost is not None:
            self.on_lost(reason)


def _as_received(msg: dict[str, Any]) -> dict[str, Any]:
    return {**msg, "msg_id": msg["header"]["msg_id"], "msg_type": msg["header"]["msg_type"]}


class _Lost(Exception):
    pass
