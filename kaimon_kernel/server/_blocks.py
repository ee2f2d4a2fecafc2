"""Blocks (from kmux): every ``ex`` is a block whose full output is kept on disk.

An agent reads any block's output later, page by page, without re-running it. Output text
goes to ``$JUPYTER_DATA_DIR/kaimon/blocks/<id>.txt``, at most :data:`BLOCK_MAX_CHARS` per
block. Eviction (checked every 50 blocks): beyond :data:`KEEP_BLOCKS` blocks or
:data:`KEEP_CHARS` characters in all, the oldest blocks (row and file) go first.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .._paths import data_dir

__all__ = ["Block", "BlockStore", "BlockWriter"]

logger = logging.getLogger(__name__)

BLOCK_MAX_CHARS = 50_000_000
KEEP_BLOCKS = 2000
KEEP_CHARS = 1_000_000_000
READ_CHUNK = 1 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    id TEXT PRIMARY KEY,
    session_key TEXT NOT NULL,
    code TEXT NOT NULL,
    who TEXT NOT NULL,
    started_at REAL NOT NULL,
    duration REAL,
    status TEXT NOT NULL,
    chars INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    images TEXT NOT NULL DEFAULT '[]',
    eval_id TEXT
);
CREATE INDEX IF NOT EXISTS blocks_session ON blocks (session_key, started_at);
"""


@dataclass
class Block:
    id: str
    session_key: str
    code: str
    who: str
    started_at: float
    duration: float | None
    status: str
    chars: int
    error: str | None
    images: list[dict[str, str]]
    eval_id: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Block:
        data = dict(row)
        data["images"] = json.loads(data["images"] or "[]")
        return cls(**data)


class BlockWriter:
    """Appends one block's output text to its file, up to the per-block bound."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.chars = 0
        self.cut = 0
        self._file: TextIO | None = path.open("w", encoding="utf-8", errors="replace", newline="")

    def write(self, text: str) -> None:
        if self._file is None or not text:
            return
        room = BLOCK_MAX_CHARS - self.chars
        if len(text) > room:
            self.cut += len(text) - max(room, 0)
            text = text[: max(room, 0)]
        if text:
            self._file.write(text)
            self.chars += len(text)

    def close(self) -> None:
        if self._file is not None:
            if self.cut:
                note = f"\n… [{self.cut:,} more characters were not kept] …\n"
                self._file.write(note)
                self.chars += len(note)  # chars is the file's length in characters
            self._file.close()
            self._file = None


class BlockStore:
    """Block rows in SQLite beside the jobs; output text in one file per block."""

    def __init__(self, db: sqlite3.Connection, directory: Path | None = None) -> None:
        self.db = db
        self.directory = directory or data_dir() / "blocks"
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self.db:
            self.db.executescript(_SCHEMA)
        self._started = 0

    def path(self, block_id: str) -> Path:
        return self.directory / f"{block_id}.txt"

    def start(self, session_key: str, code: str, who: str = "agent") -> tuple[str, BlockWriter]:
        block_id = uuid.uuid4().hex[:10]
        with self.db:
            self.db.execute(
                "INSERT INTO blocks (id, session_key, code, who, started_at, status)"
                " VALUES (?, ?, ?, ?, ?, 'running')",
                (block_id, session_key, code, who, time.time()),
            )
        self._started += 1
        if self._started % 50 == 1:
            self._evict()
        return block_id, BlockWriter(self.path(block_id))

    def finish(self, block_id: str, **fields: Any) -> None:
        if "images" in fields:
            fields["images"] = json.dumps(fields["images"])
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.db:
            self.db.execute(f"UPDATE blocks SET {sets} WHERE id = ?", (*fields.values(), block_id))

    def get(self, block_id: str) -> Block | None:
        row = self.db.execute("SELECT * FROM blocks WHERE id = ?", (block_id,)).fetchone()
        return Block.from_row(row) if row else None

    def find(self, prefix: str) -> list[Block]:
        rows = self.db.execute(
            "SELECT * FROM blocks WHERE substr(id, 1, ?) = ? ORDER BY started_at DESC LIMIT 5",
            (len(prefix), prefix),
        ).fetchall()
        return [Block.from_row(r) for r in rows]

    def history(self, session_key: str | None, limit: int) -> list[Block]:
        if session_key:
            rows = self.db.execute(
                "SELECT * FROM blocks WHERE session_key = ? ORDER BY started_at DESC LIMIT ?",
                (session_key, limit),
            ).fetchall()
        else:
            rows = self.db.execute(
                "SELECT * FROM blocks ORDER BY started_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [Block.from_row(r) for r in rows]

    def read(self, block: Block, offset: int, limit: int) -> tuple[str, int]:
        """Characters ``offset`` .. ``offset+limit`` of a block's output, and its length."""
        path = self.path(block.id)
        if not path.exists():
            return "", 0
        known = block.chars if block.status != "running" else None
        # Streamed in chunks: a page of a 50 M-character block never holds the whole text,
        # and a finished block's length comes from its row, not from reading to the end.
        with path.open(encoding="utf-8", errors="replace", newline="") as f:
            skipped = _skip(f, offset)
            page = f.read(limit) if skipped == offset else ""
            if known is not None:
                return page, known
            return page, skipped + len(page) + _skip(f, None)

    def _evict(self) -> None:
        rows = self.db.execute("SELECT id, chars FROM blocks ORDER BY started_at DESC").fetchall()
        total = 0
        doomed = []
        for index, row in enumerate(rows):
            total += row["chars"] or 0
            if index >= KEEP_BLOCKS or total > KEEP_CHARS:
                doomed.append(row["id"])
        for block_id in doomed:
            self.path(block_id).unlink(missing_ok=True)
        if doomed:
            with self.db:
                self.db.executemany("DELETE FROM blocks WHERE id = ?", [(b,) for b in doomed])
            logger.info("evicted %d old blocks", len(doomed))


def _skip(f: TextIO, count: int | None) -> int:
    """Read past ``count`` characters (None: to the end); how many there were."""
    skipped = 0
    while count is None or skipped < count:
        chunk = f.read(READ_CHUNK if count is None else min(count - skipped, READ_CHUNK))
        if not chunk:
            break
        skipped += len(chunk)
    return skipped
