"""What runs inside an extension's process.

The supervisor starts an ipykernel with ``--ext=kaimon_kernel.extensions._host``: at start it
imports the manifest's module, calls its ``tools_function`` and serves the gate with those
tools (``started_by="extension"``, the manifest's namespace), so every kaimon server on the
machine finds it through its session file like any served kernel. A failure at start is
written to the extension's log and ends the process: the supervisor reports it as a crash.

``python -m kaimon_kernel.extensions._host check PROJECT`` is the validation ``kaimon
extensions add`` runs in the extension's own interpreter; it prints one JSON line.
"""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["SHUTDOWN_LIMIT", "check", "load_ipython_extension", "load_tools"]

#: Seconds the manifest's shutdown_function may take before the process exits anyway.
SHUTDOWN_LIMIT = 5.0
PROJECT_ENV = "KAIMON_EXT_PROJECT"
KEY_ENV = "KAIMON_EXT_KEY"
NAME_ENV = "KAIMON_EXT_NAME"
LOG_ENV = "KAIMON_EXT_LOG"
#: Marks the check's answer on stdout (the module may print too).
CHECK_PREFIX = "kaimon-extension-check: "

_state: dict[str, Any] = {}


class ExtensionLoadError(Exception):
    """The extension's code could not give its tools; ``field`` is the manifest field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _import_path(project: Path) -> None:
    for folder in (project / "src", project):
        if folder.is_dir() and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


def load_tools(project: Path) -> tuple[Any, Any, list[Any]]:
    """The manifest, the imported module and its tools (GateTools, schemas built).

    Raises :class:`ExtensionLoadError` naming the field at fault and what to do."""
    from kaimon_kernel.gate import GateTool, ToolDefinitionError

    from ._manifest import load_manifest

    manifest = load_manifest(project)
    _import_path(manifest.project)
    try:
        module = importlib.import_module(manifest.module)
    except BaseException:
        raise ExtensionLoadError(
            "module",
            f"module = {manifest.module!r} does not import in {sys.executable}:\n"
            + traceback.format_exc(),
        ) from None
    fn = getattr(module, manifest.tools_function, None)
    if not callable(fn):
        raise ExtensionLoadError(
            "tools_function",
            f"tools_function = {manifest.tools_function!r}: module {manifest.module} has no "
            "such function; define it (it returns a list of kaimon_kernel.GateTool)",
        )
    try:
        tools = fn()
    except ToolDefinitionError as err:
        raise ExtensionLoadError(
            "tools_function", f"a tool's types cannot be described: {err}"
        ) from None
    except BaseException:
        raise ExtensionLoadError(
            "tools_function",
            f"{manifest.module}.{manifest.tools_function}() raised:\n" + traceback.format_exc(),
        ) from None
    if isinstance(tools, GateTool) or not isinstance(tools, (list, tuple)):
        raise ExtensionLoadError(
            "tools_function",
            f"{manifest.tools_function}() returned {type(tools).__name__}, not a list of "
            "GateTool: return [GateTool('search', search), ...]",
        )
    names: set[str] = set()
    for item in tools:
        if not isinstance(item, GateTool):
            raise ExtensionLoadError(
                "tools_function",
                f"{manifest.tools_function}() returned {item!r} ({type(item).__name__}), not a "
                "GateTool: wrap each function as kaimon_kernel.GateTool(name, function)",
            )
        if item.name in names:
            raise ExtensionLoadError(
                "tools_function", f"two tools are named {item.name!r}; give each its own name"
            )
        names.add(item.name)
        try:
            json.dumps(item.spec().model_dump())
        except (TypeError, ValueError) as err:
            raise ExtensionLoadError(
                "tools_function", f"tool {item.name!r}: its schema cannot be written: {err}"
            ) from None
    for hook in ("shutdown_function",):
        name = getattr(manifest, hook)
        if name and not callable(getattr(module, name, None)):
            raise ExtensionLoadError(
                hook, f"{hook} = {name!r}: module {manifest.module} has no such function"
            )
    if manifest.event_topics and not callable(getattr(module, "on_event", None)):
        raise ExtensionLoadError(
            "event_topics",
            f"event_topics is set but module {manifest.module} has no "
            "on_event(topic, data, session) function",
        )
    return manifest, module, list(tools)


def check(project: str) -> dict[str, Any]:
    """Validate an extension project in this interpreter: ``{"tools": [...]}`` or
    ``{"field": ..., "error": ...}``."""
    from kaimon_kernel._errors import KaimonError

    try:
        manifest, _, tools = load_tools(Path(project))
    except ExtensionLoadError as err:
        return {"field": err.field, "error": str(err)}
    except KaimonError as err:
        return {"field": "manifest", "error": str(err)}
    return {
        "namespace": manifest.namespace,
        "tools": [t.spec().model_dump() for t in tools],
        "python": sys.executable,
    }


def _log(text: str) -> None:
    path = os.environ.get(LOG_ENV)
    stream = sys.__stderr__
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text.rstrip("\n") + "\n")
    elif stream is not None:
        stream.write(text.rstrip("\n") + "\n")
        stream.flush()


def _run_with_limit(fn: Callable[[], Any], what: str) -> None:
    def run() -> None:
        try:
            fn()
        except BaseException:
            _log(f"kaimon extension: {what} raised:\n{traceback.format_exc()}")

    worker = threading.Thread(target=run, name="kaimon-ext-shutdown", daemon=True)
    worker.start()
    worker.join(SHUTDOWN_LIMIT)
    if worker.is_alive():
        _log(f"kaimon extension: {what} did not return within {SHUTDOWN_LIMIT:g} s; exiting")


def load_ipython_extension(ip: Any) -> None:
    """Serve the extension named by the environment; on failure, log it and exit."""
    project = os.environ.pop(PROJECT_ENV, "")
    key = os.environ.pop(KEY_ENV, None)
    name = os.environ.pop(NAME_ENV, None)
    log = os.environ.get(LOG_ENV)
    if log:  # the extension's own warnings are its recent errors
        handler = logging.FileHandler(log, encoding="utf-8")
        handler.setLevel(logging.WARNING)
        logging.getLogger().addHandler(handler)
    try:
        manifest, module, tools = load_tools(Path(project))
        from kaimon_kernel.gate import current_gate

        info = current_gate(ip).serve(
            tools=tools,
            # its registry name: the namespace, or notes_2 for a second "notes" extension
            namespace=name or manifest.namespace,
            label=name or manifest.namespace,
            description=manifest.description,
            started_by="extension",
            key=key,
            allow_restart=False,
            allow_mirror=False,
        )
    except BaseException as err:
        _log(f"kaimon extension {name or project}: not started: {err}\n{traceback.format_exc()}")
        os._exit(3)
    _state.update(manifest=manifest, module=module, info=info)
    if manifest.event_topics:
        topics, on_event = frozenset(manifest.event_topics), module.on_event

        def listener(topic: str, data: dict[str, Any], session: str) -> None:
            if topic in topics:
                on_event(topic, data, session)

        current_gate(ip).event_listeners.append(listener)
    if manifest.shutdown_function:
        hook = getattr(module, manifest.shutdown_function)
        atexit.register(_run_with_limit, hook, f"{manifest.shutdown_function}()")
    _log(f"kaimon extension {info.label}: serving {len(tools)} tools as session {info.key}")


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "check":
        print("usage: python -m kaimon_kernel.extensions._host check PROJECT", file=sys.stderr)
        return 2
    print(CHECK_PREFIX + json.dumps(check(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
