"""Blocks (from kmux): every ``ex`` is a block whose full output is kept on disk.

An agent reads any block's output later, page by page, without re-running it. Output text
goes to ``$JUPYTER_DATA_DIR/kaimon/blocks/<id>.txt``, at most :data:`BLOCK_MAX_CHARS` per
block. Block files are 0600 in a 0700 folder; rows live in the shared :class:`~._db.Database`.
Eviction (checked every 50 blocks): beyond :data:`KEEP_BLOCKS` blocks or
:data:`KEEP_CHARS` characters in all, the oldest blocks (row and file) go first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from .._errors import KaimonError, StoreError
from .._paths import data_dir
from ._db import Database, prefix_range, secure_dir

__all__ = ["Block", "BlockStore", "BlockWriter", "notebook_chunks", "write_new_file"]

logger = logging.getLogger(__name__)

BLOCK_MAX_CHARS = 50_000_000
KEEP_BLOCKS = 2000
KEEP_CHARS = 1_000_000_000
READ_CHUNK = 1 << 20
EXPORT_OUTPUT_CHARS = 200_000
NAME_MAX = 255
EVICT_EVERY = 50

_COLUMNS = "id, session_key, code, who, started_at, duration, status, chars, error, images, eval_id"
_FILE_FLAGS = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_BINARY", 0)
)


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

    def __init__(self, path: Path, fd: int | None = None) -> None:
        self.path = path
        self.chars = 0
        self.cut = 0
        if fd is None:
            fd = os.open(path, _FILE_FLAGS, 0o600)
        self._file: TextIO | None = open(
            fd, "w", encoding="utf-8", errors="replace", newline="", buffering=1 << 16
        )

    def write(self, text: str) -> None:
        if self._file is None or not text:
            return
        room = BLOCK_MAX_CHARS - self.chars
        if len(text) > room:
            self.cut += len(text) - max(room, 0)
            text = text[: max(room, 0)]
        if text:
            try:
                self._file.write(text)
            except OSError as err:  # disk full: keep the kernel's reader going, say so once
                self._fail(err)
                return
            self.chars += len(text)

    def _fail(self, err: OSError) -> None:
        logger.error("block file %s: %s; the rest of its output is not kept", self.path, err)
        assert self._file is not None
        with contextlib.suppress(OSError):
            self._file.close()
        self._file = None

    def close(self) -> None:
        if self._file is not None:
            if self.cut:
                note = f"\n… [{self.cut:,} more characters were not kept] …\n"
                self._file.write(note)
                self.chars += len(note)  # chars is the file's length in characters
            try:
                self._file.close()
            except OSError as err:  # disk full at the last flush: the row says so
                logger.error("block file %s: %s", self.path, err)
            self._file = None


class BlockStore:
    """Block rows in the shared :class:`Database`; output text in one 0600 file per block.

    Rows are read by awaiting, written in order on the store's thread; pages of a block's
    file are read in a worker thread, so neither blocks the event loop.
    """

    def __init__(self, db: Database, directory: Path | None = None) -> None:
        self.db = db
        self.directory = directory or data_dir() / "blocks"
        secure_dir(self.directory)
        self._started = 0

    def path(self, block_id: str) -> Path:
        return self.directory / f"{block_id}.txt"

    async def start(
        self, session_key: str, code: str, who: str = "agent"
    ) -> tuple[str, BlockWriter]:
        """A new block's id and the writer of its output file.

        Raises :class:`StoreError` when its row or file cannot be created: code that
        cannot be recorded should not be run.
        """
        block_id = uuid.uuid4().hex[:10]
        path = self.path(block_id)
        row = (block_id, session_key, code, who, time.time())

        def start(db: sqlite3.Connection) -> int:
            fd = os.open(path, _FILE_FLAGS, 0o600)
            try:
                with db:
                    db.execute(
                        "INSERT INTO blocks (id, session_key, code, who, started_at, status)"
                        " VALUES (?, ?, ?, ?, ?, 'running')",
                        row,
                    )
            except BaseException:
                os.close(fd)
                path.unlink(missing_ok=True)
                raise
            return fd

        future = self.db.submit(start, f"recording a block in {self.directory}")
        try:
            fd = await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:  # the caller gave up: the code will not run
            future.add_done_callback(lambda f: self._abandon(block_id, f))
            raise
        self._started += 1
        if self._started % EVICT_EVERY == 1:
            self.db.post(self._evict, "evicting old blocks")
        return block_id, BlockWriter(path, fd)

    def _abandon(self, block_id: str, started: concurrent.futures.Future[int]) -> None:
        if not started.cancelled() and started.exception() is None:
            os.close(started.result())
            self.finish(block_id, status="not run")

    def finish(self, block_id: str, **fields: Any) -> None:
        """Queue the block's outcome (status, duration, chars, error, images)."""
        if "images" in fields:
            fields["images"] = json.dumps(fields["images"])
        sets = ", ".join(f"{k} = ?" for k in fields)
        values = (*fields.values(), block_id)

        def finish(db: sqlite3.Connection) -> None:
            with db:
                db.execute(f"UPDATE blocks SET {sets} WHERE id = ?", values)

        self.db.post(finish, f"saving block {block_id}")

    async def get(self, block_id: str) -> Block | None:
        def get(db: sqlite3.Connection) -> Block | None:
            row = db.execute(f"SELECT {_COLUMNS} FROM blocks WHERE id = ?", (block_id,)).fetchone()
            return Block.from_row(row) if row else None

        return await self.db.run(get, f"reading block {block_id}")

    async def find(self, prefix: str) -> list[Block]:
        """Blocks whose id starts with ``prefix`` (newest first, at most 5)."""
        low, high = prefix_range(prefix)

        def find(db: sqlite3.Connection) -> list[Block]:
            where, args = ("id >= ? AND id < ?", (low, high)) if high else ("id >= ?", (low,))
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM blocks WHERE {where} ORDER BY started_at DESC LIMIT 5",
                args,
            ).fetchall()
            return [Block.from_row(r) for r in rows]

        return await self.db.run(find, f"looking up block {prefix!r}")

    async def history(self, session_key: str | None, limit: int) -> list[Block]:
        """A session's blocks (all sessions' with None), newest first."""

        def history(db: sqlite3.Connection) -> list[Block]:
            if session_key:
                rows = db.execute(
                    f"SELECT {_COLUMNS} FROM blocks WHERE session_key = ?"
                    " ORDER BY started_at DESC LIMIT ?",
                    (session_key, limit),
                ).fetchall()
            else:
                rows = db.execute(
                    f"SELECT {_COLUMNS} FROM blocks ORDER BY started_at DESC LIMIT ?", (limit,)
                ).fetchall()
            return [Block.from_row(r) for r in rows]

        return await self.db.run(history, "reading the history of blocks")

    async def read(self, block: Block, offset: int, limit: int) -> tuple[str, int]:
        """Characters ``offset`` .. ``offset+limit`` of a block's output, and its length."""
        return await asyncio.get_running_loop().run_in_executor(
            _bulk(), self.read_sync, block, offset, limit
        )

    def read_sync(self, block: Block, offset: int, limit: int) -> tuple[str, int]:
        """:meth:`read` in the calling thread (never the event loop's: it reads the disk).

        Raises :class:`StoreError` when the file cannot be read.
        """
        path = self.path(block.id)
        known = block.chars if block.status != "running" else None
        # Streamed in chunks: a page of a 50 M-character block never holds the whole text,
        # and a finished block's length comes from its row, not from reading to the end.
        try:
            with path.open(encoding="utf-8", errors="replace", newline="") as f:
                skipped = _skip(f, offset)
                page = f.read(limit) if skipped == offset else ""
                if known is not None:
                    return page, known
                return page, skipped + len(page) + _skip(f, None)
        except FileNotFoundError:
            return "", 0
        except OSError as err:
            raise StoreError(
                f"could not read block {block.id}'s output ({path}): {err}; check the "
                "file's permissions"
            ) from err

    async def export(self, blocks: list[Block], target: Path, overwrite: bool = False) -> None:
        """Write ``blocks`` as a notebook at ``target`` (resolved, absolute), in a worker thread.

        Never replaces an existing file unless ``overwrite``; see :func:`write_new_file`.
        Raises :class:`KaimonError` saying what was wrong.
        """
        await asyncio.get_running_loop().run_in_executor(
            _bulk(), self._export, blocks, target, overwrite
        )

    def _export(self, blocks: list[Block], target: Path, overwrite: bool) -> None:
        write_new_file(target, notebook_chunks(blocks, self.read_sync), overwrite)

    def _evict(self, db: sqlite3.Connection) -> None:
        # a running block (a long job's) is never evicted under it
        rows = db.execute(
            "SELECT id, chars FROM blocks WHERE status != 'running' ORDER BY started_at DESC"
        ).fetchall()
        total = 0
        doomed = []
        for index, row in enumerate(rows):
            total += row["chars"] or 0
            if index >= KEEP_BLOCKS or total > KEEP_CHARS:
                doomed.append(row["id"])
        for block_id in doomed:
            self.path(block_id).unlink(missing_ok=True)
        if doomed:
            with db:
                db.executemany("DELETE FROM blocks WHERE id = ?", [(b,) for b in doomed])
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


