"""The job store: evaluations that outlived their ``ex`` call, kept in SQLite.

WAL mode and short transactions let two servers share one data directory; a corrupt
database is moved aside with a warning and a fresh one started.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .._paths import data_dir

__all__ = ["Job", "JobStatus", "JobStore"]

logger = logging.getLogger(__name__)

JobStatus = Literal["running", "completed", "failed", "cancelled", "lost"]
FINAL: tuple[JobStatus, ...] = ("completed", "failed", "cancelled", "lost")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    msg_id TEXT NOT NULL,
    session_key TEXT NOT NULL,
    session_id TEXT NOT NULL,
    kernel_pid INTEGER NOT NULL,
    code TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL,
    last_output_at REAL,
    stash TEXT NOT NULL DEFAULT '{}',
    last_progress TEXT,
    output TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
"""


@dataclass
class Job:
    id: str
    msg_id: str
    session_key: str
    session_id: str
    kernel_pid: int
    code: str
    status: JobStatus
    created_at: float
    finished_at: float | None = None
    last_output_at: float | None = None
    stash: dict[str, str] = field(default_factory=dict)
    last_progress: str | None = None
    output: str = ""
    reason: str = ""

    @property
    def elapsed(self) -> float:
        return (self.finished_at or time.time()) - self.created_at

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        data = dict(row)
        data["stash"] = json.loads(data["stash"] or "{}")
        return cls(**data)


class JobStore:
    """Jobs by id; every write is its own short transaction."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or data_dir() / "jobs.sqlite3"
        self.db = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as err:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            logger.warning("job store %s is corrupt (%s); moved to %s", self.path, err, aside)
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    src.rename(Path(str(aside) + suffix))
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL survives a crash of the server (what recovery is for) without an
        # fsync per block on the ex hot path.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=10000")
        with db:
            db.executescript(_SCHEMA)
        db.execute("SELECT count(*) FROM jobs").fetchone()
        self.path.chmod(0o600)
        return db

    def add(self, job: Job) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO jobs (id, msg_id, session_key, session_id, kernel_pid, code, status,"
                " created_at, last_output_at, stash, last_progress, output, reason)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.msg_id,
                    job.session_key,
                    job.session_id,
                    job.kernel_pid,
                    job.code,
                    job.status,
                    job.created_at,
                    job.last_output_at,
                    json.dumps(job.stash),
                    job.last_progress,
                    job.output,
                    job.reason,
                ),
            )

    def update(self, job_id: str, **fields: Any) -> None:
        """Set fields of a job; a job in a final status keeps that status."""
        if not fields:
            return
        if "stash" in fields:
            fields["stash"] = json.dumps(fields["stash"])
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.db:
            self.db.execute(
                f"UPDATE jobs SET {sets} WHERE id = ? AND status = 'running'",
                (*fields.values(), job_id),
            )

    def get(self, job_id: str) -> Job | None:
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    def find(self, prefix: str) -> list[Job]:
        """Jobs whose id starts with ``prefix`` (newest first, at most 5)."""
        rows = self.db.execute(
            "SELECT * FROM jobs WHERE substr(id, 1, ?) = ? ORDER BY created_at DESC LIMIT 5",
            (len(prefix), prefix),
        ).fetchall()
        return [Job.from_row(r) for r in rows]

    def list(self, status: str | None = None, limit: int = 20) -> list[Job]:
        if status:
            rows = self.db.execute(
                "SELECT * FROM jobs WHERE status = ? ORDER BY created_at DESC LIMIT ?",
                (status, limit),
            ).fetchall()
        else:
            rows = self.db.execute(
                "SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [Job.from_row(r) for r in rows]

    def running(self) -> list[Job]:
        return self.list("running", limit=10_000)

    def stats(self) -> dict[str, Any]:
        counts = dict(
            self.db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
        )
        row = self.db.execute(
            "SELECT avg(finished_at - created_at), max(finished_at - created_at) FROM jobs"
            " WHERE finished_at IS NOT NULL"
        ).fetchone()
        return {
            "counts": counts,
            "mean_duration_s": round(row[0], 3) if row[0] is not None else None,
            "max_duration_s": round(row[1], 3) if row[1] is not None else None,
        }

    def close(self) -> None:
        self.db.close()
