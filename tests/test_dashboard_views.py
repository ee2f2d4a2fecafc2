"""The dashboard's views on fixed data: a snapshot of the layout, and the pieces that read
and write files (no kernels here)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

from kaimon_kernel._errors import KaimonError
from kaimon_kernel.dashboard import Dashboard, Store, snapshot_text
from kaimon_kernel.dashboard._app import classify
from kaimon_kernel.dashboard._data import save_setting
from kaimon_kernel.server._db import Database

T0 = 1_763_700_000.0  # fixed wall-clock time of the fixture data


@pytest.fixture
def fixed_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Isolated Jupyter dirs holding one dead session, calls, jobs and a block."""
    for name in ("JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR"):
        path = tmp_path / name.lower()
        path.mkdir()
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    data = tmp_path / "jupyter_data_dir" / "kaimon"
    data.mkdir(parents=True, exist_ok=True)
    Database(data / "jobs.sqlite3").close()
    calls = [
        (
            T0 + 1,
            "claude-code",
            4242,
            "stdio",
            "ex",
            '{"code": "import pandas as pd"}',
            "a1b2c3d4",
            "b0001",
            0.412,
            "ok",
        ),
        (T0 + 2, "codex", 4343, "stdio", "list_sessions", "{}", None, None, 0.003, "ok"),
        (
            T0 + 3,
            "claude-code",
            4242,
            "stdio",
            "ex",
            '{"code": "df = pd.read_csv(\'x.csv\')"}',
            "a1b2c3d4",
            "b0002",
            0.051,
            "error",
        ),
        (
            T0 + 4,
            "cursor",
            4444,
            "http",
            "ex",
            '{"code": "train(epochs=50)"}',
            "a1b2c3d4",
            "b0003",
            30.0,
            "ok",
        ),
    ]
    with sqlite3.connect(data / "jobs.sqlite3") as db:
        db.executemany(
            "INSERT INTO activity (started_at, client, server_pid, transport, tool, arguments,"
            " session_key, block_id, duration, status) VALUES (?,?,?,?,?,?,?,?,?,?)",
            calls,
        )
        db.execute(
            "INSERT INTO blocks (id, session_key, code, who, started_at, duration, status, chars)"
            " VALUES ('b0001', 'a1b2c3d4', 'import pandas as pd\nprint(pd.__version__)',"
            " 'agent', ?, 0.4, 'ok', 6)",
            (T0 + 1,),
        )
        db.execute(
            "INSERT INTO jobs (id, msg_id, session_key, session_id, kernel_pid, code, status,"
            " created_at, finished_at, stash, last_progress) VALUES ('3f9a1c02be71', 'm1',"
            " 'a1b2c3d4', 's1', 1, 'train(epochs=50)', 'running', ?, NULL,"
            " '{\"epoch\": \"12\"}', 'epoch 12/50')",
            (T0 + 4,),
        )
    blocks = data / "blocks"
    blocks.mkdir()
    (blocks / "b0001.txt").write_text("2.2.3\n")
    sessions = tmp_path / "jupyter_runtime_dir" / "kaimon"
    sessions.mkdir()
    (sessions / "session-a1b2c3d4.json").write_text(
        json.dumps(
            {
                "session_id": "s1",
                "key": "a1b2c3d4",
                "pid": 999_999_9,
                "connection_file": "/nonexistent/kernel-x.json",
                "namespace": "lab",
                "label": "analysis",
                "cwd": "/home/person/project",
                "python_version": "3.11.2",
                "started_at": T0,
            }
        )
    )
    return tmp_path


def test_the_layout_matches_its_snapshot(fixed_world: Path, snap_compare) -> None:
    app = Dashboard(watch=False, clock=lambda: T0 + 64)

    async def ready(pilot) -> None:
        deadline = time.monotonic() + 30
        while len(app._activity) < 4:
            assert time.monotonic() < deadline, "the fixture data never loaded"
            await asyncio.sleep(0.02)
        table = app.query_one("#activity-table")
        table.focus()
        table.move_cursor(row=3)  # the oldest: the ex with a block
        await pilot.press("enter")
        while "2.2.3" not in str(app.query_one("#block").render()):
            assert time.monotonic() < deadline, "the block never showed"
            await asyncio.sleep(0.02)

    assert snap_compare(app, terminal_size=(120, 34), run_before=ready)


def test_once_shows_the_fixed_data_as_text(fixed_world: Path) -> None:
    text = snapshot_text(Store(), clock=lambda: T0 + 64)
    assert "a1b2c3d4  analysis  dead" in text
    assert "claude-code  stdio:4242" in text and "b0002" in text
    assert "3f9a1c02be71  a1b2c3d4  running  1 min 0 s  epoch 12/50  epoch=12" in text
    assert "promote_after  30" in text


