"""What an agent is told about working with kaimon (server instructions, usage_instructions)."""

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


def watched(providers: list) -> str:
    """The line saying where served kernels are looked for (list_sessions, usage_instructions)."""
    dirs = [str(d) for p in providers for d in getattr(p, "directories", ())]
    if not dirs:
        return ""
    return (
        "\nKernels are found in " + ", ".join(dirs) + " (a kernel served with another "
        'JUPYTER_RUNTIME_DIR is found once kaimon.json lists that dir in "runtime_dirs").'
    )
