"""``kaimon setup CLIENT``: add kaimon to an agent client's MCP configuration.

Each client is one :class:`Client`: where its config lives per scope, the key its servers sit
under, and how it spells a stdio and an HTTP server. The entry is compared with what the file
holds first, so running setup twice changes nothing. Where the client has a CLI that can write
the entry (``claude mcp add-json``, ``codex mcp add``) and it is installed, that CLI writes it;
otherwise the file is merged (the other servers in it untouched) and replaced atomically. JSON
files are read strictly: a file that does not parse (JSONC comments included) is never
rewritten, the error says where it is wrong. TOML goes through tomlkit, which keeps comments.

Stdio entries run this install's ``kaimon`` by absolute path, so the client needs no PATH, and
carry the person's ``JUPYTER_*`` dirs: some clients (Codex) start servers without them.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ._errors import KaimonError

__all__ = [
    "CLIENTS",
    "JUPYTER_VARS",
    "Client",
    "Launch",
    "Remote",
    "SetupResult",
    "configured",
    "find_client",
    "kaimon_command",
    "setup_client",
    "write_instructions",
]

Scope = Literal["user", "project"]
# The Jupyter locations a server must share with the person's kernels.
JUPYTER_VARS = (
    "JUPYTER_RUNTIME_DIR",
    "JUPYTER_DATA_DIR",
    "JUPYTER_CONFIG_DIR",
    "JUPYTER_PATH",
    "JUPYTER_PLATFORM_DIRS",  # moves the default dirs
)
CLI_TIMEOUT = 60.0


@dataclass(frozen=True)
class Launch:
    """A stdio server: the command the client starts."""

    command: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Remote:
    """A streamable HTTP server: its URL and the headers each request carries."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)


Server = Launch | Remote


def _env(server: Launch, key: str = "env") -> dict[str, Any]:
    return {key: dict(server.env)} if server.env else {}


def _headers(server: Remote, key: str = "headers") -> dict[str, Any]:
    return {key: dict(server.headers)} if server.headers else {}


def _home() -> Path:
    return Path.home()


def _xdg_config() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or _home() / ".config")


def _vscode_user_dir() -> Path:
    system = platform.system()
    if system == "Darwin":
        return _home() / "Library" / "Application Support" / "Code" / "User"
    if system == "Windows":
        return Path(os.environ.get("APPDATA") or _home() / "AppData" / "Roaming") / "Code" / "User"
    return _xdg_config() / "Code" / "User"


def _opencode_file(folder: Path) -> Path:
    """opencode.json, unless only opencode.jsonc is there."""
    jsonc = folder / "opencode.jsonc"
    if jsonc.exists() and not (folder / "opencode.json").exists():
        return jsonc
    return folder / "opencode.json"


@dataclass(frozen=True)
class Client:
    """An agent client: where its MCP servers are configured and how it spells one."""

    name: str
    title: str
    files: dict[str, Callable[[Path], Path]]  # scope -> config file, given the project dir
    key: str  # the table the servers sit in
    stdio: Callable[[Launch], dict[str, Any]]
    http: Callable[[Remote], dict[str, Any]]
    instructions_file: str = "AGENTS.md"
    aliases: tuple[str, ...] = ()
    fmt: Literal["json", "toml"] = "json"
    cli: str | None = None  # the client's own command, used when installed

    def file(self, scope: str, project: Path) -> Path:
        return self.files[scope](project)


