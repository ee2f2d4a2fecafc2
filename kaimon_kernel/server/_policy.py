"""What agents may do where: the allowed project roots, paths they give, tool arguments.

A root is a directory in which an agent may start a kernel (and write an exported notebook):
the person's allowed projects (``kaimon projects add``, ``$KAIMON_PROJECTS``) and the
directory ``kaimon serve`` runs in, unless that directory is the filesystem root, the home
directory or one of its ancestors: a server started there would allow everything.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .._config import allowed_projects
from .._errors import InvalidArgument, NotAllowed
from .._settings import Settings

__all__ = [
    "BadPath",
    "NotAllowed",
    "allowed_roots",
    "check_within",
    "clean_path",
    "export_target",
    "folder_problem",
    "is_within",
    "relative_base",
    "too_wide",
]

# Portable limits (Linux's NAME_MAX and PATH_MAX; macOS and Windows are lower or equal).
NAME_MAX = 255
PATH_MAX = 4096


class BadPath(InvalidArgument):
    """A path an agent gave cannot be used (NUL byte, over-long name, ambiguous base...)."""


def too_wide(directory: str | os.PathLike[str]) -> str | None:
    """Why ``directory`` is too wide to allow implicitly (None when it is not)."""
    path = Path(directory).resolve()
    if path.parent == path:
        return "the filesystem root"
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError, OSError):  # no home directory known
        return None
    if path == home:
        return "the home directory"
    if path in home.parents:
        return "a parent of the home directory"
    return None


def allowed_roots(where: Settings | str | os.PathLike[str]) -> list[Path]:
    """The allowed roots for a server running in ``where`` (a directory, or the Settings'
    ``cwd``): that directory unless :func:`too_wide`, then the allowed projects.

    The projects are read afresh (environment, else kaimon.json) on every call, so that one
    the person adds while the server runs applies at once.
    """
    cwd = Path(where.cwd if isinstance(where, Settings) else where).resolve()
    roots = [] if too_wide(cwd) else [cwd]
    for project in allowed_projects():
        project = project.resolve()
        if project not in roots:
            roots.append(project)
    return roots


def is_within(path: Path, roots: Iterable[Path]) -> bool:
    """Whether the resolved ``path`` is one of ``roots`` or inside one."""
    return any(path == root or root in path.parents for root in roots)


def check_within(path: Path, roots: Sequence[Path], action: str = "use") -> Path:
    """``path`` when it lies within ``roots``; else :class:`NotAllowed` saying how to allow it.

    ``path`` must already be resolved (see :func:`clean_path`), so that a symlink cannot lead
    out of a root.
    """
    if is_within(path, roots):
        return path
    listing = "\n".join(f"  {r}" for r in roots) or "  (none yet)"
    raise NotAllowed(
        f"{path} is not in an allowed project, so agents may not {action} it. The person can "
        f"allow it with `kaimon projects add {path}`. Allowed:\n{listing}"
    )


def clean_path(raw: str, base: Path | Callable[[], Path] | None, what: str = "path") -> Path:
    """``raw`` (``~`` expanded, relative to ``base``) resolved to an absolute path, or
    :class:`BadPath` saying what is wrong with it.

    ``base`` may be a function, called only for a relative path (it may raise BadPath);
    None refuses a relative path.
    """
    if not raw or not raw.strip():
        raise BadPath(f"{what} is empty; give a directory")
    if "\x00" in raw:
        raise BadPath(f"{what} contains a NUL byte (\\x00), which no file name may hold")
    encoded = os.fsencode(raw)
    if len(encoded) > PATH_MAX:
        raise BadPath(f"{what} is {len(encoded)} bytes long; paths are limited to {PATH_MAX}")
    for part in Path(raw).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise BadPath(
                f"{what} has a name of {len(os.fsencode(part))} bytes ({part[:40]!r}…); "
                f"file names are limited to {NAME_MAX}"
            )
    try:
        path = Path(raw).expanduser()
    except RuntimeError as err:  # ~user that does not exist
        raise BadPath(f"{what} {raw!r}: {err}") from None
    if not path.is_absolute():
        if base is None:
            raise BadPath(f"{what} {raw!r} is relative; give an absolute path")
        path = (base() if callable(base) else base) / path
    try:
        return path.resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop, a name the system refuses
        raise BadPath(f"{what} {raw!r} cannot be resolved: {err}") from None


def folder_problem(path: Path) -> str | None:
    """Why ``path`` is not an existing directory (None when it is one)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"{path} does not exist; give an existing directory"
    except NotADirectoryError:
        return f"{path} is not a directory (a file stands in its path)"
    except OSError as err:
        return f"{path} cannot be used: {err.strerror or err}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is a file, not a directory; give the folder (e.g. {path.parent})"
    return None


def relative_base(session_dirs: Iterable[str], server_dir: str | os.PathLike[str]) -> Path:
    """What a relative path an agent gives is relative to, when no session is named.

    The served session's directory when there is one (or several, all in one directory);
    with none, the server's directory unless it is :func:`too_wide`. Otherwise
    :class:`BadPath` asking for an absolute path: never a guess, never ``/``.
    """
    dirs = sorted({str(Path(d)) for d in session_dirs})
    if len(dirs) == 1:
        return Path(dirs[0])
    if len(dirs) > 1:
        raise BadPath(
            "a relative path is ambiguous with several sessions in different directories ("
            + ", ".join(dirs)
            + "); give an absolute path"
        )
    why = too_wide(server_dir)
    if why:
        raise BadPath(
            f"a relative path needs a base: no session is served and the server's directory "
            f"({Path(server_dir).resolve()}) is {why}; give an absolute path"
        )
    return Path(server_dir).resolve()


def export_target(raw: str, base: Path | None, roots: Sequence[Path]) -> Path:
    """Where an export of ``raw`` may write: resolved against ``base`` (the session's folder;
    None refuses a relative path), a file name ending in .ipynb, inside ``roots``."""
    target = clean_path(raw, base, "the export path")
    if target.is_dir():
        raise BadPath(f"{target} is a folder; give a file name ending in .ipynb inside it")
    if target.suffix != ".ipynb":
        raise BadPath(f"{target} must end in .ipynb")
    check_within(target.parent, roots, "write into")
    return target
