"""How kernels are reached and started: CurveZMQ-encrypted channels, a sandboxing launcher."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import queue
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq
from conftest import (
    DEADLINE,
    JupyterServer,
    PersonKernel,
    sessions_dir,
    stdio_client,
    text_of,
    wait_until,
)
from jupyter_client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from kaimon_kernel._errors import KaimonError
from kaimon_kernel._protocol import ProcessIdentity, SessionInfo
from kaimon_kernel._settings import SettingsError, load_settings
from kaimon_kernel.server._launcher import kernel_prefix
from kaimon_kernel.server.providers import LocalProvider

pytestmark = pytest.mark.anyio

UNENCRYPTED_WARNING = "running over TCP without encryption"
DEAF_FOR = 3.0  # seconds a client without the keys listens for anything


class CurvePerson(PersonKernel):
    """The person's kernel, started by a kernel manager that gave it CurveZMQ keys."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.curve_publickey, self.km.curve_secretkey = zmq.curve_keypair()
        self.km.start_kernel(env={**os.environ, **(env or {})})
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=DEADLINE)
        self.key = None


def connection_info(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def assert_deaf(info: dict[str, Any]) -> None:
    """A client given everything but the CurveZMQ keys gets no reply and no iopub message."""
    assert info.get("curve_publickey") and info.get("curve_secretkey"), info.keys()
    stripped = {k: v for k, v in info.items() if not k.startswith("curve_")}
    client = BlockingKernelClient()
    client.load_connection_info(stripped)
    # and a bare SUB socket on iopub, below jupyter_client
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"{info['transport']}://{info['ip']}:{info['iopub_port']}")
    client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=True)
    try:
        client.kernel_info()
        client.execute("print('heard')")
        client.control_channel.send(client.session.msg("kernel_info_request"))
        deadline = time.monotonic() + DEAF_FOR
        heard: list[str] = []
        while time.monotonic() < deadline:
            for get in (client.get_shell_msg, client.get_iopub_msg, client.get_control_msg):
                try:
                    heard.append(get(timeout=0.1)["msg_type"])
                except queue.Empty:
                    pass
            if sub.poll(100):
                heard.append(repr(sub.recv_multipart()[:2]))
        assert heard == [], f"a client without the keys heard {heard}"
    finally:
        client.stop_channels()
        sub.close()


def _runtime_dir() -> Path:
    return Path(os.environ["JUPYTER_RUNTIME_DIR"])


# -- CurveZMQ ----------------------------------------------------------------------------------


async def test_kernels_kaimon_starts_are_encrypted_and_deaf_to_clients_without_the_keys(
    tmp_path: Path,
) -> None:
    async with stdio_client(cwd=tmp_path) as client:
        started = await client.call_tool("start_session", {"project_path": str(tmp_path)})
        assert not started.is_error, text_of(started)
        key = started.structured_content["key"]
        answer = await client.call_tool("ex", {"code": "1+1", "session": key})
        assert text_of(answer).strip() == "2"
        connection = _runtime_dir() / f"kernel-kaimon-{key}.json"
        info = connection_info(connection)
        assert stat.S_IMODE(connection.stat().st_mode) == 0o600
        assert_deaf(info)
        # the agent's client still works after the stranger's attempts
        again = await client.call_tool("ex", {"code": "print('still')", "session": key})
        assert text_of(again).strip() == "still"
        log = (sessions_dir() / f"kernel-{key}.log").read_text()
    assert UNENCRYPTED_WARNING not in log, log


async def test_a_restarted_kernel_keeps_its_keys_and_answers_the_agent(tmp_path: Path) -> None:
    async with stdio_client(cwd=tmp_path) as client:
        started = await client.call_tool("start_session", {"project_path": str(tmp_path)})
        key = started.structured_content["key"]
        before = connection_info(_runtime_dir() / f"kernel-kaimon-{key}.json")
        restarted = await client.call_tool("manage_repl", {"command": "restart", "session": key})
        assert not restarted.is_error, text_of(restarted)
        answer = await client.call_tool("ex", {"code": "2+2", "session": key})
        after = connection_info(_runtime_dir() / f"kernel-kaimon-{key}.json")
    assert text_of(answer).strip() == "4"
    assert after["curve_publickey"] == before["curve_publickey"]


