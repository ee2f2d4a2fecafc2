"""The gate⇄server contract end to end: real kernels, real `kaimon serve`, the MCP SDK client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from queue import Empty

import psutil
import pytest
from conftest import DEADLINE, PersonKernel, sessions_dir, stdio_client, text_of, wait_until
from jupyter_client import BlockingKernelClient

from kaimon_kernel._paths import resume_file_for
from kaimon_kernel._protocol import COMM_TARGET, Hello, ProcessIdentity, SessionInfo, Welcome

pytestmark = pytest.mark.anyio


# -- defect 2: serving again reaches servers already connected ---------------------------------


@pytest.mark.parametrize(
    "serve_again",
    [
        "%kaimon serve --label guarded --no-restart",
        "import kaimon_kernel\n_ = kaimon_kernel.serve(label='guarded', allow_restart=False)",
    ],
)
async def test_after_the_person_forbids_restarts_a_restart_is_refused_at_once(
    make_person, serve_again: str
) -> None:
    person = make_person("--label guarded")
    async with stdio_client("--no-auto-start") as client:
        before = await client.call_tool("list_sessions", {})
        (row,) = before.structured_content["sessions"]
        status, out = person.run(serve_again)
        assert status == "ok", out
        restart = await client.call_tool("manage_repl", {"command": "restart"})
    assert restart.is_error, text_of(restart)
    assert "allow_restart=False" in text_of(restart)
    assert person.pid == row["pid"]  # the kernel was never restarted


async def test_serving_again_with_a_new_label_and_no_mirror_is_seen_at_once(make_person) -> None:
    person = make_person("--label first")
    async with stdio_client("--no-auto-start") as client:
        await client.call_tool("list_sessions", {})
        status, out = person.run("%kaimon serve --label second --no-mirror")
        assert status == "ok", out
        by_new_label = await client.call_tool("ex", {"code": "'found'", "session": "second"})
        mirror = await client.call_tool("set_option", {"mirror": True})
    assert text_of(by_new_label).strip() == "'found'"
    assert mirror.is_error and "allow_mirror=False" in text_of(mirror)


# -- defect 16: empty strings clear, and the tool waits for the gate's answer -------------------


async def test_an_empty_label_or_description_clears_it(make_person) -> None:
    make_person("--namespace proj --label named --description 'about it'")
    async with stdio_client("--no-auto-start") as client:
        cleared_label = await client.call_tool("set_session_info", {"label": ""})
        cleared_text = await client.call_tool("set_session_info", {"description": ""})
        listing = await client.call_tool("list_sessions", {})
    assert not cleared_label.is_error, text_of(cleared_label)
    assert "label 'proj'" in text_of(cleared_label)  # the namespace
    assert not cleared_text.is_error, text_of(cleared_text)
    (row,) = listing.structured_content["sessions"]
    assert (row["label"], row["description"]) == ("proj", "")


# -- defect 4: only the kernel that was served is served again ---------------------------------

_ANOTHER_PARENT = """
import subprocess, sys
kernel = subprocess.Popen([sys.executable, "-m", "ipykernel_launcher", "-f", sys.argv[1]])
sys.exit(kernel.wait())
"""


def test_a_fresh_kernel_on_a_served_kernels_connection_file_is_not_served(make_person) -> None:
    person = make_person("--label once")
    connection_file = person.km.connection_file
    ports = json.loads(Path(connection_file).read_text())
    marker = resume_file_for(connection_file)
    assert marker.exists()
    person.kc.stop_channels()
    person.km.shutdown_kernel(now=False)  # the connection file goes; the marker stays
    Path(connection_file).write_text(json.dumps(ports))
    helper = subprocess.Popen([sys.executable, "-c", _ANOTHER_PARENT, connection_file])
    client = BlockingKernelClient(connection_file=connection_file)
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=DEADLINE)  # its startup files (the resume hook) have run
        reply = client.execute_interactive("import os; pid = os.getpid()", timeout=DEADLINE)
        assert reply["content"]["status"] == "ok"
        served = [
            SessionInfo.model_validate_json(p.read_text())
            for p in sessions_dir().glob("session-*.json")
        ]
        assert person.key not in [info.key for info in served]
        assert not marker.exists()  # a stale marker is removed, not kept for the next one
    finally:
        client.shutdown()
        client.stop_channels()
        try:
            helper.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            helper.kill()
            helper.wait()


def test_a_kernel_restarted_by_its_manager_is_served_again_with_its_key(make_person) -> None:
    person = make_person("--label again")
    old_pid = person.pid
    person.km.restart_kernel(now=False)
    session_file = sessions_dir() / f"session-{person.key}.json"

    def served_again() -> SessionInfo | None:
        try:
            info = SessionInfo.model_validate_json(session_file.read_text())
        except (OSError, ValueError):
            return None
        return info if info.pid != old_pid else None

    info = wait_until(served_again, what="the restarted kernel to serve again")
    assert (info.pid, info.label) == (person.pid, "again")


# -- defect 5 (gate side): only live servers are listed -----------------------------------------


def test_status_forgets_a_server_that_was_killed(make_person) -> None:
    person = make_person("--label watched")
    server = subprocess.Popen(
        [sys.executable, "-m", "kaimon_kernel", "serve", "--no-auto-start"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        listed = f"kaimon server pid {server.pid}"
        wait_until(lambda: listed in person.run("%kaimon status")[1], what="the server to connect")
        assert subshells(person) == 1  # the server's, for its gate traffic
    finally:
        server.send_signal(signal.SIGKILL)  # no clean disconnect: no comm_close ever comes
        server.wait()
    assert listed not in person.run("%kaimon status")[1]
    wait_until(lambda: subshells(person) == 0, what="the dead server's subshell to go")


def subshells(person: PersonKernel) -> int:
    code = "len(get_ipython().kernel.shell_channel_thread.manager.list_subshell())"
    status, out = person.run(code)
    assert status == "ok", out
    return int(out)


def _open_comm(person: PersonKernel) -> tuple[str, Welcome]:
    """Connect to the gate the way a server does, from the test process; return the welcome."""
    comm_id = uuid.uuid4().hex
    hello = Hello(server=ProcessIdentity.current()).model_dump(mode="json")
    content = {"comm_id": comm_id, "target_name": COMM_TARGET, "data": hello}
    person.kc.shell_channel.send(person.kc.session.msg("comm_open", content))
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            msg = person.kc.get_iopub_msg(timeout=0.5)
        except Empty:
            continue
        if msg["msg_type"] == "comm_msg" and msg["content"]["comm_id"] == comm_id:
            return comm_id, Welcome.model_validate(msg["content"]["data"])
    raise AssertionError("the gate did not welcome the comm")


def test_a_server_that_closes_its_comm_is_dropped_and_the_welcome_names_the_kernel(
    person: PersonKernel,
) -> None:
    comm_id, welcome = _open_comm(person)
    kernel = psutil.Process(person.pid)
    assert welcome.session.kernel == welcome.kernel
    assert welcome.kernel.pid == person.pid
    assert welcome.kernel.create_time == pytest.approx(kernel.create_time(), abs=0.05)
    assert f"kaimon server pid {os.getpid()}" in person.run("%kaimon status")[1]
    person.kc.shell_channel.send(person.kc.session.msg("comm_close", {"comm_id": comm_id}))
    wait_until(
        lambda: f"server pid {os.getpid()}" not in person.run("%kaimon status")[1],
        what="the gate to drop the closed comm",
    )
