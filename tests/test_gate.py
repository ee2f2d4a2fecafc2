"""The person's side: %kaimon magics, session files, the Kaimon kernelspec."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from conftest import PersonKernel, sessions_dir, wait_until

from kaimon_kernel._kernelspec import get_kernel_dict
from kaimon_kernel._protocol import PROTOCOL_VERSION, SessionInfo


def test_serve_writes_a_private_session_file_with_the_kernels_facts(person: PersonKernel) -> None:
    path = sessions_dir() / f"session-{person.key}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    info = SessionInfo.model_validate_json(path.read_text())
    assert info.pid == person.pid
    assert info.label == "person"
    assert f"{info.protocol_version}.{info.protocol_minor}" == PROTOCOL_VERSION
    assert Path(info.connection_file) == Path(person.km.connection_file).resolve()
    assert info.started_by == "person"


def test_status_reports_the_session_and_stop_withdraws_it(person: PersonKernel) -> None:
    _, status = person.run("%kaimon status")
    assert f"serving session {person.key}" in status
    assert "no kaimon server has connected yet" in status
    _, out = person.run("%kaimon stop")
    assert "agents no longer see this kernel" in out
    assert not (sessions_dir() / f"session-{person.key}.json").exists()
    assert "not serving" in person.run("%kaimon status")[1]


def test_serve_from_code_with_options(make_person) -> None:
    k = make_person(serve=False)
    status, out = k.run(
        "import kaimon_kernel\n"
        "info = kaimon_kernel.serve(namespace='todo', label='lab', allow_restart=False)\n"
        "print(info.key, info.namespace, info.label, info.allow_restart)"
    )
    assert status == "ok", out
    key, ns, label, restart = out.split()
    assert (ns, label, restart) == ("todo", "lab", "False")
    assert (sessions_dir() / f"session-{key}.json").exists()


def test_bad_magic_arguments_print_usage(person: PersonKernel) -> None:
    status, out = person.run("%kaimon serve --bogus")
    assert status == "ok"
    assert "unrecognized arguments: --bogus" in out
    assert "%kaimon serve [--namespace NS]" in out


def test_the_kaimon_kernelspec_serves_the_gate_at_start(tmp_path: Path) -> None:
    spec_dir = Path(os.environ["JUPYTER_DATA_DIR"]) / "kernels" / "python3-kaimon"
    done = subprocess.run(
        [sys.executable, "-m", "kaimon_kernel", "kernelspec", "install", "--user"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    spec = json.loads((spec_dir / "kernel.json").read_text())
    assert spec["display_name"] == "Python 3 (Kaimon)"
    assert spec["argv"][0] == sys.executable
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3-kaimon")
    km.start_kernel()
    try:
        pid = km.provisioner.process.pid  # type: ignore[union-attr]

        def served() -> bool:
            for path in sessions_dir().glob("session-*.json"):
                if SessionInfo.model_validate_json(path.read_text()).pid == pid:
                    return True
            return False

        wait_until(served, what="the Kaimon kernel to serve its gate")
    finally:
        km.shutdown_kernel(now=True)


def test_the_shipped_kernel_json_matches_the_generated_one() -> None:
    shipped = json.loads((Path(__file__).parents[1] / "kernelspec" / "kernel.json").read_text())
    generated = get_kernel_dict("python")
    assert shipped == generated
