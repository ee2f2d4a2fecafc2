"""``push_panel``: state for a session's dashboard panel (an extension's, mostly), pushed from
a tool handler or a cell without waiting for anyone."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic_core import PydanticSerializationError, to_jsonable_python

from ._gate import current_gate

__all__ = ["push_panel"]

_UNSET: Any = object()


def push_panel(key: str | Mapping[str, Any], value: Any = _UNSET, /) -> None:
    """Send ``value`` under ``key`` to this session's dashboard panel, or several at once:
    ``push_panel({"greetings": greetings, "status": "ready"})``.

    Values are turned into JSON here, at the call (numbers, strings, lists, dicts,
    dataclasses, pydantic models, dates…): a value that cannot be is refused with a
    ``TypeError`` now, and later changes to a mutable value do not change what was sent.
    Does not wait: the servers connected to this kernel get it as soon as it is sent.
    """
    if isinstance(key, Mapping):
        if value is not _UNSET:
            raise TypeError("push_panel(mapping) takes no value; use push_panel(key, value)")
        items = dict(key)
    elif isinstance(key, str):
        if value is _UNSET:
            raise TypeError(f"push_panel({key!r}) needs a value: push_panel(key, value)")
        items = {key: value}
    else:
        raise TypeError(
            f"push_panel takes a key (str) and a value, or a dict of them; got {type(key).__name__}"
        )
    values: dict[str, Any] = {}
    for name, item in items.items():
        if not isinstance(name, str):
            raise TypeError(f"push_panel keys are strings; got {name!r}")
        try:
            values[name] = json.loads(json.dumps(to_jsonable_python(item), allow_nan=False))
        except (PydanticSerializationError, TypeError, ValueError) as err:
            raise TypeError(
                f"push_panel: the value for {name!r} ({type(item).__name__}) cannot be sent as "
                f"JSON: {err}. Send plain data (numbers, strings, lists, dicts, dataclasses)"
            ) from None
    current_gate().push_panel(values)
