"""Typed events of the core, on one in-process bus.

The core publishes what happens (sessions coming and going, executions, jobs, gate tool calls);
fronts subscribe: the MCP layer (``tools/list_changed``), the live-view sync in the kernels,
and the dashboard to come. Handlers run synchronously on the event loop, in order of
subscription; one that raises is logged and the others still run. A front that needs to await
(send a notification) starts its own task, or reads a queue from :meth:`EventBus.queue`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "ClientCallFinished",
    "ClientCallStarted",
    "Event",
    "EventBus",
    "ExecutionFinished",
    "ExecutionOutput",
    "ExecutionStarted",
    "JobFinished",
    "JobPromoted",
    "PanelUpdated",
    "ServerCallAsked",
    "SessionCame",
    "SessionChanged",
    "SessionWent",
    "ToolCallFinished",
    "ToolCallStarted",
    "ToolsChanged",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """Base of every event: which session it concerns."""

    session: str


@dataclass(frozen=True)
class SessionCame(Event):
    """A served kernel answered its gate: agents can use it."""


@dataclass(frozen=True)
class SessionWent(Event):
    reason: str


@dataclass(frozen=True)
class SessionChanged(Event):
    """Its label, description or flags changed."""


@dataclass(frozen=True)
class ToolsChanged(Event):
    """Its gate tools were registered, replaced or removed."""


@dataclass(frozen=True)
class ExecutionStarted(Event):
    msg_id: str
    code: str
    block_id: str


@dataclass(frozen=True)
class ExecutionOutput(Event):
    msg_id: str
    text: str


@dataclass(frozen=True)
class ExecutionFinished(Event):
    msg_id: str
    status: str
    block_id: str


@dataclass(frozen=True)
class JobPromoted(Event):
    eval_id: str
    msg_id: str


@dataclass(frozen=True)
class JobFinished(Event):
    eval_id: str
    status: str


@dataclass(frozen=True)
class ToolCallStarted(Event):
    tool: str
    call_id: str


@dataclass(frozen=True)
class ToolCallFinished(Event):
    tool: str
    call_id: str
    is_error: bool
    seconds: float


@dataclass(frozen=True)
class ClientCallStarted(Event):
    """A client called a tool through a front (any tool: built-in or gate). ``session`` is
    empty: which session it concerns is learnt as it runs (the activity log)."""

    call_id: str
    client: str
    tool: str
    arguments: Any


@dataclass(frozen=True)
class ClientCallFinished(Event):
    call_id: str
    is_error: bool
    seconds: float


@dataclass(frozen=True)
class PanelUpdated(Event):
    """The session's code pushed state for its dashboard panel (``KernelSession.panel``)."""

    values: Any


@dataclass(frozen=True)
class ServerCallAsked(Event):
    """A kernel asks the server to call a tool (``kaimon_kernel.call_tool``)."""

    call: Any


E = TypeVar("E", bound=Event)


class EventBus:
    """Subscribe handlers by event type (or to every event); publish from the core."""

    def __init__(self) -> None:
        self._handlers: dict[type[Event], list[Callable[[Any], None]]] = {}

    def subscribe(self, handler: Callable[[E], None], *types: type[E]) -> Callable[[], None]:
        """Call ``handler`` for each event of ``types`` (every event if none); returns the
        function that unsubscribes it."""
        keys: tuple[type[Event], ...] = types or (Event,)
        for key in keys:
            self._handlers.setdefault(key, []).append(handler)

        def unsubscribe() -> None:
            for key in keys:
                with contextlib.suppress(ValueError):
                    self._handlers.get(key, []).remove(handler)

        return unsubscribe

    def wants(self, kind: type[Event]) -> bool:
        """Whether anyone listens for ``kind`` (lets hot paths skip building events)."""
        return bool(self._handlers.get(kind) or self._handlers.get(Event))

    def publish(self, event: Event) -> None:
        for key in (type(event), Event):
            for handler in list(self._handlers.get(key, ())):
                try:
                    handler(event)
                except Exception:
                    logger.exception("a handler of %s failed", type(event).__name__)

    @contextlib.contextmanager
    def queue(self, *types: type[Event], maxsize: int = 10_000) -> Iterator[asyncio.Queue[Event]]:
        """Events of ``types`` as a queue, while the block runs (oldest dropped when full)."""
        q: asyncio.Queue[Event] = asyncio.Queue(maxsize)

        def put(event: Event) -> None:
            if q.full():
                q.get_nowait()
            q.put_nowait(event)

        unsubscribe = self.subscribe(put, *types)
        try:
            yield q
        finally:
            unsubscribe()