def notebook_chunks(
    blocks: list[Block], read: Callable[[Block, int, int], tuple[str, int]]
) -> Iterator[bytes]:
    """The blocks as an nbformat 4.5 notebook, in pieces: one code cell each, with its
    (bounded) output, stream, images and error as the block kept them.

    Built as plain JSON (nbformat's constructors validate every cell, 3 s for 2,000), a
    cell at a time, letting other threads run between cells: the event loop never waits
    long for the GIL while a big export runs in a worker thread.
    """
    yield b'{\n "cells": [\n'
    for count, block in enumerate(blocks, start=1):
        outputs: list[dict[str, Any]] = []
        text, total = read(block, 0, EXPORT_OUTPUT_CHARS)
        if total > EXPORT_OUTPUT_CHARS:
            text += f"\n… [{total - EXPORT_OUTPUT_CHARS:,} more characters in block {block.id}]"
        if text:
            outputs.append({"output_type": "stream", "name": "stdout", "text": text})
        for image in block.images:
            outputs.append(
                {
                    "output_type": "display_data",
                    "data": {image["mime"]: image["data"], "text/plain": "<image>"},
                    "metadata": {},
                }
            )
        if block.error:
            ename, _, evalue = block.error.partition(": ")
            outputs.append(
                {"output_type": "error", "ename": ename, "evalue": evalue, "traceback": []}
            )
        cell = {
            "cell_type": "code",
            "execution_count": count,
            "id": block.id,
            "metadata": {
                "kaimon": {
                    "block_id": block.id,
                    "who": block.who,
                    "status": block.status,
                    "duration": block.duration,
                }
            },
            "outputs": outputs,
            "source": block.code,
        }
        sep = b",\n" if count < len(blocks) else b"\n"
        yield json.dumps(cell, indent=1, sort_keys=True, ensure_ascii=False).encode() + sep
        time.sleep(0)  # hand the GIL to a waiting thread (the event loop)
    tail = {"metadata": {"kernelspec": _KERNELSPEC}, "nbformat": 4, "nbformat_minor": 5}
    yield b" ],\n" + json.dumps(tail, indent=1, sort_keys=True)[2:].encode() + b"\n"


