"""The store of jobs and blocks: its thread, migrations, retention, integrity, file modes,
and how an export writes the person's file."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path

import nbformat
import pytest
from fakes import job
from hypothesis import given
from hypothesis import strategies as st

from kaimon_kernel._errors import KaimonError, StoreError
from kaimon_kernel.server import _blocks, _jobs
from kaimon_kernel.server._blocks import Block, BlockStore, write_new_file
from kaimon_kernel.server._db import MIGRATIONS, Database, prefix_range
from kaimon_kernel.server._jobs import Job, JobStore
from kaimon_kernel.server._policy import allowed_roots, export_target

# The schema as kaimon wrote it before PRAGMA user_version was counted (version 0).
OLD_JOBS = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, msg_id TEXT NOT NULL, session_key TEXT NOT NULL,
    session_id TEXT NOT NULL, kernel_pid INTEGER NOT NULL, code TEXT NOT NULL,
    status TEXT NOT NULL, created_at REAL NOT NULL, finished_at REAL, last_output_at REAL,
    stash TEXT NOT NULL DEFAULT '{}', last_progress TEXT, output TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
"""
OLD_BLOCKS = """
CREATE TABLE IF NOT EXISTS blocks (
    id TEXT PRIMARY KEY, session_key TEXT NOT NULL, code TEXT NOT NULL, who TEXT NOT NULL,
    started_at REAL NOT NULL, duration REAL, status TEXT NOT NULL,
    chars INTEGER NOT NULL DEFAULT 0, error TEXT, images TEXT NOT NULL DEFAULT '[]',
    eval_id TEXT
);
CREATE INDEX IF NOT EXISTS blocks_session ON blocks (session_key, started_at);
"""


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def old_store(path: Path, blocks: bool = True) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(OLD_JOBS + (OLD_BLOCKS if blocks else ""))
    db.execute(
        "INSERT INTO jobs (id, msg_id, session_key, session_id, kernel_pid, code, status,"
        " created_at, finished_at, stash, output) VALUES"
        " ('abc123', 'm1', 'k', 's', 7, 'x = 1', 'completed', ?, ?, '{\"n\": \"3\"}', 'out')",
        (time.time() - 5, time.time()),
    )
    if blocks:
        db.execute(
            "INSERT INTO blocks (id, session_key, code, who, started_at, status, chars)"
            " VALUES ('b0b0b0', 'k', 'print(1)', 'agent', 1.0, 'ok', 2)"
        )
    db.close()


