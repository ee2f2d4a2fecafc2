"""scripts/serve.sh as the README runs it: installs once, starts at once after that, and says
in a terminal that it waits for an MCP client."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

REPO = Path(__file__).resolve().parent.parent
WAITING = "waiting for an MCP client"

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of this tree whose .venv already has the dependencies (from the test venv, by a
    .pth), so the first install builds only kaimon-kernel itself."""
    root = tmp_path_factory.mktemp("checkout")
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", ".venv")
    for name in ("kaimon_kernel", "kernelspec", "scripts"):
        shutil.copytree(REPO / name, root / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, root / name)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(root / ".venv")], check=True, timeout=120)
    venv_site = subprocess.run(
        [
            str(root / ".venv/bin/python"),
            "-c",
            "import sysconfig; print(sysconfig.get_path('purelib'))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(venv_site, "test-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return root


def serve_env(root: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(root), **extra}


def start_in_a_terminal(root: Path, env: dict[str, str]) -> tuple[str, float]:
    """Start serve.sh with a pty as stdin; its stderr until the waiting line, and how long."""
    master, slave = pty.openpty()
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", str(root / "scripts/serve.sh")],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(slave)
    err = b""
    try:
        deadline = started + 120  # below the test timeout: a missing line fails clearly
        while WAITING.encode() not in err and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], deadline - time.monotonic())
            if not ready:
                break
            chunk = os.read(proc.stderr.fileno(), 4096)  # type: ignore[union-attr]
            if not chunk:
                break
            err += chunk
        took = time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(15)
        os.close(master)
    return err.decode(), took


def test_serve_sh_installs_once_then_starts_without_pip_and_says_it_waits(checkout: Path) -> None:
    first, first_took = start_in_a_terminal(checkout, serve_env(checkout))
    assert "installing into .venv" in first, first
    assert WAITING in first
    assert (checkout / ".venv/bin/kaimon").exists()

    # pip would fail now (no index, no build backend): a second start must not run it
    no_pip = serve_env(checkout, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(checkout / "nothing"))
    second, second_took = start_in_a_terminal(checkout, no_pip)
    lines = second.splitlines()
    assert len(lines) == 1 and WAITING in lines[0], second
    assert second_took < 5, (first_took, second_took)
    print(f"serve.sh first start {first_took:.1f} s, second {second_took:.2f} s")

    (checkout / "pyproject.toml").write_text((checkout / "pyproject.toml").read_text() + "\n")
    third, _ = start_in_a_terminal(checkout, serve_env(checkout))
    assert "installing into .venv" in third  # pyproject.toml changed: installed again


async def test_serve_sh_speaks_mcp_on_stdio_and_prints_nothing_without_a_terminal(
    checkout: Path,
) -> None:
    start_in_a_terminal(checkout, serve_env(checkout))  # installed (or already)
    params = StdioServerParameters(
        command="bash",
        args=[str(checkout / "scripts/serve.sh")],
        env=serve_env(checkout, PIP_NO_INDEX="1"),
    )
    async with Client(params, read_timeout_seconds=60) as client:
        tools = await client.list_tools()
    assert "ex" in {t.name for t in tools.tools}
    done = subprocess.run(
        ["bash", str(checkout / "scripts/serve.sh")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=serve_env(checkout),
        timeout=60,
    )
    assert WAITING not in done.stderr
