"""An extension's ``event_topics``: the server's events, forwarded to its gate.

Every server forwards what happens through it (an ``ex``, a tool call, a job); the supervising
server alone forwards sessions coming and going, which every server sees, so that each event
reaches an extension once. An extension never gets events about its own session."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..server._events import (
    Event,
    ExecutionFinished,
    ExecutionStarted,
    JobFinished,
    SessionCame,
    SessionWent,
    ToolCallFinished,
)
from ._manifest import EVENT_TOPICS
from ._registry import Registry, extensions, registry_stamp

if TYPE_CHECKING:
    from ..server._core import Kaimon

__all__ = ["TOPICS", "EventForwarder"]

#: Topic names an extension may list, and the core events they are.
TOPICS: dict[str, type[Event]] = {
    "session_started": SessionCame,
    "session_ended": SessionWent,
    "eval_started": ExecutionStarted,
    "eval_finished": ExecutionFinished,
    "job_finished": JobFinished,
    "tool_call_finished": ToolCallFinished,
}
assert tuple(TOPICS) == EVENT_TOPICS
SUPERVISOR_ONLY = frozenset({"session_started", "session_ended"})


class EventForwarder:
    """Subscribed to ``kaimon``'s bus while it lives (:meth:`close` unsubscribes)."""

    def __init__(self, kaimon: Kaimon, supervising: Callable[[], bool]) -> None:
        self.kaimon = kaimon
        self.supervising = supervising
        self._topics: dict[type[Event], str] = {cls: name for name, cls in TOPICS.items()}
        self._wanted: dict[str, frozenset[str]] = {}
        self._stamp: object = None
        self._unsubscribe = kaimon.bus.subscribe(self._on_event, *TOPICS.values())

    def close(self) -> None:
        self._unsubscribe()

    def _wanted_by_key(self) -> dict[str, frozenset[str]]:
        stamp = registry_stamp()
        if stamp != self._stamp:
            self._stamp = stamp
            self._wanted = {
                e.key: frozenset(e.manifest.event_topics)
                for e in extensions(Registry())
                if e.manifest is not None and e.manifest.event_topics
            }
        return self._wanted

    def _on_event(self, event: Event) -> None:
        topic = self._topics.get(type(event))
        if topic is None or (topic in SUPERVISOR_ONLY and not self.supervising()):
            return
        sessions = self.kaimon.registry.sessions
        wanted = self._wanted_by_key()
        if not wanted:
            return
        data: dict[str, Any] = {
            k: v for k, v in dataclasses.asdict(event).items() if k != "session"
        }
        about = sessions.get(event.session)
        if about is not None:
            data.setdefault("label", about.info.label)
        for key, topics in wanted.items():
            target = sessions.get(key)
            if topic in topics and target is not None and key != event.session:
                target.gate.post_event(topic, data, event.session)
