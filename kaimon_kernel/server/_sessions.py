"""The live set of sessions, from every provider's announcements.

A session announced by a provider is connected in the background and becomes usable once its
gate answers. The set follows the announcements (file events for the local provider) and the
kernels' liveness (one check a second for all sessions, no file reads); every change is an
event on the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from .._errors import AmbiguousSession, KaimonError, SessionNotFound
from .._protocol import ServerCall, ServerCallResult, TextBlock
from ._events import (
    EventBus,
    PanelUpdated,
    ServerCallAsked,
    SessionCame,
    SessionChanged,
    SessionWent,
    ToolsChanged,
)
from ._kernel import KernelSession
from .providers import KernelProvider, LocalProvider

__all__ = ["Registry"]

logger = logging.getLogger(__name__)

LIVENESS_INTERVAL = 1.0
FIRST_LOOK = 5.0


class Registry:
    """The sessions agents can reach, by key."""

    def __init__(
        self,
        providers: Sequence[KernelProvider] | None = None,
        bus: EventBus | None = None,
    ) -> None:
        self.providers: list[KernelProvider] = list(providers or [LocalProvider()])
        self.bus = bus or EventBus()
        self.sessions: dict[str, KernelSession] = {}
        self._changed = asyncio.Event()
        self._scan_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._connecting: dict[str, asyncio.Task[None]] = {}
        #: When the first scan ran: sessions found then are waited for by the first tools/list.
        self.first_scan: set[str] = set()

    @property
    def local(self) -> LocalProvider:
        """The local provider (kernels this server starts live there)."""
        for provider in self.providers:
            if isinstance(provider, LocalProvider):
                return provider
        raise LookupError("no local provider")

    async def run(self) -> None:
        """Follow the providers' announcements and the kernels' liveness until cancelled."""
        watchers = [asyncio.create_task(p.watch(self.scan)) for p in self.providers]
        blind = False
        try:
            while True:
                await asyncio.sleep(LIVENESS_INTERVAL)
                if not blind and any(w.done() for w in watchers):
                    # a watcher died (e.g. no inotify watches left): look on a timer instead,
                    # so sessions served or withdrawn are still seen
                    blind = True
                    for w in watchers:
                        if w.done() and not w.cancelled() and w.exception() is not None:
                            logger.warning("watching for sessions failed: %s", w.exception())
                if blind:
                    await self.scan()
                await self._check_liveness()
        finally:
            for watcher in watchers:
                watcher.cancel()
            for watcher in watchers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watcher

    async def _check_liveness(self) -> None:
        gone = [
            s
            for s in self.sessions.values()
            if s.state in ("ready", "connecting") and not s.provider.alive(s.info, fresh=True)
        ]
        if gone:
            await self.scan()

    async def scan(self) -> None:
        async with self._scan_lock:
            seen = {}
            for provider in self.providers:
                for key, info in provider.discover().items():
                    # the first provider wins: a kernel both this machine and a Jupyter
                    # server announce (the person's local JupyterLab) is reached over ZMQ
                    seen.setdefault(key, (provider, info))
            changed = False
            for key in list(self.sessions):
                session = self.sessions[key]
                if key not in seen:
                    gone = not session.provider.alive(session.info)
                    reason = (
                        f"the kernel of session {key} died"
                        if gone
                        else f"session {key} was withdrawn by the person (%kaimon stop)"
                    )
                elif session.state == "closed":
                    reason = "the person served it again"
                elif session.provider.alive(session.info):
                    continue  # the same kernel (a failed connect stays failed: no busy retries)
                else:
                    reason = "the kernel was restarted"
                await self._drop(key, reason)
                changed = True
            for key, (provider, info) in seen.items():
                if key in self.sessions:
                    continue
                session = KernelSession(info, provider)
                session.on_tools_changed = lambda key=key: self.bus.publish(ToolsChanged(key))
                session.on_info_changed = lambda key=key: self.bus.publish(SessionChanged(key))
                session.on_server_call = lambda call, s=session: self._server_call(s, call)
                session.on_panel = lambda values, key=key: self.bus.publish(
                    PanelUpdated(key, values)
                )
                self.sessions[key] = session
                task = asyncio.create_task(self._connect(session), name=f"connect-{key}")
                self._background.add(task)
                self._connecting[key] = task
                task.add_done_callback(self._background.discard)
                changed = True
            if changed:
                self._changed.set()
                self._changed = asyncio.Event()

    async def first(self) -> None:
        """The first scan; remembers which sessions it found. Remote providers get a moment
        to look first (not longer: an unreachable server must not hold up the start)."""
        looks = [asyncio.ensure_future(p.refresh()) for p in self.providers]
        done, pending = await asyncio.wait(looks, timeout=FIRST_LOOK)
        for look in pending:
            look.cancel()
        for look in done:
            if not look.cancelled() and look.exception() is not None:
                logger.warning("looking for sessions failed: %s", look.exception())
        await self.scan()
        self.first_scan = set(self.sessions)

    async def _connect(self, session: KernelSession) -> None:
        try:
            await session.connect()
        finally:
            if self._connecting.get(session.key) is asyncio.current_task():
                del self._connecting[session.key]
        if session.state == "ready" and self.sessions.get(session.key) is session:
            self.bus.publish(SessionCame(session.key))
            self.bus.publish(ToolsChanged(session.key))

    async def _drop(self, key: str, reason: str) -> None:
        session = self.sessions.pop(key)
        connecting = self._connecting.pop(key, None)
        if connecting is not None:
            connecting.cancel()
        was_ready = session.state in ("ready", "closed")
        if not session.provider.alive(session.info):
            session.mark_dead(reason)
        try:
            # shielded: a caller that gives up mid-scan must not leave it half closed
            await asyncio.shield(session.close(reason))
        finally:
            if was_ready:
                self.bus.publish(SessionWent(key, reason))
                self.bus.publish(ToolsChanged(key))

    async def wait_for(self, key: str, timeout: float) -> KernelSession | None:
        """Wait until session ``key`` is known and connected, or the deadline passes."""
        deadline = time.monotonic() + timeout
        while key not in self.sessions:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            changed = self._changed
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, 0.5))
            await self.scan()
        session = self.sessions[key]
        await session.wait_ready(max(deadline - time.monotonic(), 0.1))
        return session

    def _server_call(self, session: KernelSession, call: ServerCall) -> None:
        """A kernel calls the server's tools: the MCP front answers, where there is one."""
        if self.bus.wants(ServerCallAsked):
            self.bus.publish(ServerCallAsked(session.key, call))
            return
        text = "this kaimon process takes no tool calls (no MCP front runs in it)"
        with contextlib.suppress(KaimonError):
            session.gate.post(
                ServerCallResult(
                    call_id=call.call_id, content=[TextBlock(text=text)], is_error=True
                )
            )

    def agent_sessions(self) -> list[KernelSession]:
        """The sessions a call naming none may mean: an extension's process serves its
        tools, not the agent's code, so it is reached only by name."""
        return [s for s in self.sessions.values() if s.info.started_by != "extension"]

    def resolve(self, name: str | None) -> KernelSession:
        """The session called ``name`` (key, key prefix, label or namespace), or the only one."""
        sessions = list(self.sessions.values())
        if not name:
            sessions = self.agent_sessions()
            if len(sessions) == 1:
                return sessions[0]
            if not sessions:
                raise SessionNotFound(
                    "no kernel is served. The person can run `%load_ext kaimon_kernel` and "
                    "`%kaimon serve` in a notebook, or the agent can call start_session."
                )
            raise AmbiguousSession(
                f"{len(sessions)} sessions are served; name one with session=…:\n"
                + self.describe_all()
            )
        for match in (
            lambda s: s.key == name,
            lambda s: s.info.label == name,
            lambda s: s.info.namespace == name,
            lambda s: s.key.startswith(name),
        ):
            found = [s for s in sessions if match(s)]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise AmbiguousSession(
                    f"{name!r} matches {len(found)} sessions; use the key:\n"
                    + "\n".join(f"  {s.key}  {s.info.label}" for s in found)
                )
        raise SessionNotFound(
            f"no session is called {name!r}. Served sessions:\n"
            + (self.describe_all() or "  (none)")
        )

    def describe_all(self) -> str:
        return "\n".join(
            f"  {s.key}  label={s.info.label!r} namespace={s.info.namespace!r}"
            for s in self.sessions.values()
        )

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(
            *(session.close() for session in self.sessions.values()), return_exceptions=True
        )
        self.sessions.clear()