async def test_a_persons_kernel_with_curve_keys_is_reached_encrypted() -> None:
    person = CurvePerson()
    try:
        key = person.serve("--label curvy")
        info = connection_info(person.km.connection_file)
        assert info["curve_publickey"]
        async with stdio_client() as client:
            answer = await client.call_tool("ex", {"code": "6*7", "session": key})
            assert text_of(answer).strip() == "42"
            assert_deaf(info)
        # the person's own (keyed) client was never disturbed
        status, out = person.run("print('mine')")
        assert (status, out) == ("ok", "mine\n")
    finally:
        person.shutdown()


# -- the launcher prefix ------------------------------------------------------------------------


def test_a_launcher_is_filled_in_with_the_project_and_runtime_dir() -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("bwrap is not installed (.ci/run installs it)")
    prefix = kernel_prefix(
        ["bwrap", "--bind", "{project}", "{project}", "--bind", "{runtime_dir}", "{runtime_dir}"],
        project="/p",
        runtime_dir="/r",
    )
    assert prefix == ["bwrap", "--bind", "/p", "/p", "--bind", "/r", "/r"]
    assert kernel_prefix([], project="/p", runtime_dir="/r") == []


@pytest.mark.parametrize(
    ("launcher", "said"),
    [
        (["no-such-launcher-xyz"], "'no-such-launcher-xyz' is not an executable found on PATH"),
        (["bwrap", "--unshare-all"], "--unshare-all gives the kernel a pid of its own"),
        (["bwrap", "--unshare-pid"], "--unshare-pid gives the kernel a pid of its own"),
    ],
)
def test_a_launcher_that_cannot_work_is_refused_saying_why(launcher: list[str], said: str) -> None:
    if launcher[0] == "bwrap" and shutil.which("bwrap") is None:
        pytest.skip("bwrap is not installed (.ci/run installs it)")
    with pytest.raises(KaimonError, match="kernel_launcher") as err:
        kernel_prefix(launcher, project="/p", runtime_dir="/r")
    assert said in str(err.value)


async def test_a_launcher_that_cannot_run_is_an_error_the_agent_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAIMON_KERNEL_LAUNCHER", '["no-such-launcher-xyz", "--flag"]')
    async with stdio_client("--no-auto-start", cwd=tmp_path) as client:
        started = await client.call_tool("start_session", {"project_path": str(tmp_path)})
    assert started.is_error
    assert "'no-such-launcher-xyz' is not an executable found on PATH" in text_of(started)


def test_a_runtime_dir_too_long_for_ipc_sockets_is_refused_saying_what_to_do() -> None:
    from kaimon_kernel.server.providers._local import _endpoints

    assert _endpoints(Path("/r"), "k1", sandboxed=True) == {
        "transport": "ipc",
        "ip": "/r/kaimon-ipc-k1",
    }
    with pytest.raises(KaimonError, match="set JUPYTER_RUNTIME_DIR to a shorter one"):
        _endpoints(Path("/" + "d" * 100), "k1", sandboxed=True)


def test_the_launcher_setting_comes_from_kaimon_json_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "kaimon.json"
    config.write_text(json.dumps({"kernel_launcher": ["bwrap", "--unshare-net"]}))
    assert load_settings(config_path=config).kernel_launcher == ["bwrap", "--unshare-net"]
    monkeypatch.setenv("KAIMON_KERNEL_LAUNCHER", '["firejail", "--net=none"]')
    assert load_settings(config_path=config).kernel_launcher == ["firejail", "--net=none"]
    config.write_text(json.dumps({"kernel_launcher": ["bwrap", ""]}))
    monkeypatch.delenv("KAIMON_KERNEL_LAUNCHER")
    with pytest.raises(SettingsError, match=r"'kernel_launcher' in .*non-empty string"):
        load_settings(config_path=config)


