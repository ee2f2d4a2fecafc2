"""``kaimon dashboard --once``: the same views as plain text, for scripts, SSH sessions
without a TTY and bug reports."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ._data import (
    CONFIG_KEYS,
    Store,
    duration,
    read_config,
    read_extensions,
    read_log,
    read_sessions,
    running_status,
)

__all__ = ["snapshot_text"]


def _table(headers: Sequence[str], rows: list[Sequence[str]], width: int = 40) -> list[str]:
    cells = [[str(c).replace("\n", " ")[:width] for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*headers).rstrip(), *(fmt.format(*r).rstrip() for r in cells)]


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "(none)"
    return f"{value:g}" if isinstance(value, float) else str(value)


def snapshot_text(
    store: Store | None = None,
    *,
    clock: Callable[[], float] = time.time,
    activity: int = 30,
    log_lines: int = 20,
) -> str:
    """Every view of the dashboard, as text."""
    store = store or Store()
    now = clock()
    out = [f"kaimon dashboard — {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))}"]

    sessions = read_sessions(store)
    out += ["", f"== Sessions ({len(sessions)}) =="]
    if sessions:
        out += _table(
            ("KEY", "LABEL", "STATUS", "STARTED BY", "CWD", "TOOLS"),
            [
                (
                    s.key,
                    s.info.label,
                    s.status(now),
                    s.info.started_by,
                    s.info.cwd if s.remote is None else f"({s.remote[0]}) {s.info.cwd}",
                    ", ".join(s.tools) or "-",
                )
                for s in sessions
            ],
            width=60,
        )
    else:
        out.append("no served kernel (run `%kaimon serve` in a notebook)")

    calls = store.activity(activity)
    out += ["", f"== Activity (newest {len(calls)}) =="]
    out += (
        _table(
            ("#", "TIME", "CLIENT", "SERVER", "TOOL", "ARGUMENTS", "DURATION", "STATUS", "BLOCK"),
            [
                (
                    str(c.id),
                    time.strftime("%H:%M:%S", time.localtime(c.started_at)),
                    c.client,
                    c.server,
                    c.tool,
                    c.arguments,
                    "" if c.duration is None else f"{c.duration:.3f} s",
                    f"job {c.eval_id}" if c.eval_id else running_status(c),
                    c.block_id or "",
                )
                for c in calls
            ],
        )
        if calls
        else ["no tool call recorded yet"]
    )

    jobs = store.jobs(50)
    out += ["", f"== Jobs ({len(jobs)}) =="]
    out += (
        _table(
            ("EVAL_ID", "SESSION", "STATUS", "ELAPSED", "PROGRESS", "STASH", "CODE"),
            [
                (
                    j.id,
                    j.session_key,
                    j.status,
                    duration(j.elapsed(now)),
                    j.last_progress or "",
                    ", ".join(f"{k}={v}" for k, v in j.stash.items()),
                    (j.code.strip().splitlines() or [""])[0],
                )
                for j in jobs
            ],
        )
        if jobs
        else ["no background job"]
    )

    extensions, note = read_extensions(store)
    out += ["", f"== Extensions ({len(extensions)}) =="]
    if extensions:
        out += _table(
            ("NAME", "STATE", "UPTIME", "ENABLED", "AUTO-START", "TOOLS", "PANEL"),
            [
                (
                    e.name,
                    e.state,
                    e.uptime(now),
                    "yes" if e.enabled else "no",
                    "yes" if e.auto_start else "no",
                    ", ".join(e.tools) or "-",
                    ", ".join(f"{k}={v}" for k, v in e.panel.items()) or "-",
                )
                for e in extensions
            ],
            width=60,
        )
    else:
        out.append("no extension is registered")
    if note:
        out.append(f"({note})")

    config = read_config()
    out += ["", f"== Config ({config.path}) =="]
    if config.problem:
        out.append(f"problem: {config.problem}")
    out += _table(
        ("SETTING", "IN EFFECT", "IN KAIMON.JSON"),
        [
            (k, _value(config.values.get(k, "?")), _value(config.stored.get(k, "(default)")))
            for k in CONFIG_KEYS
        ],
        width=80,
    )

    lines = read_log(log_lines)
    out += ["", f"== Log (last {len(lines)} lines) =="]
    out += lines or ["(no server has logged anything yet)"]
    return "\n".join(out) + "\n"
