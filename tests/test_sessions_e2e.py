"""Sessions the agent and the person both run: start, restart, shutdown, labels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import JupyterServer, PersonKernel, sessions_dir, stdio_client, text_of, wait_until
from jupyter_client import BlockingKernelClient
from mcp.types import ElicitResult

pytestmark = pytest.mark.anyio


def kaimon_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kaimon_kernel", *args], capture_output=True, text=True, timeout=60
    )


async def test_start_session_lists_allowed_projects_and_starts_in_one(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    async with stdio_client(cwd=tmp_path) as client:
        listing = await client.call_tool("start_session", {})
        started = await client.call_tool("start_session", {"project_path": "proj", "name": "p"})
        where = await client.call_tool("ex", {"code": "import os; os.getcwd()", "session": "p"})
    assert listing.structured_content["projects"][0] == str(tmp_path.resolve())
    assert not started.is_error, text_of(started)
    assert "the server's Python" in text_of(started) and "no project .venv" in text_of(started)
    assert text_of(where).strip() == repr(str(project.resolve()))


async def test_start_session_elsewhere_is_refused_until_the_person_allows_it(tmp_path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    async with stdio_client(cwd=server_dir) as client:
        refused = await client.call_tool("start_session", {"project_path": str(elsewhere)})
        assert refused.is_error
        assert f"kaimon projects add {elsewhere.resolve()}" in text_of(refused)
        added = kaimon_cli("projects", "add", str(elsewhere))
        assert added.returncode == 0, added.stderr
        allowed = await client.call_tool("start_session", {"project_path": str(elsewhere)})
    assert not allowed.is_error, text_of(allowed)
    assert str(elsewhere.resolve()) in kaimon_cli("projects", "list").stdout
    assert kaimon_cli("projects", "remove", str(elsewhere)).returncode == 0


@pytest.mark.parametrize("mode", ["auto", "legacy"])  # input_required, and mid-call requests
async def test_a_client_that_can_ask_puts_the_directory_to_the_person(tmp_path, mode) -> None:
    elsewhere = tmp_path / "asked"
    elsewhere.mkdir()
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    answers = iter(
        [
            ElicitResult(action="decline"),
            ElicitResult(action="accept", content={"allow": "once"}),
            ElicitResult(action="accept", content={"allow": "always"}),
        ]
    )
    asked: list[str] = []

    async def person_answers(context: Any, params: Any) -> ElicitResult:
        asked.append(params.message)
        return next(answers)

    async with stdio_client(cwd=server_dir, mode=mode, elicitation_callback=person_answers) as c:
        args = {"project_path": str(elsewhere)}
        declined = await c.call_tool("start_session", args)
        once = await c.call_tool("start_session", args)
        listed_after_once = kaimon_cli("projects", "list").stdout
        always = await c.call_tool("start_session", args)
        # allowed now: no question the fourth time
        again = await c.call_tool("start_session", args)
    assert declined.is_error and "declined" in text_of(declined)
    assert not once.is_error and not always.is_error and not again.is_error, text_of(again)
    assert len(asked) == 3 and str(elsewhere.resolve()) in asked[0]
    assert str(elsewhere.resolve()) not in listed_after_once
    assert str(elsewhere.resolve()) in kaimon_cli("projects", "list").stdout
    assert kaimon_cli("projects", "remove", str(elsewhere)).returncode == 0


async def test_a_project_venv_is_used_when_it_can_run_the_gate(tmp_path: Path) -> None:
    project = tmp_path / "venvproj"
    project.mkdir()
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(project / ".venv")],
        check=True,
        timeout=120,
    )
    # The project's venv sees this environment's packages (kaimon-kernel, ipykernel) via .pth.
    site = subprocess.run(
        [
            str(project / ".venv/bin/python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    import kaimon_kernel

    source = Path(kaimon_kernel.__file__).parents[1]  # an editable install is not a site dir
    Path(site, "parent-env.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n{source}\n")
    async with stdio_client(cwd=tmp_path) as client:
        started = await client.call_tool("start_session", {"project_path": str(project)})
        exe = await client.call_tool(
            "ex",
            {"code": "import sys; sys.executable", "session": started.structured_content["key"]},
        )
    assert "from the project's .venv" in text_of(started), text_of(started)
    assert str(project / ".venv") in text_of(exe)


async def test_restart_of_a_server_owned_kernel_keeps_key_and_label_and_drops_state(
    tmp_path: Path,
) -> None:
    async with stdio_client(cwd=tmp_path) as client:
        started = await client.call_tool("start_session", {"project_path": ".", "name": "mine"})
        key = started.structured_content["key"]
        await client.call_tool("ex", {"code": "precious = 1", "session": "mine"})
        restarted = await client.call_tool("manage_repl", {"command": "restart", "session": key})
        after = await client.call_tool("ex", {"code": "precious", "session": "mine"})
        listing = await client.call_tool("list_sessions", {})
        shut = await client.call_tool("manage_repl", {"command": "shutdown", "session": key})
        final = await client.call_tool("list_sessions", {})
    assert "All previous state is gone" in text_of(restarted)
    assert after.is_error and "NameError" in text_of(after)
    (row,) = listing.structured_content["sessions"]
    assert (row["key"], row["label"]) == (key, "mine")
    assert "shut down session" in text_of(shut)
    assert final.structured_content["sessions"] == []


async def test_allow_restart_false_refuses_restart_and_shutdown(make_person) -> None:
    make_person("--label guarded --no-restart")
    async with stdio_client() as client:
        restart = await client.call_tool("manage_repl", {"command": "restart"})
        shutdown = await client.call_tool("manage_repl", {"command": "shutdown"})
    for result in (restart, shutdown):
        assert result.is_error
        assert "allow_restart=False" in text_of(result)


async def test_interrupt_stops_running_code_and_keeps_state(person: PersonKernel) -> None:
    async with stdio_client("--promote-after", "0.5") as client:
        await client.call_tool("ex", {"code": "kept = 42"})
        promoted = await client.call_tool("ex", {"code": "import time\ntime.sleep(60)"})
        interrupted = await client.call_tool("manage_repl", {"command": "interrupt"})
        check = await client.call_tool(
            "check_eval", {"eval_id": promoted.structured_content["eval_id"]}
        )
        deadline = time.monotonic() + 20
        while check.structured_content["status"] == "running" and time.monotonic() < deadline:
            check = await client.call_tool(
                "check_eval", {"eval_id": promoted.structured_content["eval_id"]}
            )
        kept = await client.call_tool("ex", {"code": "kept"})
    assert "interrupted session" in text_of(interrupted)
    assert check.structured_content["status"] == "failed"
    assert "KeyboardInterrupt" in text_of(check)
    assert text_of(kept).strip() == "42"


async def test_labels_and_descriptions_set_by_the_agent(person: PersonKernel) -> None:
    async with stdio_client() as client:
        changed = await client.call_tool(
            "set_session_info", {"label": "analysis", "description": "Q3 cleanup"}
        )
        listing = await client.call_tool("list_sessions", {})
        by_label = await client.call_tool("ex", {"code": "1 + 1", "session": "analysis"})
    assert not changed.is_error, text_of(changed)
    (row,) = listing.structured_content["sessions"]
    assert (row["label"], row["description"]) == ("analysis", "Q3 cleanup")
    assert text_of(by_label).strip() == "2"
    assert "label 'analysis'" in person.run("%kaimon status")[1]


# -- a kernel owned by a real Jupyter server ---------------------------------------------------


async def test_restart_of_a_jupyter_server_kernel_serves_the_gate_again(
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
            "%load_ext kaimon_kernel\n%kaimon serve --label lab\nstate = 'before'", timeout=60
        )
        assert reply["content"]["status"] == "ok"
        async with stdio_client("--no-auto-start") as client:
            listing = await client.call_tool("list_sessions", {})
            (before,) = listing.structured_content["sessions"]
            restarted = await client.call_tool(
                "manage_repl", {"command": "restart", "session": "lab"}
            )
            assert not restarted.is_error, text_of(restarted)
            after = await client.call_tool("ex", {"code": "state", "session": "lab"})
            listing = await client.call_tool("list_sessions", {})
        (row,) = listing.structured_content["sessions"]
        assert row["key"] == before["key"] and row["label"] == "lab"
        assert row["pid"] != before["pid"]
        assert after.is_error and "NameError" in text_of(after)
        # the person's notebook is still attached to the same kernel id, and it answers
        assert jupyter_server.api("GET", f"/api/kernels/{kernel['id']}")["id"] == kernel["id"]
        again = notebook.execute_interactive("1 + 1", timeout=60)
        assert again["content"]["status"] == "ok"
        # the person restarts from the notebook: the same session comes back again
        notebook.execute("%kaimon restart")
        key_file = sessions_dir() / f"session-{before['key']}.json"

        def came_back() -> bool:
            try:
                return json.loads(key_file.read_text())["pid"] not in (before["pid"], row["pid"])
            except (OSError, ValueError):
                return False

        wait_until(came_back, 60, "the session to come back after %kaimon restart")
    finally:
        notebook.stop_channels()
        jupyter_server.api("DELETE", f"/api/kernels/{kernel['id']}")
    session_file = sessions_dir() / f"session-{before['key']}.json"
    wait_until(lambda: not session_file.exists(), 30, "session cleanup")


async def test_kernels_of_a_crashed_server_are_cleaned_by_the_next_one(tmp_path: Path) -> None:
    import httpx2
    from conftest import HttpServer
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    from kaimon_kernel.server.providers import pid_alive

    env = {"KAIMON_TOKEN": "orphan-token-0123456789"}
    first = HttpServer(env=env)
    try:
        async with (
            httpx2.AsyncClient(
                headers={"Authorization": f"Bearer {env['KAIMON_TOKEN']}"}, timeout=60
            ) as http,
            Client(streamable_http_client(first.url, http_client=http)) as client,
        ):
            started = await client.call_tool("ex", {"code": "import os; os.getpid()"})
            kernel_pid = int(started.content[0].text.strip().splitlines()[-1])
    finally:
        first.proc.kill()  # a crash: no clean shutdown of its kernels
        first.proc.wait()
    assert pid_alive(kernel_pid)
    second = HttpServer(env=env)
    try:
        wait_until(lambda: not pid_alive(kernel_pid), 30, "the orphan kernel to be stopped")
    finally:
        second.stop()
