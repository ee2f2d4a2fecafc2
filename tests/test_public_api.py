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
    "ToolCallError",
    "ToolDefinitionError",
    "call_tool",
    "is_cancelled",
    "list_tools",
    "load_ipython_extension",
    "progress",
    "push_panel",
    "register",
    "serve",
    "server_tools",
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


def test_every_public_name_says_it_comes_from_kaimon_kernel() -> None:
    for name in PUBLIC:
        value = getattr(kaimon_kernel, name)
        if callable(value):
            assert value.__module__ == "kaimon_kernel", name


def test_no_private_helper_leaks_into_the_public_namespace() -> None:
    assert sorted(dir(kaimon_kernel)) == sorted(PUBLIC)


def loaded_after_import(module: str, candidates: tuple[str, ...]) -> list[str]:
    """Which of ``candidates`` a fresh interpreter has loaded after importing ``module``."""
    import ast
    import subprocess
    import sys

    code = f"import sys, {module}\nprint(sorted(m for m in {candidates!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return ast.literal_eval(out.stdout)


def test_the_server_half_imports_no_kernel_machinery() -> None:
    assert loaded_after_import("kaimon_kernel.server._run", ("ipykernel", "IPython")) == []


def test_the_core_imports_nothing_of_mcp() -> None:
    core = "kaimon_kernel.server._core"
    assert loaded_after_import(core, ("mcp", "uvicorn", "starlette")) == []
