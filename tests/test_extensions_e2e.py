"""Extensions end to end: real `kaimon` commands, real servers, real extension processes,
the real MCP client. Each test has its own Jupyter config and runtime dirs (registry, lock,
session files), so servers of other tests never see its extensions."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import eventually, stdio_client, text_of

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "notes_ext"
DEADLINE = 60.0


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fresh Jupyter config/runtime dirs; short restart delays (the backoff setting)."""
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR"):
        path = tmp_path / name.lower()
        path.mkdir()
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv("KAIMON_EXTENSION_BACKOFF", "[0.5, 1.0]")
    return tmp_path


def runtime() -> Path:
    return Path(os.environ["JUPYTER_RUNTIME_DIR"]) / "kaimon"


def kaimon(*args: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "kaimon_kernel", *args],
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    return done.returncode, done.stdout + done.stderr


def notes_project(home: Path, mark: Path | None = None) -> Path:
    """The example extension, over a notes folder of the test's own."""
    project = home / "notes_ext"
    shutil.copytree(EXAMPLE, project)
    notes = home / "notes"
    notes.mkdir()
    (notes / "buffers.md").write_text("# Buffers\nPBS at pH 7.4\nTris at pH 8.0\n")
    (notes / "cells.txt").write_text("HeLa passage 12\n")
    env = f'NOTES_DIR = "{notes}"' + (f', NOTES_SHUTDOWN_MARK = "{mark}"' if mark else "")
    manifest = project / "kaimon.toml"
    manifest.write_text(
        manifest.read_text().replace('env = { NOTES_DIR = "~/notes" }', f"env = {{ {env} }}")
    )
    return project


def project(home: Path, name: str, manifest: str, code: str) -> Path:
    """An extension project: kaimon.toml and a module ``<name>_ext``."""
    root = home / name
    root.mkdir()
    (root / "kaimon.toml").write_text(textwrap.dedent(manifest))
    (root / f"{name}_ext.py").write_text(textwrap.dedent(code))
    return root


def simple_manifest(name: str, **extra: str) -> str:
    lines = [
        "[extension]",
        f'namespace = "{name}"',
        f'module = "{name}_ext"',
        'tools_function = "create_tools"',
        *(f"{k} = {v}" for k, v in extra.items()),
    ]
    return "\n".join(lines) + "\n"


def state() -> dict[str, Any] | None:
    try:
        return json.loads((runtime() / "extensions-state.json").read_text())
    except (OSError, ValueError):
        return None


def status(name: str) -> dict[str, Any]:
    current = state()
    return (current or {}).get("extensions", {}).get(name, {})


until = functools.partial(eventually, timeout=DEADLINE)


async def tool_names(client: Any) -> set[str]:
    return {t.name for t in (await client.list_tools()).tools}


# -- add and validate ---------------------------------------------------------------------


def test_add_validates_and_registers_and_list_remove_follow(home: Path) -> None:
    root = notes_project(home)
    code, out = kaimon("extensions", "add", str(root))
    assert code == 0, out
    assert "registered extension notes" in out and "notes_search, notes_list" in out
    registry = json.loads(
        (Path(os.environ["JUPYTER_CONFIG_DIR"]) / "kaimon/extensions.json").read_text()
    )
    assert registry == {
        "extensions": [{"project_path": str(root), "enabled": True, "auto_start": True}]
    }
    code, out = kaimon("extensions", "add", str(root))
    assert code == 2 and "already registered" in out
    code, out = kaimon("extensions", "disable", "notes")
    assert code == 0
    code, out = kaimon("extensions", "list")
    assert "notes" in out and "disabled" in out and "no kaimon server runs now" in out
    code, out = kaimon("extensions", "start", "notes")
    assert code == 2 and "no kaimon server supervises extensions" in out
    code, out = kaimon("extensions", "remove", "notes")
    assert code == 0
    code, out = kaimon("extensions", "list")
    assert "no extension is registered" in out


