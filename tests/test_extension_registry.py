"""The manifest and the registry, in-process: parsing, naming, atomic and locked writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kaimon_kernel.extensions._manifest import ManifestError, load_manifest
from kaimon_kernel.extensions._registry import (
    Entry,
    Registry,
    RegistryError,
    extensions,
    find_extension,
)

MANIFEST = '[extension]\nnamespace = "{ns}"\nmodule = "m"\ntools_function = "create_tools"\n'


def make(tmp_path: Path, name: str, ns: str = "notes", extra: str = "") -> Path:
    root = tmp_path / name
    root.mkdir()
    (root / "kaimon.toml").write_text(MANIFEST.format(ns=ns) + extra)
    return root


def test_an_unknown_field_is_named_with_the_known_ones(tmp_path: Path) -> None:
    root = make(tmp_path, "a", extra='tui_file = "panel.jl"\n')
    with pytest.raises(ManifestError) as err:
        load_manifest(root)
    assert "tui_file: is not a manifest field (known: namespace, module" in str(err.value)


def test_bad_toml_is_reported_with_the_file(tmp_path: Path) -> None:
    root = tmp_path / "b"
    root.mkdir()
    (root / "kaimon.toml").write_text("[extension\n")
    with pytest.raises(ManifestError, match=r"kaimon.toml is not valid TOML"):
        load_manifest(root)


def test_the_interpreter_is_the_projects_venv_else_kaimons_own(tmp_path: Path) -> None:
    root = make(tmp_path, "c", extra='env = { DATA = "~/data", N = "1" }\n')
    assert load_manifest(root).interpreter() == sys.executable
    venv_python = root / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("")
    manifest = load_manifest(root)
    assert manifest.interpreter() == str(venv_python)
    assert manifest.environment() == {"DATA": str(Path.home() / "data"), "N": "1"}


def test_extensions_sharing_a_namespace_are_named_apart(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "extensions.json")
    with registry.editing() as entries:
        for name in ("one", "two"):
            entries.append(Entry(project_path=str(make(tmp_path, name))))
        entries.append(Entry(project_path=str(tmp_path / "gone")))
    found = extensions(registry)
    assert [e.name for e in found] == ["notes", "notes_2", "gone"]
    assert found[2].manifest is None and "is not a directory" in (found[2].problem or "")
    assert len({e.key for e in found}) == 3
    assert find_extension(registry, "notes_2").entry.project_path.endswith("two")
    with pytest.raises(RegistryError, match="no extension is called 'x'; registered: notes"):
        find_extension(registry, "x")


def test_the_registry_is_written_whole_and_private(tmp_path: Path) -> None:
    path = tmp_path / "kaimon" / "extensions.json"
    registry = Registry(path)
    with registry.editing() as entries:
        entries.append(Entry(project_path="/p", auto_start=False))
    assert json.loads(path.read_text()) == {
        "extensions": [{"project_path": "/p", "enabled": True, "auto_start": False}]
    }
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_a_broken_registry_is_a_problem_and_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "extensions.json"
    path.write_text('{"extensions": "all of them"}')
    registry = Registry(path)
    assert registry.entries == []
    assert "is broken (extensions: Input should be a valid array)" in (registry.problem or "")
    with pytest.raises(RegistryError, match="is broken"), registry.editing():
        pass
    assert path.read_text() == '{"extensions": "all of them"}'
