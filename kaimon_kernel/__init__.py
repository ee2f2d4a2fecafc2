"""kaimon-kernel: a gate between AI agents (MCP) and live Jupyter kernels.

In a kernel: ``%load_ext kaimon_kernel`` then ``%kaimon serve``, or :func:`serve` from code.
For agents: run ``kaimon serve`` (stdio) or ``kaimon serve --http``.
"""

from __future__ import annotations

from typing import Any

from ._errors import (
    AmbiguousSession,
    DeadKernelError,
    KaimonError,
    KernelTimeout,
    ProtocolMismatch,
    SessionNotFound,
)
from ._protocol import PROTOCOL_VERSION
from .gate import (
    GateTool,
    ToolArgumentError,
    ToolDefinitionError,
    is_cancelled,
    list_tools,
    progress,
    register,
    serve,
    stash,
    stop,
    tool,
    unregister,
)

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "AmbiguousSession",
    "DeadKernelError",
    "GateTool",
    "KaimonError",
    "KernelTimeout",
    "ProtocolMismatch",
    "SessionNotFound",
    "ToolArgumentError",
    "ToolDefinitionError",
    "is_cancelled",
    "list_tools",
    "load_ipython_extension",
    "progress",
    "register",
    "serve",
    "stash",
    "stop",
    "tool",
    "unload_ipython_extension",
    "unregister",
]


def load_ipython_extension(ip: Any) -> None:
    """``%load_ext kaimon_kernel``: registers ``%kaimon``; serves at once if launched to."""
    from .gate import KaimonMagics, autoserve_from_env

    ip.register_magics(KaimonMagics)
    autoserve_from_env(ip)


def unload_ipython_extension(ip: Any) -> None:
    """``%unload_ext kaimon_kernel``: withdraws the kernel from agents."""
    stop()
