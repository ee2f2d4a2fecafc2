"""The in-kernel half of kaimon."""

from ._callback import ToolCallError, call_tool, server_tools
from ._context import is_cancelled, progress, stash
from ._gate import (
    Gate,
    current_gate,
    list_tools,
    register,
    resume_after_restart,
    serve,
    stop,
    tool,
    unregister,
)
from ._magics import KaimonMagics, autoserve_from_env
from ._panel import push_panel
from ._schema import ToolArgumentError, ToolDefinitionError
from ._tools import GateTool

__all__ = [
    "Gate",
    "GateTool",
    "KaimonMagics",
    "ToolArgumentError",
    "ToolCallError",
    "ToolDefinitionError",
    "autoserve_from_env",
    "call_tool",
    "current_gate",
    "is_cancelled",
    "list_tools",
    "progress",
    "push_panel",
    "register",
    "resume_after_restart",
    "serve",
    "server_tools",
    "stash",
    "stop",
    "tool",
    "unregister",
]
