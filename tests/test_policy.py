"""The allow-list and the paths and arguments agents give: where kernels may start."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import sessions_dir, stdio_client, text_of, wait_until
from mcp import Client

from kaimon_kernel.server import Kaimon, build_mcp
from kaimon_kernel.server._policy import (
    BadPath,
    NotAllowed,
    allowed_roots,
    check_within,
    clean_path,
    relative_base,
    too_wide,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home directory of our own, and no allowed projects."""
    path = tmp_path / "home" / "me"
    path.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(path))
    monkeypatch.delenv("KAIMON_PROJECTS", raising=False)
    return path


# -- unit: roots and paths -------------------------------------------------------------------


@pytest.mark.parametrize("where", ["/", "home", "home-parent"])
def test_a_server_in_the_root_or_home_or_above_does_not_allow_its_directory(
    home: Path, where: str
) -> None:
    cwd = {"/": Path("/"), "home": home, "home-parent": home.parent}[where]
    assert too_wide(cwd)
    assert allowed_roots(cwd) == []
    with pytest.raises(NotAllowed, match="kaimon projects add"):
        check_within(home / "proj", allowed_roots(cwd))


def test_a_server_in_a_project_allows_that_project_and_below(home: Path) -> None:
    project = home / "proj"
    project.mkdir()
    roots = allowed_roots(project)
    assert roots == [project.resolve()]
    assert check_within(project / "sub", roots) == project / "sub"
    with pytest.raises(NotAllowed):
        check_within(home / "other", roots)


def test_a_symlink_out_of_a_root_is_judged_by_where_it_leads(home: Path, tmp_path: Path) -> None:
    project = home / "proj"
    project.mkdir()
    (project / "escape").symlink_to(tmp_path)
    path = clean_path("escape", project, "project_path")
    with pytest.raises(NotAllowed):
        check_within(path, allowed_roots(project))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("a\x00b", "contains a NUL byte"),
        ("x" * 300, "has a name of 300 bytes"),
        ("/" + "d/" * 2100, "paths are limited to 4096"),
        ("", "is empty"),
    ],
)
def test_a_path_that_cannot_name_a_file_gets_a_clear_error(raw: str, message: str) -> None:
    with pytest.raises(BadPath, match=message):
        clean_path(raw, Path("/tmp"), "project_path")


def test_a_relative_path_is_relative_to_the_one_served_session(tmp_path: Path) -> None:
    assert relative_base([str(tmp_path / "s")], "/") == tmp_path / "s"
    assert relative_base([str(tmp_path), str(tmp_path)], "/") == tmp_path
    assert relative_base([], tmp_path) == tmp_path.resolve()


def test_a_relative_path_without_a_clear_base_is_refused(home: Path, tmp_path: Path) -> None:
    with pytest.raises(BadPath, match="several sessions"):
        relative_base([str(tmp_path / "a"), str(tmp_path / "b")], tmp_path)
    with pytest.raises(BadPath, match="is the filesystem root; give an absolute path"):
        relative_base([], "/")
    with pytest.raises(BadPath, match="is the home directory"):
        relative_base([], home)


# -- built-in tools refuse unknown arguments, as gate tools do ------------------------------


async def test_a_built_in_tool_refuses_an_unknown_argument_naming_the_accepted_ones() -> None:
    kaimon = Kaimon()
    try:
        async with Client(build_mcp(kaimon)) as client:
            result = await client.call_tool("list_jobs", {"limt": 5})
            fine = await client.call_tool("list_jobs", {"limit": 5})
            start = await client.call_tool("start_session", {"permission": "yes"})
    finally:
        kaimon.jobs.close()
    assert result.is_error
    assert text_of(result) == "list_jobs: unknown argument 'limt'; list_jobs accepts: " + (
        "status, limit, stats"
    )
    assert not fine.is_error, text_of(fine)
    # what the server fills in itself is not an argument either
    assert start.is_error and "unknown argument 'permission'" in text_of(start)
    assert "project_path, name" in text_of(start)


