"""The ``kaimon`` command: ``serve``, ``token``, ``kernelspec install``, ``sessions``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ._config import (
    DEFAULT_CANCEL_GRACE,
    DEFAULT_PROMOTE_AFTER,
    add_project,
    allowed_projects,
    load_config,
    remove_project,
)
from ._errors import KaimonError
from ._paths import config_file

__all__ = ["main"]


def _seconds(flag: float | None, env: str, key: str, default: float) -> float:
    """A duration from the command line, else the environment, else the config file."""
    if flag is not None:
        return flag
    raw = os.environ.get(env, "").strip()
    if raw:
        try:
            return float(raw)
        except ValueError:
            raise SystemExit(f"kaimon: {env}={raw!r} is not a number of seconds") from None
    value = load_config().get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise SystemExit(f"kaimon: {key!r} in {config_file()} must be a number of seconds")
    return float(value)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kaimon", description="Share live Jupyter kernels with AI agents over MCP."
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the MCP server (stdio by default)")
    s.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    s.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=2828, help="HTTP port (default 2828)")
    s.add_argument(
        "--no-auth", action="store_true", help="HTTP without a bearer token (loopback only)"
    )
    s.add_argument(
        "--no-auto-start",
        dest="auto_start",
        action="store_false",
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
        "interrupts the kernel (default $KAIMON_CANCEL_GRACE or 3)",
    )
    s.add_argument("--log-level", default="WARNING")

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
        from .server._core import ServerOptions
        from .server._http import check_bind
        from .server._run import serve_forever

        logging.basicConfig(
            level=args.log_level.upper(),
            stream=sys.stderr,
            format="kaimon %(levelname)s %(name)s: %(message)s",
        )
        options = ServerOptions(
            auto_start=args.auto_start,
            promote_after=_seconds(
                args.promote_after, "KAIMON_PROMOTE_AFTER", "promote_after", DEFAULT_PROMOTE_AFTER
            ),
            cancel_grace=_seconds(
                args.cancel_grace, "KAIMON_CANCEL_GRACE", "cancel_grace", DEFAULT_CANCEL_GRACE
            ),
        )
        token = None
        if args.http:
            token = None if args.no_auth else load_or_create_token()
            check_bind(args.host, token)
        serve_forever(options, http=args.http, host=args.host, port=args.port, token=token)
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
        if args.action == "add":
            print(f"kaimon: agents may now start kernels in {add_project(args.path)}")
        elif args.action == "remove":
            done = remove_project(args.path)
            print("kaimon: removed" if done else f"kaimon: {args.path} was not in the list")
        else:
            for project in allowed_projects():
                print(project)
            print(f"(and the directory `kaimon serve` runs in; stored in {config_file()})")
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
