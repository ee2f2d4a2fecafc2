"""The ``%kaimon`` line magic: how the person serves, inspects and withdraws the gate."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class

from ._gate import current_gate

__all__ = ["KaimonMagics", "autoserve_from_env"]

USAGE = """\
%kaimon serve [--namespace NS] [--label LABEL] [--description TEXT] [--no-mirror] [--no-restart]
              [--promote-after SECONDS]
%kaimon status
%kaimon tools
%kaimon jobs [--all]
%kaimon mirror on|off
%kaimon restart
%kaimon stop"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would sys.exit() the kernel's thread
        raise ValueError(f"{message}\nusage:\n{USAGE}")


def _parser() -> _Parser:
    p = _Parser(prog="%kaimon", add_help=False)
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    s = sub.add_parser("serve", add_help=False)
    s.add_argument("--namespace")
    s.add_argument("--label")
    s.add_argument("--description", default="")
    s.add_argument("--no-mirror", dest="allow_mirror", action="store_false")
    s.add_argument("--no-restart", dest="allow_restart", action="store_false")
    s.add_argument("--promote-after", type=float, default=None)
    sub.add_parser("status", add_help=False)
    sub.add_parser("tools", add_help=False)
    sub.add_parser("restart", add_help=False)
    m = sub.add_parser("mirror", add_help=False)
    m.add_argument("state", choices=["on", "off"])
    j = sub.add_parser("jobs", add_help=False)
    j.add_argument("--all", action="store_true")
    sub.add_parser("stop", add_help=False)
    return p


@magics_class
class KaimonMagics(Magics):
    @line_magic
    def kaimon(self, line: str) -> None:
        """Share this kernel with AI agents. ``%kaimon`` alone prints the usage."""
        try:
            args = _parser().parse_args(shlex.split(line))
        except ValueError as err:
            print(f"%kaimon: {err}")
            return
        gate = current_gate(self.shell)
        if args.command is None:
            print(USAGE)
        elif args.command == "serve":
            info = gate.serve(
                namespace=args.namespace,
                label=args.label,
                description=args.description,
                allow_mirror=args.allow_mirror,
                allow_restart=args.allow_restart,
                promote_after=args.promote_after,
            )
            print(
                f"kaimon: serving session {info.key} (label {info.label!r}). "
                "Agents connected to `kaimon serve` can now run code here."
            )
            if info.allow_mirror and gate.view.enabled:
                gate.view.show()  # this cell becomes the live view of what the agent does
        elif args.command == "status":
            print(gate.status_text())
        elif args.command == "tools":
            tools = gate.tools.list()
            ns = gate.info.namespace if gate.info else "(namespace set at serve)"
            if not tools:
                print("kaimon: no tools registered (serve(tools=[GateTool(...)]) or @tool)")
            for t in tools:
                first = (t.spec().description or "").strip().splitlines()[:1]
                print(f"{ns}_{t.name}: {first[0] if first else '(no description)'}")
        elif args.command == "restart":
            _restart_self(gate)
        elif args.command == "mirror":
            if gate.info is None:
                print("kaimon: not serving; `%kaimon serve` shares this kernel and shows the view")
            elif not gate.info.allow_mirror:
                print("kaimon: this session was served with --no-mirror")
            else:
                gate.view.enabled = args.state == "on"
                print(f"kaimon: live view {args.state}")
                if gate.view.enabled:
                    # (re)shown here: after a page reload the old cell no longer gets updates
                    gate.view.show()
        elif args.command == "jobs":
            _print_jobs(None if args.all or gate.info is None else gate.info.session_id)
        elif args.command == "stop":
            was = gate.stop()
            print(
                "kaimon: stopped; agents no longer see this kernel."
                if was
                else "kaimon: this kernel was not being served."
            )


def autoserve_from_env(shell: Any) -> None:
    """Serve at start when the kernel was launched to be served (kernelspec, agent start).

    The variables are removed so that processes the kernel starts do not inherit them.
    """
    from .._settings import LaunchSettings, SettingsError

    try:
        launch = LaunchSettings.pop_from_env()
    except SettingsError as err:
        print(f"kaimon: not serving: {err}")
        return
    if not launch.autoserve:
        return
    current_gate(shell).serve(
        namespace=launch.namespace,
        label=launch.label,
        key=launch.session_key,
        started_by=launch.started_by,
    )


def _print_jobs(session_id: str | None) -> None:
    """The agent's background jobs, newest first, from the server's job store."""
    import time

    from ..server._jobs import recent_jobs

    jobs = [j for j in recent_jobs(200) if session_id in (None, j.session_id)][:20]
    if not jobs:
        print("kaimon: no background jobs" + (" in this session" if session_id else ""))
        return
    for job in jobs:
        first = (job.code.strip().splitlines() or [""])[0][:60]
        when = time.strftime("%H:%M:%S", time.localtime(job.created_at))
        extra = f"  progress: {job.last_progress}" if job.last_progress else ""
        print(f"{job.id}  {job.status:9}  {when}  {job.elapsed:8.1f} s  {first!r}{extra}")


def _restart_self(gate: Any) -> None:
    """Ask this kernel to restart, as an agent's manage_repl does: its owner (a Jupyter server)
    starts a fresh kernel on the same connection file, and the gate serves it again."""
    from jupyter_client import BlockingKernelClient

    from ._gate import _connection_file

    if gate.info is None:
        print("kaimon: not serving; restart with your frontend's restart button instead")
        return
    print(
        f"kaimon: restarting; session {gate.info.key} comes back with a fresh kernel "
        "(all state is gone)"
    )
    client = BlockingKernelClient(connection_file=_connection_file())
    client.load_connection_file()
    client.start_channels(shell=False, iopub=False, stdin=False, hb=False, control=True)
    client.control_channel.send(client.session.msg("shutdown_request", {"restart": True}))
    gate.restart_client = client  # keep the socket open until the kernel goes down