CLIENTS: dict[str, Client] = {
    c.name: c
    for c in [
        Client(
            "claude",
            "Claude Code",
            {
                "user": lambda _: (
                    Path(os.environ.get("CLAUDE_CONFIG_DIR") or _home()) / ".claude.json"
                ),
                "project": lambda p: p / ".mcp.json",
            },
            "mcpServers",
            stdio=lambda s: {"type": "stdio", "command": s.command, "args": s.args, **_env(s)},
            http=lambda s: {"type": "http", "url": s.url, **_headers(s)},
            instructions_file="CLAUDE.md",
            aliases=("claude-code",),
            cli="claude",
        ),
        Client(
            "codex",
            "Codex",
            {
                "user": lambda _: (
                    Path(os.environ.get("CODEX_HOME") or _home() / ".codex") / "config.toml"
                ),
                "project": lambda p: p / ".codex" / "config.toml",
            },
            "mcp_servers",
            stdio=lambda s: {"command": s.command, "args": s.args, **_env(s)},
            # Codex's CLI has no header flag; a static header is `http_headers`.
            http=lambda s: {"url": s.url, **_headers(s, "http_headers")},
            fmt="toml",
            cli="codex",
        ),
        Client(
            "cursor",
            "Cursor",
            {
                "user": lambda _: _home() / ".cursor" / "mcp.json",
                "project": lambda p: p / ".cursor" / "mcp.json",
            },
            "mcpServers",
            stdio=lambda s: {"command": s.command, "args": s.args, **_env(s)},
            http=lambda s: {"url": s.url, **_headers(s)},
        ),
        Client(
            "vscode",
            "VS Code (Copilot)",
            {
                "user": lambda _: _vscode_user_dir() / "mcp.json",
                "project": lambda p: p / ".vscode" / "mcp.json",
            },
            "servers",
            stdio=lambda s: {"type": "stdio", "command": s.command, "args": s.args, **_env(s)},
            http=lambda s: {"type": "http", "url": s.url, **_headers(s)},
            aliases=("copilot", "code", "vs-code"),
        ),
        Client(
            "gemini",
            "Gemini CLI",
            {
                "user": lambda _: _home() / ".gemini" / "settings.json",
                "project": lambda p: p / ".gemini" / "settings.json",
            },
            "mcpServers",
            stdio=lambda s: {"command": s.command, "args": s.args, **_env(s)},
            http=lambda s: {"httpUrl": s.url, **_headers(s)},
            instructions_file="GEMINI.md",
            aliases=("gemini-cli",),
        ),
        Client(
            "opencode",
            "OpenCode",
            {
                "user": lambda _: _opencode_file(_xdg_config() / "opencode"),
                "project": _opencode_file,
            },
            "mcp",
            stdio=lambda s: {
                "type": "local",
                "command": [s.command, *s.args],
                **_env(s, "environment"),
                "enabled": True,
            },
            http=lambda s: {"type": "remote", "url": s.url, **_headers(s), "enabled": True},
        ),
        Client(
            "windsurf",
            "Windsurf",
            {"user": lambda _: _home() / ".codeium" / "windsurf" / "mcp_config.json"},
            "mcpServers",
            stdio=lambda s: {"command": s.command, "args": s.args, **_env(s)},
            http=lambda s: {"serverUrl": s.url, **_headers(s)},
        ),
    ]
}


def find_client(name: str) -> Client:
    """The client called ``name`` (or an alias); a KaimonError lists the known ones."""
    wanted = name.strip().lower()
    for client in CLIENTS.values():
        if wanted == client.name or wanted in client.aliases:
            return client
    known = ", ".join(f"{c.name} ({c.title})" for c in CLIENTS.values())
    raise KaimonError(f"unknown client {name!r}; known clients: {known}")