BAD = {
    "missing namespace": (
        '[extension]\nmodule = "bad_ext"\ntools_function = "create_tools"\n',
        "from kaimon_kernel import GateTool\ndef create_tools(): return []\n",
        ["namespace: is required"],
    ),
    "invalid namespace": (
        '[extension]\nnamespace = "my notes"\nmodule = "bad_ext"\n'
        'tools_function = "create_tools"\n',
        "def create_tools(): return []\n",
        ["namespace: 'my notes' is not a valid namespace", "letters, digits or _"],
    ),
    "module that does not import": (
        simple_manifest("bad"),
        "import json\nraise RuntimeError('the lab database is unreachable')\n",
        ["module: module = 'bad_ext' does not import", "Traceback", "unreachable"],
    ),
    "tools_function returning no GateTools": (
        simple_manifest("bad"),
        "def search(q: str) -> str: return q\ndef create_tools(): return [search]\n",
        ["tools_function:", "not a GateTool", "GateTool(name, function)"],
    ),
    "a tool whose types cannot be described": (
        simple_manifest("bad"),
        "from kaimon_kernel import GateTool\nclass Probe: pass\n"
        "def read(probe: Probe) -> str: return ''\n"
        "def create_tools(): return [GateTool('read', read)]\n",
        ["tools_function: a tool's types cannot be described", "'probe'"],
    ),
    "a missing tools_function": (
        simple_manifest("bad"),
        "x = 1\n",
        ["tools_function: tools_function = 'create_tools': module bad_ext has no such"],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_add_refuses_a_bad_extension_naming_the_field(home: Path, case: str) -> None:
    manifest, code_text, expected = BAD[case]
    root = project(home, "bad", manifest, code_text)
    code, out = kaimon("extensions", "add", str(root))
    assert code == 2, out
    for fragment in expected:
        assert fragment in out, out
    assert not (Path(os.environ["JUPYTER_CONFIG_DIR"]) / "kaimon/extensions.json").exists()


def test_add_refuses_an_interpreter_without_kaimon_kernel(home: Path) -> None:
    venv = home / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    root = project(
        home,
        "bare",
        simple_manifest("bare", python=f'"{venv}/bin/python"'),
        "def create_tools(): return []\n",
    )
    code, out = kaimon("extensions", "add", str(root))
    assert code == 2, out
    assert f"python: {venv}/bin/python cannot run kaimon-kernel" in out
    assert "pip install kaimon-kernel" in out


def test_add_refuses_a_folder_without_a_manifest(home: Path) -> None:
    (home / "empty").mkdir()
    code, out = kaimon("extensions", "add", str(home / "empty"))
    assert code == 2 and "has no kaimon.toml" in out and "[extension]" in out


def test_the_manifest_may_live_in_pyproject(home: Path) -> None:
    root = project(
        home,
        "py",
        "",
        "from kaimon_kernel import GateTool\n"
        "def hi(name: str) -> str: return 'hi ' + name\n"
        "def create_tools(): return [GateTool('hi', hi)]\n",
    )
    (root / "kaimon.toml").unlink()
    (root / "pyproject.toml").write_text(
        '[project]\nname = "py"\n[tool.kaimon.extension]\nnamespace = "py"\n'
        'module = "py_ext"\ntools_function = "create_tools"\n'
    )
    code, out = kaimon("extensions", "add", str(root))
    assert code == 0 and "py_hi" in out, out


async def test_a_broken_registry_is_reported_not_fatal(home: Path) -> None:
    registry = Path(os.environ["JUPYTER_CONFIG_DIR"]) / "kaimon" / "extensions.json"
    registry.parent.mkdir()
    registry.write_text('{"extensions": [{"enabled": true}]')
    code, out = kaimon("extensions", "list")
    assert code == 0 and "is broken" in out
    code, out = kaimon("extensions", "add", str(notes_project(home)))
    assert code == 2 and "is broken" in out
    assert registry.read_text() == '{"extensions": [{"enabled": true}]'  # not overwritten
    async with stdio_client("--no-auto-start") as client:
        result = await client.call_tool("extension_info", {})
        assert not result.is_error
        assert "is broken" in result.structured_content["problem"]
        assert "ex" in await tool_names(client)


# -- supervised by kaimon serve -----------------------------------------------------------


async def test_agent_calls_an_extension_tool_and_manages_the_extension(home: Path) -> None:
    mark = home / "shutdown-mark"
    root = notes_project(home, mark)
    assert kaimon("extensions", "add", str(root))[0] == 0
    async with stdio_client("--no-auto-start") as client:
        await until(lambda: _has(client, "notes_search"), "notes_search to be listed")
        listed = {t.name: t for t in (await client.list_tools()).tools}
        assert listed["extension_info"].annotations.read_only_hint is True
        assert listed["manage_extension"].annotations.destructive_hint is False
        result = await client.call_tool("notes_search", {"query": "ph"})
        assert not result.is_error, text_of(result)
        hits = result.structured_content["result"]
        assert [h["text"] for h in hits] == ["PBS at pH 7.4", "Tris at pH 8.0"]

        # `ex` without a session never runs in an extension's process
        result = await client.call_tool("ex", {"code": "1"})
        assert result.is_error and "no kernel is served" in text_of(result)

        info = await client.call_tool("extension_info", {})
        (row,) = info.structured_content["extensions"]
        assert row["name"] == "notes" and row["state"] == "running"
        assert sorted(row["tools"]) == ["notes_list", "notes_search"]
        assert row["uptime"] >= 0
        detail = (await client.call_tool("extension_info", {"name": "notes"})).structured_content
        assert detail["project_path"] == str(root)
        assert detail["description"].startswith("Search my lab notes")
        search = next(t for t in detail["tools"] if t["name"] == "notes_search")
        assert search["input_schema"]["properties"]["limit"]["default"] == 20

        result = await client.call_tool("manage_extension", {"name": "notes", "action": "stop"})
        assert not result.is_error, text_of(result)
        assert mark.read_text() == "notes_ext shut down\n"  # the shutdown_function ran
        assert status("notes")["state"] == "stopped"
        await until(lambda: _lacks(client, "notes_search"), "notes_search to go")

        result = await client.call_tool("manage_extension", {"name": "notes", "action": "start"})
        assert not result.is_error and "is running" in text_of(result)
        await until(lambda: _has(client, "notes_search"), "notes_search to come back")

        result = await client.call_tool("manage_extension", {"name": "notes", "action": "disable"})
        assert not result.is_error
        await until(lambda: status("notes").get("state") == "stopped", "disable to stop it")
        result = await client.call_tool("manage_extension", {"name": "notes", "action": "start"})
        assert result.is_error and "is disabled; enable it first" in text_of(result)
        await client.call_tool("manage_extension", {"name": "notes", "action": "enable"})
        await until(lambda: status("notes").get("state") == "running", "enable to start it")

        result = await client.call_tool("manage_extension", {"name": "nope", "action": "stop"})
        assert result.is_error and "no extension is called 'nope'" in text_of(result)
    # the server exits: its extensions stop, and nothing is left behind
    assert state() is None
    assert not list(runtime().glob("session-*.json"))


async def _has(client: Any, name: str) -> bool:
    return name in await tool_names(client)


async def _lacks(client: Any, name: str) -> bool:
    return name not in await tool_names(client)


FLAKY = """\
from pathlib import Path
from kaimon_kernel import GateTool

MARK = Path(__file__).with_name("started-once")
if not MARK.exists():
    MARK.write_text("")
    raise RuntimeError("first start fails: the instrument is warming up")

def ping() -> str:
    import sys
    print("flaky: the instrument answered", file=sys.stderr)
    return "pong"

def create_tools():
    return [GateTool("ping", ping)]
"""


async def test_a_crashed_extension_is_restarted_with_backoff_and_its_errors_kept(
    home: Path,
) -> None:
    root = project(home, "flaky", simple_manifest("flaky"), FLAKY)
    (root / "started-once").write_text("")  # lets `add` validate it
    assert kaimon("extensions", "add", str(root))[0] == 0
    (root / "started-once").unlink()
    async with stdio_client("--no-auto-start") as client:
        await until(lambda: status("flaky").get("state") == "running", "the restart")
        detail = (await client.call_tool("extension_info", {"name": "flaky"})).structured_content
        assert detail["restarts"] == 1
        assert "exited with code 3 before serving its tools" in detail["errors"]
        assert "first start fails: the instrument is warming up" in detail["errors"]
        await until(lambda: _has(client, "flaky_ping"), "flaky_ping")
        assert text_of(await client.call_tool("flaky_ping", {})) == "pong"

        pid = status("flaky")["pid"]
        os.kill(pid, signal.SIGKILL)
        await until(
            lambda: (
                status("flaky").get("restarts") == 2 and status("flaky").get("state") == "running"
            ),
            "a restart after kill -9",
        )
        detail = (await client.call_tool("extension_info", {"name": "flaky"})).structured_content
        assert "was killed by SIGKILL" in detail["errors"]
        assert "flaky: the instrument answered" in detail["errors"]  # its stderr's tail
        assert detail["pid"] != pid
        await until(lambda: _has(client, "flaky_ping"), "flaky_ping after the restart")
        result = await client.call_tool("flaky_ping", {})
        assert text_of(result) == "pong"
    code, out = kaimon("extensions", "logs", "flaky")
    assert code == 0 and "first start fails" in out


HANGS = """\
import time
from pathlib import Path
from kaimon_kernel import GateTool

def ping() -> str:
    return "pong"

def create_tools():
    return [GateTool("ping", ping)]

def on_shutdown():
    Path(__file__).with_name("hook-began").write_text("")
    time.sleep(120)
"""


async def test_a_shutdown_hook_that_hangs_is_cut_off_after_5_s(home: Path) -> None:
    root = project(
        home, "hangs", simple_manifest("hangs", shutdown_function='"on_shutdown"'), HANGS
    )
    assert kaimon("extensions", "add", str(root))[0] == 0
    async with stdio_client("--no-auto-start") as client:
        await until(lambda: status("hangs").get("state") == "running", "the start")
        pid = status("hangs")["pid"]
        began = time.monotonic()
        code, out = await asyncio.to_thread(kaimon, "extensions", "stop", "hangs")
        took = time.monotonic() - began
        assert code == 0 and "stopped extension hangs" in out, out
        assert (root / "hook-began").exists()
        assert took > 4.5, took  # the hook had its 5 s, then was cut off (it never returns)
        assert gone(pid)
        await until(lambda: _lacks(client, "hangs_ping"), "hangs_ping to be withdrawn")


# -- one supervisor on the machine --------------------------------------------------------


@pytest.fixture
def background_server(home: Path) -> Iterator[Any]:
    servers: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kaimon_kernel", "serve", "--no-auto-start"],
            stdin=subprocess.PIPE,  # kept open: a stdio server runs until it closes
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        servers.append(proc)
        return proc

    yield start
    for proc in servers:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waits on a parent that is not ours to reap it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def extension_processes(project_path: Path) -> list[int]:
    """Live extension kernels of ``project_path`` (by their session files)."""
    pids = []
    for path in runtime().glob("session-*.json"):
        info = json.loads(path.read_text())
        if info["started_by"] == "extension" and info["cwd"] == str(project_path):
            if not gone(info["pid"]):
                pids.append(info["pid"])
    return pids


async def test_two_servers_run_one_copy_and_another_takes_over_when_it_dies(
    home: Path, background_server: Any
) -> None:
    root = notes_project(home)
    assert kaimon("extensions", "add", str(root))[0] == 0
    first = background_server()
    await until(lambda: (state() or {}).get("supervisor", {}).get("pid") == first.pid, "lock")
    await until(lambda: status("notes").get("state") == "running", "the extension")
    old_pid = status("notes")["pid"]
    async with stdio_client("--no-auto-start") as client:
        await until(lambda: _has(client, "notes_search"), "notes_search on the second server")
        result = await client.call_tool("notes_search", {"query": "hela"})
        assert result.structured_content["result"][0]["file"] == "cells.txt"
        assert extension_processes(root) == [old_pid]  # one copy, not two
        assert state()["supervisor"]["pid"] == first.pid

        first.send_signal(signal.SIGKILL)  # dies without stopping anything
        first.wait(10)
        await until(
            lambda: (
                (state() or {}).get("supervisor", {}).get("pid") not in (None, first.pid)
                and status("notes").get("state") == "running"
            ),
            "the second server to take over",
            timeout=30,
        )
        await until(lambda: gone(old_pid), "the orphan to be stopped", timeout=30)
        assert extension_processes(root) == [status("notes")["pid"]]
        await until(lambda: _has(client, "notes_search"), "notes_search after the takeover")
        result = await client.call_tool("notes_search", {"query": "tris"})
        assert not result.is_error, text_of(result)


async def test_an_extension_and_a_session_sharing_a_namespace_both_keep_their_tools(
    home: Path, make_person: Any
) -> None:
    person = make_person(serve=False)
    person.run(
        "import kaimon_kernel\ndef search(query: str) -> str:\n    return 'person: ' + query\n"
        "kaimon_kernel.serve(namespace='notes', tools=[kaimon_kernel.GateTool('search', search)])"
    )
    assert kaimon("extensions", "add", str(notes_project(home)))[0] == 0
    async with stdio_client("--no-auto-start") as client:
        await until(lambda: _has(client, "notes_2_search"), "the extension's notes_2_search")
        mine = await client.call_tool("notes_search", {"query": "x"})
        theirs = await client.call_tool("notes_2_search", {"query": "tris"})
        assert text_of(mine) == "person: x"
        assert theirs.structured_content["result"][0]["text"] == "Tris at pH 8.0"
        info = (await client.call_tool("extension_info", {})).structured_content
        assert sorted(info["extensions"][0]["tools"]) == ["notes_2_list", "notes_2_search"]


LISTENS = """\
import json
from pathlib import Path
from kaimon_kernel import GateTool

HEARD = Path(__file__).with_name("heard.jsonl")

def ping() -> str:
    return "pong"

def create_tools():
    return [GateTool("ping", ping)]

def on_event(topic, data, session):
    with HEARD.open("a") as f:
        f.write(json.dumps({"topic": topic, "data": data, "session": session}) + "\\n")
"""


async def test_an_extension_hears_its_event_topics(home: Path, make_person: Any) -> None:
    root = project(
        home,
        "listens",
        simple_manifest("listens", event_topics='["eval_finished", "session_started"]'),
        LISTENS,
    )
    assert kaimon("extensions", "add", str(root))[0] == 0
    heard_file = root / "heard.jsonl"

    def heard() -> list[dict[str, Any]]:
        text = heard_file.read_text() if heard_file.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    async with stdio_client("--no-auto-start") as client:
        await until(lambda: _has(client, "listens_ping"), "the extension")
        person = make_person("--label bench")
        await until(
            lambda: any(h["topic"] == "session_started" for h in heard()), "session_started"
        )
        result = await client.call_tool("ex", {"code": "6 * 7", "session": "bench"})
        assert text_of(result).strip() == "42"
        finished = await until(
            lambda: [h for h in heard() if h["topic"] == "eval_finished"], "eval_finished"
        )
    assert finished[0]["session"] == person.key
    assert finished[0]["data"]["status"] == "ok" and finished[0]["data"]["label"] == "bench"
    started = next(h for h in heard() if h["topic"] == "session_started")
    assert started["session"] == person.key
    # its own session, and topics it did not ask for, never reach it
    assert {h["topic"] for h in heard()} <= {"eval_finished", "session_started"}
    assert all(h["session"] != status("listens").get("key") for h in heard())


def test_add_refuses_an_unknown_event_topic(home: Path) -> None:
    root = project(
        home, "deaf", simple_manifest("deaf", event_topics='["breakpoint_hit"]'), LISTENS
    )
    code, out = kaimon("extensions", "add", str(root))
    assert code == 2 and "event_topics: unknown topic 'breakpoint_hit'" in out, out
    assert "eval_finished" in out


async def test_breaking_the_registry_by_hand_leaves_running_extensions_alone(home: Path) -> None:
    assert kaimon("extensions", "add", str(notes_project(home)))[0] == 0
    registry = Path(os.environ["JUPYTER_CONFIG_DIR"]) / "kaimon" / "extensions.json"
    async with stdio_client("--no-auto-start") as client:
        await until(lambda: status("notes").get("state") == "running", "the extension")
        pid = status("notes")["pid"]
        registry.write_text(registry.read_text()[:-5])  # a hand edit gone wrong
        result = await client.call_tool("extension_info", {})
        assert "is broken" in result.structured_content["problem"]
        await asyncio.sleep(1.0)  # the scenario: the supervisor reads the file meanwhile
        assert status("notes")["state"] == "running" and status("notes")["pid"] == pid
        result = await client.call_tool("notes_list", {})
        assert result.structured_content["result"] == ["buffers.md", "cells.txt"]


async def test_when_the_supervising_server_exits_cleanly_another_takes_over(
    home: Path, background_server: Any
) -> None:
    mark = home / "shutdown-mark"
    root = notes_project(home, mark)
    assert kaimon("extensions", "add", str(root))[0] == 0
    first = background_server()
    await until(lambda: (state() or {}).get("supervisor", {}).get("pid") == first.pid, "lock")
    await until(lambda: status("notes").get("state") == "running", "the extension")
    second = background_server()
    old_pid = status("notes")["pid"]
    first.send_signal(signal.SIGTERM)
    first.wait(30)
    assert mark.read_text() == "notes_ext shut down\n"  # it stopped its extension properly
    await until(
        lambda: (
            (state() or {}).get("supervisor", {}).get("pid") == second.pid
            and status("notes").get("state") == "running"
        ),
        "the second server to take over",
        timeout=30,
    )
    assert status("notes")["pid"] != old_pid
    assert extension_processes(root) == [status("notes")["pid"]]


async def test_two_extensions_with_one_namespace_get_their_names_tools(home: Path) -> None:
    first = notes_project(home)
    second = home / "notes_ext_copy"
    shutil.copytree(first, second)
    for root in (first, second):
        code, out = kaimon("extensions", "add", str(root))
        assert code == 0, out
    assert "registered extension notes_2" in out and "notes_2_search" in out
    async with stdio_client("--no-auto-start") as client:
        await until(lambda: _has(client, "notes_2_search"), "the second extension's tools")
        await until(lambda: _has(client, "notes_search"), "the first extension's tools")
        info = (await client.call_tool("extension_info", {})).structured_content
        tools = {row["name"]: sorted(row["tools"]) for row in info["extensions"]}
        assert tools == {
            "notes": ["notes_list", "notes_search"],
            "notes_2": ["notes_2_list", "notes_2_search"],
        }