# -- end to end: start_session ---------------------------------------------------------------


def fake_venv(project: Path, script: str) -> Path:
    python = project / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n" + script)
    python.chmod(0o755)
    return python


async def test_a_server_started_in_home_does_not_start_kernels_or_run_a_venv_there(
    home: Path,
) -> None:
    project = home / "proj"
    project.mkdir()
    probed = home / "probed"
    fake_venv(project, f"touch {probed}\nexit 1\n")
    async with stdio_client(cwd=home) as client:
        listing = await client.call_tool("start_session", {})
        refused = await client.call_tool("start_session", {"project_path": str(project)})
        relative = await client.call_tool("start_session", {"project_path": "proj"})
    assert listing.structured_content["projects"] == []
    assert f"the server's directory, {home.resolve()}, is the home directory" in text_of(listing)
    assert refused.is_error and f"kaimon projects add {project.resolve()}" in text_of(refused)
    assert relative.is_error and "give an absolute path" in text_of(relative)
    assert not probed.exists(), "the project's .venv ran before the project was allowed"


async def test_bad_project_paths_get_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("")
    cases = {
        "a\x00b": "contains a NUL byte",
        "n" * 300: "has a name of 300 bytes",
        "notes.txt": "is a file, not a directory",
        "missing": "does not exist",
        "notes.txt/sub": "is not a directory",
    }
    async with stdio_client(cwd=tmp_path) as client:
        results = {
            raw: await client.call_tool("start_session", {"project_path": raw}) for raw in cases
        }
    for raw, expected in cases.items():
        assert results[raw].is_error, raw
        assert expected in text_of(results[raw]), text_of(results[raw])
        assert "Error executing tool" not in text_of(results[raw])


async def test_the_venv_probe_does_not_stall_other_calls(tmp_path: Path) -> None:
    project = tmp_path / "slow"
    project.mkdir()
    started, release = tmp_path / "probe-started", tmp_path / "probe-release"
    # The probe waits until the test lets it go: a probe that blocked the event loop would
    # keep list_sessions from answering, and the release would never come.
    fake_venv(project, f"touch {started}\nwhile [ ! -e {release} ]; do sleep 0.02; done\nexit 1\n")
    async with stdio_client(cwd=tmp_path) as client, anyio.create_task_group() as tg:
        outcome: dict[str, object] = {}

        async def start() -> None:
            outcome["start"] = await client.call_tool("start_session", {"project_path": "slow"})

        tg.start_soon(start)
        with anyio.fail_after(60):
            while not started.exists():
                await anyio.sleep(0.02)
        with anyio.fail_after(20):
            listing = await client.call_tool("list_sessions", {})
        release.touch()
    assert not listing.is_error
    result = outcome["start"]
    assert not result.is_error, text_of(result)  # type: ignore[attr-defined]
    assert "lacks ipykernel or kaimon-kernel" in text_of(result)


async def test_an_agent_started_kernels_log_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        async with stdio_client(cwd=tmp_path) as client:
            started = await client.call_tool("start_session", {"project_path": "."})
            key = started.structured_content["key"]
            log = sessions_dir() / f"kernel-{key}.log"
            wait_until(log.exists, what="the kernel log")
            mode = stat.S_IMODE(log.stat().st_mode)
    finally:
        os.umask(old)
    assert mode == 0o600


async def test_a_relative_project_path_is_relative_to_the_served_sessions_directory(
    tmp_path: Path, make_person: Any
) -> None:
    person_dir = tmp_path / "person"
    (person_dir / "sub").mkdir(parents=True)
    make_person("--label p", cwd=person_dir)
    async with stdio_client(cwd=tmp_path) as client:
        started = await client.call_tool("start_session", {"project_path": "sub", "name": "s"})
        where = await client.call_tool("ex", {"code": "import os; os.getcwd()", "session": "s"})
    assert not started.is_error, text_of(started)
    assert text_of(where).strip() == repr(str((person_dir / "sub").resolve()))
