"""The ``kaimon serve`` half: discovery, kernel clients, MCP tools and transports."""

from ._core import Kaimon, ServerOptions
from ._discovery import Registry
from ._kernel import Execution, KernelSession
from ._run import serve_forever
from ._tools import build_mcp

__all__ = [
    "Execution",
    "Kaimon",
    "KernelSession",
    "Registry",
    "ServerOptions",
    "build_mcp",
    "serve_forever",
]
