"""Extensions: supervised processes that bring their own tools (see the README).

An extension is a Python project with a manifest (``kaimon.toml``) whose ``tools_function``
returns :class:`~kaimon_kernel.GateTool` s. ``kaimon serve`` runs it as a served kernel
(``started_by="extension"``) so every server lists its tools as ``<namespace>_<tool>``.

Names load on first use: the ``kaimon`` command and the extension process import only what
they need.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Manifest": "_manifest",
    "ManifestError": "_manifest",
    "load_manifest": "_manifest",
    "Entry": "_registry",
    "Extension": "_registry",
    "Registry": "_registry",
    "RegistryError": "_registry",
    "extensions": "_registry",
    "find_extension": "_registry",
    "Supervisor": "_service",
    "read_state": "_service",
    "send_request": "_service",
    "supervising": "_service",
    "ExtensionStatus": "_supervisor",
    "Runner": "_supervisor",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