def _bwrap_unusable() -> str | None:
    """Why bubblewrap cannot sandbox here, or None when it can."""
    if shutil.which("bwrap") is None:
        return "bwrap is not installed (.ci/run installs Debian's bubblewrap)"
    probe = subprocess.run(
        ["bwrap", "--unshare-net", "--ro-bind", "/", "/", "--proc", "/proc", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"bwrap cannot create namespaces here: {probe.stderr.strip()}"
    return None


# the README's launcher, word for word
SANDBOX = [
    "bwrap",
    "--unshare-net",
    "--die-with-parent",
    "--ro-bind",
    "/",
    "/",
    "--dev",
    "/dev",
    "--proc",
    "/proc",
    "--tmpfs",
    "/tmp",
    "--bind",
    "{runtime_dir}",
    "{runtime_dir}",
    "--bind",
    "{project}",
    "{project}",
]


def sandbox() -> list[str]:
    """The README's launcher, plus what its note asks for: a checkout or venv of kaimon that
    lives under /tmp (a CI clone) is bound back in after the ``--tmpfs /tmp`` that hides it."""
    under_tmp = [
        p for p in {str(Path(__file__).resolve().parents[1]), sys.prefix} if p.startswith("/tmp/")
    ]
    binds = [a for p in sorted(under_tmp) for a in ("--ro-bind", p, p)]
    after_tmpfs = SANDBOX.index("--tmpfs") + 2
    return SANDBOX[:after_tmpfs] + binds + SANDBOX[after_tmpfs:]


async def test_a_sandboxed_kernel_has_no_network_and_writes_only_its_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    why = _bwrap_unusable()
    if why:
        pytest.skip(why)
    monkeypatch.setenv("KAIMON_KERNEL_LAUNCHER", json.dumps(sandbox()))
    project = tmp_path / "project"
    project.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # reachable from outside the sandbox
    probe = f"""
import socket
s = socket.socket()
s.settimeout(5)
try:
    s.connect(("127.0.0.1", {port}))
    print("network: connected")
except OSError as err:
    print("network: refused", type(err).__name__)
open("written.txt", "w").write("from the sandbox")
try:
    open({str(outside / "escaped.txt")!r}, "w").write("x")
    print("outside: written")
except OSError as err:
    print("outside: refused", err.strerror)
"""
    try:
        async with stdio_client("--promote-after", "5", cwd=tmp_path) as client:
            started = await client.call_tool("start_session", {"project_path": str(project)})
            assert not started.is_error, text_of(started)
            key = started.structured_content["key"]
            ran = await client.call_tool("ex", {"code": probe, "session": key})
            out = text_of(ran)
            info = connection_info(_runtime_dir() / f"kernel-kaimon-{key}.json")
            # signals reach the kernel through the launcher: interrupt, then restart
            slow = await client.call_tool("ex", {"code": "import time; time.sleep(120)"})
            eval_id = slow.structured_content["eval_id"]
            await client.call_tool("manage_repl", {"command": "interrupt", "session": key})
            deadline = time.monotonic() + DEADLINE
            while (job := await client.call_tool("check_eval", {"eval_id": eval_id})) and (
                job.structured_content["status"] == "running"
            ):
                assert time.monotonic() < deadline, "the interrupt did not stop the code"
            restarted = await client.call_tool("manage_repl", {"command": "restart"})
            assert not restarted.is_error, text_of(restarted)
            answer = await client.call_tool("ex", {"code": "1+1", "session": key})
    finally:
        listener.close()
    assert "network: refused" in out, out
    assert "outside: refused" in out, out  # /tmp is the sandbox's own: no such directory
    assert (project / "written.txt").read_text() == "from the sandbox"
    assert not (outside / "escaped.txt").exists()
    assert info["transport"] == "ipc" and info["curve_publickey"]
    assert "KeyboardInterrupt" in text_of(job), text_of(job)
    assert text_of(answer).strip() == "2"


async def test_a_sandboxed_kernel_of_a_crashed_server_is_stopped_by_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    why = _bwrap_unusable()
    if why:
        pytest.skip(why)
    import httpx2
    from conftest import HttpServer
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    from kaimon_kernel.server.providers import pid_alive

    # without --die-with-parent: the kernel outlives a killed bwrap unless kaimon stops it
    launcher = [a for a in sandbox() if a != "--die-with-parent"]
    monkeypatch.setenv("KAIMON_KERNEL_LAUNCHER", json.dumps(launcher))
    env = {"KAIMON_TOKEN": "sandbox-orphan-token-0123456789", "KAIMON_PROJECTS": str(tmp_path)}
    first = HttpServer(env=env)
    try:
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {env['KAIMON_TOKEN']}"}) as http,
            Client(streamable_http_client(first.url, http_client=http)) as client,
        ):
            started = await client.call_tool("start_session", {"project_path": str(tmp_path)})
            assert not started.is_error, text_of(started)
            pid = await client.call_tool("ex", {"code": "import os; os.getpid()"})
            kernel_pid = int(text_of(pid).strip().splitlines()[-1])
            key = started.structured_content["key"]
            info = connection_info(_runtime_dir() / f"kernel-kaimon-{key}.json")
    finally:
        first.proc.kill()  # a crash: no clean shutdown of its kernels
        first.proc.wait()
    assert pid_alive(kernel_pid)
    second = HttpServer(env=env)
    try:
        wait_until(lambda: not pid_alive(kernel_pid), 30, "the sandboxed orphan to be stopped")
        wait_until(
            lambda: not Path(f"{info['ip']}-{info['shell_port']}").exists(),
            30,
            "its ipc socket files to be removed",
        )
    finally:
        second.stop()


# -- SSH ----------------------------------------------------------------------------------------


@pytest.fixture
def sshd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A throwaway sshd on loopback (its own host key, authorized_keys and config), and the
    ``ssh`` command configured for it under the alias it returns: ``ssh`` on PATH is the real
    one with ``-F`` the test's client config (what ~/.ssh/config would hold)."""
    sshd_bin, ssh_bin = Path("/usr/sbin/sshd"), shutil.which("ssh")
    if not sshd_bin.exists() or ssh_bin is None:
        pytest.skip("openssh-server / openssh-client are not installed (.ci/run installs them)")
    d = tmp_path / "ssh"
    d.mkdir(mode=0o700)
    for name in ("host", "id"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
            check=True,
            timeout=30,
        )
    (d / "authorized_keys").write_text((d / "id.pub").read_text())
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    number = port.getsockname()[1]
    port.close()
    (d / "sshd_config").write_text(
        f"Port {number}\nListenAddress 127.0.0.1\nHostKey {d}/host\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\nStrictModes no\n"
        "UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nAllowTcpForwarding yes\nLogLevel VERBOSE\n"
    )
    user = pwd.getpwuid(os.getuid()).pw_name
    (d / "ssh_config").write_text(
        f"Host kaimon-test\n  HostName 127.0.0.1\n  Port {number}\n  User {user}\n"
        f"  IdentityFile {d}/id\n  IdentitiesOnly yes\n  UserKnownHostsFile {d}/known_hosts\n"
        "  StrictHostKeyChecking yes\n  BatchMode yes\n"
    )
    (d / "known_hosts").write_text(f"[127.0.0.1]:{number} {(d / 'host.pub').read_text()}")
    bin_dir = d / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f'#!/bin/sh\nexec {ssh_bin} -F {d}/ssh_config "$@"\n')
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    log = d / "sshd.log"
    proc = subprocess.Popen(
        [str(sshd_bin), "-D", "-e", "-f", str(d / "sshd_config")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"sshd exited: {log.read_text()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", number)) == 0

    try:
        wait_until(listening, what="sshd to listen")
        yield "kaimon-test"
    finally:
        # the tunnels (ssh -f ... sleep 60) that the server opened through this sshd
        for p in psutil.process_iter(["cmdline"]):
            if "kaimon-test" in (p.info["cmdline"] or []) and p.pid != os.getpid():
                with contextlib.suppress(psutil.Error):
                    p.kill()
        proc.terminate()
        proc.wait(10)


