"""From a typed Python function to an MCP tool: input schema, output schema, coercion.

One pydantic model per function (``create_model``) describes and validates the arguments;
``$ref``s are inlined so that every MCP client reads the schema, and titles are dropped.
A type that pydantic cannot describe is refused at registration, naming the parameter.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
import typing
from collections.abc import Callable
from typing import Any

import typing_extensions
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model
from pydantic.errors import PydanticSchemaGenerationError, PydanticUserError

from .._errors import KaimonError

__all__ = ["Signature", "ToolArgumentError", "ToolDefinitionError", "parse_param_docs"]

SUPPORTED = (
    "str, int, float, bool, Enum, Literal, dataclasses, pydantic models, TypedDict, date/datetime, "
    "list/tuple/set/dict of those, X | None, Any; or a single dict[str, Any] parameter for raw "
    "arguments"
)


class ToolDefinitionError(KaimonError, TypeError):
    """A function cannot be exposed as a tool (a parameter type has no JSON schema, …)."""


class ToolArgumentError(KaimonError, ValueError):
    """The agent's arguments do not fit the tool's schema."""


_SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Params)\s*:?\s*$", re.I)
_NUMPY_RULE = re.compile(r"^\s*-{3,}\s*$")
_GOOGLE_ITEM = re.compile(r"^\s*(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")
_NUMPY_ITEM = re.compile(r"^\s*(\w+)\s*(:.*)?$")


def parse_param_docs(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a docstring into its summary and per-parameter descriptions (Google or NumPy)."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    i = 0
    while i < len(lines) and not _SECTION.match(lines[i]):
        summary.append(lines[i])
        i += 1
    if i < len(lines):
        i += 1
        numpy = i < len(lines) and bool(_NUMPY_RULE.match(lines[i]))
        if numpy:
            i += 1
        current: str | None = None
        base_indent: int | None = None
        for line in lines[i:]:
            if not line.strip():
                continue
            indent = len(line) - len(line.lstrip())
            if base_indent is None:
                base_indent = indent
            if indent < base_indent or (
                indent == base_indent
                and line.strip().endswith(":")
                and not _GOOGLE_ITEM.match(line)
            ):
                break  # next section
            if indent == base_indent:
                m = (_NUMPY_ITEM if numpy else _GOOGLE_ITEM).match(line)
                if not m:
                    break
                current = m.group(1).lstrip("*")
                params[current] = "" if numpy else m.group(3).strip()
            elif current is not None:
                params[current] = (params[current] + " " + line.strip()).strip()
    return "\n".join(summary).strip(), params


def _clean(schema: Any, defs: dict[str, Any], stack: tuple[str, ...] = ()) -> Any:
    """Inline ``$ref``s and drop ``title`` keywords, walking only schema positions."""
    if isinstance(schema, list):
        return [_clean(s, defs, stack) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in stack:
            raise ToolDefinitionError(
                f"type {name} refers to itself; recursive types are not supported"
            )
        merged = {**copy.deepcopy(defs[name]), **{k: v for k, v in schema.items() if k != "$ref"}}
        return _clean(merged, defs, (*stack, name))
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("title", "$defs"):
            continue
        if key == "properties":
            out[key] = {p: _clean(s, defs, stack) for p, s in value.items()}
        elif key in (
            "items",
            "additionalProperties",
            "not",
            "anyOf",
            "oneOf",
            "allOf",
            "prefixItems",
        ):
            out[key] = _clean(value, defs, stack)
        else:
            out[key] = value
    return out


def json_schema_of(model_or_adapter: Any, mode: str = "validation") -> dict[str, Any]:
    raw = (
        model_or_adapter.model_json_schema(mode=mode)
        if isinstance(model_or_adapter, type) and issubclass(model_or_adapter, BaseModel)
        else model_or_adapter.json_schema(mode=mode)
    )
    return _clean(raw, raw.get("$defs", {}))


def _is_raw_dict(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is dict or origin is dict:
        args = typing.get_args(annotation)
        return not args or (args[0] is str and args[1] is Any)
    return False


def _object_like(annotation: Any) -> bool:
    if annotation is None or annotation is inspect.Signature.empty:
        return False
    if isinstance(annotation, type) and (
        issubclass(annotation, BaseModel) or dataclasses.is_dataclass(annotation)
    ):
        return True
    return typing_extensions.is_typeddict(annotation)


@dataclasses.dataclass
class Signature:
    """What a function takes and gives, as JSON schemas, and how to call it with JSON."""

    fn: Callable[..., Any]
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    model: type[BaseModel] | None  # None: the raw dict escape hatch
    positional: list[str]

    @classmethod
    def of(cls, fn: Callable[..., Any], name: str) -> Signature:
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except Exception as err:
            raise ToolDefinitionError(f"tool {name!r}: cannot read the type hints: {err}") from err
        sig = inspect.signature(fn)
        summary, docs = parse_param_docs(inspect.getdoc(fn))
        params = list(sig.parameters.values())
        output = None
        ret = hints.get("return")
        if _object_like(ret):
            output = json_schema_of(TypeAdapter(ret), mode="serialization")
        if len(params) == 1 and _is_raw_dict(hints.get(params[0].name, params[0].annotation)):
            schema = {"type": "object", "additionalProperties": True}
            return cls(fn, summary, schema, output, None, [])
        fields: dict[str, Any] = {}
        positional: list[str] = []
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise ToolDefinitionError(
                    f"tool {name!r}: parameter {p.name!r} is *args/**kwargs, which has no "
                    "schema; name the parameters, or take a single dict[str, Any]"
                )
            annotation = hints.get(p.name, Any)
            try:
                TypeAdapter(annotation).json_schema()
            except (PydanticSchemaGenerationError, PydanticUserError, TypeError, KeyError) as err:
                why = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise ToolDefinitionError(
                    f"tool {name!r}: parameter {p.name!r} has type {annotation!r}, which cannot "
                    f"be described as JSON schema ({why}). Supported: {SUPPORTED}."
                ) from err
            default = ... if p.default is p.empty else p.default
            doc = docs.get(p.name)
            fields[p.name] = (annotation, Field(default, description=doc) if doc else default)
            if p.kind == p.POSITIONAL_ONLY:
                positional.append(p.name)
        model = create_model(  # type: ignore[call-overload]
            f"{name}_arguments",
            __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=False),
            **fields,
        )
        try:
            schema = json_schema_of(model)
        except PydanticUserError as err:
            raise ToolDefinitionError(f"tool {name!r}: {err}") from err
        schema.setdefault("properties", {})
        return cls(fn, summary, schema, output, model, positional)

    def bind(self, arguments: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Coerce JSON arguments into the function's real types; raise ToolArgumentError."""
        if self.model is None:
            return [dict(arguments)], {}
        try:
            parsed = self.model.model_validate(arguments)
        except ValidationError as err:
            raise ToolArgumentError(describe_validation_error(err)) from None
        values = {name: getattr(parsed, name) for name in type(parsed).model_fields}
        args = [values.pop(name) for name in self.positional]
        return args, values


def describe_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors(include_url=False):
        where = ".".join(str(p) for p in e["loc"]) or "(arguments)"
        given = e.get("input")
        shown = "" if e["type"] == "missing" else f" (got {given!r:.80})"
        lines.append(f"- {where}: {e['msg']}{shown}")
    return "invalid arguments:\n" + "\n".join(lines)
