"""The job store: evaluations that outlived their ``ex`` call, kept in SQLite.

The rows live in the shared :class:`~._db.Database` (WAL, short transactions, so two servers
share one data directory); reads are awaited, writes queued in order on its thread.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .._errors import StoreError
from .._paths import data_dir
from ._db import Database, prefix_range

__all__ = ["KEEP_JOBS", "KEEP_JOB_DAYS", "Job", "JobStatus", "JobStore", "recent_jobs"]

logger = logging.getLogger(__name__)

JobStatus = Literal["running", "completed", "failed", "cancelled", "lost"]

#: Retention: finished jobs beyond the newest KEEP_JOBS, or finished over KEEP_JOB_DAYS days
#: ago, are deleted (checked at start and every EVICT_EVERY jobs); running jobs never are.
KEEP_JOBS = 5000
KEEP_JOB_DAYS = 30
EVICT_EVERY = 100

_COLUMNS = (
    "id, msg_id, session_key, session_id, kernel_pid, code, status, created_at, finished_at,"
    " last_output_at, stash, last_progress, output, reason, server"
)


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
    #: The server following it (a ProcessIdentity as JSON); None in stores from before.
    server: str | None = None

    @property
    def elapsed(self) -> float:
        return (self.finished_at or time.time()) - self.created_at

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        data = dict(row)
        data["stash"] = json.loads(data["stash"] or "{}")
        return cls(**data)


class JobStore:
    """Jobs by id, in the shared :class:`Database`: reads awaited, writes queued in order."""

    def __init__(self, db: Database | Path | None = None) -> None:
        self._owned = not isinstance(db, Database)
        self.db = db if isinstance(db, Database) else Database(db or data_dir() / "jobs.sqlite3")
        self._added = 0
        self.db.post(_evict, "evicting old jobs")

    @property
    def path(self) -> Path:
        return self.db.path

    def add(self, job: Job) -> None:
        """Queue the job's row; a later read in this process sees it."""
        row = (
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
            job.server,
        )

        def add(db: sqlite3.Connection) -> None:
            with db:
                db.execute(
                    "INSERT INTO jobs (id, msg_id, session_key, session_id, kernel_pid, code,"
                    " status, created_at, last_output_at, stash, last_progress, output, reason,"
                    " server) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )

        self.db.post(add, f"saving job {job.id}")
        self._added += 1
        if self._added % EVICT_EVERY == 0:
            self.db.post(_evict, "evicting old jobs")

    def update(self, job_id: str, **fields: Any) -> None:
        """Queue setting fields of a job; a job in a final status keeps that status."""
        if not fields:
            return
        if "stash" in fields:
            fields["stash"] = json.dumps(fields["stash"])
        sets = ", ".join(f"{k} = ?" for k in fields)
        values = (*fields.values(), job_id)

        def update(db: sqlite3.Connection) -> None:
            with db:
                db.execute(f"UPDATE jobs SET {sets} WHERE id = ? AND status = 'running'", values)

        self.db.post(update, f"saving job {job_id}")

    async def get(self, job_id: str) -> Job | None:
        def get(db: sqlite3.Connection) -> Job | None:
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return Job.from_row(row) if row else None

        return await self.db.run(get, f"reading job {job_id}")

    async def find(self, prefix: str) -> list[Job]:
        """Jobs whose id starts with ``prefix`` (newest first, at most 5)."""
        low, high = prefix_range(prefix)

        def find(db: sqlite3.Connection) -> list[Job]:
            where, args = ("id >= ? AND id < ?", (low, high)) if high else ("id >= ?", (low,))
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE {where} ORDER BY created_at DESC LIMIT 5",
                args,
            ).fetchall()
            return [Job.from_row(r) for r in rows]

        return await self.db.run(find, f"looking up job {prefix!r}")

    async def list(self, status: str | None = None, limit: int = 20) -> list[Job]:
        """Jobs, newest first, of one status or all."""
        return await self.db.run(lambda db: _list(db, status, limit), "listing jobs")

    async def running(self) -> list[Job]:
        return await self.list("running", limit=10_000)

    async def stats(self) -> dict[str, Any]:
        """Counts per status, mean and longest duration of finished jobs."""
        return await self.db.run(_stats, "counting jobs")

    def close(self) -> None:
        """Close the database if this store opened it (not on the event loop)."""
        if self._owned:
            self.db.close()


def _list(db: sqlite3.Connection, status: str | None, limit: int) -> list[Job]:
    if status:
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE status = ? ORDER BY created_at DESC LIMIT ?",
            (status, limit),
        ).fetchall()
    else:
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)
        ).fetchall()
    return [Job.from_row(r) for r in rows]


def _stats(db: sqlite3.Connection) -> dict[str, Any]:
    counts = dict(db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
    row = db.execute(
        "SELECT avg(finished_at - created_at), max(finished_at - created_at) FROM jobs"
        " WHERE finished_at IS NOT NULL"
    ).fetchone()
    return {
        "counts": counts,
        "mean_duration_s": round(row[0], 3) if row[0] is not None else None,
        "max_duration_s": round(row[1], 3) if row[1] is not None else None,
    }


def _evict(db: sqlite3.Connection) -> None:
    cutoff = time.time() - KEEP_JOB_DAYS * 86400
    with db:
        gone = db.execute(
            "DELETE FROM jobs WHERE status != 'running' AND (finished_at < ? OR id IN ("
            " SELECT id FROM jobs WHERE status != 'running'"
            " ORDER BY created_at DESC LIMIT -1 OFFSET ?))",
            (cutoff, KEEP_JOBS),
        ).rowcount
    if gone:
        logger.info("evicted %d old jobs", gone)


def recent_jobs(limit: int = 200, path: Path | None = None) -> list[Job]:
    """The newest jobs, read directly (for processes other than the server: the gate's
    ``%kaimon jobs``); an empty list when there is no store yet.

    Raises :class:`StoreError` when the store cannot be read.
    """
    path = path or data_dir() / "jobs.sqlite3"
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(path, timeout=5)
        try:
            db.row_factory = sqlite3.Row
            return _list(db, None, limit)
        finally:
            db.close()
    except sqlite3.OperationalError as err:
        if "no such table" in str(err):
            return []
        raise StoreError(f"could not read the kaimon store {path}: {err}") from err
    except sqlite3.DatabaseError as err:
        raise StoreError(
            f"the kaimon store {path} is damaged ({err}); the next `kaimon serve` moves it "
            "aside and starts a fresh one"
        ) from err
