"""Gate tools: the person's typed Python functions, exposed to agents as MCP tools.

A :class:`GateTool` pairs a name with a function; its schema comes from the signature
(:mod:`._schema`). Calls run in a worker thread of the kernel, so a long tool never blocks
the comm, and ``progress()`` / ``is_cancelled()`` know which call they belong to.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import inspect
import io
import json
import re
import threading
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from .._protocol import Block, ImageBlock, TextBlock, ToolResult, ToolSpec
from ._context import CallContext, current_call
from ._schema import Signature, ToolArgumentError, ToolDefinitionError

__all__ = ["GateTool", "ToolRegistry", "run_call", "to_result"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclasses.dataclass(eq=False)
class GateTool:
    """A function exposed to agents as the MCP tool ``<namespace>_<name>``.

    ``handler`` is any typed function (sync or async); its docstring becomes the
    description unless ``description`` is given. ``timeout`` (seconds) bounds each call.
    ``read_only``, ``destructive``, ``idempotent`` and ``open_world`` become the tool's MCP
    annotations (hints a client may use to decide what needs the person's approval); None
    leaves the hint unsaid. A name starting with ``_`` makes a tool agents can call but do
    not see listed.
    """

    name: str
    handler: Callable[..., Any]
    description: str | None = None
    timeout: float | None = None
    read_only: bool | None = None
    destructive: bool | None = None
    idempotent: bool | None = None
    open_world: bool | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ToolDefinitionError(
                f"tool name {self.name!r} must be 1-64 characters of A-Z, a-z, 0-9, _ or -"
            )
        if not callable(self.handler):
            raise ToolDefinitionError(
                f"tool {self.name!r}: handler {self.handler!r} is not callable"
            )
        for hint in ("read_only", "destructive", "idempotent", "open_world"):
            if getattr(self, hint) not in (None, True, False):
                raise ToolDefinitionError(
                    f"tool {self.name!r}: {hint} must be True, False or None, "
                    f"not {getattr(self, hint)!r}"
                )
        self.signature = Signature.of(self.handler, self.name)

    def spec(self) -> ToolSpec:
        return ToolSpec(
            name=self.name,
            description=self.description or self.signature.description,
            input_schema=self.signature.input_schema,
            output_schema=self.signature.output_schema,
            timeout=self.timeout,
            read_only=self.read_only,
            destructive=self.destructive,
            idempotent=self.idempotent,
            open_world=self.open_world,
        )


class ToolRegistry:
    """The tools of one gate: add, replace, remove, list; listeners hear every change."""

    def __init__(self) -> None:
        self._tools: dict[str, GateTool] = {}
        self._lock = threading.Lock()
        self.listeners: list[Callable[[], None]] = []

    def add(self, *tools: GateTool) -> None:
        with self._lock:
            for t in tools:
                self._tools[t.name] = t
        self._changed()

    def remove(self, *names: str) -> list[str]:
        with self._lock:
            removed = [n for n in names if self._tools.pop(n, None) is not None]
        if removed:
            self._changed()
        return removed

    def get(self, name: str) -> GateTool | None:
        return self._tools.get(name)

    def list(self) -> list[GateTool]:
        return list(self._tools.values())

    def specs(self) -> list[ToolSpec]:
        return [t.spec() for t in self.list()]

    def _changed(self) -> None:
        for listener in list(self.listeners):
            listener()


def _image_block(value: Any) -> ImageBlock | None:
    png: bytes | None = None
    if hasattr(value, "savefig"):  # matplotlib Figure
        buf = io.BytesIO()
        value.savefig(buf, format="png", bbox_inches="tight")
        png = buf.getvalue()
    elif hasattr(value, "save") and hasattr(value, "mode") and hasattr(value, "size"):  # PIL
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        png = buf.getvalue()
    elif hasattr(value, "_repr_png_"):
        data = value._repr_png_()
        png = data[0] if isinstance(data, tuple) else data
        if isinstance(png, str):
            return ImageBlock(data=png, mime_type="image/png")
    if png is None:
        return None
    return ImageBlock(data=base64.b64encode(png).decode(), mime_type="image/png")


def to_result(call_id: str, value: Any) -> ToolResult:
    """A handler's return value as MCP content: text, images, or JSON + structured content."""
    if isinstance(value, str):
        return ToolResult(call_id=call_id, content=[TextBlock(text=value)])
    if value is None:
        return ToolResult(call_id=call_id, content=[TextBlock(text="(no result)")])
    image = _image_block(value)
    if image is not None:
        return ToolResult(call_id=call_id, content=[image])
    if isinstance(value, BaseModel | dict | list | tuple | set | int | float | bool) or (
        dataclasses.is_dataclass(value) and not isinstance(value, type)
    ):
        data = to_jsonable_python(value)
        structured = data if isinstance(data, dict) else {"result": data}
        return ToolResult(
            call_id=call_id,
            content=[TextBlock(text=json.dumps(data, indent=1))],
            structured=structured,
        )
    return ToolResult(call_id=call_id, content=[TextBlock(text=repr(value))])


def _error(call_id: str, text: str) -> ToolResult:
    blocks: list[Block] = [TextBlock(text=text)]
    return ToolResult(call_id=call_id, content=blocks, is_error=True)


def run_call(
    tool: GateTool | None, name: str, arguments: dict[str, Any], call: CallContext
) -> ToolResult:
    """Run one call to completion in the current thread; never raises."""
    if tool is None:
        return _error(call.call_id, f"this session has no tool {name!r} (it may have been removed)")
    try:
        args, kwargs = tool.signature.bind(arguments)
    except ToolArgumentError as err:
        return _error(call.call_id, f"{tool.name}: {err}")
    token = current_call.set(call)
    try:
        if inspect.iscoroutinefunction(tool.handler):
            value = asyncio.run(tool.handler(*args, **kwargs))
        else:
            value = tool.handler(*args, **kwargs)
            if inspect.isawaitable(value):
                value = asyncio.run(value)  # type: ignore[arg-type]
        return to_result(call.call_id, value)
    except BaseException as err:  # a tool's failure must never reach the kernel
        frames = err.__traceback__.tb_next if err.__traceback__ else None
        tb = "".join(traceback.format_exception(type(err), err, frames, limit=-6))
        return _error(call.call_id, f"{tool.name} raised {type(err).__name__}: {err}\n{tb}")
    finally:
        current_call.reset(token)


def check_tools(tools: Iterable[Any]) -> list[GateTool]:
    out = []
    for t in tools:
        if not isinstance(t, GateTool):
            raise ToolDefinitionError(f"expected GateTool(name, function), got {t!r}")
        out.append(t)
    return out