def kaimon_command() -> list[str]:
    """This install's ``kaimon`` by absolute path (beside the running Python first, so the
    venv's own; then PATH); else this Python running the package."""
    scripts = Path(sys.executable).absolute().parent
    for candidate in (scripts / "kaimon", scripts / "kaimon.exe"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return [str(candidate)]
    found = shutil.which("kaimon")
    if found:
        return [str(Path(found).absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "kaimon_kernel"]


def jupyter_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The person's Jupyter dirs as set in ``environ`` (default: this process's)."""
    environ = dict(os.environ) if environ is None else environ
    return {k: environ[k] for k in JUPYTER_VARS if environ.get(k, "").strip()}


def stdio_server() -> Launch:
    command = kaimon_command()
    return Launch(command[0], [*command[1:], "serve"], jupyter_env())


def http_server() -> Remote:
    """The shared HTTP server as the settings describe it (host, port, token)."""
    from ._paths import load_or_create_token
    from ._settings import load_settings

    settings = load_settings()
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # a wildcard bind is reached through loopback
    if ":" in host:
        host = f"[{host}]"
    headers = {"Authorization": f"Bearer {load_or_create_token()}"} if settings.auth else {}
    return Remote(f"http://{host}:{settings.port}/mcp", headers)


# -- reading and writing config files -------------------------------------------------------


class ConfigFileError(KaimonError):
    """A client's config file cannot be read as its format; it is left as it is."""


def _load(path: Path, fmt: str) -> Any:
    """The parsed file (a tomlkit document for TOML), None when it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ConfigFileError(f"cannot read {path}: {err.strerror or err}") from None
    if fmt == "toml":
        import tomlkit
        from tomlkit.exceptions import ParseError

        try:
            return tomlkit.parse(text)
        except ParseError as err:
            raise ConfigFileError(
                f"{path} is not valid TOML (line {err.line}, column {err.col}: "
                f"{str(err).split(' at line')[0]}); fix it first, kaimon left it unchanged"
            ) from None
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        hint = (
            " (it has comments: kaimon does not rewrite JSONC and lose them; add the entry "
            "by hand, `--dry-run` prints it)"
            if re.search(r"^\s*//|/\*", text, re.M)
            else ""
        )
        raise ConfigFileError(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
            f"{hint}; kaimon left it unchanged"
        ) from None
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path} must hold a JSON object; kaimon left it unchanged")
    return data


def _servers(doc: Any, key: str, path: Path) -> Any:
    table = doc.get(key) if doc is not None else None
    if table is not None and not isinstance(table, dict):
        raise ConfigFileError(f"{key!r} in {path} is not a table of servers; left unchanged")
    return table


def _plain(value: Any) -> Any:
    """A tomlkit value as plain Python (for comparing)."""
    unwrap = getattr(value, "unwrap", None)
    return unwrap() if unwrap else value


def _current(client: Client, path: Path, name: str) -> Any:
    table = _servers(_load(path, client.fmt), client.key, path)
    return _plain(table.get(name)) if table is not None else None


def _write_atomic(path: Path, text: str, private: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o600 if private else 0o644
    tmp = path.with_name(f".{path.name}.kaimon-{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _merge(client: Client, path: Path, name: str, entry: dict[str, Any], private: bool) -> None:
    doc = _load(path, client.fmt)
    if client.fmt == "toml":
        import tomlkit

        doc = doc if doc is not None else tomlkit.document()
        table = _servers(doc, client.key, path)
        if table is None:
            table = tomlkit.table(is_super_table=True)
            doc[client.key] = table
        server = tomlkit.table()
        for k, v in entry.items():
            server[k] = tomlkit.inline_table() if isinstance(v, dict) else v
            if isinstance(v, dict):
                server[k].update(v)
        table[name] = server
        _write_atomic(path, tomlkit.dumps(doc), private)
        return
    doc = doc if doc is not None else {}
    table = _servers(doc, client.key, path)
    if table is None:
        table = doc[client.key] = {}
    table[name] = entry
    _write_atomic(path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n", private)


def _snippet(client: Client, name: str, entry: dict[str, Any]) -> str:
    if client.fmt == "toml":
        import tomlkit

        doc = tomlkit.document()
        table = tomlkit.table(is_super_table=True)
        table[name] = entry
        doc[client.key] = table
        return tomlkit.dumps(doc).strip()
    return json.dumps({client.key: {name: entry}}, indent=2, ensure_ascii=False)


# -- the clients' own CLIs ----------------------------------------------------------------


def _cli_commands(
    client: Client, scope: str, name: str, entry: dict[str, Any], server: Server, replace: bool
) -> list[list[str]] | None:
    """The commands that write ``entry`` with the client's own CLI; None where it cannot."""
    exe = shutil.which(client.cli) if client.cli else None
    if exe is None:
        return None
    if client.name == "claude":
        remove = [[exe, "mcp", "remove", name, "--scope", scope]] if replace else []
        return [*remove, [exe, "mcp", "add-json", name, json.dumps(entry), "--scope", scope]]
    if client.name == "codex" and scope == "user" and isinstance(server, Launch):
        env = [a for k, v in server.env.items() for a in ("--env", f"{k}={v}")]
        remove = [[exe, "mcp", "remove", name]] if replace else []
        return [*remove, [exe, "mcp", "add", name, *env, "--", server.command, *server.args]]
    return None


def _run_cli(command: list[str], cwd: Path) -> None:
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise KaimonError(f"`{shlex.join(command[:3])} …` failed: {err}") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip()
        raise KaimonError(
            f"`{shlex.join(command[:3])} …` failed (exit {done.returncode}): {said}\n"
            "(`kaimon setup … --no-cli` writes the config file instead)"
        )


# -- setup ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetupResult:
    """What :func:`setup_client` did (or, with ``dry_run``, would do)."""

    client: Client
    scope: str
    path: Path
    changed: bool
    message: str


def setup_client(
    name: str,
    *,
    scope: Scope = "user",
    http: bool = False,
    server_name: str = "kaimon",
    project: Path | None = None,
    dry_run: bool = False,
    use_cli: bool = True,
) -> SetupResult:
    """Add kaimon to client ``name``'s MCP servers (stdio, or ``http``: the shared server).

    Nothing is written when the entry is already there as it would be written. Raises
    :class:`KaimonError` for an unknown client or scope, a config file that does not parse,
    or a failing client CLI.
    """
    client = find_client(name)
    if scope not in client.files:
        raise KaimonError(
            f"{client.title} has no {scope!r} scope; use --scope "
            + " or ".join(sorted(client.files))
        )
    project = (project or Path.cwd()).absolute()
    path = client.file(scope, project)
    server: Server = http_server() if http else stdio_server()
    entry = client.http(server) if isinstance(server, Remote) else client.stdio(server)
    where = f"{client.title}, {scope} scope, {_tilde(path)}"
    current = _current(client, path, server_name)
    if current == entry:
        return SetupResult(
            client,
            scope,
            path,
            False,
            f"{where}: {server_name!r} is already set up; nothing changed",
        )
    commands = (
        _cli_commands(client, scope, server_name, entry, server, current is not None)
        if use_cli
        else None
    )
    private = isinstance(server, Remote) and bool(server.headers)
    if dry_run:
        if commands:
            how = "\n".join(f"  {shlex.join(c)}" for c in commands)
            return SetupResult(client, scope, path, True, f"{where}: would run\n{how}")
        verb = "replace" if current is not None else "add"
        return SetupResult(
            client,
            scope,
            path,
            True,
            f"{where}: would {verb} {server_name!r}, merged into the file:\n"
            + _snippet(client, server_name, entry),
        )
    if commands:
        for command in commands:
            _run_cli(command, project)
        how = f"with `{Path(commands[-1][0]).name} {' '.join(commands[-1][1:3])}`"
    else:
        _merge(client, path, server_name, entry, private)
        how = "in the config file"
    what = server.url if isinstance(server, Remote) else shlex.join([server.command, *server.args])
    env = (
        " (env: " + ", ".join(f"{k}={v}" for k, v in server.env.items()) + ")"
        if isinstance(server, Launch) and server.env
        else ""
    )
    verb = "updated" if current is not None else "added"
    return SetupResult(
        client,
        scope,
        path,
        True,
        f"{where}: {verb} {server_name!r} {how}: {what}{env}"
        + _shadowed(client, project, server_name),
    )


def _claude_local(project: Path, name: str) -> Any:
    """Claude Code's local-scope entry for ``project`` (kept in ~/.claude.json per project)."""
    path = CLIENTS["claude"].file("user", project)
    try:
        projects = (_load(path, "json") or {}).get("projects")
    except KaimonError:
        return None
    own = projects.get(str(project)) if isinstance(projects, dict) else None
    servers = own.get("mcpServers") if isinstance(own, dict) else None
    return servers.get(name) if isinstance(servers, dict) else None


def _shadowed(client: Client, project: Path, name: str) -> str:
    if client.name != "claude" or _claude_local(project, name) is None:
        return ""
    return (
        f"\nnote: a local-scope {name!r} for this project (from an earlier `claude mcp add`) "
        f"takes precedence here; remove it with `claude mcp remove {name} --scope local`"
    )


def configured(server_name: str = "kaimon", project: Path | None = None) -> list[str]:
    """One line per client and scope where ``server_name`` is configured (for ``--list``)."""
    project = (project or Path.cwd()).absolute()
    lines = []
    for client in CLIENTS.values():
        for scope in client.files:
            path = client.file(scope, project)
            try:
                entry = _current(client, path, server_name)
            except KaimonError as err:
                lines.append(f"{client.name:9} {scope:8} {err}")
                continue
            if entry is not None:
                lines.append(f"{client.name:9} {scope:8} {_tilde(path)}: {_describe(entry)}")
        if client.name == "claude" and (local := _claude_local(project, server_name)):
            where = f"{_tilde(client.file('user', project))} (this project)"
            lines.append(f"{client.name:9} {'local':8} {where}: {_describe(local)}")
    return lines


def _describe(entry: Any) -> str:
    if not isinstance(entry, dict):
        return repr(entry)
    for key in ("url", "httpUrl", "serverUrl"):
        if key in entry:
            return f"{entry[key]} (HTTP)"
    command = entry.get("command")
    args = entry.get("args") or []
    parts = command if isinstance(command, list) else [command, *args]
    return shlex.join(str(p) for p in parts if p is not None)


def _tilde(path: Path) -> str:
    try:
        return "~/" + str(path.relative_to(_home()))
    except ValueError:
        return str(path)


# -- agent instructions --------------------------------------------------------------------

BEGIN = "<!-- kaimon:begin (written by `kaimon setup --instructions`; edits here are replaced) -->"
END = "<!-- kaimon:end -->"
SECTION = """\
## kaimon: live Jupyter kernels

The person shares live Jupyter kernels with you through the `kaimon` MCP server.
- Call `usage_instructions` once, then `list_sessions` to see the kernels.
- `ex(code, session?)` runs Python in the person's own namespace: what you define stays
  there for them. Print summaries, not whole data sets.
- Long code returns an `eval_id` after a while and keeps running: poll it with `check_eval`.
- Ask before restarting a kernel or overwriting the person's variables.
"""


def write_instructions(client: Client, project: Path | None = None, dry_run: bool = False) -> str:
    """Add (or refresh in place) the kaimon section of the project's agent instructions file
    (``CLAUDE.md`` for Claude Code, ``GEMINI.md`` for Gemini CLI, else ``AGENTS.md``)."""
    path = (project or Path.cwd()).absolute() / client.instructions_file
    block = f"{BEGIN}\n{SECTION}{END}\n"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    pattern = re.compile(re.escape(BEGIN.split(" (")[0]) + r".*?" + re.escape(END) + r"\n?", re.S)
    if pattern.search(text):
        new = pattern.sub(lambda _: block, text, count=1)
    else:
        new = (
            text
            + ("\n" if text and not text.endswith("\n") else "")
            + ("\n" if text else "")
            + block
        )
    if new == text:
        return f"{path}: the kaimon section is up to date; nothing changed"
    if dry_run:
        return f"{path}: would write the kaimon section:\n{block}"
    _write_atomic(path, new, private=False)
    return f"{path}: {'updated' if text else 'wrote'} the kaimon section"
