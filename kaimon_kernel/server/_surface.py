"""What the agent is shown of the tools: which are listed, their annotations, compact schemas.

Every tool listed costs the agent's context on every turn, so ``tools/list`` carries only what
a model needs to pick a tool and fill in its arguments; the rest is in ``usage_instructions``.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Iterable
from typing import Any

from mcp.types import ToolAnnotations

from .._errors import InvalidArgument
from .._protocol import ToolSpec
from .._settings import ToolsSetting

__all__ = [
    "READ_ONLY",
    "ToolFilter",
    "changes",
    "compact_schema",
    "gate_annotations",
    "tidy_description",
]


class ToolFilter:
    """kaimon.json's ``"tools": {"allow": [...], "deny": [...]}``: shell-style patterns over
    MCP tool names. A tool is shown when it matches ``allow`` (if given) and not ``deny``.

    A hidden tool is not listed, and refused when called; a gate tool whose own name starts
    with ``_`` is callable but never listed."""

    def __init__(self, setting: ToolsSetting | None = None) -> None:
        setting = setting or ToolsSetting()
        self.allow = None if setting.allow is None else list(setting.allow)
        self.deny = list(setting.deny)

    def allows(self, name: str) -> bool:
        """Whether the person's lists let agents see and call ``name``."""
        if self.allow is not None and not _matches(name, self.allow):
            return False
        return not _matches(name, self.deny)

    def check_call(self, name: str) -> None:
        """Refuse a call to a tool the person hid, saying where it was hidden."""
        if self.allows(name):
            return
        outside = self.allow is not None and not _matches(name, self.allow)
        where = "is not in the tools.allow" if outside else "is in the tools.deny"
        raise InvalidArgument(
            f"the tool {name!r} is hidden from agents: it {where} list of the kaimon "
            "settings (kaimon.json). Use another tool, or ask the person to change that list."
        )

    @staticmethod
    def listed(spec: ToolSpec) -> bool:
        """Whether a gate tool is listed at all: ``_name`` tools are callable, not listed."""
        return not spec.name.startswith("_")


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def gate_annotations(spec: ToolSpec) -> ToolAnnotations | None:
    """The MCP annotations a gate tool asked for, or None when it said none."""
    hints = {
        "read_only_hint": spec.read_only,
        "destructive_hint": spec.destructive,
        "idempotent_hint": spec.idempotent,
        "open_world_hint": spec.open_world,
    }
    if all(v is None for v in hints.values()):
        return None
    return ToolAnnotations(**hints)


def tidy_description(text: str | None) -> str | None:
    """A docstring as one paragraph block: the SDK lists it with its source indentation."""
    return inspect.cleandoc(text) if text else text


def compact_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """An input schema without what costs bytes and tells a model little: titles, the
    ``anyOf [X, null]`` + ``default: null`` of an optional parameter (not required says it),
    a flag's ``default: false``, a count's ``minimum`` of 0 or 1, the ``type`` of an enum of
    strings. Calls are still validated against the full model; this is only what is listed."""
    out = {k: v for k, v in schema.items() if k != "title"}
    props = out.get("properties")
    if isinstance(props, dict):
        out["properties"] = {name: _compact_property(p) for name, p in props.items()}
    return out


def _compact_property(prop: Any) -> Any:
    if not isinstance(prop, dict):
        return prop
    prop = {k: v for k, v in prop.items() if k != "title"}
    if prop.get("type") == "boolean" and prop.get("default") is False:
        del prop["default"]  # a flag is off unless given
    if prop.get("type") == "integer" and prop.get("minimum") in (0, 1) and "default" in prop:
        del prop["minimum"]  # a count or an offset: its default says the range
    options = prop.get("anyOf")
    if isinstance(options, list) and prop.get("default", ...) is None:
        kept = [o for o in options if o != {"type": "null"}]
        if len(kept) == 1 and isinstance(kept[0], dict):
            del prop["anyOf"], prop["default"]
            prop = {**kept[0], **prop}
    enum = prop.get("enum")
    if prop.get("type") == "string" and isinstance(enum, list) and enum:
        if all(isinstance(v, str) for v in enum):
            del prop["type"]  # the choices say it
    return prop


#: Annotations of the built-in tools that only read kaimon's own state.
READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)


def changes(*, destructive: bool, idempotent: bool | None = None) -> ToolAnnotations:
    """Annotations of a built-in tool that changes kaimon's sessions or the person's files."""
    return ToolAnnotations(
        destructive_hint=destructive, idempotent_hint=idempotent, open_world_hint=False
    )