def write_new_file(target: Path, data: bytes | Iterable[bytes], overwrite: bool = False) -> None:
    """Write ``data`` (bytes, or pieces of them) at ``target`` (absolute, symlinks resolved)
    as the person's own file.

    The bytes go to a temporary file in the target's folder, then take the name in one
    step: ``os.link`` (fails if the name exists: nothing is replaced) or, with
    ``overwrite``, ``os.replace`` (replaces a link itself, never what it points to). The
    folder is opened one component at a time without following links, so a link swapped
    in meanwhile makes it fail rather than write elsewhere. Missing folders are created.
    The file's mode follows the umask, as any file the person makes.
    Raises :class:`KaimonError` saying what was wrong.
    """
    for part in target.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise KaimonError(
                f"{part[:40]!r}… in {str(target)[:200]!r} is {len(os.fsencode(part))} bytes "
                f"long; a file or folder name has at most {NAME_MAX}: choose a shorter one"
            )
    try:
        if os.name == "posix" and {os.open, os.link, os.rename} <= os.supports_dir_fd:
            _write_at(target, data, overwrite)
        else:
            _write_plain(target, data, overwrite)
    except FileExistsError:
        raise KaimonError(
            f"{target} already exists; pass overwrite=true to replace it, or choose another name"
        ) from None
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise KaimonError(
                f"a folder in {target} is not a plain folder (it is, or just became, a link or "
                "a file); nothing was written. Choose a path inside a real folder"
            ) from err
        if err.errno == errno.ENAMETOOLONG:
            raise KaimonError(f"{str(target)[:200]!r}…: the name is too long") from err
        raise KaimonError(f"could not write {target}: {err.strerror or err}") from err


