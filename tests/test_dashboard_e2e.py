"""kaimon dashboard against real servers (stdio, the real MCP SDK client) and real kernels."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    DEADLINE,
    JupyterServer,
    PersonKernel,
    eventually,
    stdio_client,
    text_of,
    wait_until,
)
from jupyter_client import BlockingKernelClient
from textual.widgets import DataTable, Static

from kaimon_kernel.dashboard import Dashboard, snapshot_text

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[1]


until = functools.partial(eventually, interval=0.02)


def store() -> Path:
    return Path(os.environ["JUPYTER_DATA_DIR"]) / "kaimon" / "jobs.sqlite3"


def job_status(eval_id: str) -> str | None:
    with sqlite3.connect(store()) as db:
        row = db.execute("SELECT status FROM jobs WHERE id = ?", (eval_id,)).fetchone()
    return row[0] if row else None


def block_text(app: Dashboard) -> str:
    return str(app.query_one("#block", Static).render())


async def test_an_agents_ex_appears_in_activity_within_a_second_and_shows_its_output(
    person: PersonKernel,
) -> None:
    marker = f"seen-{uuid.uuid4().hex[:6]}"
    app = Dashboard()
    async with app.run_test(size=(140, 40)) as pilot, stdio_client() as client:
        await until(lambda: app._loading is not None and app.is_mounted, "the app")
        await client.call_tool("ex", {"code": f"for i in range(3): print('{marker}', i)"})
        returned = time.monotonic()

        def shown() -> Any:
            return next(
                (r for r in app._activity.values() if marker in r.arguments and r.block_id),
                None,
            )

        row = await until(shown, "the ex in Activity")
        lag = time.monotonic() - returned
        assert lag < 1.0, f"shown {lag:.2f} s after the call returned"
        assert row.client == "mcp" and row.tool == "ex" and row.server.startswith("stdio:")
        table = app.query_one("#activity-table", DataTable)
        await until(
            lambda: table.get_row_index(str(row.id)) == 0 or row.status != "running",
            "the row on top",
        )
        table.focus()
        table.move_cursor(row=table.get_row_index(str(row.id)))
        await pilot.press("enter")
        await until(lambda: f"{marker} 2" in block_text(app), "the block's output")
        text = block_text(app)
        assert f"print('{marker}', i)" in text and f"{marker} 0" in text


async def test_a_job_cancelled_from_the_dashboard_ends_cancelled(person: PersonKernel) -> None:
    app = Dashboard()
    async with (
        app.run_test(size=(140, 40)) as pilot,
        stdio_client("--promote-after", "0.5", "--cancel-grace", "0.5") as client,
    ):
        result = await client.call_tool(
            "ex", {"code": "import time\nwhile True:\n    time.sleep(0.05)"}
        )
        eval_id = result.structured_content["eval_id"]
        await pilot.press("3")
        table = app.query_one("#jobs-table", DataTable)
        await until(lambda: any(j.id == eval_id for j in app.jobs), "the job in Jobs")
        table.focus()
        table.move_cursor(row=[j.id for j in app.jobs].index(eval_id))
        await pilot.press("c")
        await until(lambda: job_status(eval_id) == "cancelled", "the job to end cancelled")
        await until(lambda: "cancelled" in app.last_result, "the dashboard to say so")
        checked = await client.call_tool("check_eval", {"eval_id": eval_id})
        assert checked.structured_content["status"] == "cancelled", text_of(checked)
        # the session is free again
        after = await client.call_tool("ex", {"code": "'free'"})
        assert "free" in text_of(after)


async def test_a_session_restarted_from_the_dashboard_comes_back(
    jupyter_server: JupyterServer,
) -> None:
    kernel = jupyter_server.api("POST", "/api/kernels", {"name": "python3"})
    connection_file = Path(os.environ["JUPYTER_RUNTIME_DIR"]) / f"kernel-{kernel['id']}.json"
    wait_until(connection_file.exists, what="the kernel's connection file")
    notebook = BlockingKernelClient(connection_file=str(connection_file))
    notebook.load_connection_file()
    notebook.start_channels()
    try:
        notebook.wait_for_ready(timeout=60)
        reply = notebook.execute_interactive(
            "%load_ext kaimon_kernel\n%kaimon serve --label lab", timeout=60
        )
        assert reply["content"]["status"] == "ok"
        app = Dashboard()
        async with app.run_test(size=(140, 40)) as pilot:
            await pilot.press("1")
            row = await until(
                lambda: next((s for s in app.sessions if s.info.label == "lab"), None),
                "the session in Sessions",
            )
            old_pid = row.info.pid
            table = app.query_one("#sessions-table", DataTable)
            table.focus()
            table.move_cursor(row=app.sessions.index(row))
            await pilot.press("R")
            await until(
                lambda: "restarted" in app.last_result or "failed" in app.last_result,
                "the restart",
                90,
            )
            assert "restarted" in app.last_result, app.last_result
            again = await until(
                lambda: next(
                    (s for s in app.sessions if s.key == row.key and s.info.pid != old_pid), None
                ),
                "the session back in Sessions",
            )
            assert again.alive and again.info.label == "lab"
    finally:
        notebook.stop_channels()


def registry() -> list[dict[str, Any]]:
    path = Path(os.environ["JUPYTER_CONFIG_DIR"]) / "kaimon" / "extensions.json"
    try:
        return json.loads(path.read_text())["extensions"]
    except FileNotFoundError:
        return []


async def test_the_extension_keys_add_toggle_start_stop_and_remove(tmp_path: Path) -> None:
    project = tmp_path / "notes_ext"
    shutil.copytree(REPO / "examples" / "notes_ext", project)
    app = Dashboard()
    async with app.run_test(size=(140, 40)) as pilot, stdio_client() as client:
        await pilot.press("4", "a")
        await pilot.press(*str(project))
        await pilot.press("enter")
        await until(lambda: registry(), "the extension registered", 60)
        assert registry()[0]["project_path"] == str(project.resolve())
        ext = await until(lambda: app.extensions and app.extensions[0], "it in Extensions")
        app.query_one("#extensions-table", DataTable).focus()
        await pilot.press("d")
        await until(lambda: registry()[0]["enabled"] is False, "disabled")
        await pilot.press("e")
        await until(lambda: registry()[0]["enabled"] is True, "enabled")
        auto = registry()[0]["auto_start"]
        await pilot.press("t")
        await until(
            lambda: registry()[0]["auto_start"] != auto, f"auto-start toggled {app.last_result}"
        )
        await pilot.press("s")
        await until(lambda: app.extensions and app.extensions[0].state == "running", "running", 90)
        listed = await client.call_tool("extension_info", {})
        assert ext.name in text_of(listed)
        await pilot.press("S")
        await until(lambda: app.extensions[0].state == "stopped", "stopped", 60)
        await pilot.press("x")
        await until(lambda: registry() == [], "removed")
        await until(lambda: not app.extensions, "gone from Extensions")


async def test_a_setting_changed_in_config_is_picked_up_by_a_running_server(
    person: PersonKernel,
) -> None:
    config = Path(os.environ["JUPYTER_CONFIG_DIR"]) / "kaimon.json"
    before = config.read_text() if config.exists() else None
    app = Dashboard()
    try:
        async with app.run_test(size=(140, 40)) as pilot, stdio_client() as client:
            await pilot.press("5")
            table = app.query_one("#config-table", DataTable)
            table.focus()
            table.move_cursor(row=0)  # promote_after
            await pilot.press("enter")
            await pilot.press("ctrl+a", "ctrl+k", *"0.5", "enter")
            await until(
                lambda: "promote_after = 0.5" in str(app.query_one("#status", Static).render()),
                "saved",
            )
            assert json.loads(config.read_text())["promote_after"] == 0.5

            async def promoted() -> bool:
                result = await client.call_tool("ex", {"code": "import time; time.sleep(2)"})
                return "eval_id" in (result.structured_content or {})

            deadline = time.monotonic() + DEADLINE
            while not await promoted():  # the server's file watch may lag the write a little
                assert time.monotonic() < deadline, "the server never applied promote_after"
    finally:
        if before is None:
            config.unlink(missing_ok=True)
        else:
            config.write_text(before)


async def test_once_prints_every_view_as_plain_text(person: PersonKernel) -> None:
    async with stdio_client() as client:
        await client.call_tool("ex", {"code": "'once-marker'"})
    out = subprocess.run(
        [sys.executable, "-m", "kaimon_kernel", "dashboard", "--once"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=os.environ,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for title in ("== Sessions", "== Activity", "== Jobs", "== Extensions", "== Config", "== Log"):
        assert title in text
    assert person.key in text and "once-marker" in text
    assert snapshot_text().count("== ") == 6


def test_the_dashboard_runs_in_a_real_terminal(tmp_path: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (.ci/run installs it)")
    name = f"kaimon-dash-{uuid.uuid4().hex[:6]}"
    env = " ".join(
        f"{k}={v}" for k, v in os.environ.items() if k.startswith(("JUPYTER", "IPYTHON"))
    )
    command = (
        f"env {env} PYTHONPATH={REPO} TERM=xterm-256color {sys.executable} "
        "-m kaimon_kernel dashboard"
    )
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", name, "-x", "140", "-y", "40", command], check=True
    )

    def screen() -> str:
        return subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", name], capture_output=True, text=True
        ).stdout

    try:
        wait_until(lambda: "Activity" in screen() and "Quit" in screen(), what="the dashboard")
        subprocess.run(["tmux", "send-keys", "-t", name, "?"], check=True)
        wait_until(lambda: "everywhere:" in screen(), what="the key list")
        subprocess.run(["tmux", "send-keys", "-t", name, "Escape"], check=True)
        wait_until(lambda: "everywhere:" not in screen(), what="the key list to close")
        subprocess.run(["tmux", "send-keys", "-t", name, "q"], check=True)

        def ended() -> bool:
            done = subprocess.run(["tmux", "has-session", "-t", name], capture_output=True)
            return done.returncode != 0

        wait_until(ended, what="q to end it")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


async def test_a_pushed_panel_reaches_the_dashboard_through_the_store(
    person: PersonKernel,
) -> None:
    app = Dashboard()
    async with app.run_test(size=(140, 40)) as pilot, stdio_client() as client:
        await client.call_tool("list_sessions", {})  # the server is connected to the kernel
        status, out = person.run(
            "import kaimon_kernel\nkaimon_kernel.push_panel({'epoch': 12, 'loss': 0.25})"
        )
        assert status == "ok", out
        await pilot.press("1")
        row = await until(
            lambda: next((s for s in app.sessions if s.key == person.key and s.panel), None),
            "the panel in Sessions",
        )
        assert row.panel == {"epoch": 12, "loss": 0.25}
        await until(
            lambda: "loss: 0.25" in str(app.query_one("#session-detail", Static).render()),
            "the panel shown",
        )


async def test_interrupt_and_live_view_keys_act_on_the_selected_session(
    person: PersonKernel,
) -> None:
    app = Dashboard()
    async with (
        app.run_test(size=(140, 40)) as pilot,
        stdio_client("--promote-after", "0.5") as client,
    ):
        result = await client.call_tool("ex", {"code": "import time\ntime.sleep(600)"})
        eval_id = result.structured_content["eval_id"]
        await pilot.press("1")
        await until(lambda: any(s.key == person.key for s in app.sessions), "the session")
        table = app.query_one("#sessions-table", DataTable)
        table.focus()
        table.move_cursor(row=[s.key for s in app.sessions].index(person.key))
        await pilot.press("i")
        await until(lambda: job_status(eval_id) == "failed", "the interrupted job to end")
        checked = await client.call_tool("check_eval", {"eval_id": eval_id})
        assert "KeyboardInterrupt" in text_of(checked)
        await pilot.press("M")
        await until(lambda: "live view off" in app.last_result, f"mirror off: {app.last_result}")
        assert person.run(
            "from kaimon_kernel.gate._gate import current_gate\nprint(current_gate().view.enabled)"
        ) == ("ok", "False\n")
        await pilot.press("m")
        await until(lambda: "live view on" in app.last_result, "mirror on")
        assert person.run("print(current_gate().view.enabled)") == ("ok", "True\n")


async def test_a_mirror_default_turned_off_while_a_server_runs_applies_to_kernels_agents_start(
    tmp_path: Path,
) -> None:
    config = Path(os.environ["JUPYTER_CONFIG_DIR"]) / "kaimon.json"
    before = config.read_text() if config.exists() else None
    project = tmp_path / "project"
    project.mkdir()
    try:
        async with stdio_client(cwd=project) as client:
            from kaimon_kernel.dashboard._data import save_setting

            save_setting("mirror", "off")
            probe = "from kaimon_kernel.gate._gate import current_gate\ncurrent_gate().view.enabled"
            deadline = time.monotonic() + DEADLINE
            while True:  # the server applies the file once its watch sees it
                started = await client.call_tool("start_session", {"project_path": str(project)})
                key = started.structured_content["key"]
                shown = None
                for _ in range(50):
                    shown = text_of(await client.call_tool("ex", {"code": probe, "session": key}))
                    if shown.strip() == "False":
                        break
                    await asyncio.sleep(0.05)
                await client.call_tool("manage_repl", {"command": "shutdown", "session": key})
                if shown.strip() == "False":
                    break
                assert time.monotonic() < deadline, f"the live view stayed on: {shown}"
    finally:
        if before is None:
            config.unlink(missing_ok=True)
        else:
            config.write_text(before)


def test_without_a_terminal_it_prints_the_snapshot_instead() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kaimon_kernel", "dashboard"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=os.environ,
    )
    assert out.returncode == 0, out.stderr
    assert "not a terminal" in out.stderr and "== Activity" in out.stdout


PANEL_EXTENSION = '''
from kaimon_kernel import GateTool, push_panel

def bump(n: int) -> int:
    """Count up, and show the count in the dashboard."""
    push_panel({"count": n, "status": "bumped"})
    return n

def create_tools():
    return [GateTool("bump", bump)]
'''


async def test_an_extensions_pushed_panel_shows_in_its_detail(tmp_path: Path) -> None:
    project = tmp_path / "counter_ext"
    (project / "counter_ext").mkdir(parents=True)
    (project / "counter_ext" / "__init__.py").write_text(PANEL_EXTENSION)
    (project / "kaimon.toml").write_text(
        '[extension]\nnamespace = "counter"\nmodule = "counter_ext"\n'
        'tools_function = "create_tools"\n'
    )
    app = Dashboard()
    async with app.run_test(size=(140, 40)) as pilot, stdio_client() as client:
        await pilot.press("4", "a", *str(project), "enter")
        await until(lambda: app.extensions and app.extensions[0].state == "running", "running", 90)
        deadline = time.monotonic() + 60
        while True:  # its tools appear once this server has connected to it
            result = await client.call_tool("counter_bump", {"n": 7})
            if not result.is_error:
                break
            assert time.monotonic() < deadline, text_of(result)
            await asyncio.sleep(0.2)
        await until(lambda: app.extensions[0].panel.get("count") == 7, "the panel")
        detail = app.query_one("#extension-detail", Static)
        await until(lambda: "count: 7" in str(detail.render()), "the panel shown")
        assert "counter_bump" in str(detail.render())
        await pilot.press("x")
        await until(lambda: not app.extensions, "removed")
