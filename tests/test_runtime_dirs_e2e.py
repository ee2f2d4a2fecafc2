"""A server started without the person's JUPYTER_* variables (as Codex and MCP Inspector 2.x
start it) still finds kernels: in the default dirs, and in kaimon.json's runtime_dirs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from conftest import text_of
from mcp import Client, StdioServerParameters

from kaimon_kernel._settings import SettingsError, load_settings

pytestmark = pytest.mark.anyio

# What Codex passes to a stdio server by default (its env whitelist), plus PYTHONPATH so
# that the server under test is this tree's.
KEPT = ("PATH", "LANG", "LC_ALL", "TMPDIR", "TZ", "USER", "LOGNAME", "SHELL", "PYTHONPATH")


def stripped_env(home: Path) -> dict[str, str]:
    env = {k: os.environ[k] for k in KEPT if k in os.environ}
    env["HOME"] = str(home)
    assert not any(k.startswith("JUPYTER_") for k in env)
    return env


async def sessions_of(client: Client) -> tuple[list[str], str]:
    result = await client.call_tool("list_sessions", {})
    usage = text_of(await client.call_tool("usage_instructions", {}))
    keys = [row["key"] for row in result.structured_content["sessions"]]
    return keys, text_of(result) + "\n" + usage


async def sessions_seen(env: dict[str, str]) -> tuple[list[str], str]:
    params = StdioServerParameters(command=sys.executable, args=["-m", "kaimon_kernel", "serve"])
    params.env = env
    async with Client(params, read_timeout_seconds=120) as client:
        return await sessions_of(client)


async def test_a_kernel_in_another_runtime_dir_is_found_once_kaimon_json_lists_it(
    make_person, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere-runtime"
    person = make_person("--label far", env={"JUPYTER_RUNTIME_DIR": str(elsewhere)})
    assert (elsewhere / "kaimon" / f"session-{person.key}.json").exists()
    home = tmp_path / "home"
    home.mkdir()
    env = stripped_env(home)

    keys, text = await sessions_seen(env)
    assert keys == []  # the default runtime dir only: the kernel is elsewhere
    assert str(home) in text and str(elsewhere) not in text

    config = subprocess.run(
        [sys.executable, "-c", "from kaimon_kernel._paths import config_file as c; print(c())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert config.startswith(str(home))  # where a server without JUPYTER_CONFIG_DIR looks
    Path(config).parent.mkdir(parents=True, exist_ok=True)
    Path(config).write_text(json.dumps({"runtime_dirs": [str(elsewhere)]}))

    params = StdioServerParameters(command=sys.executable, args=["-m", "kaimon_kernel", "serve"])
    params.env = env
    async with Client(params, read_timeout_seconds=120) as client:
        keys, text = await sessions_of(client)
        assert keys == [person.key]
        assert f"{elsewhere / 'kaimon'}" in text
        assert text.count("Kernels are found in") == 2  # list_sessions and usage_instructions

        # served while the server runs: the extra dir is watched, not only read at start
        later = make_person("--label later", env={"JUPYTER_RUNTIME_DIR": str(elsewhere)})
        with anyio.fail_after(30):
            while later.key not in (await sessions_of(client))[0]:
                await anyio.sleep(0.1)


def test_runtime_dirs_come_from_the_environment_too_and_must_be_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KAIMON_RUNTIME_DIRS", f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}")
    assert load_settings().runtime_dirs == [tmp_path / "a", tmp_path / "b"]
    monkeypatch.setenv("KAIMON_RUNTIME_DIRS", "relative/dir")
    with pytest.raises(SettingsError, match=r"KAIMON_RUNTIME_DIRS='relative/dir'.*not an absolute"):
        load_settings()