def ssh_cat(alias: str, path: str) -> str:
    done = subprocess.run(["ssh", alias, "cat", path], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_a_kernel_elsewhere_is_reached_through_its_connection_file_over_ssh(
    sshd: str, tmp_path: Path
) -> None:
    # "elsewhere": a kernel whose session files live in a runtime dir this server does not see
    elsewhere = tmp_path / "remote-runtime"
    person = CurvePerson(env={"JUPYTER_RUNTIME_DIR": str(elsewhere)})
    try:
        key = person.serve("--label far")
        assert not (sessions_dir() / f"session-{key}.json").exists()
        # as the README says: copy both files over ssh, name the ssh server in the copy
        session = json.loads(ssh_cat(sshd, str(elsewhere / "kaimon" / f"session-{key}.json")))
        connection = json.loads(ssh_cat(sshd, session["connection_file"]))
        local = _runtime_dir() / f"kernel-ssh-{key}.json"
        local.write_text(json.dumps({**connection, "ssh": sshd}))
        local.chmod(0o600)
        session["connection_file"] = str(local)
        sessions_dir().mkdir(parents=True, exist_ok=True)
        (sessions_dir() / f"session-{key}.json").write_text(json.dumps(session))
        async with stdio_client() as client:
            listed = await client.call_tool("list_sessions", {})
            answer = await client.call_tool("ex", {"code": "6*7", "session": key})
            tunnels = [
                " ".join(p.info["cmdline"] or [])
                for p in psutil.process_iter(["cmdline"])
                if sshd in (p.info["cmdline"] or []) and "-L" in (p.info["cmdline"] or [])
            ]
        assert key in text_of(listed)
        assert text_of(answer).strip() == "42"
        # the server reached the kernel's ports only through ssh's forwards
        for channel in ("shell", "iopub", "control"):
            assert any(f"127.0.0.1:{connection[channel + '_port']}" in t for t in tunnels), tunnels
    finally:
        (sessions_dir() / f"session-{key}.json").unlink(missing_ok=True)
        person.shutdown()


async def test_an_ssh_server_that_refuses_the_key_is_a_clear_error(
    sshd: str, tmp_path: Path
) -> None:
    person = CurvePerson(env={"JUPYTER_RUNTIME_DIR": str(tmp_path / "remote-runtime")})
    try:
        key = person.serve("--label far")
        session = json.loads(
            (tmp_path / "remote-runtime" / "kaimon" / f"session-{key}.json").read_text()
        )
        local = _runtime_dir() / f"kernel-ssh-{key}.json"
        connection = connection_info(session["connection_file"])
        local.write_text(json.dumps({**connection, "ssh": "nobody-here@kaimon-test"}))
        session["connection_file"] = str(local)
        sessions_dir().mkdir(parents=True, exist_ok=True)
        (sessions_dir() / f"session-{key}.json").write_text(json.dumps(session))
        async with stdio_client() as client:
            answer = await client.call_tool("ex", {"code": "1", "session": key})
        assert answer.is_error
        assert "cannot reach the kernel of" in text_of(answer), text_of(answer)
        assert "over SSH via nobody-here@kaimon-test: ssh exited" in text_of(answer)
        assert "Permission denied" in text_of(answer)
    finally:
        (sessions_dir() / f"session-{key}.json").unlink(missing_ok=True)
        person.shutdown()


async def test_a_session_of_another_machine_never_has_a_local_process_signalled(
    tmp_path: Path,
) -> None:
    # a copied session file names a pid of the machine it came from: here that pid is a stranger
    stranger = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.DEVNULL
    )
    try:
        created = psutil.Process(stranger.pid).create_time()
        info = SessionInfo(
            session_id="far",
            key="far00001",
            pid=stranger.pid,
            connection_file=str(tmp_path / "kernel.json"),
            namespace="far",
            label="far",
            cwd="/",
            python_version="3",
            started_at=time.time(),
            kernel=ProcessIdentity(pid=stranger.pid, create_time=created, host="another-machine"),
        )
        provider = LocalProvider(directory=tmp_path)
        assert provider.alive(info)  # no telling from here
        assert await provider.interrupt_signal(info) is False
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


