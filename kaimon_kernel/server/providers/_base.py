"""What the server needs of a place where kernels live: the kernel-provider interface.

A provider finds served kernels, opens a transport to each, starts, interrupts, restarts and
stops kernels, and says whether one is alive. The local provider (this machine: session files,
jupyter_client's kernel manager, psutil) is the first; a Jupyter Server provider (REST and the
kernel WebSocket) plugs in beside it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from ..._protocol import SessionInfo
from .._transport import Transport

__all__ = ["KernelProvider", "LaunchRequest"]


@dataclass(frozen=True)
class LaunchRequest:
    """A kernel an agent asked for: where, with which Python, under which session key."""

    cwd: str
    key: str
    python: str | None = None
    label: str | None = None


class KernelProvider(Protocol):
    """One place kernels live. Every method is safe to call for any session it announced."""

    name: str

    def where(self) -> list[str]:
        """Where it looks for served kernels (directories, server URLs), said to the agent."""
        ...

    def discover(self) -> dict[str, SessionInfo]:
        """The kernels that say they are served, by session key (not yet verified)."""
        ...

    async def refresh(self) -> bool:
        """Look now (a remote provider polls its server; discover answers from what it saw);
        whether anything changed. The registry awaits it, bounded, before its first scan."""
        ...

    def pending(self) -> bool:
        """Whether some kernel could not be looked at yet (a remote kernel busy since before
        this server started): a job that runs there may still be found."""
        ...

    async def watch(self, changed: Callable[[], Awaitable[None]]) -> None:
        """Call ``changed`` whenever the announcements may have changed; runs until cancelled."""
        ...

    def connect(self, info: SessionInfo) -> Transport:
        """A transport to the kernel ``info`` announces."""
        ...

    def alive(self, info: SessionInfo, *, fresh: bool = False) -> bool:
        """Whether the kernel still runs (a verified identity, never a bare pid); a recent
        answer may be reused unless ``fresh``."""
        ...

    async def launch(self, request: LaunchRequest) -> None:
        """Start a kernel that serves the gate under ``request.key``; returns once started."""
        ...

    def owns(self, key: str) -> bool:
        """Whether this server started the kernel of session ``key``."""
        ...

    async def interrupt_signal(self, info: SessionInfo) -> bool:
        """Interrupt by the provider's own means (a signal); False where it has none."""
        ...

    async def restart(self, key: str) -> None:
        """Restart a kernel this server started (same session key)."""
        ...

    async def shutdown(self, key: str) -> None:
        """Stop a kernel this server started and withdraw its session."""
        ...

    async def close(self) -> None:
        """Stop every kernel this server started."""
        ...
