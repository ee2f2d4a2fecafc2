"""An extension's manifest: ``kaimon.toml`` (``[extension]``), or ``[tool.kaimon.extension]``
in the project's ``pyproject.toml``. Read with :mod:`tomllib`, checked by pydantic; every
problem names the file, the field and what to do."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .._errors import KaimonError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["EVENT_TOPICS", "Manifest", "ManifestError", "load_manifest"]

#: What an extension may list in ``event_topics`` (its ``on_event(topic, data, session)``).
EVENT_TOPICS = (
    "session_started",
    "session_ended",
    "eval_started",
    "eval_finished",
    "job_finished",
    "tool_call_finished",
)

_NAMESPACE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ManifestError(KaimonError, ValueError):
    """An extension's manifest (or the code it names) is not usable; the message says why."""


class Manifest(BaseModel):
    """The ``[extension]`` table: what to import, what it is called, how to run it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field(description="prefix of the extension's tool names: notes → notes_search")
    module: str = Field(description="the module to import (dotted)")
    tools_function: str = Field(description="a function of the module returning GateTools")
    description: str = ""
    shutdown_function: str | None = None
    panel: str | None = None
    python: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    event_topics: list[str] = Field(default_factory=list)
    #: The project directory (not in the file: where the file was found).
    project: Path = Field(default=Path("."), exclude=True)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not _NAMESPACE.match(value):
            raise ValueError(
                f"{value!r} is not a valid namespace: use 1-32 letters, digits or _, starting "
                'with a letter (e.g. namespace = "notes"); tools are named <namespace>_<tool>'
            )
        return value

    @field_validator("module")
    @classmethod
    def _module(cls, value: str) -> str:
        if not _DOTTED.match(value):
            raise ValueError(f"{value!r} is not a module name (like notes_ext or pkg.tools)")
        return value

    @field_validator("tools_function", "shutdown_function")
    @classmethod
    def _function(cls, value: str | None) -> str | None:
        if value is not None and not _IDENT.match(value):
            raise ValueError(f"{value!r} is not a function name (like create_tools)")
        return value

    @field_validator("panel")
    @classmethod
    def _panel(cls, value: str | None) -> str | None:
        module, _, name = (value or "").partition(":")
        if value is not None and not (_DOTTED.match(module) and _IDENT.match(name)):
            raise ValueError(
                f"{value!r} is not a panel: give module:Class (like notes_ext.panel:NotesPanel)"
            )
        return value

    @field_validator("event_topics")
    @classmethod
    def _topics(cls, value: list[str]) -> list[str]:
        unknown = [t for t in value if t not in EVENT_TOPICS]
        if unknown:
            raise ValueError(
                f"unknown topic{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
                f"; known: {', '.join(EVENT_TOPICS)}"
            )
        return value

    def interpreter(self) -> str:
        """The Python that runs the extension: ``python`` (relative to the project), else the
        project's ``.venv``, else kaimon's own."""
        if self.python:
            path = Path(self.python).expanduser()
            return str(path if path.is_absolute() else self.project / path)
        for candidate in (
            self.project / ".venv" / "bin" / "python",
            self.project / ".venv" / "Scripts" / "python.exe",
        ):
            if candidate.exists():
                return str(candidate)
        return sys.executable

    def environment(self) -> dict[str, str]:
        """``env`` with ``~`` expanded in values."""
        return {
            k: str(Path(v).expanduser()) if v.startswith("~") else v for k, v in self.env.items()
        }


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ManifestError(f"{path} is not valid TOML: {err}") from None
    except OSError as err:
        raise ManifestError(f"cannot read {path}: {err.strerror or err}") from None


def load_manifest(project: str | Path) -> Manifest:
    """The manifest of the extension project at ``project``; raises :class:`ManifestError`."""
    root = Path(project).expanduser().resolve()
    if not root.is_dir():
        raise ManifestError(f"{root} is not a directory: give the extension's project folder")
    kaimon_toml, pyproject = root / "kaimon.toml", root / "pyproject.toml"
    if kaimon_toml.is_file():
        where, table = kaimon_toml, _read_toml(kaimon_toml).get("extension")
        section = "[extension]"
    elif pyproject.is_file():
        data = _read_toml(pyproject)
        where, table = pyproject, data.get("tool", {}).get("kaimon", {}).get("extension")
        section = "[tool.kaimon.extension]"
    else:
        raise ManifestError(
            f"{root} has no kaimon.toml (nor a pyproject.toml with [tool.kaimon.extension]): "
            'write one with an [extension] table: namespace = "...", module = "...", '
            'tools_function = "..."'
        )
    if not isinstance(table, dict):
        raise ManifestError(
            f"{where} has no {section} table: add one with namespace, module and tools_function"
        )
    try:
        return Manifest(**{**table, "project": root})
    except ValidationError as err:
        lines = []
        for e in err.errors(include_url=False):
            field = ".".join(str(p) for p in e["loc"]) or "?"
            why = e["msg"].removeprefix("Value error, ")
            if e["type"] == "missing":
                why = f"is required: add {field} = ... to {section}"
            elif e["type"] == "extra_forbidden":
                why = (
                    "is not a manifest field (known: "
                    + ", ".join(n for n in Manifest.model_fields if n != "project")
                    + ")"
                )
            lines.append(f"{field}: {why}")
        raise ManifestError(f"{where} {section}:\n  " + "\n  ".join(lines)) from None
