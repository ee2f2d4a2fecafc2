"""The public names are pinned: removing or renaming one is a breaking change."""

import kaimon_kernel

PUBLIC = [
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


def test_public_names_are_pinned() -> None:
    assert sorted(kaimon_kernel.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert hasattr(kaimon_kernel, name), name
