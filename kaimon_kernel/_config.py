"""The person's kaimon.json (``$JUPYTER_CONFIG_DIR/kaimon.json``): reading it raw, and the
``projects`` list that ``kaimon projects add/remove`` edit.

Every key and how it is validated lives in :mod:`kaimon_kernel._settings`; this module only
edits the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ._errors import KaimonError
from ._paths import config_file
from ._settings import (
    DEFAULT_CANCEL_GRACE,
    DEFAULT_PROMOTE_AFTER,
    ENV_PREFIX,
    Settings,
    load_settings,
    read_config_file,
)

__all__ = [
    "DEFAULT_CANCEL_GRACE",
    "DEFAULT_PROMOTE_AFTER",
    "add_project",
    "allowed_projects",
    "load_config",
    "projects_overridden",
    "remove_project",
    "save_config",
]

PROJECTS_ENV = f"{ENV_PREFIX}PROJECTS"


def load_config() -> dict[str, Any]:
    """kaimon.json as written (keys checked, values not yet validated); {} when absent."""
    return read_config_file(config_file(), Settings)


def save_config(data: dict[str, Any]) -> None:
    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def allowed_projects() -> list[Path]:
    """The directories where agents may start kernels: ``$KAIMON_PROJECTS``, else kaimon.json.

    Read afresh on every call, so that ``kaimon projects add`` applies to a running server.
    """
    return load_settings().projects


def projects_overridden() -> bool:
    """Whether ``$KAIMON_PROJECTS`` is set, so that kaimon.json's list does not apply."""
    return bool(os.environ.get(PROJECTS_ENV, "").strip())


def _stored_projects() -> list[str]:
    projects = load_config().get("projects", [])
    if not isinstance(projects, list) or not all(isinstance(p, str) for p in projects):
        raise KaimonError(f"'projects' in {config_file()} must be a list of directories")
    return projects


def add_project(path: str) -> Path:
    """Allow agents to start kernels in ``path`` (stored in kaimon.json)."""
    project = Path(path).expanduser().resolve()
    if not project.is_dir():
        what = "a file" if project.exists() else "not there"
        raise KaimonError(f"{project} is {what}; give a project's directory")
    data = load_config()
    projects = _stored_projects()
    if str(project) not in projects:
        data["projects"] = [*projects, str(project)]
        save_config(data)
    return project


def remove_project(path: str) -> bool:
    """Disallow ``path``; False when it was not in kaimon.json's list."""
    project = str(Path(path).expanduser().resolve())
    data = load_config()
    projects = _stored_projects()
    if project not in projects:
        return False
    data["projects"] = [p for p in projects if p != project]
    save_config(data)
    return True
