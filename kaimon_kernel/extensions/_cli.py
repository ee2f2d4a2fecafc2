"""``kaimon extensions add|list|remove|enable|disable|start|stop|restart|logs``."""

from __future__ import annotations

import argparse
import asyncio
import time

from .._errors import KaimonError

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    e = sub.add_parser("extensions", help="extensions: supervised processes with their own tools")
    esub = e.add_subparsers(dest="action", required=True)
    a = esub.add_parser("add", help="validate an extension project and register it")
    a.add_argument("path")
    a.add_argument(
        "--no-auto-start",
        dest="auto_start",
        action="store_false",
        help="register it, but start it only when asked",
    )
    esub.add_parser("list", help="registered extensions and their status")
    for action, what in (
        ("remove", "unregister an extension (stops it)"),
        ("enable", "allow it to run (starts it if auto_start)"),
        ("disable", "stop it and keep it from starting"),
        ("start", "start it now"),
        ("stop", "stop it (its shutdown_function runs)"),
        ("restart", "stop it, then start it"),
    ):
        p = esub.add_parser(action, help=what)
        p.add_argument("name", help="its name (the namespace) or project path")
    lg = esub.add_parser("logs", help="print the end of an extension's output")
    lg.add_argument("name")
    lg.add_argument("-n", "--lines", type=int, default=50)


def _uptime(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def run(args: argparse.Namespace) -> int:
    from ._process import log_file
    from ._registry import Entry, Registry, RegistryError, extensions, find_extension
    from ._service import read_state, send_request
    from ._validate import validate

    action = args.action
    registry = Registry()
    if action == "add":
        manifest, tools = validate(args.path)
        path = str(manifest.project)
        with registry.editing() as entries:
            if any(e.project_path == path for e in entries):
                raise RegistryError(f"{path} is already registered (`kaimon extensions list`)")
            entries.append(Entry(project_path=path, auto_start=args.auto_start))
        ext = next(e for e in extensions(registry) if e.entry.project_path == path)
        names = ", ".join(f"{ext.name}_{t['name']}" for t in tools) or "(no tools)"
        print(f"kaimon: registered extension {ext.name} ({path}); its tools: {names}")
        if read_state() is not None and args.auto_start:
            print("kaimon: the running kaimon server starts it now")
        return 0
    if action == "list":
        if registry.problem:
            print(f"kaimon: {registry.problem}")
        found = extensions(registry)
        if not found:
            print("no extension is registered (add one with `kaimon extensions add PATH`)")
            return 0
        state = read_state()
        for ext in found:
            status = state.extensions.get(ext.name) if state else None
            what = status.state if status else "stopped"
            if status and status.state == "running" and status.started_at:
                what += f" {_uptime(time.time() - status.started_at)}"
            flags = ("enabled" if ext.entry.enabled else "disabled") + (
                ", auto_start" if ext.entry.auto_start else ""
            )
            print(f"{ext.name:16} {what:18} {flags:20} {ext.entry.project_path}")
            if ext.problem:
                print(f"    problem: {ext.problem}")
        if state is None:
            print("(no kaimon server runs now: extensions start with `kaimon serve`)")
        return 0
    if action == "logs":
        ext = find_extension(registry, args.name)
        path = log_file(ext.name)
        try:
            lines = path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            print(f"kaimon: extension {ext.name} has not run yet (no {path})")
            return 0
        print("\n".join(lines[-max(args.lines, 1) :]))
        return 0
    ext = find_extension(registry, args.name)
    if action in ("remove", "enable", "disable"):
        if action == "remove":
            with registry.editing() as entries:
                entries[:] = [e for e in entries if e.project_path != ext.entry.project_path]
        else:
            registry.set_enabled(ext.entry.project_path, action == "enable")
        print(f"kaimon: {action}d extension {ext.name}")
        return 0
    ok, message = asyncio.run(send_request(ext.name, action))
    if not ok:
        raise KaimonError(message)
    print(f"kaimon: {message}")
    return 0
