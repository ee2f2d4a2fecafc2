"""`kaimon setup CLIENT`: each client's config written, merged, and left alone the second time;
the real Claude Code and Codex CLIs accept what it writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from kaimon_kernel import _setup
from kaimon_kernel._paths import load_or_create_token
from kaimon_kernel._setup import CLIENTS, JUPYTER_VARS, kaimon_command
from kaimon_kernel.cli import main

REPO = Path(__file__).resolve().parent.parent
NPM_PREFIX = REPO / ".ci" / "npm"  # where .ci/run installs the clients' CLIs
NPM_PACKAGES = {
    "claude": "@anthropic-ai/claude-code",
    "codex": "@openai/codex",
    "gemini": "@google/gemini-cli",
    "opencode": "opencode-ai",
}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh home (and XDG dirs) and project dir; no client CLI on PATH."""
    home = tmp_path / "home"
    project = tmp_path / "project"
    home.mkdir()
    project.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("APPDATA", str(home / "AppData"))
    for name in ("CODEX_HOME", "CLAUDE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", "/bin"]))
    monkeypatch.setattr(shutil, "which", _no_client_cli(shutil.which))
    monkeypatch.chdir(project)
    return home


def _no_client_cli(which: Any) -> Any:
    return lambda name, *a, **kw: None if name in NPM_PACKAGES else which(name, *a, **kw)