def test_a_setting_is_validated_before_kaimon_json_is_written(fixed_world: Path) -> None:
    config = fixed_world / "jupyter_config_dir" / "kaimon.json"
    with pytest.raises(KaimonError, match="not a number"):
        save_setting("promote_after", "soon")
    with pytest.raises(KaimonError, match="cancel_grace"):
        save_setting("cancel_grace", "-1")
    with pytest.raises(KaimonError, match="not on or off"):
        save_setting("mirror", "maybe")
    assert not config.exists()
    assert save_setting("mirror", "off") is False
    assert save_setting("projects", f"{fixed_world}{os.pathsep}/tmp") == [str(fixed_world), "/tmp"]
    assert json.loads(config.read_text()) == {
        "mirror": False,
        "projects": [str(fixed_world), "/tmp"],
    }


def test_file_changes_are_sorted_into_the_views_they_concern() -> None:
    changes = [
        (1, "/d/kaimon/jobs.sqlite3-wal"),
        (1, "/d/kaimon/logs/server-12.log"),
        (1, "/r/kaimon/session-ab.json"),
        (1, "/c/kaimon/extensions.json"),
        (1, "/r/kaimon/extensions-state.json"),
        (1, "/c/kaimon.json"),
        (1, "/r/kaimon/owned-ab.json"),
    ]
    assert classify(changes) == {"store", "log", "sessions", "extensions", "config"}
    assert classify([(1, "/r/kaimon/resume-x.json")]) == set()


@pytest.mark.anyio
async def test_a_store_made_afresh_is_followed_from_its_first_call(fixed_world: Path) -> None:
    app = Dashboard(watch=False, clock=lambda: T0 + 64)
    async with app.run_test(size=(120, 34)):
        deadline = time.monotonic() + 30
        while len(app._activity) < 4:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        path = fixed_world / "jupyter_data_dir" / "kaimon" / "jobs.sqlite3"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        Database(path).close()
        with sqlite3.connect(path) as db:
            db.execute(
                "INSERT INTO activity (started_at, client, server_pid, transport, tool,"
                " arguments, status) VALUES (?, 'fresh', 1, 'stdio', 'ex', '{}', 'ok')",
                (T0 + 10,),
            )
        await app.reload({"store"})
        assert [r.client for r in app._activity.values()] == ["fresh"]


def test_a_remote_session_a_server_reaches_is_listed_while_that_server_runs(
    fixed_world: Path,
) -> None:
    from kaimon_kernel._protocol import SessionInfo
    from kaimon_kernel.dashboard._data import read_sessions
    from kaimon_kernel.server._activity import ActivityRecorder
    from kaimon_kernel.server._events import EventBus, SessionCame, SessionWent

    info = SessionInfo(
        session_id="r1",
        key="remote01",
        pid=77,
        connection_file="",
        namespace="hub",
        label="on the hub",
        cwd="/home/jovyan",
        python_version="3.12.1",
        started_at=T0,
    )
    path = fixed_world / "jupyter_data_dir" / "kaimon" / "jobs.sqlite3"
    db, bus = Database(path), EventBus()
    recorder = ActivityRecorder(
        db, bus, "stdio", remote_of=lambda key: ("jupyter", info.model_dump_json())
    )
    try:
        bus.publish(SessionCame("remote01"))
        db.call(lambda c: None, "flush")
        (row,) = [r for r in read_sessions(Store()) if r.key == "remote01"]
        assert row.remote == ("jupyter", os.getpid()) and row.alive
        assert row.info.label == "on the hub"
        bus.publish(SessionWent("remote01", "gone"))
        db.call(lambda c: None, "flush")
        assert not [r for r in read_sessions(Store()) if r.key == "remote01"]
    finally:
        recorder.close()
        db.close()


def test_old_log_files_of_gone_servers_go_and_a_running_servers_stays(
    fixed_world: Path,
) -> None:
    import logging

    from kaimon_kernel.server._activity import KEEP_LOG_FILES, log_dir, log_to_file

    folder = log_dir()
    live = folder / f"server-{os.getppid()}.log"  # our parent: a running process
    live.write_text("x\n")
    os.utime(live, (1, 1))  # the oldest of all
    for n in range(KEEP_LOG_FILES + 5):
        dead = folder / f"server-{4_000_000 + n}.log"
        dead.write_text("x\n")
        os.utime(dead, (100 + n, 100 + n))
    root, ours = logging.getLogger(), logging.getLogger("kaimon_kernel")
    before = [(h, h.level) for h in root.handlers]
    level = ours.level
    try:
        mine = log_to_file("stdio")
        logging.getLogger("kaimon_kernel.test").info("a line for the dashboard")
    finally:  # the logging of this test process as it was
        for handler in root.handlers[len(before) :]:
            handler.close()
            root.removeHandler(handler)
        for handler, was in before:
            handler.setLevel(was)
        ours.setLevel(level)
    assert live.exists()
    assert "stdio INFO kaimon_kernel.test: a line for the dashboard" in mine.read_text()
    assert len(list(folder.glob("server-*.log"))) == KEEP_LOG_FILES + 2