async def test_kaimon_serve_itself_under_bubblewrap_runs_kernels_without_network(
    tmp_path: Path,
) -> None:
    why = _bwrap_unusable()
    if why:
        pytest.skip(why)
    from mcp import Client, StdioServerParameters

    dirs = [os.environ[v] for v in ("JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "IPYTHONDIR")]
    binds = [a for d in [*dirs, str(tmp_path)] for a in ("--bind", d, d)]
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    # as the README says (there with the `kaimon` script; here this test's Python)
    params = StdioServerParameters(
        command="bwrap",
        args=[*SANDBOX[1:10], *binds, sys.executable, "-m", "kaimon_kernel", "serve"],
        env=dict(os.environ),
        cwd=str(tmp_path),
    )
    code = (
        "import socket\n"
        f"err = socket.socket().connect_ex(('127.0.0.1', {port}))\n"
        "open('made-here.txt', 'w').write('ok')\n"
        "err"
    )
    try:
        async with Client(params, read_timeout_seconds=120) as client:
            ran = await client.call_tool("ex", {"code": code})  # auto-starts a kernel
    finally:
        listener.close()
    assert not ran.is_error, text_of(ran)
    assert text_of(ran).strip() != "0"  # connect_ex: an errno, never a connection
    assert (tmp_path / "made-here.txt").read_text() == "ok"


class CurveJupyterServer(JupyterServer):
    """A real Jupyter server that provisions CurveZMQ keys for kernelspecs declaring them."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, "jupyter_server", "--KernelManager.transport_encryption=auto")


async def test_a_kernel_a_jupyter_server_gave_curve_keys_is_served_and_reached_encrypted(
    tmp_path: Path,
) -> None:
    spec = Path(os.environ["JUPYTER_DATA_DIR"]) / "kernels" / "curvy"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (curve)",
                "language": "python",
                "metadata": {"supported_encryption": ["curve"]},
            }
        )
    )
    server = CurveJupyterServer(tmp_path)
    try:
        kernel = server.api("POST", "/api/kernels", {"name": "curvy"})  # returns once it answers
        connection = _runtime_dir() / f"kernel-{kernel['id']}.json"
        info = connection_info(connection)
        assert info["curve_publickey"], info.keys()
        person = BlockingKernelClient(connection_file=str(connection))
        person.load_connection_file()
        person.start_channels()
        try:
            reply = person.execute_interactive(
                "%load_ext kaimon_kernel\n%kaimon serve --label lab", timeout=DEADLINE
            )
            assert reply["content"]["status"] == "ok"
            async with stdio_client() as client:
                answer = await client.call_tool("ex", {"code": "6*7", "session": "lab"})
            assert text_of(answer).strip() == "42"
            assert_deaf(info)
            # the Jupyter server itself still hears its kernel
            wait_until(
                lambda: (
                    server.api("GET", f"/api/kernels/{kernel['id']}")["execution_state"] == "idle"
                ),
                what="the Jupyter server to see its kernel idle",
            )
        finally:
            person.stop_channels()
            server.api("DELETE", f"/api/kernels/{kernel['id']}")
    finally:
        server.stop()
        shutil.rmtree(spec)
