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

__version__ = "0.1.0"

# The gate's half loads on first use: `kaimon serve` never needs ipykernel or IPython, and
# importing them costs a server start 150 ms.
_GATE_NAMES = (
    "GateTool",
    "ToolArgumentError",
    "ToolCallError",
    "ToolDefinitionError",
    "call_tool",
    "is_cancelled",
    "list_tools",
    "progress",
    "push_panel",
    "register",
    "serve",
    "server_tools",
    "stash",
    "stop",
    "tool",
    "unregister",
)

__all__ = [
    "PROTOCOL_VERSION",
    "AmbiguousSession",
    "DeadKernelError",
    "KaimonError",
    "KernelTimeout",
    "ProtocolMismatch",
    "SessionNotFound",
    "load_ipython_extension",
    "unload_ipython_extension",
    *_GATE_NAMES,
]


def __getattr__(name: str) -> Any:
    if name in _GATE_NAMES:
        from . import gate

        value = getattr(gate, name)
        _publish(value)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kaimon_kernel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


def _publish(value: Any) -> None:
    """Public names say they come from ``kaimon_kernel``, not from a private module."""
    try:
        value.__module__ = "kaimon_kernel"
    except (AttributeError, TypeError):
        pass


def load_ipython_extension(ip: Any) -> None:
    """``%load_ext kaimon_kernel``: registers ``%kaimon``; serves at once if launched to."""
    from .gate import KaimonMagics, autoserve_from_env

    ip.register_magics(KaimonMagics)
    autoserve_from_env(ip)


def unload_ipython_extension(ip: Any) -> None:
    """``%unload_ext kaimon_kernel``: withdraws the kernel from agents."""
    from .gate import stop

    stop()


for _name in __all__:
    if _name in globals() and _name != "PROTOCOL_VERSION":
        _publish(globals()[_name])
