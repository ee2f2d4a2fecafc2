"""``kaimon dashboard``: one terminal view of every session, agent call, job and extension.

Event-driven: one file watch (watchfiles) on what the servers write — the store and its WAL,
the session files, the extension registry and state, kaimon.json, the logs — and each change
reloads only what it concerns, off the UI's event loop. Nothing redraws on a timer, except a
once-a-second tick of the "for how long" columns while something runs. Tables keep at most
``max_rows`` rows, so memory does not grow with the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import watchfiles
from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import (
    DataTable,
    Footer,
    Header,
    Input,
    Label,
    Log,
    Static,
    TabbedContent,
    TabPane,
)

from .._errors import KaimonError
from . import _control as control
from ._data import (
    CONFIG_KEYS,
    PAGE_CHARS,
    ActivityRow,
    ConfigView,
    ExtensionRow,
    JobRow,
    SessionRow,
    Store,
    duration,
    read_config,
    read_extensions,
    read_log,
    read_sessions,
    running_status,
    save_setting,
    watched_paths,
)

__all__ = ["Dashboard", "Kinds"]

MAX_ROWS = 500
LOG_LINES = 1000
TABS = ("sessions", "activity", "jobs", "extensions", "config", "log")

#: What a changed file concerns: "store", "sessions", "extensions", "config", "log".
Kinds = frozenset[str]


def classify(changes: Iterable[tuple[Any, str]]) -> set[str]:
    """The views a batch of file changes concerns."""
    kinds: set[str] = set()
    for _change, raw in changes:
        path = Path(raw)
        name = path.name
        if name.startswith("jobs.sqlite3"):
            kinds.add("store")
        elif path.parent.name == "logs" and name.startswith("server-"):
            kinds.add("log")
        elif name.startswith("session-") and name.endswith(".json"):
            kinds.add("sessions")
        elif name in ("extensions.json", "extensions-state.json"):
            kinds.add("extensions")
        elif name == "kaimon.json":
            kinds.add("config")
    return kinds


def _keep(_change: Any, raw: str) -> bool:
    name = Path(raw).name
    return not (name.endswith(".txt") or name.endswith(".lock") or name.endswith(".tmp"))


def _clock_text(stamp: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(stamp))


def _first_line(code: str, width: int = 50) -> str:
    line = (code.strip().splitlines() or [""])[0]
    return line if len(line) <= width else line[: width - 1] + "…"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


class Prompt(ModalScreen[str | None]):
    """One line of input; Enter gives it, Escape gives None."""

    BINDINGS: ClassVar = [Binding("escape", "dismiss_none", "Cancel")]

    def __init__(self, question: str, value: str = "") -> None:
        super().__init__()
        self.question = question
        self.value = value

    def compose(self) -> ComposeResult:
        with Vertical(id="prompt"):
            yield Label(self.question)
            yield Input(value=self.value, id="prompt-input")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class Help(ModalScreen[None]):
    """Every key, by view."""

    BINDINGS: ClassVar = [Binding("escape,q,question_mark", "close", "Close")]

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static(self.text)

    def action_close(self) -> None:
        self.dismiss(None)


#: Keys by view: (key, action, description, views it works in; empty: every view).
KEYS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("R", "restart", "Restart", ("sessions",)),
    ("i", "interrupt", "Interrupt", ("sessions",)),
    ("m", "mirror(True)", "Mirror on", ("sessions",)),
    ("M", "mirror(False)", "Mirror off", ("sessions",)),
    ("n", "page(1)", "Next page", ("activity",)),
    ("p", "page(-1)", "Prev page", ("activity",)),
    ("c", "cancel_job", "Cancel job", ("jobs",)),
    ("a", "ext_add", "Add", ("extensions",)),
    ("x", "ext('remove')", "Remove", ("extensions",)),
    ("e", "ext('enable')", "Enable", ("extensions",)),
    ("d", "ext('disable')", "Disable", ("extensions",)),
    ("t", "ext('auto_start')", "Auto-start", ("extensions",)),
    ("s", "ext('start')", "Start", ("extensions",)),
    ("S", "ext('stop')", "Stop", ("extensions",)),
    ("r", "ext('restart')", "Restart", ("extensions",)),
    ("enter", "edit_setting", "Edit", ("config",)),
)


class Dashboard(App[None]):
    """The dashboard. ``watch=False`` (tests, snapshots) loads once and never watches;
    ``clock`` gives the wall-clock time shown in "for how long" columns."""

    TITLE = "kaimon dashboard"
    CSS = """
    DataTable { height: 1fr; }
    .detail { height: 1fr; border-top: solid $primary; padding: 0 1; }
    #status { height: 1; padding: 0 1; color: $text-muted; }
    #prompt { width: 80%; height: auto; border: thick $primary; padding: 1 2;
              background: $surface; }
    Prompt, Help { align: center middle; }
    #help { width: 80%; height: 80%; border: thick $primary; padding: 1 2;
            background: $surface; }
    """
    BINDINGS: ClassVar = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Keys"),
        *(
            Binding(str(i + 1), f"tab('{tab}')", tab.capitalize(), show=False)
            for i, tab in enumerate(TABS)
        ),
        *(Binding(key, action, text) for key, action, text, _views in KEYS if key != "enter"),
    ]

    def __init__(
        self,
        *,
        store: Store | None = None,
        watch: bool = True,
        clock: Callable[[], float] = time.time,
        max_rows: int = MAX_ROWS,
    ) -> None:
        super().__init__()
        self.store = store or Store()
        self.watch = watch
        self.clock = clock
        self.max_rows = max_rows
        self.sessions: list[SessionRow] = []
        self.jobs: list[JobRow] = []
        self.extensions: list[ExtensionRow] = []
        self.config: ConfigView | None = None
        self._activity: dict[int, ActivityRow] = {}
        self._last_id = 0
        self._block: tuple[str, int] | None = None  # shown block and offset
        self._selected_call: ActivityRow | None = None
        self._ticker: Any = None
        self._log_lines: list[str] = []
        self._loading = asyncio.Lock()
        #: How many activity rows were shown since start (the benchmark reads it).
        self.shown = 0
        #: Set after each reload (tests wait on it).
        self.reloaded = asyncio.Event()

    # -- layout ----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with TabbedContent(initial="activity"):
            with TabPane("Sessions [1]", id="sessions"):
                yield DataTable(id="sessions-table", cursor_type="row", zebra_stripes=True)
                yield Static(id="session-detail", classes="detail")
            with TabPane("Activity [2]", id="activity"):
                yield DataTable(id="activity-table", cursor_type="row", zebra_stripes=True)
                with VerticalScroll(classes="detail"):
                    yield Static("select a call (Enter) to see its code and output", id="block")
            with TabPane("Jobs [3]", id="jobs"):
                yield DataTable(id="jobs-table", cursor_type="row", zebra_stripes=True)
                with VerticalScroll(classes="detail"):
                    yield Static(id="job-detail")
            with TabPane("Extensions [4]", id="extensions"):
                yield DataTable(id="extensions-table", cursor_type="row", zebra_stripes=True)
                with VerticalScroll(classes="detail"):
                    yield Static(id="extension-detail")
            with TabPane("Config [5]", id="config"):
                yield DataTable(id="config-table", cursor_type="row")
                yield Static(id="config-detail", classes="detail")
            with TabPane("Log [6]", id="log"):
                yield Log(id="log-view", max_lines=LOG_LINES)
        yield Static("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        tables = {
            "sessions-table": ("key", "label", "status", "started by", "cwd", "tools"),
            "activity-table": (
                "#",
                "time",
                "client",
                "server",
                "tool",
                "arguments",
                "duration",
                "status",
            ),
            "jobs-table": ("eval_id", "session", "status", "elapsed", "progress", "stash", "code"),
            "extensions-table": ("name", "state", "uptime", "enabled", "auto-start", "tools"),
            "config-table": ("setting", "in effect", "in kaimon.json"),
        }
        for table_id, columns in tables.items():
            table = self.query_one(f"#{table_id}", DataTable)
            for column in columns:
                table.add_column(column, key=column)
        self.call_after_refresh(self._start)

    async def _start(self) -> None:
        self.query_one("#activity-table", DataTable).focus()
        await self.reload({"store", "sessions", "extensions", "config", "log"})
        if self.watch:
            self._watch()

    # -- loading ---------------------------------------------------------------------------

    @work(exclusive=True, group="watch")
    async def _watch(self) -> None:
        paths = await asyncio.to_thread(watched_paths)
        async for changes in watchfiles.awatch(
            *paths, watch_filter=_keep, debounce=100, step=100, recursive=True
        ):
            kinds = classify(changes)
            if kinds:
                await self.reload(kinds)

    async def reload(self, kinds: set[str]) -> None:
        """Read what ``kinds`` concern again and show it."""
        async with self._loading:
            if "store" in kinds:  # the extensions' registry and manifests: not from it
                kinds = kinds | {"sessions", "jobs", "activity", "panels"}
            data = await asyncio.to_thread(self._read, kinds)
            self._show(data)
            self._tick_when_needed()
            self.reloaded.set()
            self.reloaded = asyncio.Event()

    def _read(self, kinds: set[str]) -> dict[str, Any]:
        """In a worker thread: every read the reload needs."""
        data: dict[str, Any] = {}
        try:
            if "activity" in kinds:
                after = self._last_id
                if after and self.store.last_activity_id() < after:
                    data["reset"] = True  # a fresh store (the old one was moved aside)
                    after = 0
                data["activity"] = self.store.activity(self.max_rows, after)
                running = [i for i, r in self._activity.items() if r.status == "running"]
                data["changed"] = self.store.activity_rows(running)
            if "sessions" in kinds:
                data["sessions"] = read_sessions(self.store)
            if "jobs" in kinds:
                data["jobs"] = self.store.jobs(self.max_rows)
            if "extensions" in kinds:
                data["extensions"] = read_extensions(self.store)
            elif "panels" in kinds and self.extensions:
                data["panels"] = (self.store.panels(), self.store.session_tools())
            if "config" in kinds:
                data["config"] = read_config()
            if "log" in kinds:
                data["log"] = read_log(LOG_LINES)
            if self._block is not None and "activity" in kinds:
                block_id, offset = self._block
                page = self.store.block(block_id, offset)
                if page is not None and page.status == "running":
                    data["block"] = page
        except Exception as err:  # a store being replaced, a file half-written: next event
            data["problem"] = f"reading failed: {err}"
        return data

    def _show(self, data: dict[str, Any]) -> None:
        if data.get("reset"):
            self.query_one("#activity-table", DataTable).clear()
            self._activity.clear()
            self._last_id = 0
        if "activity" in data:
            self._show_activity(data["activity"], data.get("changed", []))
        # unchanged views are not redrawn (under load the store changes many times a second)
        if "sessions" in data and data["sessions"] != self.sessions:
            self.sessions = data["sessions"]
            self._show_sessions()
        if "jobs" in data and data["jobs"] != self.jobs:
            self.jobs = data["jobs"]
            self._show_jobs()
        if "panels" in data:
            panels, tools = data["panels"]
            changed = False
            for ext in self.extensions:
                panel, names = panels.get(ext.key, {}), tools.get(ext.key, [])
                if (panel, names) != (ext.panel, ext.tools):
                    ext.panel, ext.tools, changed = panel, names, True
            if changed:
                self._show_extensions(getattr(self, "_extension_note", ""))
        if "extensions" in data:
            self.extensions, note = data["extensions"]
            self._show_extensions(note)
        if "config" in data:
            self.config = data["config"]
            self._show_config()
        if "log" in data:
            self._show_log(data["log"])
        if "block" in data:
            self._render_block(data["block"])
        if "problem" in data:
            self.say(data["problem"])

    def _tick_when_needed(self) -> None:
        """Tick once a second only while something runs (the "for how long" columns)."""
        busy = any(s.running or s.jobs for s in self.sessions) or any(
            j.status == "running" for j in self.jobs
        )
        if busy and self._ticker is None and self.watch:
            self._ticker = self.set_interval(1.0, self._tick)
        elif not busy and self._ticker is not None:
            self._ticker.stop()
            self._ticker = None

    def _tick(self) -> None:
        self._show_sessions()
        self._show_jobs()

    # -- views -----------------------------------------------------------------------------

    def _show_activity(self, new: list[ActivityRow], changed: list[ActivityRow]) -> None:
        table = self.query_one("#activity-table", DataTable)
        for row in changed:
            if row.id in self._activity:
                self._activity[row.id] = row
                for column, value in zip(("duration", "status"), self._cells(row)[6:], strict=True):
                    table.update_cell(str(row.id), column, value, update_width=True)
        if not new:
            return
        added = sorted(new, key=lambda r: r.id)[-self.max_rows :]
        for row in added:
            self._activity[row.id] = row
            table.add_row(*self._cells(row), key=str(row.id))
        self._last_id = max(self._last_id, added[-1].id)
        self.shown += len(added)
        extra = len(self._activity) - self.max_rows
        if extra > 0:
            for old in sorted(self._activity)[:extra]:
                del self._activity[old]
                table.remove_row(str(old))
        table.sort("#", reverse=True)

    def _cells(self, row: ActivityRow) -> tuple[Any, ...]:
        status = running_status(row)
        style = {"ok": "green", "error": "red", "running": "yellow", "lost": "magenta"}
        if row.eval_id:  # the call returned; its code goes on as a background job
            return (*self._base_cells(row), Text(f"job {row.eval_id}", style="cyan"))
        return (*self._base_cells(row), Text(status, style=style.get(status, "")))

    def _base_cells(self, row: ActivityRow) -> tuple[Any, ...]:
        return (
            row.id,
            _clock_text(row.started_at),
            _short(row.client, 20),
            row.server,
            row.tool,
            _short(row.arguments.replace("\n", "⏎"), 60),
            "" if row.duration is None else f"{row.duration:.3f} s",
        )

    def _show_sessions(self) -> None:
        table = self.query_one("#sessions-table", DataTable)
        now = self.clock()
        cursor = table.cursor_row
        table.clear()
        for s in self.sessions:
            table.add_row(
                s.key,
                _short(s.info.label, 24),
                s.status(now),
                s.info.started_by,
                _short(s.info.cwd if s.remote is None else f"({s.remote[0]}) {s.info.cwd}", 40),
                str(len(s.tools)),
                key=s.key,
            )
        if self.sessions:
            table.move_cursor(row=min(cursor, len(self.sessions) - 1))
        self._show_session_detail()

    def _show_session_detail(self) -> None:
        detail = self.query_one("#session-detail", Static)
        session = self._current(self.sessions, "#sessions-table")
        if session is None:
            detail.update("no served kernel: run `%kaimon serve` in a notebook")
            return
        info = session.info
        flags = []
        if not info.allow_restart:
            flags.append("no restart")
        if not info.allow_mirror:
            flags.append("no mirror")
        detail.update(
            Text(
                f"{info.key}  {info.label}  pid {info.pid}  Python {info.python_version}  "
                f"namespace {info.namespace}"
                + (f"  ({', '.join(flags)})" if flags else "")
                + (f"\n{info.description}" if info.description else "")
                + f"\ncwd {info.cwd}\ntools: {', '.join(session.tools) or '(none)'}"
                + "".join(f"\n  {k}: {v}" for k, v in session.panel.items())
            )
        )

    def _show_jobs(self) -> None:
        table = self.query_one("#jobs-table", DataTable)
        now = self.clock()
        cursor = table.cursor_row
        table.clear()
        for j in self.jobs:
            stash = ", ".join(f"{k}={v}" for k, v in j.stash.items())
            table.add_row(
                j.id,
                j.session_key,
                j.status,
                duration(j.elapsed(now)),
                _short(j.last_progress or "", 30),
                _short(stash, 30),
                _first_line(j.code, 40),
                key=j.id,
            )
        if self.jobs:
            table.move_cursor(row=min(cursor, len(self.jobs) - 1))
        self._show_job_detail()

    def _show_job_detail(self) -> None:
        job = self._current(self.jobs, "#jobs-table")
        detail = self.query_one("#job-detail", Static)
        if job is None:
            detail.update("no background jobs yet (an ex that runs past promote_after becomes one)")
            return
        stash = "\n".join(f"  {k} = {v}" for k, v in job.stash.items()) or "  (empty)"
        detail.update(
            Text(
                f"job {job.id} in session {job.session_key}: {job.status}"
                + (f" ({job.reason})" if job.reason else "")
                + f"\nlast progress: {job.last_progress or '-'}\nstash:\n{stash}\n\n{job.code}"
            )
        )

    def _show_extensions(self, note: str) -> None:
        table = self.query_one("#extensions-table", DataTable)
        now = self.clock()
        cursor = table.cursor_row
        table.clear()
        for e in self.extensions:
            table.add_row(
                e.name,
                e.state,
                e.uptime(now),
                "yes" if e.enabled else "no",
                "yes" if e.auto_start else "no",
                str(len(e.tools)),
                key=e.name,
            )
        if self.extensions:
            table.move_cursor(row=min(cursor, len(self.extensions) - 1))
        self._extension_note = note
        self._show_extension_detail()

    def _show_extension_detail(self) -> None:
        ext = self._current(self.extensions, "#extensions-table")
        detail = self.query_one("#extension-detail", Static)
        note = getattr(self, "_extension_note", "")
        if ext is None:
            detail.update(
                "no extension is registered (a: add one by its project path)"
                + (f"\n{note}" if note else "")
            )
            return
        panel = "\n".join(f"  {k}: {v}" for k, v in ext.panel.items()) or "  (nothing pushed)"
        lines = [
            f"{ext.name}: {ext.state}" + (f" (pid {ext.pid})" if ext.pid else ""),
            f"namespace {ext.namespace or '-'}  module {ext.module or '-'}",
            f"project {ext.project_path}",
            f"tools: {', '.join(ext.tools) or '(none seen yet)'}",
            f"restarts: {ext.restarts}",
        ]
        if ext.problem:
            lines.append(f"problem: {ext.problem}")
        if ext.errors:
            lines.append(f"recent errors:\n{ext.errors}")
        lines.append(f"panel:\n{panel}")
        if note:
            lines.append(note)
        detail.update(Text("\n".join(lines)))

    def _show_config(self) -> None:
        table = self.query_one("#config-table", DataTable)
        view = self.config
        cursor = table.cursor_row
        table.clear()
        if view is None:
            return
        for name in CONFIG_KEYS:
            value = view.values.get(name, "?")
            stored = view.stored.get(name, "(default)")
            table.add_row(name, _value(value), _value(stored), key=name)
        table.move_cursor(row=min(cursor, len(CONFIG_KEYS) - 1))
        detail = self.query_one("#config-detail", Static)
        detail.update(
            Text(
                f"{view.path}\nEnter: change the selected setting. Running kaimon servers apply "
                "promote_after, cancel_grace and mirror at once; projects apply at the next "
                "start_session." + (f"\nproblem: {view.problem}" if view.problem else "")
            )
        )

    def _show_log(self, lines: list[str]) -> None:
        if lines == self._log_lines:
            return
        log = self.query_one("#log-view", Log)
        old = self._log_lines
        if old and lines[: len(old)] == old:
            log.write_lines(lines[len(old) :])
        else:
            log.clear()
            log.write_lines(lines or ["(no server has logged anything yet)"])
        self._log_lines = lines

    def _current(self, rows: list[Any], table_id: str) -> Any:
        table = self.query_one(table_id, DataTable)
        if not rows or table.row_count == 0:
            return None
        index = table.cursor_row
        return rows[index] if 0 <= index < len(rows) else None

    def say(self, message: str) -> None:
        self.query_one("#status", Static).update(Text(message))

    # -- selection -------------------------------------------------------------------------

    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        table_id = event.data_table.id
        with contextlib.suppress(NoMatches):  # a late message while the app closes
            if table_id == "sessions-table":
                self._show_session_detail()
            elif table_id == "jobs-table":
                self._show_job_detail()
            elif table_id == "extensions-table":
                self._show_extension_detail()

    @on(DataTable.RowSelected, "#activity-table")
    async def _call_selected(self, event: DataTable.RowSelected) -> None:
        row = self._activity.get(int(event.row_key.value or 0))
        if row is not None:
            await self.show_call(row)

    @on(DataTable.RowSelected, "#config-table")
    def _setting_selected(self, _event: DataTable.RowSelected) -> None:
        self.action_edit_setting()

    async def show_call(self, row: ActivityRow, offset: int = 0) -> None:
        """Show a call: its block's code and output (a page from ``offset``), else its
        arguments."""
        self._selected_call = row
        if not row.block_id:
            self._block = None
            self.query_one("#block", Static).update(
                Text(
                    f"{row.tool} by {row.client} through {row.server}: {running_status(row)}\n"
                    f"arguments: {row.arguments}\n(no block: only ex runs code in a block)"
                )
            )
            return
        page = await asyncio.to_thread(self.store.block, row.block_id, offset)
        self._block = (row.block_id, offset)
        if page is None:
            self.query_one("#block", Static).update(f"block {row.block_id} is no longer kept")
            return
        self._render_block(page)

    def _render_block(self, page: Any) -> None:
        end = page.offset + len(page.text)
        pages = max(1, -(-page.total // PAGE_CHARS))
        number = page.offset // PAGE_CHARS + 1
        head = (
            f"block {page.block_id} ({page.status}) — output characters {page.offset:,}-{end:,}"
            f" of {page.total:,}, page {number}/{pages} (n/p)"
        )
        self.query_one("#block", Static).update(
            Text(f"{head}\n── code ──\n{page.code}\n── output ──\n{page.text}")
        )

    # -- actions ---------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        views = next((v for _k, a, _t, v in KEYS if a.split("(")[0] == action), None)
        if views is None or not self.is_mounted:
            return True
        try:
            active = self.query_one(TabbedContent).active
        except Exception:
            return True
        return active in views

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    @on(TabbedContent.TabActivated)
    def _tab_changed(self, event: TabbedContent.TabActivated) -> None:
        if not self.screen_stack:  # the app is closing: its tabs go, no screen is left
            return
        self.refresh_bindings()
        # the arrows and Enter go to the view's table at once
        for widget in event.pane.query("DataTable, Log"):
            widget.focus()
            break

    def action_help(self) -> None:
        lines = [
            "Keys",
            "",
            "everywhere:",
            "  1-6  Sessions, Activity, Jobs, Extensions, Config, Log",
            "  ?    this list",
            "  q    quit",
            "  ↑↓   move, Enter select",
            "",
        ]
        for view in TABS:
            keys = [(k, t) for k, _a, t, v in KEYS if view in v]
            if keys:
                lines.append(f"{view}:")
                lines.extend(f"  {k:<5}{t}" for k, t in keys)
        self.push_screen(Help("\n".join(lines)))

    async def action_page(self, step: int) -> None:
        if self._selected_call is None or self._block is None:
            return
        offset = max(0, self._block[1] + step * PAGE_CHARS)
        await self.show_call(self._selected_call, offset)

    def _session_key(self) -> str | None:
        session = self._current(self.sessions, "#sessions-table")
        return session.key if session else None

    def action_restart(self) -> None:
        key = self._session_key()
        if key:
            self._act(f"restarting session {key}…", control.restart(key))

    def action_interrupt(self) -> None:
        key = self._session_key()
        if key:
            self._act(f"interrupting session {key}…", control.interrupt(key))

    def action_mirror(self, on: bool) -> None:
        key = self._session_key()
        if key:
            self._act(f"mirror {'on' if on else 'off'} for {key}…", control.set_mirror(key, on))

    def action_cancel_job(self) -> None:
        job = self._current(self.jobs, "#jobs-table")
        if job is None:
            return
        if job.status != "running":
            self.say(f"job {job.id} is {job.status}; nothing to cancel")
            return
        self._act(f"cancelling job {job.id}…", control.cancel_job(job.id, self.store.path))

    def action_ext(self, action: str) -> None:
        ext = self._current(self.extensions, "#extensions-table")
        if ext is not None:
            self._act(f"{action} {ext.name}…", control.extension_action(ext.name, action))

    def action_ext_add(self) -> None:
        def added(path: str | None) -> None:
            if path:
                self._act(f"adding {path}…", asyncio.to_thread(control.add_extension, path))

        self.push_screen(Prompt("Extension project path:"), added)

    def action_edit_setting(self) -> None:
        if self.config is None:
            return
        table = self.query_one("#config-table", DataTable)
        name = CONFIG_KEYS[max(0, min(table.cursor_row, len(CONFIG_KEYS) - 1))]
        current = self.config.values.get(name, "")
        text = ":".join(current) if isinstance(current, list) else _value(current)

        def chosen(value: str | None) -> None:
            if value is None:
                return
            try:
                saved = save_setting(name, value)
            except KaimonError as err:
                self.say(f"not saved: {err}")
                return
            self.say(f"{name} = {_value(saved)} written to kaimon.json")
            if not self.watch:
                self.run_worker(self.reload({"config"}))

        hint = " (directories separated by ':')" if name == "projects" else ""
        self.push_screen(Prompt(f"{name}{hint}:", text), chosen)

    def _act(self, doing: str, action: Any) -> None:
        self.say(doing)
        self._run_action(action)

    @work(group="actions")
    async def _run_action(self, action: Any) -> None:
        try:
            message = await action
        except KaimonError as err:
            message = f"failed: {err}"
        except Exception as err:  # shown, never fatal to the dashboard
            message = f"failed: {type(err).__name__}: {err}"
        self.say(message)
        if not self.watch:
            await self.reload({"store", "sessions", "extensions"})
        self.last_result = message

    last_result: str = ""

    async def on_unmount(self) -> None:
        with contextlib.suppress(Exception):
            self.store.close()


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "(none)"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
