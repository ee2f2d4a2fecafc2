"""The wire to one kernel: its shell, control and iopub channels, as jupyter_client opens them.

The rest of the server sees messages (dicts, as ``jupyter_client.session`` builds them), never
sockets: a WebSocket transport to a Jupyter Server kernel will sit behind the same interface.

ZMQ sockets are read without any timer. Each socket's ``ZMQ_FD`` is registered with the event
loop; a wake-up drains every message the socket holds. That FD is edge-triggered: a send can
consume the signal of a message that arrived meanwhile, so every send is followed by a drain
(the fix for replies that sat unread for good under interleaved sends). A sweep every few
seconds over all open transports is the last safety net; it costs one ``getsockopt`` a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Callable
from typing import Any, Literal, Protocol

import zmq
from jupyter_client.blocking import BlockingKernelClient

__all__ = ["Channel", "Transport", "ZmqTransport"]

logger = logging.getLogger(__name__)

Channel = Literal["shell", "control", "iopub"]
READ_BATCH = 200  # messages handled before the loop gets a turn
SWEEP_INTERVAL = 5.0
#: While the session has nothing under way, iopub (then only the person's cells: activity) is
#: read in batches this far apart: one wake-up for many messages, not three per cell. Each
#: wake-up cost the server ~0.3 ms of CPU, which on two cores the person's cell paid for.
#: Anything the server sends ends the wait at once.
IDLE_LINGER = 0.05


class Transport(Protocol):
    """What a session needs of the wire to its kernel.

    An iopub message may arrive with its content still packed (most of them are the person's
    and never looked at): :meth:`content` unpacks it."""

    def open(
        self,
        on_message: Callable[[Channel, dict[str, Any]], None],
        *,
        idle: Callable[[], bool] | None = None,
    ) -> None: ...

    def content(self, msg: dict[str, Any]) -> dict[str, Any]: ...

    def msg(
        self,
        msg_type: str,
        content: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]: ...

    def send(self, channel: Channel, msg: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


_open: set[ZmqTransport] = set()
_sweeper: asyncio.TimerHandle | None = None


def _sweep() -> None:
    global _sweeper
    for transport in list(_open):
        transport.drain_all()
    _sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, _sweep) if _open else None


def _deserialize(session: Any, frames: list[bytes], *, content: bool) -> dict[str, Any]:
    """``Session.deserialize`` without its date parsing (a third of a message's cost; kaimon
    never reads the dates): the same signature check, the same dict."""
    if len(frames) < 5:
        raise ValueError("malformed message: fewer than 5 frames")
    if session.auth is not None:
        if not frames[0] or not hmac.compare_digest(frames[0], session.sign(frames[1:5])):
            raise ValueError("invalid signature")
    unpack = session.unpack
    header = unpack(frames[1])
    return {
        "header": header,
        "msg_id": header.get("msg_id"),
        "msg_type": header.get("msg_type"),
        "parent_header": unpack(frames[2]),
        "metadata": unpack(frames[3]),
        "content": unpack(frames[4]) if content else frames[4],
        "buffers": [memoryview(b) for b in frames[5:]],
    }


class ZmqTransport:
    """A kernel's channels over ZMQ, from its connection info (CurveZMQ keys included)."""

    def __init__(self, connection_info: dict[str, Any]) -> None:
        # one ZMQ context (one I/O thread) for every kernel; closing a session never waits
        # for a context of its own to be destroyed
        self._client = BlockingKernelClient(context=zmq.Context.instance())
        self._client.load_connection_info(connection_info)
        self._sockets: dict[Channel, zmq.Socket[Any]] = {}
        self._fds: dict[Channel, int] = {}
        self._on_message: Callable[[Channel, dict[str, Any]], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled: set[Channel] = set()
        self._idle: Callable[[], bool] | None = None
        self._linger: asyncio.TimerHandle | None = None

    @property
    def session(self) -> Any:
        """The signing :class:`jupyter_client.session.Session` (its ``session`` id is ours)."""
        return self._client.session

    def open(
        self,
        on_message: Callable[[Channel, dict[str, Any]], None],
        *,
        idle: Callable[[], bool] | None = None,
    ) -> None:
        """Start reading; ``idle()`` says whether iopub may be read in lingering batches."""
        global _sweeper
        self._loop = asyncio.get_running_loop()
        self._on_message = on_message
        self._idle = idle
        self._client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=True)
        for name, channel in (
            ("shell", self._client.shell_channel),
            ("control", self._client.control_channel),
            ("iopub", self._client.iopub_channel),
        ):
            socket = channel.socket
            self._sockets[name] = socket  # type: ignore[index]
            fd = socket.getsockopt(zmq.FD)
            self._loop.add_reader(fd, self._readable, name)
            self._fds[name] = fd
            self._drain(name)  # type: ignore[arg-type]
        _open.add(self)
        if _sweeper is None:
            _sweeper = self._loop.call_later(SWEEP_INTERVAL, _sweep)

    def msg(
        self,
        msg_type: str,
        content: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return self._client.session.msg(msg_type, content or {}, metadata=metadata)

    def content(self, msg: dict[str, Any]) -> dict[str, Any]:
        content = msg["content"]
        if isinstance(content, bytes | memoryview):
            content = msg["content"] = self._client.session.unpack(content)
        return content

    def send(self, channel: Channel, msg: dict[str, Any]) -> None:
        socket = self._sockets.get(channel)
        if socket is None:
            raise ConnectionError("the kernel's channels are closed")
        self._client.session.send(socket, msg)
        self._schedule(channel)
        if self._linger is not None:  # the server expects answers: read iopub at once
            self._linger.cancel()
            self._end_linger()

    def _readable(self, channel: Channel) -> None:
        if channel == "iopub" and self._idle is not None and self._idle():
            if self._loop is not None and self._linger is None:
                self._loop.remove_reader(self._fds["iopub"])  # the FD stays readable meanwhile
                self._linger = self._loop.call_later(IDLE_LINGER, self._end_linger)
            return
        self._drain(channel)

    def _end_linger(self) -> None:
        self._linger = None
        if self._loop is not None and "iopub" in self._fds:
            self._loop.add_reader(self._fds["iopub"], self._readable, "iopub")
            self._drain("iopub")

    def _schedule(self, channel: Channel) -> None:
        if channel not in self._scheduled and self._loop is not None:
            self._scheduled.add(channel)
            self._loop.call_soon(self._drain, channel)

    def drain_all(self) -> None:
        for name, socket in list(self._sockets.items()):
            if name == "iopub" and self._linger is not None:
                continue
            with contextlib.suppress(zmq.ZMQError):
                if socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    self._drain(name)

    def _drain(self, channel: Channel) -> None:
        self._scheduled.discard(channel)
        socket = self._sockets.get(channel)
        if socket is None or self._on_message is None:
            return
        session = self._client.session
        for _ in range(READ_BATCH):
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return  # closed under us
            try:
                _, frames = session.feed_identities(frames)
                # iopub content stays packed until someone looks (see content())
                msg = _deserialize(session, frames, content=channel != "iopub")
            except Exception:
                logger.warning("dropping an unreadable message on the %s channel", channel)
                continue
            try:
                self._on_message(channel, msg)
            except Exception:
                logger.exception("handling a %s message failed", msg["header"].get("msg_type"))
        self._schedule(channel)  # more waiting: let the loop breathe, then go on

    def close(self) -> None:
        _open.discard(self)
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._loop is not None:
            for fd in self._fds.values():
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(fd)
        self._fds.clear()
        self._sockets.clear()
        self._on_message = None
        with contextlib.suppress(Exception):
            self._client.stop_channels()
