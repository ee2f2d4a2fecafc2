"""The ``kaimon`` command: ``serve``, ``token``, ``kernelspec install``, ``sessions``,
``dashboard``, ``setup``."""

from __future__ import annotations

import argparse
import logging
import sys

from ._config import add_project, allowed_projects, projects_overridden, remove_project
from ._errors import KaimonError
from ._paths import config_file
from ._settings import DEFAULT_CANCEL_GRACE, DEFAULT_PROMOTE_AFTER, load_settings

__all__ = ["main"]

# `kaimon serve` flags that are settings: given ones override the environment and kaimon.json.
SETTINGS_FLAGS = (
    "http",
    "host",
    "port",
    "auth",
    "auto_start",
    "promote_after",
    "cancel_grace",
    "log_level",
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kaimon", description="Share live Jupyter kernels with AI agents over MCP."
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "serve",
        help="run the MCP server (stdio by default)",
        description="Settings come from these flags, else KAIMON_* variables (KAIMON_PORT, "
        f"KAIMON_PROMOTE_AFTER, ...), else {config_file()}, else the defaults.",
    )
    s.add_argument(
        "--http", action="store_true", default=None, help="serve streamable HTTP instead of stdio"
    )
    s.add_argument("--host", default=None, help="HTTP bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="HTTP port (default 2828)")
    s.add_argument(
        "--no-auth",
        dest="auth",
        action="store_false",
        default=None,
        help="HTTP without a bearer token (loopback only)",
    )
    s.add_argument(
        "--no-auto-start",
        dest="auto_start",
        action="store_false",
        default=None,
        help="never start a kernel when none is served",
    )
    s.add_argument(
        "--promote-after",
        type=float,
        default=None,
        help=f"seconds before a running ex returns an eval_id "
        f"(default $KAIMON_PROMOTE_AFTER or {DEFAULT_PROMOTE_AFTER:g}; <=0: never)",
    )
    s.add_argument(
        "--cancel-grace",
        type=float,
        default=None,
        help="seconds cancel_eval waits for code to stop by itself before it "
        f"interrupts the kernel (default $KAIMON_CANCEL_GRACE or {DEFAULT_CANCEL_GRACE:g})",
    )
    s.add_argument("--log-level", default=None, help="default WARNING")
    s.add_argument(
        "--jupyter",
        action="append",
        default=None,
        metavar="URL",
        help="also list the served kernels of this Jupyter Server or gateway (repeatable); "
        "its token from --jupyter-token-file or $JUPYTER_TOKEN",
    )
    s.add_argument("--jupyter-token-file", default=None, metavar="PATH")

    t = sub.add_parser("token", help="print the HTTP bearer token (generated once, stored 0600)")
    t.add_argument("--path", action="store_true", help="print where it is stored instead")

    k = sub.add_parser("kernelspec", help="manage the 'Python 3 (Kaimon)' kernelspec")
    ksub = k.add_subparsers(dest="action", required=True)
    ki = ksub.add_parser("install", help="install it")
    where = ki.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="in the user's Jupyter data dir")
    where.add_argument("--sys-prefix", action="store_true", help="in this Python's prefix")
    where.add_argument("--prefix", help="under this prefix")

    sub.add_parser("sessions", help="list the kernels served on this machine")

    d = sub.add_parser(
        "dashboard",
        help="every session, agent call, job and extension on this machine, live (Textual)",
    )
    d.add_argument("--once", action="store_true", help="print a plain-text snapshot and exit")

    pr = sub.add_parser("projects", help="directories where agents may start kernels")
    psub = pr.add_subparsers(dest="action", required=True)
    psub.add_parser("list", help="list them")
    pa = psub.add_parser("add", help="allow a directory")
    pa.add_argument("path")
    pd = psub.add_parser("remove", help="disallow a directory")
    pd.add_argument("path")
    _setup_parser(sub)

    from .extensions._cli import add_parser as add_extensions_parser

    add_extensions_parser(sub)
    return p


