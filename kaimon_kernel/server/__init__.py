"""The ``kaimon serve`` half: providers, transports, the core, and the MCP front.

The core (sessions, executions, jobs, blocks, gate tools) imports nothing of MCP; the front
(``build_mcp``, ``serve_forever``) loads only when asked for, so a dashboard reading the core
does not pay for the MCP SDK.
"""

from typing import Any

from ._core import Kaimon, ServerOptions
from ._execution import Execution
from ._kernel import KernelSession
from ._sessions import Registry

__all__ = [
    "Execution",
    "Kaimon",
    "KernelSession",
    "Registry",
    "ServerOptions",
    "build_mcp",
    "serve_forever",
]


def __getattr__(name: str) -> Any:
    if name == "build_mcp":
        from ._mcp import build_mcp

        return build_mcp
    if name == "serve_forever":
        from ._run import serve_forever

        return serve_forever
    raise AttributeError(f"module 'kaimon_kernel.server' has no attribute {name!r}")
