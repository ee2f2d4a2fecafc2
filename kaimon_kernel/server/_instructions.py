"""What an agent is told about working with kaimon: the server instructions, the
usage_instructions tool (the detail the tool descriptions leave out, so that ``tools/list``
stays small) and the prompts ``getting-started`` and ``gate-tools``."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

__all__ = ["GATE_TOOLS", "INSTRUCTIONS", "USAGE", "add_prompts"]

INSTRUCTIONS = """\
kaimon connects you to live Jupyter (IPython) kernels that a person shares with you.

- A session is one kernel. `list_sessions` shows them: key, label, status (idle, or busy
  with what and for how long), cwd, Python version.
- `ex(code, session?)` runs Python in the session's namespace: the very objects the person
  works with. Variables you define stay there for the person too. Reply: stdout/stderr, the
  last expression's value, errors with their traceback; images come back as images.
- Name the session (key, label or namespace) whenever more than one is served; with one it
  is used by default. With none, `ex` starts a kernel for you (and says so).
- Output is bounded by `max_output` characters (head and tail kept, the cut is stated):
  print summaries, not whole data sets. `quiet=true` drops the value of the last expression.
- Long code returns after `promote_after` seconds with an `eval_id`; it keeps running.
  Poll it with `check_eval(eval_id)`, stop it with `cancel_eval(eval_id)`, see all with
  `list_jobs`. In long code, call `kaimon_kernel.progress("...")`,
  `kaimon_kernel.stash("name", value)` and check `kaimon_kernel.is_cancelled()`.
- Tools named `<namespace>_<tool>` are functions the person wrote for you: prefer them.
- The kernel is shared: do not restart or reassign what the person is using without asking.
  If the person's own cell is running, your code waits for it; you are told so.
"""

USAGE = (
    INSTRUCTIONS
    + """
More detail (the tool descriptions are kept short):

- `ex`: `max_output` (default 6000, 200-200000) bounds the reply; the whole output is kept as
  a block: `read_block(block_id, offset, limit)` pages through it, `history` lists blocks.
  While code runs, new output comes as progress notifications, and every few seconds of
  silence a heartbeat says it still runs. Images are scaled to at most 1568 px on the long
  edge; a few come inline per reply, the rest (or all, with `images="link"`) as resource
  links `kaimon://block/<id>/image/<n>.png` that you read as MCP resources.
- `check_eval(eval_id)`: status, elapsed time, stash, last progress and output so far; the
  full result once done. `cancel_eval` first sets the cooperative flag
  (`kaimon_kernel.is_cancelled()`), then interrupts the kernel if the code has not stopped
  after the grace period. `list_jobs(status?, limit?, stats?)`.
- `start_session(project_path?, name?)`: a new kernel with the gate served, in an allowed
  project (omit the path to list them; relative paths are relative to the served session's
  directory); it uses the project's .venv when that has ipykernel and kaimon-kernel. A
  directory not allowed yet is put to the person where the client can ask. With
  `server=<URL>` (a Jupyter Server list_sessions shows), the kernel starts there instead and
  `project_path` is relative to that server's root.
- `manage_repl(command, session?)`: restart keeps the session's key and label but ALL state
  is lost; interrupt keeps the state; shutdown ends the kernel.
- `set_option(mirror, session?)`: show your work live in the person's notebook (the
  `%kaimon serve` cell), unless the person served with allow_mirror=False.
- `set_session_info(session?, label?, description?)`: shown by list_sessions; an empty string
  clears (the label falls back to the namespace).
- `export_notebook(path, session?, overwrite?)`: your blocks as an .ipynb; a relative path is
  in the session's folder; an existing file is only replaced with overwrite=true.
- Resources: `kaimon://session/<key>` (a session's facts) and `kaimon://block/<id>` (a
  block's output, paged with `?offset=&limit=` like read_block).
"""
)

GATE_TOOLS = """\
Gate tools are Python functions the person exposes to you as MCP tools, named
`<namespace>_<name>`; they appear and disappear with the sessions (tools/list_changed).
Prefer them to writing the same thing with `ex`: they are what the person wants used.

How a person (or you, with the person's consent, through `ex`) defines one in a kernel:

    import kaimon_kernel as kk

    @kk.tool(read_only=True)
    def row_count(table: str) -> int:
        \"\"\"Rows in a table of the loaded data.\"\"\"
        return len(data[table])

    kk.register(kk.GateTool("fit", fit_model, timeout=600, destructive=False))

- The schema comes from the type hints; the docstring is the description (Google or NumPy
  style `Args:` give each parameter's description). Arguments are validated and coerced.
- `read_only`, `destructive`, `idempotent`, `open_world` become the tool's MCP annotations.
- A name starting with `_` is callable but not listed.
- In a long tool, `kk.progress("step 3/10")` sends progress, `kk.is_cancelled()` says the
  call was cancelled or timed out; `timeout` (seconds) bounds each call.
- Return a str, a number, a dict/list/dataclass/pydantic model (structured content), None,
  or an image (a PIL image, a matplotlib figure, anything with `_repr_png_`).
- `kk.unregister("name")` removes one; `kk.list_tools()` lists them.
"""


def add_prompts(mcp: MCPServer) -> None:
    """The prompts that teach an agent kaimon in one message."""

    @mcp.prompt(name="getting-started", description="How to work with kaimon's live kernels")
    def getting_started() -> str:
        return USAGE

    @mcp.prompt(name="gate-tools", description="What gate tools are and how to write one")
    def gate_tools() -> str:
        return GATE_TOOLS


def watched(providers: list) -> str:
    """The line saying where served kernels are looked for (list_sessions, usage_instructions)."""
    places = [w for p in providers for w in p.where()]
    if not places:
        return ""
    return (
        "\nKernels are found in " + ", ".join(places) + " (a kernel served with another "
        'JUPYTER_RUNTIME_DIR is found once kaimon.json lists that dir in "runtime_dirs").'
    )
