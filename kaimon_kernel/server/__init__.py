"""The ``kaimon serve`` half: discovery, kernel clients, MCP tools and transports."""

from ._core import Kaimon, ServerOptions
from ._execution import Execution
from ._kernel import KernelSession
from ._mcp import build_mcp
from ._run import serve_forever
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
