"""Where kaimon keeps its state; every location follows Jupyter's path conventions.

- session files: ``<jupyter_runtime_dir>/kaimon/session-<key>.json`` (``JUPYTER_RUNTIME_DIR``)
- token and job store: ``<jupyter_data_dir>/kaimon/`` (``JUPYTER_DATA_DIR``)
- user config: ``<jupyter_config_dir>/kaimon.json`` (``JUPYTER_CONFIG_DIR``)
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from jupyter_core.paths import (
    jupyter_config_dir,
    jupyter_data_dir,
    jupyter_runtime_dir,
    secure_write,
)

__all__ = [
    "config_file",
    "data_dir",
    "load_or_create_token",
    "resume_file_for",
    "sessions_dir",
    "token_file",
    "write_private",
]

TOKEN_ENV = "KAIMON_TOKEN"


def sessions_dir() -> Path:
    """The folder of session files (created 0700 on first use)."""
    path = Path(jupyter_runtime_dir()) / "kaimon"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def resume_file_for(connection_file: str) -> Path:
    """Marks a served kernel: if its owner restarts it (same connection file), serve again."""
    digest = hashlib.sha1(os.path.abspath(connection_file).encode()).hexdigest()[:16]
    return sessions_dir() / f"resume-{digest}.json"


def data_dir() -> Path:
    """The folder of kaimon's persistent data (token, jobs)."""
    path = Path(jupyter_data_dir()) / "kaimon"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def config_file() -> Path:
    return Path(jupyter_config_dir()) / "kaimon.json"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by the owner only (0600)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with secure_write(str(tmp)) as f:
        f.write(text)
    os.replace(tmp, path)


def token_file() -> Path:
    return data_dir() / "token"


def load_or_create_token() -> str:
    """The HTTP bearer token: ``$KAIMON_TOKEN``, else the stored one, generated once."""
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        return env
    path = token_file()
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    write_private(path, token + "\n")
    return token