@pytest.mark.parametrize("blocks", [True, False], ids=["jobs and blocks", "jobs only"])
def test_a_store_made_by_the_previous_kaimon_migrates_without_loss(
    tmp_path: Path, blocks: bool
) -> None:
    path = tmp_path / "jobs.sqlite3"
    old_store(path, blocks)
    db = Database(path)
    jobs, store = JobStore(db), BlockStore(db, tmp_path / "blocks")

    async def read() -> tuple[Job | None, list[Block]]:
        return await jobs.get("abc123"), await store.history("k", 5)

    kept, history = asyncio.run(read())
    version = db.call(lambda c: c.execute("PRAGMA user_version").fetchone()[0], "version")
    indexes = db.call(
        lambda c: {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='index'")},
        "indexes",
    )
    db.close()
    assert version == len(MIGRATIONS)
    assert kept is not None and (kept.code, kept.stash, kept.output) == ("x = 1", {"n": "3"}, "out")
    assert [b.id for b in history] == (["b0b0b0"] if blocks else [])
    assert {"jobs_status", "jobs_finished", "blocks_started"} <= indexes


def test_two_servers_opening_one_new_store_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    dbs = [Database(path) for _ in range(4)]
    versions = [d.call(lambda c: c.execute("PRAGMA user_version").fetchone()[0], "v") for d in dbs]
    for d in dbs:
        d.close()
    assert versions == [len(MIGRATIONS)] * 4


def test_id_prefix_lookups_search_the_primary_key_and_find_exactly_the_prefix(
    tmp_path: Path,
) -> None:
    db = Database(tmp_path / "jobs.sqlite3")
    jobs = JobStore(db)
    for job_id in ("0fff", "1000", "1001", "10ff", "1100", "ffff"):
        jobs.add(job(job_id))

    async def finds() -> dict[str, list[str]]:
        return {p: sorted(j.id for j in await jobs.find(p)) for p in ("10", "1", "f", "x", "")}

    statements: list[str] = []
    db.call(lambda c: c.set_trace_callback(statements.append), "trace")
    found = asyncio.run(finds())
    db.call(lambda c: c.set_trace_callback(None), "trace off")
    lookup = next(s for s in statements if "id >=" in s and "id <" in s)
    plan = db.call(
        lambda c: " ".join(r[-1] for r in c.execute(f"EXPLAIN QUERY PLAN {lookup}")), "plan"
    )
    db.close()
    assert found["10"] == ["1000", "1001", "10ff"]
    assert found["1"] == ["1000", "1001", "10ff", "1100"]
    assert found["f"] == ["ffff"]
    assert found["x"] == []
    assert len(found[""]) == 5  # everything matches; at most 5 are returned
    assert "sqlite_autoindex_jobs_1 (id>? AND id<?)" in plan, plan


@given(
    prefix=st.text(st.characters(blacklist_categories=("Cs",)), max_size=4),
    other=st.text(st.characters(blacklist_categories=("Cs",)), max_size=6),
)
def test_the_prefix_range_holds_exactly_the_strings_with_that_prefix(
    prefix: str, other: str
) -> None:
    low, high = prefix_range(prefix)
    # SQLite compares TEXT as UTF-8 bytes, which orders as code points do
    for text in (prefix + other, other):
        inside = text >= low and (high is None or text < high)
        assert inside == text.startswith(prefix), (text, low, high)


def test_finished_jobs_beyond_retention_are_evicted_and_running_jobs_never(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_jobs, "KEEP_JOBS", 3)
    db = Database(tmp_path / "jobs.sqlite3")
    jobs = JobStore(db)
    now = time.time()
    old = now - (_jobs.KEEP_JOB_DAYS + 1) * 86400
    jobs.add(job("0a", "running", created_at=old))  # running for 31 days: kept
    jobs.add(job("0b", "completed", created_at=old, finished_at=old))  # too old: evicted
    for i in range(5):  # the two oldest of these are beyond KEEP_JOBS
        jobs.add(job(f"1{i}", "failed", created_at=now - 10 + i, finished_at=now))
    JobStore(db)  # a store's start checks retention

    async def ids() -> list[str]:
        return sorted(j.id for j in await jobs.list(limit=100))

    left = asyncio.run(ids())
    db.close()
    assert left == ["0a", "12", "13", "14"]


def corrupt_pages(path: Path, first_page: int) -> None:
    """Overwrite every page from ``first_page`` (0-based) on, leaving the header intact."""
    size = path.stat().st_size
    page = 4096
    assert size > page * (first_page + 4), size
    with path.open("r+b") as f:
        for offset in range(page * first_page, size, page):
            f.seek(offset)
            f.write(b"\xde\xad\xbe\xef" * (page // 4))


def filled_store(path: Path) -> None:
    db = Database(path)
    jobs = JobStore(db)
    for i in range(200):
        jobs.add(job(f"{i:04x}", "completed", output=f"output {i} " + "y" * 3000))
    db.call(lambda c: c.execute("PRAGMA wal_checkpoint(TRUNCATE)"), "checkpoint")
    db.close()


def test_a_store_with_corrupt_pages_but_an_intact_header_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jobs.sqlite3"
    filled_store(path)
    corrupt_pages(path, first_page=20)  # the header page and the schema stay readable
    with caplog.at_level(logging.WARNING):
        db = Database(path)
        jobs = JobStore(db)

        async def use() -> list[Job]:
            jobs.add(job("fresh"))
            return await jobs.list()

        listed = asyncio.run(use())
        db.close()
    assert [j.id for j in listed] == ["fresh"]
    assert db.moved_aside is not None and db.moved_aside.exists()
    assert db.moved_aside.read_bytes()[:16] == b"SQLite format 3\x00"
    assert "damaged" in caplog.text and str(db.moved_aside) in caplog.text


def test_a_corrupt_header_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    db = Database(path)
    assert asyncio.run(JobStore(db).list()) == []
    db.close()
    assert list(tmp_path.glob("jobs.sqlite3.corrupt-*"))


def test_pages_damaged_while_running_give_an_error_naming_the_file_and_what_to_do(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.sqlite3"
    filled_store(path)
    db = Database(path)
    jobs, blocks = JobStore(db), BlockStore(db, tmp_path / "blocks")
    db.call(lambda c: c.execute("PRAGMA wal_checkpoint(TRUNCATE)"), "checkpoint")
    corrupt_pages(path, first_page=20)
    db.call(lambda c: c.execute("PRAGMA shrink_memory"), "drop the page cache")

    async def use() -> tuple[BaseException | None, list[Block]]:
        try:
            await jobs.list(limit=1000)
        except StoreError as err:
            return err, await blocks.history(None, 5)
        return None, []

    error, history = asyncio.run(use())
    db.close()
    assert isinstance(error, StoreError), "reading damaged pages did not fail"
    assert str(path) in str(error)
    assert "damaged" in str(error) and "aside" in str(error)
    assert history == []  # the rest of the store still answers


def test_a_queued_write_that_fails_is_logged_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(tmp_path / "jobs.sqlite3")
    jobs = JobStore(db)
    jobs.add(job("dup"))
    with caplog.at_level(logging.ERROR):
        jobs.add(job("dup"))
        asyncio.run(db.flush())
    errors = db.take_errors()
    db.close()
    assert len(errors) == 1 and "saving job dup" in str(errors[0])
    assert "saving job dup" in caplog.text


def test_a_block_that_cannot_be_recorded_raises_a_store_error(tmp_path: Path) -> None:
    db = Database(tmp_path / "jobs.sqlite3")
    store = BlockStore(db, tmp_path / "blocks")
    store.directory.rmdir()
    store.directory.write_text("a file where the blocks folder was")
    try:
        with pytest.raises(StoreError, match=r"recording a block in .*blocks.*Not a directory"):
            asyncio.run(store.start("k", "counter += 1"))
        history = asyncio.run(store.history("k", 5))
    finally:
        db.close()
    assert history == []


def test_every_sqlite_call_runs_on_the_store_thread(tmp_path: Path) -> None:
    db = Database(tmp_path / "jobs.sqlite3")
    jobs = JobStore(db)
    threads: set[str] = set()
    db.post(lambda c: threads.add(threading.current_thread().name), "probe")

    async def use() -> None:
        jobs.add(job("aa"))
        await jobs.get("aa")
        await db.run(lambda c: threads.add(threading.current_thread().name), "probe")

    asyncio.run(use())
    db.close()
    assert threads == {"kaimon-store"}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_files_are_0600_and_folders_0700_even_when_they_existed_open(
    tmp_path: Path, umask_022: None
) -> None:
    data = tmp_path / "kaimon"
    data.mkdir(mode=0o755)
    (data / "blocks").mkdir(mode=0o755)
    old_store(data / "jobs.sqlite3")  # made under umask 022: 0644, as is its -wal
    for suffix in ("", "-wal", "-shm"):
        Path(f"{data / 'jobs.sqlite3'}{suffix}").touch()
        Path(f"{data / 'jobs.sqlite3'}{suffix}").chmod(0o644)
    db = Database(data / "jobs.sqlite3")
    store = BlockStore(db, data / "blocks")

    async def record() -> Path:
        block_id, writer = await store.start("k", "print(1)")
        writer.write("1\n")
        writer.close()
        return store.path(block_id)

    block_file = asyncio.run(record())
    fresh = Database(tmp_path / "fresh" / "jobs.sqlite3")
    fresh.call(lambda c: c.execute("CREATE TABLE t (x)"), "write")  # makes its -wal, -shm
    files = {
        p.name: mode(p)
        for p in [*data.glob("jobs.sqlite3*"), *(tmp_path / "fresh").glob("*"), block_file]
    }
    db.close()
    fresh.close()
    assert (mode(data), mode(data / "blocks"), mode(tmp_path / "fresh")) == (0o700,) * 3
    assert files == dict.fromkeys(files, 0o600)
    assert {"jobs.sqlite3-wal", "jobs.sqlite3-shm"} <= set(files)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_an_exported_file_follows_the_persons_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        write_new_file(tmp_path / "a.ipynb", b"{}")
    finally:
        os.umask(old)
    assert mode(tmp_path / "a.ipynb") == 0o666 & ~umask


def test_an_export_never_replaces_a_file_unless_asked(tmp_path: Path) -> None:
    target = tmp_path / "a.ipynb"
    target.write_text("the person's work")
    with pytest.raises(KaimonError, match="already exists; pass overwrite=true"):
        write_new_file(target, b"agent")
    assert target.read_text() == "the person's work"
    write_new_file(target, b"agent", overwrite=True)
    assert target.read_text() == "agent"
    assert [p.name for p in tmp_path.iterdir()] == ["a.ipynb"]  # no temporary file left


def test_an_export_never_writes_through_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.ipynb").write_text("keep")
    project = tmp_path / "project"
    project.mkdir()
    (project / "a.ipynb").symlink_to(outside / "victim.ipynb")
    with pytest.raises(KaimonError, match="already exists"):
        write_new_file(project / "a.ipynb", b"agent")
    write_new_file(project / "a.ipynb", b"agent", overwrite=True)  # replaces the link itself
    assert (outside / "victim.ipynb").read_text() == "keep"
    assert not (project / "a.ipynb").is_symlink()
    assert (project / "a.ipynb").read_text() == "agent"


def test_a_folder_swapped_for_a_link_after_the_check_is_not_written_through(
    tmp_path: Path,
) -> None:
    project = str(tmp_path / "project")
    (tmp_path / "project" / "out").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    target = export_target("out/nb.ipynb", Path(project), allowed_roots(project))
    # between the check and the write, the folder becomes a link out of the project
    (tmp_path / "project" / "out").rmdir()
    (tmp_path / "project" / "out").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(KaimonError, match="not a plain folder"):
        write_new_file(target, b"agent", overwrite=True)
    assert list((tmp_path / "elsewhere").iterdir()) == []


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("a\0b.ipynb", "NUL byte"),
        ("x" * 300 + ".ipynb", "limited to 255"),
        ("sub", "must end in .ipynb"),
        ("folder.ipynb", "is a folder"),
        ("/etc/a.ipynb", "not in an allowed project"),
        ("", "empty"),
    ],
    ids=["nul", "too long", "no suffix", "folder", "outside", "empty"],
)
def test_bad_export_paths_get_a_clear_error(tmp_path: Path, path: str, says: str) -> None:
    (tmp_path / "folder.ipynb").mkdir()
    with pytest.raises(KaimonError, match=says):
        target = export_target(path, tmp_path, allowed_roots(tmp_path))
        write_new_file(target, b"{}")


def test_a_relative_export_path_needs_the_sessions_folder(tmp_path: Path) -> None:
    sub = tmp_path / "session-dir"
    assert export_target("a.ipynb", sub, allowed_roots(tmp_path)) == sub / "a.ipynb"
    with pytest.raises(KaimonError, match="give an absolute path"):
        export_target("a.ipynb", None, allowed_roots(tmp_path))


def test_reading_a_big_page_and_exporting_leave_the_event_loop_free(tmp_path: Path) -> None:
    db = Database(tmp_path / "jobs.sqlite3")
    store = BlockStore(db, tmp_path / "blocks")

    async def ticks_during(work: Awaitable[object]) -> int:
        """How often another task ran while ``work`` was awaited (0: it held the loop)."""
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0)
        before = ticks
        await work
        during = ticks - before
        ticker.cancel()
        return during

    async def scenario() -> tuple[int, int, str]:
        block_id, writer = await store.start("k", "print('z' * 20_000_000)")
        writer.write("z" * 20_000_000)
        writer.close()
        store.finish(block_id, status="ok", chars=writer.chars)
        for i in range(200):
            small_id, small = await store.start("k", f"x = {i}")
            small.write(f"{i}\n")
            small.close()
            store.finish(small_id, status="ok", chars=small.chars)
        block = await store.get(block_id)
        assert block is not None
        page_ticks = await ticks_during(store.read(block, 19_999_990, 100))
        blocks = list(reversed(await store.history("k", 10_000)))
        export_ticks = await ticks_during(store.export(blocks, tmp_path / "nb.ipynb"))
        return page_ticks, export_ticks, (tmp_path / "nb.ipynb").read_text()[:1]

    page_ticks, export_ticks, _first = asyncio.run(scenario())
    db.close()
    nb = nbformat.read(tmp_path / "nb.ipynb", as_version=4)
    nbformat.validate(nb)
    assert len(nb.cells) == 201 and nb.cells[1].outputs[0].text == "0\n"
    assert nb.cells[0].outputs[0].text.endswith("more characters in block " + nb.cells[0].id + "]")
    assert page_ticks > 0 and export_ticks > 0


def test_two_servers_on_one_store_write_side_by_side(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    dbs = [Database(path), Database(path)]

    async def write(db: Database, prefix: str) -> None:
        jobs = JobStore(db)
        for i in range(100):
            jobs.add(job(f"{prefix}{i:03d}"))
            jobs.update(f"{prefix}{i:03d}", status="completed", finished_at=time.time())
        await db.flush()

    async def both() -> dict:
        await asyncio.gather(*(write(d, p) for d, p in zip(dbs, "ab", strict=True)))
        return (await JobStore(dbs[0]).stats())["counts"]

    counts = asyncio.run(both())
    errors = [e for d in dbs for e in d.take_errors()]
    for d in dbs:
        d.close()
    assert (counts, errors) == ({"completed": 200}, [])


def test_the_gate_reads_recent_jobs_without_a_server(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    assert _jobs.recent_jobs(path=path) == []
    store = JobStore(path)
    store.add(job("ab", "completed"))
    store.close()
    assert [j.id for j in _jobs.recent_jobs(path=path)] == ["ab"]


def test_a_block_start_cancelled_midway_leaves_no_block_running(tmp_path: Path) -> None:
    db = Database(tmp_path / "jobs.sqlite3")
    store = BlockStore(db, tmp_path / "blocks")
    gate = threading.Event()
    db.post(lambda c: gate.wait(30), "hold the store's thread")

    async def cancelled_start() -> list[Block]:
        task = asyncio.create_task(store.start("k", "x = 1"))
        await asyncio.sleep(0)
        task.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        await db.flush()
        await db.flush()  # the abandoned block's outcome was queued after its start
        return await store.history("k", 5)

    history = asyncio.run(cancelled_start())
    db.close()
    assert [b.status for b in history] == ["not run"]


def test_a_running_block_is_never_evicted_under_a_long_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_blocks, "KEEP_BLOCKS", 2)
    monkeypatch.setattr(_blocks, "EVICT_EVERY", 2)  # on every odd start
    db = Database(tmp_path / "jobs.sqlite3")
    store = BlockStore(db, tmp_path / "blocks")

    async def scenario() -> list[str]:
        long_id, long_writer = await store.start("s", "long job")
        long_writer.write("still going")
        for n in range(4):  # newer, finished blocks push the running one past KEEP_BLOCKS
            block_id, writer = await store.start("s", f"quick {n}")
            writer.close()
            store.finish(block_id, status="ok", chars=0)
            await asyncio.sleep(0.01)
        await store.start("s", "one more, to evict")
        kept = [b.id for b in await store.history("s", 100)]
        assert long_id in kept
        assert store.path(long_id).exists()
        long_writer.close()
        return kept

    asyncio.run(scenario())
    db.close()
