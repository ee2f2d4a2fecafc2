"""The SQLite store of jobs and blocks, shared by every kaimon process on the machine.

One connection, owned by one thread: every SQLite call of this process runs there, in the
order it was asked, so the event loop never waits on the disk or on another process's lock.
Reads are awaited (:meth:`Database.run`); writes on the hot path are queued
(:meth:`Database.post`): a queued write that fails is logged and kept in
:attr:`Database.errors`, never dropped silently.

At start: the file and its ``-wal``/``-shm`` are made 0600 and its folder 0700, the schema is
migrated by ``PRAGMA user_version`` (:data:`MIGRATIONS`), and ``PRAGMA quick_check`` runs; a
database that fails it (a bad header, corrupt pages) is moved aside with a warning and a
fresh one is started.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import queue
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .._errors import StoreError

__all__ = ["MIGRATIONS", "Database", "migrate", "prefix_range", "secure_dir"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
KEEP_ERRORS = 100

#: Schema steps; step ``n`` (1-based) takes a store from ``user_version`` n-1 to n. Append,
#: never edit: a store made by any earlier kaimon migrates without loss.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the schema from before versions were counted (IF NOT EXISTS keeps such a store)
    (
        """CREATE TABLE IF NOT EXISTS jobs (
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
        )""",
        "CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at)",
        """CREATE TABLE IF NOT EXISTS blocks (
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
        )""",
        "CREATE INDEX IF NOT EXISTS blocks_session ON blocks (session_key, started_at)",
    ),
    # 2: listing by status, retention of finished jobs, history across sessions
    (
        "CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created_at)",
        "CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at)",
        "CREATE INDEX IF NOT EXISTS blocks_started ON blocks (started_at)",
    ),
    # 3: which server follows a job (JSON identity): another server recovers only orphans
    ("ALTER TABLE jobs ADD COLUMN server TEXT",),
    # 4: every tool call of every server (the dashboard's Activity), the panels that
    # sessions pushed (push_panel), their gate tools, and the remote sessions servers reach,
    # for readers in other processes
    (
        """CREATE TABLE IF NOT EXISTS activity (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            started_at REAL NOT NULL,
            client TEXT NOT NULL,
            server_pid INTEGER NOT NULL,
            transport TEXT NOT NULL,
            tool TEXT NOT NULL,
            arguments TEXT NOT NULL,
            session_key TEXT,
            block_id TEXT,
            eval_id TEXT,
            duration REAL,
            status TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS activity_status ON activity (status)",
        """CREATE TABLE IF NOT EXISTS panels (
            session_key TEXT PRIMARY KEY,
            panel TEXT NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS session_tools (
            session_key TEXT PRIMARY KEY,
            tools TEXT NOT NULL,
            updated_at REAL NOT NULL
        )""",
        # sessions a server reaches through another provider (no session file here)
        """CREATE TABLE IF NOT EXISTS remote_sessions (
            session_key TEXT NOT NULL,
            server_pid INTEGER NOT NULL,
            provider TEXT NOT NULL,
            info TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (session_key, server_pid)
        )""",
    ),
)

_CORRUPT = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)  # type: ignore[attr-defined]


class _Corrupt(sqlite3.DatabaseError):
    """quick_check found damage."""


def _is_corrupt(err: BaseException) -> bool:
    code = getattr(err, "sqlite_errorcode", None)  # an extended code: the low byte is the kind
    return isinstance(err, _Corrupt) or (code is not None and code & 0xFF in _CORRUPT)


def secure_dir(path: Path) -> None:
    """Create ``path`` 0700, or make it 0700 if it exists with group/other access."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.name != "posix":
        return
    st = path.stat()
    if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.getuid():
        path.chmod(0o700)


def _private_file(path: Path, create: bool) -> None:
    """0600 whatever the umask; SQLite gives ``-wal``/``-shm`` the database file's mode."""
    if create:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        os.close(fd)
    if os.name == "posix" and path.exists():
        if stat.S_IMODE(path.stat().st_mode) != 0o600:
            path.chmod(0o600)


