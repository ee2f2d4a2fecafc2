"""The ``kaimon`` command: ``serve``, ``token``, ``kernelspec install``, ``sessions``."""

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

    pr = sub.add_parser("projects", help="directories where agents may start kernels")
    psub = pr.add_subparsers(dest="action", required=True)
    psub.add_parser("list", help="list them")
    pa = psub.add_parser("add", help="allow a directory")
    pa.add_argument("path")
    pd = psub.add_parser("remove", help="disallow a directory")
    pd.add_argument("path")
    return p


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

        cli = {name: getattr(args, name) for name in SETTINGS_FLAGS}
        if args.jupyter:
            cli["jupyter"] = [
                {"url": url, "token_file": args.jupyter_token_file} for url in args.jupyter
            ]
        settings = load_settings(cli)
        logging.basicConfig(
            level=settings.log_level,
            stream=sys.stderr,
            format="kaimon %(levelname)s %(name)s: %(message)s",
        )
        token = load_or_create_token() if settings.http and settings.auth else None
        serve_forever(
            server_options(settings),
            http=settings.http,
            host=settings.host,
            port=settings.port,
            token=token,
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
        from ._paths import sessions_dir
        from ._protocol import SessionInfo
        from .server.providers import pid_alive

        found = False
        for path in sorted(sessions_dir().glob("session-*.json")):
            info = SessionInfo.model_validate_json(path.read_text())
            state = "alive" if pid_alive(info.pid) else "dead (stale file)"
            print(f"{info.key}  label={info.label!r}  pid={info.pid} {state}  cwd={info.cwd}")
            found = True
        if not found:
            print("no kernel is served (run `%kaimon serve` in a notebook)")
        return 0
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
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
