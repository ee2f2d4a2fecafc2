"""Kernels behind a real Jupyter Server (token auth), reached by ``kaimon serve --jupyter URL``
through the real MCP client: listing, ex, gate tools, restart/interrupt/shutdown by REST,
start_session there, and the faults (unreachable, token refused, kernel deleted)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import DEADLINE, JupyterServer, stdio_client, text_of
from remote import RemoteNotebook, env

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def jserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    # its own runtime dir: its kernels' session files are out of the local provider's sight,
    # as on another machine
    with env(JUPYTER_RUNTIME_DIR=str(tmp_path_factory.mktemp("remote-runtime"))):
        server = JupyterServer(tmp_path_factory.mktemp("jroot"))
    yield server
    server.stop()


@pytest.fixture
def url(jserver: JupyterServer) -> str:
    return f"http://127.0.0.1:{jserver.port}/"


@pytest.fixture
def notebooks(jserver: JupyterServer) -> Iterator[Any]:
    made: list[RemoteNotebook] = []

    def make(path: str = "analysis.ipynb", serve: str | None = "--label remote") -> Any:
        nb = RemoteNotebook(jserver, path)
        made.append(nb)
        if serve is not None:
            nb.serve(serve)
        return nb

    yield make
    for nb in made:
        try:
            jserver.api("DELETE", f"/api/kernels/{nb.kernel_id}")
        except Exception:
            pass


async def until(predicate: Any, what: str, timeout: float = DEADLINE) -> Any:
    with anyio.fail_after(timeout):
        while True:
            value = await predicate()
            if value:
                return value
            await anyio.sleep(0.2)


async def listed(client: Any, key: str) -> Any:
    async def find() -> Any:
        result = await client.call_tool("list_sessions", {})
        rows = [r for r in result.structured_content["sessions"] if r["key"] == key]
        return rows[0] if rows and rows[0]["status"] != "connecting" else None

    return await until(find, f"session {key} to be listed")


@pytest.fixture
async def kaimon(url: str, jserver: JupyterServer) -> AsyncIterator[Any]:
    with env(JUPYTER_TOKEN=jserver.token):
        async with stdio_client("--no-auto-start", "--jupyter", url) as client:
            yield client


async def test_a_served_remote_kernel_is_listed_with_its_server_and_notebook_and_runs_code(
    kaimon: Any, notebooks: Any, jserver: JupyterServer, url: str
) -> None:
    served = notebooks("lab/served.ipynb")
    unserved = notebooks("lab/plain.ipynb", serve=None)
    row = await listed(kaimon, served.key)
    assert row["server_url"] == url
    assert row["notebook_path"] == "lab/served.ipynb"
    assert row["status"].startswith("idle"), row
    listing = await kaimon.call_tool("list_sessions", {})
    assert unserved.kernel_id not in text_of(listing)
    assert len(listing.structured_content["sessions"]) == 1  # the unserved one never shows

    result = await kaimon.call_tool("ex", {"code": "1+1", "session": served.key})
    assert "2" in text_of(result), text_of(result)
    result = await kaimon.call_tool(
        "ex", {"code": "import os\nfor i in range(3): print('line', i)\nos.getpid()"}
    )
    text = text_of(result)
    assert "line 2" in text and str(row["pid"]) in text, text
    # what the person defined is there for the agent: it is their kernel
    served.run("shared = 41")
    result = await kaimon.call_tool("ex", {"code": "shared + 1"})
    assert "42" in text_of(result)
    for shown in (text_of(listing), str(listing.structured_content), text):
        assert jserver.token not in shown


async def test_restart_and_interrupt_go_through_the_servers_rest_api_and_keep_the_kernel_id(
    kaimon: Any, notebooks: Any, jserver: JupyterServer
) -> None:
    nb = notebooks()
    row = await listed(kaimon, nb.key)
    await kaimon.call_tool("ex", {"code": "x = 1"})
    restarted = await kaimon.call_tool("manage_repl", {"command": "restart"})
    assert not restarted.is_error, text_of(restarted)
    assert restarted.structured_content["key"] == nb.key
    assert restarted.structured_content["pid"] != row["pid"]
    assert nb.model()["id"] == nb.kernel_id  # the same kernel to JupyterLab: no new one
    result = await kaimon.call_tool("ex", {"code": "'x' in globals()"})
    assert "False" in text_of(result), text_of(result)

    # a long cell of the agent's, interrupted by REST: the kernel and its state stay
    await kaimon.call_tool("ex", {"code": "kept = 7"})
    async with anyio.create_task_group() as tg:
        outcome: dict[str, Any] = {}

        async def run() -> None:
            outcome["ex"] = await kaimon.call_tool(
                "ex", {"code": "import time\nfor _ in range(600): time.sleep(0.1)"}
            )

        tg.start_soon(run)
        await until(lambda: _busy(kaimon, nb.key), "the agent's cell to run", timeout=DEADLINE)
        interrupted = await kaimon.call_tool("manage_repl", {"command": "interrupt"})
        assert not interrupted.is_error, text_of(interrupted)
    assert "KeyboardInterrupt" in text_of(outcome["ex"]), text_of(outcome["ex"])
    assert "7" in text_of(await kaimon.call_tool("ex", {"code": "kept"}))


async def _busy(client: Any, key: str | None) -> bool:
    rows = (await client.call_tool("list_sessions", {})).structured_content["sessions"]
    return any(key in (None, r["key"]) and r["status"].startswith("busy") for r in rows)


async def test_shutdown_by_rest_removes_the_kernel_and_the_session(
    kaimon: Any, notebooks: Any, jserver: JupyterServer
) -> None:
    nb = notebooks()
    await listed(kaimon, nb.key)
    done = await kaimon.call_tool("manage_repl", {"command": "shutdown"})
    assert not done.is_error, text_of(done)
    assert nb.kernel_id not in [k["id"] for k in jserver.api("GET", "/api/kernels")]

    async def gone() -> bool:
        rows = (await kaimon.call_tool("list_sessions", {})).structured_content["sessions"]
        return not any(r["key"] == nb.key for r in rows)

    await until(gone, "the session to go")


async def test_a_kernel_deleted_by_the_server_is_a_dead_session_with_a_clear_error(
    kaimon: Any, notebooks: Any, jserver: JupyterServer
) -> None:
    nb = notebooks()
    await listed(kaimon, nb.key)
    jserver.api("DELETE", f"/api/kernels/{nb.kernel_id}")  # culled, or shut down in the Lab
    result = await kaimon.call_tool("ex", {"code": "1+1", "session": nb.key})
    deadline = anyio.current_time() + DEADLINE
    while not result.is_error and anyio.current_time() < deadline:
        await anyio.sleep(0.3)
        result = await kaimon.call_tool("ex", {"code": "1+1", "session": nb.key})
    assert result.is_error
    assert nb.key in text_of(result), text_of(result)


async def test_an_unreachable_server_is_said_with_its_url(jserver: JupyterServer) -> None:
    from conftest import free_port

    dead = f"http://127.0.0.1:{free_port()}/"
    with env(JUPYTER_TOKEN=jserver.token):
        async with stdio_client("--no-auto-start", "--jupyter", dead) as client:
            result = await client.call_tool("ex", {"code": "1+1"})
    assert result.is_error
    text = text_of(result)
    assert dead in text and "cannot reach" in text, text
    assert jserver.token not in text


async def test_a_refused_token_is_said_without_showing_it(
    jserver: JupyterServer, url: str, tmp_path: Any
) -> None:
    bad = tmp_path / "token"
    bad.write_text("not-the-token-5f2e")
    with env(JUPYTER_TOKEN=None):
        async with stdio_client(
            "--no-auto-start", "--jupyter", url, "--jupyter-token-file", str(bad)
        ) as client:
            result = await client.call_tool("ex", {"code": "1+1"})
    text = text_of(result)
    assert result.is_error
    assert "refused the token" in text and str(bad) in text, text
    assert "not-the-token-5f2e" not in text


async def test_a_gate_tool_called_while_the_persons_cell_runs_is_told_what_it_waits_on(
    kaimon: Any, notebooks: Any
) -> None:
    nb = notebooks(serve=None)
    status, out = nb.run(
        "import kaimon_kernel\ndef double(x: int) -> int:\n    return 2 * x\n"
        "kaimon_kernel.serve(namespace='remote', tools=[kaimon_kernel.GateTool('double', "
        "double)])"
    )
    assert status == "ok", out
    await until(lambda: _has_tool(kaimon, "remote_double"), "the remote tool to be listed")
    notes: list[str] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        notes.append(message or "")

    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, nb.run, "import time; time.sleep(4)")
        await until(lambda: _busy(kaimon, None), "the person's cell to run")
        result = await kaimon.call_tool("remote_double", {"x": 21}, progress_callback=progress)
    assert result.structured_content == {"result": 42}, text_of(result)
    assert any("waiting: the kernel is busy" in n for n in notes), notes


async def _has_tool(client: Any, name: str) -> bool:
    return name in [t.name for t in (await client.list_tools()).tools]


async def test_a_remote_job_keeps_stash_and_progress_and_is_recovered_after_a_server_kill(
    notebooks: Any, jserver: JupyterServer, url: str
) -> None:
    from conftest import HttpServer
    from test_jobs_e2e import TOKEN, http_client, wait_status

    nb = notebooks()
    env_ = {"KAIMON_TOKEN": TOKEN, "JUPYTER_TOKEN": jserver.token}
    first = HttpServer("--promote-after", "0.5", "--no-auto-start", "--jupyter", url, env=env_)
    code = (
        "import time, kaimon_kernel\nprint('start', flush=True)\n"
        "kaimon_kernel.stash('step', 1)\nkaimon_kernel.progress('half way')\n"
        "time.sleep(4)\nprint('end')"
    )
    try:
        http, client = http_client(first)
        async with http, client:
            await listed(client, nb.key)
            running = await client.call_tool("ex", {"code": code, "session": nb.key})
            eval_id = running.structured_content["eval_id"]
            check = await client.call_tool("check_eval", {"eval_id": eval_id})
            assert check.structured_content["status"] == "running", text_of(check)
    finally:
        first.proc.kill()
        first.proc.wait()
    second = HttpServer("--no-auto-start", "--jupyter", url, env=env_)
    try:
        http, client = http_client(second)
        async with http, client:
            late = await wait_status(client, eval_id)
    finally:
        second.stop()
    assert late.structured_content["status"] == "completed", text_of(late)
    text = text_of(late)
    assert "start" in text and "end" in text, text
    assert late.structured_content["stash"] == {"step": "1"}, late.structured_content


async def test_start_session_on_the_server_in_an_allowed_directory_from_kaimon_json(
    jserver: JupyterServer, url: str, tmp_path: Any
) -> None:
    (jserver_root(jserver) / "work").mkdir(exist_ok=True)
    token_file = tmp_path / "jupyter-token"
    token_file.write_text(jserver.token + "\n")
    config = tmp_path / "config"
    config.mkdir()
    (config / "kaimon.json").write_text(
        json.dumps({"jupyter": [{"url": url, "token_file": str(token_file), "projects": ["work"]}]})
    )
    with env(JUPYTER_CONFIG_DIR=str(config), JUPYTER_TOKEN=None):
        async with stdio_client("--no-auto-start") as client:
            refused = await client.call_tool(
                "start_session", {"server": url, "project_path": "elsewhere"}
            )
            assert refused.is_error and "not an allowed project" in text_of(refused)
            started = await client.call_tool(
                "start_session", {"server": url, "project_path": "work", "name": "far"}
            )
            assert not started.is_error, text_of(started)
            key = started.structured_content["key"]
            row = await listed(client, key)
            assert row["started_by"] == "agent" and row["server_url"] == url
            assert row["cwd"].endswith("work"), row
            result = await client.call_tool("ex", {"code": "40 + 2", "session": "far"})
            assert "42" in text_of(result)
            kernels_before = {k["id"] for k in jserver.api("GET", "/api/kernels")}
            done = await client.call_tool("manage_repl", {"command": "shutdown", "session": key})
            assert not done.is_error, text_of(done)
            assert (
                len({k["id"] for k in jserver.api("GET", "/api/kernels")})
                == len(kernels_before) - 1
            )


def jserver_root(jserver: JupyterServer) -> Path:
    return jserver.log.parent


async def test_history_read_block_export_and_the_live_view_work_on_a_remote_session(
    notebooks: Any, jserver: JupyterServer, url: str, tmp_path: Path
) -> None:
    nb = notebooks()
    with env(JUPYTER_TOKEN=jserver.token):
        async with stdio_client("--no-auto-start", "--jupyter", url, cwd=tmp_path) as client:
            await listed(client, nb.key)
            mirror = await client.call_tool("set_option", {"mirror": True})
            assert not mirror.is_error, text_of(mirror)
            await client.call_tool("ex", {"code": "print('from afar')"})
            rows = (await client.call_tool("history", {"limit": 5})).structured_content["blocks"]
            assert rows and rows[0]["session"] == nb.key, rows
            block = await client.call_tool("read_block", {"block_id": rows[0]["block_id"]})
            assert "from afar" in text_of(block)
            target = tmp_path / "remote.ipynb"
            exported = await client.call_tool("export_notebook", {"path": str(target)})
            assert not exported.is_error, text_of(exported)
            # the person's kernel knows the server that works in it (the live view's peer)
            status, out = await anyio.to_thread.run_sync(nb.run, "%kaimon status")
            assert status == "ok" and "connected: kaimon server" in out, out
    assert "from afar" in target.read_text()


async def test_the_token_never_appears_in_the_servers_log_of_its_requests(
    notebooks: Any, jserver: JupyterServer, url: str
) -> None:
    from conftest import HttpServer
    from test_jobs_e2e import TOKEN, http_client

    nb = notebooks()
    server = HttpServer(
        "--no-auto-start",
        "--log-level",
        "INFO",  # httpx logs every request (DEBUG could fill the unread pipe)
        "--jupyter",
        url,
        "--jupyter",
        url.replace("127.0.0.1", "localhost") + "?token=" + jserver.token,
        env={"KAIMON_TOKEN": TOKEN, "JUPYTER_TOKEN": jserver.token},
    )
    try:
        http, client = http_client(server)
        async with http, client:
            await listed(client, nb.key)
            await client.call_tool("ex", {"code": "1+1", "session": nb.key})
            await client.call_tool("manage_repl", {"command": "interrupt", "session": nb.key})
    finally:
        server.stop()
    log = server.proc.stderr.read().decode()  # type: ignore[union-attr]
    assert "api/kernels" in log  # it did log its requests
    assert jserver.token not in log


async def test_a_restart_by_the_person_in_jupyterlab_is_followed_with_the_same_key(
    kaimon: Any, notebooks: Any, jserver: JupyterServer
) -> None:
    nb = notebooks()
    row = await listed(kaimon, nb.key)
    jserver.api("POST", f"/api/kernels/{nb.kernel_id}/restart")  # JupyterLab's restart button

    async def fresh_pid() -> Any:
        result = await kaimon.call_tool("ex", {"code": "import os; os.getpid()"})
        text = text_of(result)
        return text if not result.is_error and str(row["pid"]) not in text else None

    text = await until(fresh_pid, "the restarted kernel to be served again")
    assert text.strip().splitlines()[-1].isdigit(), text
    rows = (await kaimon.call_tool("list_sessions", {})).structured_content["sessions"]
    assert [r["key"] for r in rows] == [nb.key]


async def test_the_live_view_shows_the_agents_code_in_the_persons_notebook(
    kaimon: Any, notebooks: Any
) -> None:
    nb = notebooks()
    await listed(kaimon, nb.key)
    assert not (await kaimon.call_tool("set_option", {"mirror": True})).is_error
    notebook = nb.listen()  # the person's open notebook
    try:
        await kaimon.call_tool("ex", {"code": "print('agent' + 'work')"})

        def shown() -> str:
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline:
                msg = json.loads(notebook.recv())
                if msg["msg_type"] in ("display_data", "update_display_data"):
                    text = msg["content"]["data"].get("text/plain", "")
                    if "print('agent' + 'work')" in text:
                        return text
            raise AssertionError("the live view never showed the agent's code")

        text = await anyio.to_thread.run_sync(shown)
    finally:
        notebook.close()
    assert "shared with agents" in text and " ok " in text, text


async def test_a_remote_session_withdrawn_by_the_person_goes_from_the_list(
    kaimon: Any, notebooks: Any
) -> None:
    nb = notebooks()
    await listed(kaimon, nb.key)
    status, out = await anyio.to_thread.run_sync(nb.run, "%kaimon stop")
    assert status == "ok", out

    async def gone() -> bool:
        rows = (await kaimon.call_tool("list_sessions", {})).structured_content["sessions"]
        return not any(r["key"] == nb.key for r in rows)

    await until(gone, "the withdrawn session to go")
    result = await kaimon.call_tool("ex", {"code": "1+1", "session": nb.key})
    assert result.is_error and nb.key in text_of(result)