def setup(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["setup", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def read(client: str, path: Path) -> dict[str, Any]:
    text = path.read_text()
    return tomlkit.parse(text).unwrap() if CLIENTS[client].fmt == "toml" else json.loads(text)


def servers(client: str, path: Path) -> dict[str, Any]:
    return read(client, path)[CLIENTS[client].key]


def command_of(entry: dict[str, Any]) -> list[str]:
    command = entry["command"]
    return command if isinstance(command, list) else [command, *entry["args"]]


def env_of(entry: dict[str, Any]) -> dict[str, str]:
    return entry.get("env") or entry.get("environment") or {}


def jupyter_env() -> dict[str, str]:
    return {k: os.environ[k] for k in JUPYTER_VARS if os.environ.get(k)}


@pytest.mark.parametrize("client", list(CLIENTS))
def test_each_client_gets_the_absolute_kaimon_with_the_jupyter_dirs(
    client: str, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = setup(client, capsys=capsys)
    assert code == 0, out
    path = CLIENTS[client].file("user", Path.cwd())
    entry = servers(client, path)["kaimon"]
    command = command_of(entry)
    assert Path(command[0]).is_absolute() and command[-1] == "serve"
    assert command == [*kaimon_command(), "serve"]
    assert env_of(entry) == jupyter_env() != {}
    assert "added 'kaimon'" in out


@pytest.mark.parametrize("client", list(CLIENTS))
def test_setup_merges_into_a_config_with_another_server_and_twice_changes_nothing(
    client: str, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = CLIENTS[client]
    path = spec.file("user", Path.cwd())
    path.parent.mkdir(parents=True, exist_ok=True)
    other = {"command": "other-server", "args": ["--flag"]}
    if spec.fmt == "toml":
        path.write_text(
            '# the person\'s own comment\nmodel = "o3"\n\n[mcp_servers.other]\n'
            'command = "other-server"\nargs = ["--flag"]\n'
        )
    else:
        path.write_text(json.dumps({"theme": "dark", spec.key: {"other": other}}, indent=4))
    assert setup(client, capsys=capsys)[0] == 0
    written = path.read_bytes()
    data = read(client, path)
    assert data[spec.key]["other"] == other
    assert set(data[spec.key]) == {"other", "kaimon"}
    assert ("model" if spec.fmt == "toml" else "theme") in data
    if spec.fmt == "toml":
        assert written.startswith(b"# the person's own comment\n")
    stat = path.stat()

    code, out = setup(client, capsys=capsys)
    assert code == 0
    assert "already set up; nothing changed" in out
    assert path.read_bytes() == written
    assert path.stat().st_mtime_ns == stat.st_mtime_ns


@pytest.mark.parametrize("client", list(CLIENTS))
def test_http_setup_carries_the_url_and_the_bearer_token(
    client: str, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert setup(client, "--http", capsys=capsys)[0] == 0
    entry = servers(client, CLIENTS[client].file("user", Path.cwd()))["kaimon"]
    url = entry.get("url") or entry.get("httpUrl") or entry.get("serverUrl")
    assert url == "http://127.0.0.1:2828/mcp"
    headers = entry.get("headers") or entry.get("http_headers")
    assert headers == {"Authorization": f"Bearer {load_or_create_token()}"}
    assert not load_or_create_token().isspace()


def test_a_changed_entry_is_replaced_in_place(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = home / ".cursor" / "mcp.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"mcpServers": {"kaimon": {"command": "kaimon", "args": []}}}))
    code, out = setup("cursor", capsys=capsys)
    assert code == 0 and "updated 'kaimon'" in out
    assert command_of(servers("cursor", path)["kaimon"])[0] == kaimon_command()[0]


@pytest.mark.parametrize(
    ("client", "where"),
    [
        ("claude", ".mcp.json"),
        ("codex", ".codex/config.toml"),
        ("cursor", ".cursor/mcp.json"),
        ("vscode", ".vscode/mcp.json"),
        ("gemini", ".gemini/settings.json"),
        ("opencode", "opencode.json"),
    ],
)
def test_project_scope_writes_the_projects_own_config(
    client: str, where: str, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert setup(client, "--scope", "project", capsys=capsys)[0] == 0
    assert "kaimon" in servers(client, Path.cwd() / where)


def test_a_client_without_that_scope_says_which_it_has(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = setup("windsurf", "--scope", "project", capsys=capsys)
    assert code == 2
    assert "Windsurf has no 'project' scope; use --scope user" in out


def test_an_unknown_client_is_refused_with_the_known_ones(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = setup("emacs", capsys=capsys)
    assert code == 2
    assert "unknown client 'emacs'; known clients: claude (Claude Code), codex (Codex)" in out
    assert "vscode (VS Code (Copilot))" in out
    assert setup("copilot", capsys=capsys)[0] == 0  # an alias


def test_invalid_json_is_named_with_its_line_and_left_alone(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = home / ".gemini" / "settings.json"
    path.parent.mkdir()
    broken = '{\n  "theme": "dark",\n  "mcpServers": {\n}\n'
    path.write_text(broken)
    code, out = setup("gemini", capsys=capsys)
    assert code == 2
    assert f"{path} is not valid JSON (line 5" in out
    assert "left it unchanged" in out
    assert path.read_text() == broken


def test_jsonc_with_comments_is_not_rewritten(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = Path.cwd() / ".vscode" / "mcp.json"
    path.parent.mkdir()
    path.write_text('{\n  // my servers\n  "servers": {}\n}\n')
    code, out = setup("vscode", "--scope", "project", capsys=capsys)
    assert code == 2
    assert "line 2" in out and "has comments" in out and "--dry-run" in out
    assert setup("vscode", "--scope", "project", "--dry-run", capsys=capsys)[0] == 2


def test_invalid_toml_is_named_with_its_line_and_left_alone(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = home / ".codex" / "config.toml"
    path.parent.mkdir()
    broken = 'model = "o3"\n[mcp_servers.other\ncommand = "x"\n'
    path.write_text(broken)
    code, out = setup("codex", capsys=capsys)
    assert code == 2
    assert f"{path} is not valid TOML (line 2" in out
    assert path.read_text() == broken


def test_dry_run_prints_the_entry_and_writes_nothing(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = setup("codex", "--dry-run", capsys=capsys)
    assert code == 0
    assert "would add 'kaimon'" in out
    assert "[mcp_servers.kaimon]" in out and kaimon_command()[0] in out
    assert not (home / ".codex").exists()


def test_list_says_where_kaimon_is_set_up(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "is set up in no client" in setup("--list", capsys=capsys)[1]
    setup("cursor", capsys=capsys)
    setup("codex", "--http", "--scope", "project", capsys=capsys)
    code, out = setup("--list", capsys=capsys)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("codex     project") and "(HTTP)" in lines[0]
    assert lines[1].startswith("cursor    user     ~/.cursor/mcp.json: ")
    assert kaimon_command()[0] in lines[1]


def test_an_older_local_claude_entry_is_listed_and_named_as_taking_precedence(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = {"type": "stdio", "command": "kaimon", "args": ["serve"], "env": {}}
    projects = {str(Path.cwd()): {"mcpServers": {"kaimon": local}}}
    (home / ".claude.json").write_text(json.dumps({"projects": projects}))
    code, out = setup("claude", capsys=capsys)
    assert code == 0
    assert "local-scope 'kaimon' for this project" in out
    assert "claude mcp remove kaimon --scope local" in out
    listed = setup("--list", capsys=capsys)[1].splitlines()
    assert listed[1] == "claude    local    ~/.claude.json (this project): kaimon serve"
    assert json.loads((home / ".claude.json").read_text())["projects"] == projects


def test_instructions_section_is_added_once_and_replaced_in_place(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agents = Path.cwd() / "AGENTS.md"
    agents.write_text("# Project\n\nBuild with make.\n")
    setup("codex", "--instructions", capsys=capsys)
    first = agents.read_text()
    assert first.startswith("# Project\n\nBuild with make.\n\n<!-- kaimon:begin")
    assert first.count("kaimon:begin") == 1 and "list_sessions" in first
    agents.write_text(first.replace("list_sessions", "OLD") + "\n## Later section\n")
    code, out = setup("codex", "--instructions", capsys=capsys)
    assert code == 0 and "updated the kaimon section" in out
    text = agents.read_text()
    assert text == first + "\n## Later section\n"
    assert "up to date; nothing changed" in setup("cursor", "--instructions", capsys=capsys)[1]
    setup("claude", "--instructions", capsys=capsys)
    assert (Path.cwd() / "CLAUDE.md").read_text().count("kaimon:begin") == 1


# -- the real clients' CLIs ----------------------------------------------------------------


def client_cli(name: str) -> str:
    """The client's CLI: on PATH, else in .ci/npm (installed there now if node is present)."""
    found = shutil.which(name) or shutil.which(name, path=str(NPM_PREFIX / "bin"))
    if found:
        return found
    if not shutil.which("npm"):
        pytest.skip(f"node/npm is absent: cannot run the real {name} CLI (.ci/run installs it)")
    subprocess.run(
        [
            "npm",
            "install",
            "-g",
            "--prefix",
            str(NPM_PREFIX),
            "--no-fund",
            "--no-audit",
            NPM_PACKAGES[name],
        ],
        check=True,
        timeout=600,
        capture_output=True,
    )
    found = shutil.which(name, path=str(NPM_PREFIX / "bin"))
    assert found, f"npm installed {NPM_PACKAGES[name]} but no {name} in {NPM_PREFIX}/bin"
    return found


@pytest.fixture
def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Runs `kaimon setup` and a client CLI as a person would: a fresh HOME, the CLI on PATH."""
    home = tmp_path / "home"
    project = tmp_path / "project"
    home.mkdir()
    project.mkdir()

    def env(exe: str) -> dict[str, str]:
        path = os.pathsep.join([str(Path(exe).parent), os.environ.get("PATH", "")])
        return {
            **os.environ,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "PATH": path,
        }

    def run(
        exe: str, *args: str, extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*args],
            cwd=project,
            env={**env(exe), **(extra or {})},
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    for name in ("CODEX_HOME", "CLAUDE_CONFIG_DIR", "ANTHROPIC_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return home, run


def kaimon(*args: str) -> list[str]:
    return [sys.executable, "-m", "kaimon_kernel", *args]


def test_claude_code_lists_the_stdio_server_as_connected(cli_home: Any) -> None:
    home, run = cli_home
    claude = client_cli("claude")
    done = run(claude, *kaimon("setup", "claude"))
    assert done.returncode == 0, done.stderr
    assert "with `claude mcp add-json`" in done.stdout
    again = run(claude, *kaimon("setup", "claude"))
    assert "already set up; nothing changed" in again.stdout
    listed = run(claude, claude, "mcp", "list")
    assert listed.returncode == 0, listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if ln.startswith("kaimon:"))
    assert f"{kaimon_command()[0]} serve" in line
    assert "Connected" in line, listed.stdout
    stored = json.loads((home / ".claude.json").read_text())["mcpServers"]["kaimon"]
    assert stored["env"] == jupyter_env()


def test_claude_code_connects_to_the_http_server_with_the_token(cli_home: Any) -> None:
    from conftest import HttpServer

    _, run = cli_home
    claude = client_cli("claude")
    server = HttpServer()
    try:
        port = str(server.port)
        done = run(claude, *kaimon("setup", "claude", "--http"), extra={"KAIMON_PORT": port})
        assert done.returncode == 0, done.stderr
        listed = run(claude, claude, "mcp", "list")
        line = next(ln for ln in listed.stdout.splitlines() if ln.startswith("kaimon:"))
        assert f"http://127.0.0.1:{port}/mcp (HTTP)" in line
        assert "Connected" in line, listed.stdout
    finally:
        server.stop()


def test_codex_accepts_the_stdio_and_the_http_entries(cli_home: Any) -> None:
    _, run = cli_home
    codex = client_cli("codex")
    done = run(codex, *kaimon("setup", "codex"))
    assert done.returncode == 0, done.stderr
    assert "with `codex mcp add`" in done.stdout
    assert "nothing changed" in run(codex, *kaimon("setup", "codex")).stdout
    got = json.loads(run(codex, codex, "mcp", "get", "kaimon", "--json").stdout)
    assert got["transport"]["command"] == kaimon_command()[0]
    assert got["transport"]["args"] == ["serve"]
    assert got["transport"]["env"] == jupyter_env()

    done = run(codex, *kaimon("setup", "codex", "--http"))
    assert done.returncode == 0 and "updated 'kaimon' in the config file" in done.stdout
    got = json.loads(run(codex, codex, "mcp", "get", "kaimon", "--json").stdout)
    assert got["transport"]["type"] == "streamable_http"
    assert got["transport"]["http_headers"] == {"Authorization": f"Bearer {load_or_create_token()}"}
    listed = run(codex, codex, "mcp", "list", "--json")
    assert [s["name"] for s in json.loads(listed.stdout)] == ["kaimon"]


def test_gemini_cli_reports_the_stdio_server_connected(cli_home: Any) -> None:
    home, run = cli_home
    gemini = client_cli("gemini")
    assert run(gemini, *kaimon("setup", "gemini")).returncode == 0
    # Gemini CLI suppresses user-level servers in folders the person has not trusted
    project = Path(run(gemini, "pwd").stdout.strip())
    trusted = home / ".gemini" / "trustedFolders.json"
    trusted.write_text(json.dumps({str(project): "TRUST_FOLDER"}))
    listed = run(gemini, gemini, "mcp", "list")
    said = listed.stdout + listed.stderr  # it lists on stderr
    assert f"kaimon: {kaimon_command()[0]} serve (stdio) - Connected" in said, said


def test_opencode_reports_the_stdio_server_connected(cli_home: Any) -> None:
    _, run = cli_home
    opencode = client_cli("opencode")
    assert run(opencode, *kaimon("setup", "opencode")).returncode == 0
    listed = run(opencode, opencode, "mcp", "list")
    line = next(ln for ln in listed.stdout.splitlines() if "kaimon" in ln)
    assert "connected" in line, listed.stdout + listed.stderr


def test_the_kaimon_command_is_this_installs_absolute_script() -> None:
    command = kaimon_command()
    assert Path(command[0]).is_absolute()
    assert Path(command[0]).parent == Path(sys.executable).absolute().parent or "-m" in command
    assert _setup.find_client("Claude-Code").name == "claude"