def _setup_parser(sub: argparse._SubParsersAction) -> None:
    from ._setup import CLIENTS

    names = ", ".join(CLIENTS)
    su = sub.add_parser(
        "setup",
        help="add kaimon to an agent client's MCP servers",
        description=f"Add kaimon to a client's MCP configuration ({names}): stdio by "
        "default, running this install's kaimon by absolute path with your JUPYTER_* dirs; "
        "the client's own CLI writes it where it has one and it is installed, else its config "
        "file is merged. Running it twice changes nothing.",
    )
    su.add_argument("client", nargs="?", help=f"one of: {names}")
    su.add_argument("--http", action="store_true", help="use the shared HTTP server (URL + token)")
    su.add_argument(
        "--scope",
        choices=("user", "project"),
        default="user",
        help="user: every project (default); project: this directory's config",
    )
    su.add_argument("--name", default="kaimon", help="the server's name (default kaimon)")
    su.add_argument("--dry-run", action="store_true", help="print what it would write")
    su.add_argument(
        "--no-cli", action="store_true", help="write the file, not via the client's CLI"
    )
    su.add_argument(
        "--instructions",
        action="store_true",
        help="also add a kaimon section to this project's AGENTS.md / CLAUDE.md / GEMINI.md",
    )
    su.add_argument("--list", action="store_true", help="list the clients kaimon is set up in")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except KaimonError as err:
        print(f"kaimon: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from ._paths import load_or_create_token, token_file

    if args.command == "serve":
        from .server._run import jupyter_providers, serve_forever, server_options

        flags = {name: getattr(args, name) for name in SETTINGS_FLAGS}
        if args.jupyter:
            flags["jupyter"] = [
                {"url": url, "token_file": args.jupyter_token_file} for url in args.jupyter
            ]
        settings = load_settings(flags)
        logging.basicConfig(
            level=settings.log_level,
            stream=sys.stderr,
            format="kaimon %(levelname)s %(name)s: %(message)s",
        )
        from .server._activity import log_to_file

        log_to_file("http" if settings.http else "stdio", settings.log_level)
        token = load_or_create_token() if settings.http and settings.auth else None
        serve_forever(
            server_options(settings),
            http=settings.http,
            host=settings.host,
            port=settings.port,
            token=token,
            settings=settings,
            flags=flags,
            providers=jupyter_providers(settings),
        )
        return 0
    if args.command == "token":
        print(token_file() if args.path else load_or_create_token())
        return 0
    if args.command == "kernelspec":
        from ._kernelspec import install

        prefix = sys.prefix if args.sys_prefix else args.prefix
        path = install(user=args.user, prefix=prefix)
        print(f"kaimon: installed the 'Python 3 (Kaimon)' kernelspec in {path}")
        return 0
    if args.command == "sessions":
        from ._protocol import SessionInfo
        from .server.providers import pid_alive
        from .server.providers._local import session_dirs

        found = False
        dirs = session_dirs()
        for path in sorted(p for d in dirs for p in d.glob("session-*.json")):
            info = SessionInfo.model_validate_json(path.read_text())
            state = "alive" if pid_alive(info.pid) else "dead (stale file)"
            print(f"{info.key}  label={info.label!r}  pid={info.pid} {state}  cwd={info.cwd}")
            found = True
        if not found:
            print("no kernel is served (run `%kaimon serve` in a notebook)")
        print("(watched: " + ", ".join(map(str, dirs)) + ")")
        return 0
    if args.command == "dashboard":
        from .dashboard import run as run_dashboard

        return run_dashboard(once=args.once)
    if args.command == "projects":
        if projects_overridden():
            print(
                "kaimon: note: $KAIMON_PROJECTS is set, so it is the list that applies, "
                f"not the one in {config_file()}",
                file=sys.stderr,
            )
        if args.action == "add":
            print(f"kaimon: agents may now start kernels in {add_project(args.path)}")
        elif args.action == "remove":
            done = remove_project(args.path)
            print("kaimon: removed" if done else f"kaimon: {args.path} was not in the list")
        else:
            for project in allowed_projects():
                print(project)
            print(
                "(and the directory `kaimon serve` runs in, unless it is / or your home "
                f"directory or above it; stored in {config_file()})"
            )
        return 0
    if args.command == "setup":
        return _setup(args)
    if args.command == "extensions":
        from .extensions._cli import run as run_extensions

        return run_extensions(args)
    raise AssertionError(args.command)


def _setup(args: argparse.Namespace) -> int:
    from ._setup import CLIENTS, configured, find_client, setup_client, write_instructions

    if args.list:
        lines = configured(args.name)
        print("\n".join(lines) if lines else f"kaimon: {args.name!r} is set up in no client")
        return 0
    if not args.client:
        raise KaimonError(f"name a client: kaimon setup {{{','.join(CLIENTS)}}} (or --list)")
    result = setup_client(
        args.client,
        scope=args.scope,
        http=args.http,
        server_name=args.name,
        dry_run=args.dry_run,
        use_cli=not args.no_cli,
    )
    print(f"kaimon: {result.message}")
    if args.instructions:
        print(f"kaimon: {write_instructions(find_client(args.client), dry_run=args.dry_run)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