_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _open_folder(folder: Path) -> int:
    fd = os.open(folder.anchor, _DIR_FLAGS)
    try:
        for name in folder.parts[1:]:
            try:
                child = os.open(name, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o777, dir_fd=fd)
                child = os.open(name, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_at(target: Path, data: bytes, overwrite: bool) -> None:
    folder = _open_folder(target.parent)
    name = target.name
    try:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode):
                raise KaimonError(
                    f"{target} is a folder; give a file name ending in .ipynb inside it"
                )
        tmp = f".kaimon-export-{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, _NEW_FILE, 0o666, dir_fd=folder)
        try:
            with open(fd, "wb") as f:
                _write_all(f, data)
                f.flush()
                os.fsync(f.fileno())
            if overwrite:
                os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
                return
            try:
                os.link(tmp, name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
            except OSError as err:
                if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                # no hard links here (some FUSE, FAT): create the name exclusively instead
                fd = os.open(name, _NEW_FILE, 0o666, dir_fd=folder)
                with open(fd, "wb") as f, open(tmp, "rb", opener=_at(folder)) as src:
                    shutil.copyfileobj(src, f)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=folder)
    finally:
        os.close(folder)


def _write_plain(target: Path, data: bytes, overwrite: bool) -> None:
    """Where ``dir_fd`` is not offered (Windows): still no overwrite unless asked."""
    if target.is_dir():
        raise KaimonError(f"{target} is a folder; give a file name ending in .ipynb inside it")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite:
        with target.open("xb") as f:
            _write_all(f, data)
        return
    tmp = target.with_name(f".kaimon-export-{secrets.token_hex(6)}.tmp")
    try:
        with tmp.open("wb") as f:
            _write_all(f, data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _write_all(f: BinaryIO, data: bytes | Iterable[bytes]) -> None:
    for chunk in [data] if isinstance(data, bytes) else data:
        f.write(chunk)


def _at(folder: int) -> Callable[[str, int], int]:
    return lambda name, flags: os.open(name, flags | _NOFOLLOW, dir_fd=folder)


_KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
_bulk_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _bulk() -> concurrent.futures.ThreadPoolExecutor:
    """Threads for reading pages and exporting: niced where the OS allows, so a big export
    competes less with the event loop and the kernels for the CPU."""
    global _bulk_pool
    if _bulk_pool is None:
        _bulk_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="kaimon-bulk", initializer=_lower_priority
        )
    return _bulk_pool


def _lower_priority() -> None:
    with contextlib.suppress(AttributeError, OSError):  # per-thread nice: Linux only
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
