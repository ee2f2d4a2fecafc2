"""Schemas from typed signatures, compared against the exact JSON schema; coercion; errors."""

from __future__ import annotations

import datetime
import enum
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field
from pydantic_core import to_jsonable_python
from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

from kaimon_kernel import GateTool, ToolArgumentError, ToolDefinitionError
from kaimon_kernel.gate._schema import Signature, parse_param_docs


class Priority(enum.Enum):
    low = "low"
    high = "high"


class Level(enum.IntEnum):
    one = 1
    two = 2


@dataclass
class Tag:
    name: str
    color: str = "blue"


class Point(BaseModel):
    x: float
    y: float = 0.0


class Inner(TypedDict):
    n: int


class Outer(TypedDict):
    inner: Inner
    label: str


def add_task(
    title: str,
    priority: Priority,
    tags: list[Tag] = [],  # noqa: B006
    due: datetime.date | None = None,
) -> str:
    """Add a task to the person's in-memory list.

    Args:
        title: what to do
        priority: how urgent
    """
    return f"{title} {priority} {tags} {due}"


def schema(fn: Any) -> dict[str, Any]:
    return Signature.of(fn, fn.__name__).input_schema


def test_the_issue_example_has_the_exact_schema() -> None:
    assert schema(add_task) == {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "title": {"type": "string", "description": "what to do"},
            "priority": {"type": "string", "enum": ["low", "high"], "description": "how urgent"},
            "tags": {
                "type": "array",
                "default": [],
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "color": {"type": "string", "default": "blue"},
                    },
                    "required": ["name"],
                },
            },
            "due": {
                "anyOf": [{"type": "string", "format": "date"}, {"type": "null"}],
                "default": None,
            },
        },
        "required": ["title", "priority"],
    }
    assert GateTool("add_task", add_task).spec().description == (
        "Add a task to the person's in-memory list."
    )


def test_scalars_enums_literals_and_keyword_only_defaults() -> None:
    def f(s: str, b: bool, i: int, x: float, lvl: Level, mode: Literal["a", "b"], *, k: int = 3):
        pass

    props = schema(f)["properties"]
    assert props == {
        "s": {"type": "string"},
        "b": {"type": "boolean"},
        "i": {"type": "integer"},
        "x": {"type": "number"},
        "lvl": {"type": "integer", "enum": [1, 2]},
        "mode": {"type": "string", "enum": ["a", "b"]},
        "k": {"type": "integer", "default": 3},
    }
    assert schema(f)["required"] == ["s", "b", "i", "x", "lvl", "mode"]


def test_models_typeddicts_and_containers_nest_recursively() -> None:
    def f(p: Point, o: Outer, pts: tuple[int, str], s: set[str], d: dict[str, Point], a: Any):
        pass

    props = schema(f)["properties"]
    assert props["p"] == {
        "type": "object",
        "properties": {"x": {"type": "number"}, "y": {"type": "number", "default": 0.0}},
        "required": ["x"],
    }
    assert props["o"] == {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "inner": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"n": {"type": "integer"}},
                "required": ["n"],
            },
            "label": {"type": "string"},
        },
        "required": ["inner", "label"],
    }
    assert props["pts"] == {
        "type": "array",
        "maxItems": 2,
        "minItems": 2,
        "prefixItems": [{"type": "integer"}, {"type": "string"}],
    }
    assert props["s"] == {"type": "array", "items": {"type": "string"}, "uniqueItems": True}
    assert props["d"]["additionalProperties"]["properties"]["x"] == {"type": "number"}
    assert props["a"] == {}


def test_annotated_field_descriptions_and_numpy_docstrings() -> None:
    def f(q: Annotated[str, Field(description="the query")], limit: int = 10):
        """Search.

        Parameters
        ----------
        limit : int
            how many results
        """

    props = schema(f)["properties"]
    assert props["q"]["description"] == "the query"
    assert props["limit"]["description"] == "how many results"
    assert parse_param_docs(f.__doc__)[0] == "Search."


def test_a_single_dict_parameter_gets_the_raw_arguments() -> None:
    def raw(args: dict[str, Any]) -> str:
        return args["name"]

    sig = Signature.of(raw, "raw")
    assert sig.input_schema == {"type": "object", "additionalProperties": True}
    assert sig.bind({"name": "w", "extra": 1}) == ([{"name": "w", "extra": 1}], {})


class Opaque:
    pass


def test_undescribable_types_are_refused_naming_the_parameter() -> None:
    def f(ok: int, thing: Opaque):
        pass

    with pytest.raises(ToolDefinitionError, match=r"parameter 'thing' has type .*Opaque"):
        GateTool("f", f)
    with pytest.raises(ToolDefinitionError, match=r"\*args/\*\*kwargs"):
        GateTool("g", lambda *xs: None)
    with pytest.raises(ToolDefinitionError, match="must be 1-64 characters"):
        GateTool("bad name!", add_task)


def test_arguments_are_coerced_into_the_real_types() -> None:
    args, kwargs = Signature.of(add_task, "add_task").bind(
        {"title": "t", "priority": "high", "tags": [{"name": "a"}], "due": "2026-01-02"}
    )
    assert args == []
    assert kwargs == {
        "title": "t",
        "priority": Priority.high,
        "tags": [Tag("a", "blue")],
        "due": datetime.date(2026, 1, 2),
    }


def test_bad_arguments_name_the_field_and_what_was_expected() -> None:
    sig = Signature.of(add_task, "add_task")
    with pytest.raises(ToolArgumentError) as err:
        sig.bind({"priority": "mid", "tags": [{"color": 1}], "nope": 1})
    text = str(err.value)
    assert "- title: Field required" in text
    assert "- priority: Input should be 'low' or 'high' (got 'mid')" in text
    assert "- tags.0.name: Field required" in text
    assert "- nope: Extra inputs are not permitted" in text


# -- properties: any value valid under the schema coerces; anything else is a clear error ------

tags = st.builds(Tag, name=st.text(max_size=5), color=st.sampled_from(["blue", "red"]))
tasks = st.fixed_dictionaries(
    {"title": st.text(max_size=10), "priority": st.sampled_from(list(Priority))},
    optional={"tags": st.lists(tags, max_size=3), "due": st.none() | st.dates()},
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(tasks)
def test_any_valid_value_round_trips_through_json(value: dict[str, Any]) -> None:
    sig = Signature.of(add_task, "add_task")
    _, kwargs = sig.bind(to_jsonable_python(value))
    assert kwargs["title"] == value["title"]
    assert kwargs["priority"] is value["priority"]
    assert kwargs["tags"] == value.get("tags", [])
    assert kwargs["due"] == value.get("due")


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["title", "priority", "tags", "due", "x"]), json_values))
def test_any_argument_dict_either_binds_or_gets_a_clear_error(arguments: dict[str, Any]) -> None:
    sig = Signature.of(add_task, "add_task")
    try:
        _, kwargs = sig.bind(arguments)
    except ToolArgumentError as err:
        assert str(err).startswith("invalid arguments:\n- ")
    else:
        assert isinstance(kwargs["priority"], Priority)
        assert all(isinstance(t, Tag) for t in kwargs["tags"])
        assert typing.cast(Any, kwargs["due"]) is None or isinstance(kwargs["due"], datetime.date)