def prefix_range(prefix: str) -> tuple[str, str | None]:
    """``(low, high)`` with ``low <= id < high`` exactly when ``id`` starts with ``prefix``.

    A range on the primary key is served by its index; ``substr(id, …) = ?`` is not.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:  # no UTF-8 for surrogates: step over them
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return prefix, "".join(chars)
        chars.pop()
    return prefix, None


class Database:
    """One SQLite file, one connection, one thread that runs every call in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        #: Failures of queued writes (newest last), kept to be reported.
        self.errors: collections.deque[StoreError] = collections.deque(maxlen=KEEP_ERRORS)
        #: Where a damaged store was moved at start, if it was.
        self.moved_aside: Path | None = None
        self._queue: queue.SimpleQueue[tuple[Callable[[sqlite3.Connection], Any], Any, str]] = (
            queue.SimpleQueue()
        )
        self._closed = False
        self._open_error: StoreError | None = None
        self._thread = threading.Thread(target=self._main, name="kaimon-store", daemon=True)
        self._thread.start()

    # -- the API, for any thread --------------------------------------------------------

    def submit(
        self, fn: Callable[[sqlite3.Connection], T], what: str
    ) -> concurrent.futures.Future[T]:
        """Run ``fn(connection)`` in the store's thread; ``what`` names it in errors."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self._closed:
            future.set_exception(StoreError(f"the store {self.path} is closed ({what})"))
            return future
        self._queue.put((fn, future, what))
        return future

    async def run(self, fn: Callable[[sqlite3.Connection], T], what: str) -> T:
        """``fn(connection)`` run in the store's thread, awaited without blocking the loop.

        Raises :class:`StoreError` saying what failed and what to do.
        """
        return await asyncio.wrap_future(self.submit(fn, what))

    def post(self, fn: Callable[[sqlite3.Connection], Any], what: str) -> None:
        """Queue a write without waiting; a failure is logged and kept in :attr:`errors`."""
        if self._closed:
            self._keep(StoreError(f"the store {self.path} is closed; lost: {what}"))
            return
        self._queue.put((fn, None, what))

    def call(self, fn: Callable[[sqlite3.Connection], T], what: str) -> T:
        """``fn(connection)`` run in the store's thread, waited for: not on the event loop."""
        return self.submit(fn, what).result()

    async def flush(self) -> None:
        """Wait until every write queued so far is done."""
        await self.run(lambda db: None, "flush")

    def take_errors(self) -> list[StoreError]:
        """The failures of queued writes since the last call, oldest first."""
        taken = []
        while self.errors:
            taken.append(self.errors.popleft())
        return taken

    def close(self) -> None:
        """Finish the queued writes and close; blocks the calling thread until done."""
        if not self._closed:
            self._closed = True
            self._queue.put((_STOP, None, "close"))
        if threading.current_thread() is not self._thread:
            self._thread.join()

    async def aclose(self) -> None:
        """:meth:`close`, awaited in a worker thread."""
        await asyncio.to_thread(self.close)

    # -- the store's thread -------------------------------------------------------------

    def _main(self) -> None:
        db: sqlite3.Connection | None = None
        try:
            db = self._open()
        except Exception as err:  # every call then fails with this, saying why
            self._open_error = StoreError(
                f"could not open the kaimon store {self.path}: {err}. Check that its folder "
                "is writable and the disk not full, then restart the kaimon server"
            )
            self._open_error.__cause__ = err
            logger.error("%s", self._open_error)
        while True:
            fn, future, what = self._queue.get()
            if fn is _STOP:
                break
            if future is not None and not future.set_running_or_notify_cancel():
                continue
            try:
                if db is None:
                    assert self._open_error is not None
                    raise self._open_error
                result = fn(db)
            except BaseException as err:
                error = err if isinstance(err, StoreError) else self._error(err, what)
                if error is not err:
                    error.__cause__ = err
                if future is not None:
                    future.set_exception(error)
                else:
                    self._keep(error)
            else:
                if future is not None:
                    future.set_result(result)
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()
        while True:  # asked for as the store closed: say so rather than never answer
            try:
                fn, future, what = self._queue.get_nowait()
            except queue.Empty:
                break
            closed = StoreError(f"the store {self.path} is closed; not done: {what}")
            if future is not None:
                future.set_exception(closed)
            elif fn is not _STOP:
                self._keep(closed)

    def _keep(self, error: StoreError) -> None:
        logger.error("kaimon store: %s", error)
        self.errors.append(error)

    def _error(self, err: BaseException, what: str) -> StoreError:
        code = (getattr(err, "sqlite_errorcode", None) or 0) & 0xFF
        if _is_corrupt(err):
            return StoreError(
                f"the kaimon store {self.path} is damaged ({err}) while {what}. Stop the "
                f"kaimon servers and move {self.path.name} (and its -wal and -shm files) "
                "aside; the next start makes a fresh store. Running code is not affected"
            )
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):  # type: ignore[attr-defined]
            return StoreError(
                f"the kaimon store {self.path} stayed locked by another process for "
                f"{BUSY_TIMEOUT_MS // 1000} s while {what}; try again"
            )
        if isinstance(err, OSError):
            return StoreError(f"{what} failed: {err}; check the folder's permissions and space")
        return StoreError(f"the kaimon store {self.path} failed while {what}: {err}")

    def _open(self) -> sqlite3.Connection:
        secure_dir(self.path.parent)
        try:
            return self._connect()
        except sqlite3.DatabaseError as err:
            if not _is_corrupt(err):  # locked, read-only, disk full: not a reason to drop it
                raise
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    src.rename(Path(f"{aside}{suffix}"))
            self.moved_aside = aside
            logger.warning(
                "kaimon store %s is damaged (%s); moved it to %s and started a fresh one",
                self.path,
                err,
                aside,
            )
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        _private_file(self.path, create=True)
        for suffix in ("-wal", "-shm"):
            _private_file(Path(f"{self.path}{suffix}"), create=False)
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            _use_wal(db)
            # WAL + NORMAL survives a crash of the server (what recovery is for) without an
            # fsync per block on the ex hot path.
            db.execute("PRAGMA synchronous=NORMAL")
            problems = [row[0] for row in db.execute("PRAGMA quick_check(5)").fetchall()]
            if problems != ["ok"]:
                raise _Corrupt("quick_check: " + "; ".join(problems))
            migrate(db)
        except BaseException:
            db.close()
            raise
        for suffix in ("-wal", "-shm"):
            _private_file(Path(f"{self.path}{suffix}"), create=False)
        return db


def _use_wal(db: sqlite3.Connection) -> None:
    """Switch to WAL. SQLite does not wait on the busy timeout for this switch, so servers
    opening one new store together got "database is locked": wait here, as long."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _STOP(db: sqlite3.Connection) -> None:
    """Marks the end of the queue."""


def migrate(db: sqlite3.Connection) -> int:
    """Bring the schema to the newest version; returns that version.

    One transaction, with the version read inside it, so two servers starting together
    migrate once. A store from a newer kaimon is used as it is.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for step, statements in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in statements:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {step}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    if version > len(MIGRATIONS):
        logger.warning(
            "kaimon store is version %d, newer than this kaimon's %d; using it as it is",
            version,
            len(MIGRATIONS),
        )
    return max(version, len(MIGRATIONS))
