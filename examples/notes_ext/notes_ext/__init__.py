"""An example kaimon extension: search a folder of notes (``$NOTES_DIR``, *.md and *.txt)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from kaimon_kernel import GateTool, progress

logger = logging.getLogger("notes_ext")

SUFFIXES = (".md", ".txt")


@dataclass
class Hit:
    """One matching line."""

    file: str
    line: int
    text: str


def notes_dir() -> Path:
    return Path(os.environ.get("NOTES_DIR", "~/notes")).expanduser()


def search(query: str, limit: int = 20) -> list[Hit]:
    """Find lines of the notes that contain ``query`` (case-insensitive), best files first."""
    root = notes_dir()
    if not root.is_dir():
        raise ValueError(f"the notes folder {root} does not exist; set NOTES_DIR")
    needle = query.lower()
    hits: list[Hit] = []
    files = sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    for n, path in enumerate(files, 1):
        progress(f"searching {path.name}", n, len(files))
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if needle in line.lower():
                hits.append(Hit(str(path.relative_to(root)), number, line.strip()))
                if len(hits) >= limit:
                    return hits
    return hits


def list_notes() -> list[str]:
    """Every note file, relative to the notes folder."""
    root = notes_dir()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in SUFFIXES)


def create_tools() -> list[GateTool]:
    return [GateTool("search", search), GateTool("list", list_notes)]


def on_shutdown() -> None:
    """Called (at most 5 s) when the extension is stopped."""
    mark = os.environ.get("NOTES_SHUTDOWN_MARK")
    if mark:
        Path(mark).write_text("notes_ext shut down\n")
    logger.warning("notes_ext: shutting down")
