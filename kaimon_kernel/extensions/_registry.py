"""The extension registry: ``$JUPYTER_CONFIG_DIR/kaimon/extensions.json``.

``{"extensions": [{"project_path": ..., "enabled": true, "auto_start": true}]}``, written
atomically (0600) under a file lock, so that the CLI and every server may change it. A file
a person broke by hand is reported (:attr:`Registry.problem`), never fatal: it reads as empty
and is not overwritten until the person fixes or removes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from jupyter_core.paths import jupyter_config_dir
from pydantic import BaseModel, ConfigDict, ValidationError

from .._errors import KaimonError
from .._paths import write_private
from ._manifest import Manifest, ManifestError, load_manifest

__all__ = [
    "Entry",
    "Extension",
    "Registry",
    "RegistryError",
    "extensions",
    "find_extension",
    "registry_file",
    "registry_stamp",
]


class RegistryError(KaimonError):
    """The registry cannot be read or changed; the message says why and what to do."""


class Entry(BaseModel):
    """One registered extension."""

    model_config = ConfigDict(extra="ignore")

    project_path: str
    enabled: bool = True
    auto_start: bool = True


class _File(BaseModel):
    model_config = ConfigDict(extra="ignore")

    extensions: list[Entry] = []


def registry_file() -> Path:
    return Path(jupyter_config_dir()) / "kaimon" / "extensions.json"


def registry_stamp(path: Path | None = None) -> object:
    """Changes whenever the registry file does (None while there is none)."""
    try:
        stat = (path or registry_file()).stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


class Registry:
    """The registered extensions, as last read, plus any problem reading them."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or registry_file()
        self.entries: list[Entry] = []
        self.problem: str | None = None
        self.read()

    def read(self) -> Registry:
        """Read the file again; a broken file leaves no entries and sets :attr:`problem`."""
        self.entries, self.problem = [], None
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return self
        except OSError as err:
            self.problem = f"cannot read {self.path}: {err.strerror or err}"
            return self
        try:
            self.entries = _File.model_validate_json(text or "{}").extensions
        except (ValidationError, ValueError) as err:
            first = err.errors(include_url=False)[0] if isinstance(err, ValidationError) else {}
            where = ".".join(str(p) for p in first.get("loc", ())) or "the file"
            why = first.get("msg", str(err))
            self.problem = (
                f"the extension registry {self.path} is broken ({where}: {why}); fix it by "
                "hand, or delete it and add the extensions again with `kaimon extensions add`"
            )
        return self

    def find(self, project: str | Path) -> Entry | None:
        path = str(Path(project).expanduser().resolve())
        return next((e for e in self.entries if e.project_path == path), None)

    @contextlib.contextmanager
    def editing(self) -> Iterator[list[Entry]]:
        """Change the entries under the lock (read fresh first); written atomically after."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock", timeout=10):
            self.read()
            if self.problem:
                raise RegistryError(self.problem)
            yield self.entries
            data = _File(extensions=self.entries).model_dump()
            write_private(self.path, json.dumps(data, indent=1) + "\n")

    def set_enabled(self, project_path: str, enabled: bool) -> None:
        """Enable or disable the extension of ``project_path`` (written under the lock)."""
        with self.editing() as entries:
            for entry in entries:
                if entry.project_path == project_path:
                    entry.enabled = enabled


@dataclass
class Extension:
    """A registered extension as the supervisor and the tools see it."""

    #: Its name: the namespace, with ``_2``, ``_3`` … for later ones sharing it.
    name: str
    entry: Entry
    manifest: Manifest | None
    #: Why its manifest cannot be read (it cannot start), else None.
    problem: str | None = None

    @property
    def key(self) -> str:
        """Its session key: stable for its project, so a restart keeps its tool names."""
        return "x" + hashlib.sha1(self.entry.project_path.encode()).hexdigest()[:7]


def extensions(registry: Registry) -> list[Extension]:
    """Every registered extension with its manifest (or why it has none), named."""
    out: list[Extension] = []
    taken: set[str] = set()
    for entry in registry.entries:
        try:
            manifest: Manifest | None = load_manifest(entry.project_path)
            problem = None
        except ManifestError as err:
            manifest, problem = None, str(err)
        base = manifest.namespace if manifest else Path(entry.project_path).name or "extension"
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        taken.add(name)
        out.append(Extension(name, entry, manifest, problem))
    return out


def find_extension(registry: Registry, name: str) -> Extension:
    """The extension called ``name`` (or whose project path it is); a clear error if none."""
    found = extensions(registry)
    for ext in found:
        if name in (ext.name, ext.entry.project_path):
            return ext
    with contextlib.suppress(OSError):
        path = str(Path(name).expanduser().resolve())
        for ext in found:
            if ext.entry.project_path == path:
                return ext
    names = ", ".join(e.name for e in found) or "none is registered"
    extra = f"\n({registry.problem})" if registry.problem else ""
    raise RegistryError(f"no extension is called {name!r}; registered: {names}{extra}")
