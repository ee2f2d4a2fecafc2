"""Extensions: supervised processes that bring their own tools (see the README).

An extension is a Python project with a manifest (``kaimon.toml``) whose ``tools_function``
returns :class:`~kaimon_kernel.GateTool` s. ``kaimon serve`` runs it as a served kernel
(``started_by="extension"``) so every server lists its tools as ``<namespace>_<tool>``.
"""

from ._manifest import Manifest, ManifestError, load_manifest
from ._registry import Entry, Extension, Registry, RegistryError, extensions, find_extension
from ._service import Supervisor, read_state, send_request, supervising
from ._supervisor import ExtensionStatus, Runner

__all__ = [
    "Entry",
    "Extension",
    "ExtensionStatus",
    "Manifest",
    "ManifestError",
    "Registry",
    "RegistryError",
    "Runner",
    "Supervisor",
    "extensions",
    "find_extension",
    "load_manifest",
    "read_state",
    "send_request",
    "supervising",
]
