"""The user's kaimon settings: ``$JUPYTER_CONFIG_DIR/kaimon.json``.

Keys: ``promote_after`` and ``cancel_grace`` (seconds), ``projects`` (directories where
agents may start kernels, besides the server's working directory).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._errors import KaimonError
from ._paths import config_file

DEFAULT_PROMOTE_AFTER = 30.0
DEFAULT_CANCEL_GRACE = 3.0

__all__ = [
    "DEFAULT_CANCEL_GRACE",
    "DEFAULT_PROMOTE_AFTER",
    "add_project",
    "allowed_projects",
    "load_config",
    "remove_project",
    "save_config",
]


def load_config() -> dict[str, Any]:
    path = config_file()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise KaimonError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise KaimonError(f"{path} must hold a JSON object")
    return data


def save_config(data: dict[str, Any]) -> None:
    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def allowed_projects() -> list[Path]:
    projects = load_config().get("projects", [])
    if not isinstance(projects, list):
        raise KaimonError(f"'projects' in {config_file()} must be a list of directories")
    return [Path(p) for p in projects]


def add_project(path: str) -> Path:
    project = Path(path).expanduser().resolve()
    if not project.is_dir():
        raise KaimonError(f"{project} is not a directory")
    data = load_config()
    projects = [str(p) for p in allowed_projects()]
    if str(project) not in projects:
        data["projects"] = [*projects, str(project)]
        save_config(data)
    return project


def remove_project(path: str) -> bool:
    project = str(Path(path).expanduser().resolve())
    data = load_config()
    projects = [str(p) for p in allowed_projects()]
    if project not in projects:
        return False
    data["projects"] = [p for p in projects if p != project]
    save_config(data)
    return True
