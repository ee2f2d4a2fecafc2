"""Gate tools end to end: the person's typed functions called by an agent over MCP."""

from __future__ import annotations

import asyncio
from queue import Empty
from typing import Any

import anyio
import pytest
from conftest import PersonKernel, stdio_client, text_of

pytestmark = pytest.mark.anyio

TOOLS = '''
import asyncio, datetime, enum, time
from dataclasses import dataclass
from IPython.display import Image
from kaimon_kernel import GateTool, serve, progress, is_cancelled

class Priority(enum.Enum):
    low = "low"
    high = "high"

@dataclass
class Tag:
    name: str
    color: str = "blue"

TASKS = []
SAW_CANCEL = False

def add_task(title: str, priority: Priority, tags: list[Tag] = [],
             due: datetime.date | None = None) -> str:
    """Add a task to the person's in-memory list."""
    progress("adding " + title)
    TASKS.append((title, priority, tags, due))
    return f"added {title!r}; {len(TASKS)} tasks"

def explode(reason: str) -> str:
    raise ValueError("boom: " + reason)

async def later(x: int) -> dict:
    await asyncio.sleep(0.05)
    return {"double": 2 * x}

def summary() -> Tag:
    return Tag("summary", "red")

def picture() -> Image:
    import base64
    return Image(data=base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="))

def stubborn() -> str:
    global SAW_CANCEL
    while not is_cancelled():
        time.sleep(0.02)
    SAW_CANCEL = True
    return "stopped"

CLIENT_CANCELLED = False

def patient() -> str:
    global CLIENT_CANCELLED
    while not is_cancelled():
        time.sleep(0.02)
    CLIENT_CANCELLED = True
    return "stopped"

serve(namespace="todo", tools=[
    GateTool("patient", patient),
    GateTool("add_task", add_task), GateTool("explode", explode), GateTool("later", later),
    GateTool("summary", summary), GateTool("picture", picture),
    GateTool("stubborn", stubborn, timeout=0.5),
])
'''


@pytest.fixture
def todo(make_person) -> PersonKernel:
    kernel = make_person(serve=False)
    status, out = kernel.run(TOOLS)
    assert status == "ok", out
    return kernel


async def wait_for_tool(client: Any, name: str, present: bool = True) -> list[Any]:
    with anyio.fail_after(15):
        while True:
            tools = (await client.list_tools()).tools
            if (name in [t.name for t in tools]) == present:
                return tools
            await asyncio.sleep(0.05)


async def test_a_tool_called_as_the_server_starts_is_found_and_a_wrong_name_is_named(
    todo: PersonKernel,
) -> None:
    # no tools/list first: the call itself waits for the session that is still connecting
    async with stdio_client(cache=None) as client:
        first = await client.call_tool("todo_later", {"x": 4})
        wrong = await client.call_tool("todo_no_such_tool", {})
    assert first.structured_content == {"double": 8}, text_of(first)
    assert wrong.is_error and "todo_no_such_tool" in text_of(wrong)


async def test_the_agent_sees_namespaced_tools_with_their_schema(todo: PersonKernel) -> None:
    async with stdio_client(cache=None) as client:
        tools = {t.name: t for t in await wait_for_tool(client, "todo_add_task")}
        listing = await client.call_tool("list_sessions", {})
    tool = tools["todo_add_task"]
    assert tool.description == "Add a task to the person's in-memory list."
    assert tool.input_schema["required"] == ["title", "priority"]
    assert tool.input_schema["properties"]["priority"]["enum"] == ["low", "high"]
    assert tool.output_schema is None
    assert tools["todo_summary"].output_schema["properties"]["color"] == {
        "type": "string",
        "default": "blue",
    }
    assert listing.structured_content["sessions"][0]["tools"] == 7


async def test_a_call_coerces_arguments_and_reaches_the_persons_objects(todo) -> None:
    progress: list[str] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    arguments = {"title": "t1", "priority": "high", "tags": [{"name": "a"}], "due": "2026-01-02"}
    async with stdio_client(cache=None) as client:
        await wait_for_tool(client, "todo_add_task")
        result = await client.call_tool("todo_add_task", arguments, progress_callback=on_progress)
    assert not result.is_error
    assert text_of(result) == "added 't1'; 1 tasks"
    assert progress == ["adding t1"]
    _, out = todo.run(
        "t = TASKS[0]\nprint(t[1] is Priority.high, type(t[2][0]).__name__, t[2][0].color, t[3])"
    )
    assert out == "True Tag blue 2026-01-02\n"


async def test_bad_arguments_are_refused_before_the_function_runs(todo) -> None:
    async with stdio_client(cache=None) as client:
        await wait_for_tool(client, "todo_add_task")
        result = await client.call_tool("todo_add_task", {"priority": "urgent"})
    assert result.is_error
    assert "title: Field required" in text_of(result)
    assert "priority: Input should be 'low' or 'high' (got 'urgent')" in text_of(result)
    assert todo.run("print(len(TASKS))")[1] == "0\n"


async def test_a_failing_handler_is_an_error_and_the_session_keeps_working(todo) -> None:
    async with stdio_client(cache=None) as client:
        await wait_for_tool(client, "todo_explode")
        result = await client.call_tool("todo_explode", {"reason": "why"})
        again = await client.call_tool("ex", {"code": "len(TASKS)"})
    assert result.is_error
    assert "explode raised ValueError: boom: why" in text_of(result)
    assert 'raise ValueError("boom: " + reason)' in text_of(result)
    assert text_of(again).strip() == "0"


async def test_async_handlers_structured_results_and_images(todo) -> None:
    async with stdio_client(cache=None) as client:
        await wait_for_tool(client, "todo_later")
        later = await client.call_tool("todo_later", {"x": 21})
        summary = await client.call_tool("todo_summary", {})
        picture = await client.call_tool("todo_picture", {})
    assert later.structured_content == {"double": 42}
    assert summary.structured_content == {"name": "summary", "color": "red"}
    assert picture.content[0].type == "image"
    assert picture.content[0].data.startswith("iVBORw0KGgo")


async def test_a_tool_past_its_timeout_is_told_to_stop(todo) -> None:
    async with stdio_client(cache=None) as client:
        await wait_for_tool(client, "todo_stubborn")
        result = await client.call_tool("todo_stubborn", {})
    assert result.is_error
    assert "timed out after 0.5 s" in text_of(result)
    with anyio.fail_after(10):
        while todo.run("print(SAW_CANCEL)")[1] != "True\n":
            await asyncio.sleep(0.05)


async def test_a_client_that_gives_up_cancels_the_tool(todo) -> None:
    async with stdio_client(cache=None) as client:
        await wait_for_tool(client, "todo_patient")
        with anyio.move_on_after(1.0):
            await client.call_tool("todo_patient", {})
        with anyio.fail_after(10):
            while todo.run("print(CLIENT_CANCELLED)")[1] != "True\n":
                await asyncio.sleep(0.05)
        assert text_of(await client.call_tool("todo_later", {"x": 2})) == '{\n "double": 4\n}'


async def test_a_tool_runs_while_the_persons_cell_is_busy(todo) -> None:
    async with stdio_client(cache=None) as client:
        await wait_for_tool(client, "todo_later")
        todo.kc.execute("import time; time.sleep(6)")
        await asyncio.sleep(0.5)
        result = await client.call_tool("todo_later", {"x": 1})
        with pytest.raises(Empty):  # the person's cell has not finished yet
            todo.kc.get_shell_msg(timeout=0)
    assert result.structured_content == {"double": 2}
    todo.kc.get_shell_msg(timeout=30)


async def test_registering_and_removing_tools_announces_list_changed(todo) -> None:
    async with stdio_client(cache=None) as client:
        await wait_for_tool(client, "todo_add_task")
        async with client.listen(tools_list_changed=True) as events:
            todo.run(
                "import kaimon_kernel\n@kaimon_kernel.tool\ndef fresh(n: int) -> int:\n"
                "    return n + 1"
            )
            with anyio.fail_after(10):
                async for _event in events:
                    break
        tools = (await client.list_tools()).tools
        assert "todo_fresh" in [t.name for t in tools]
        assert (await client.call_tool("todo_fresh", {"n": 1})).structured_content == {"result": 2}
    assert "todo_fresh: " in todo.run("%kaimon tools")[1]


async def test_the_older_protocol_hears_list_changed_too(todo) -> None:
    heard = [anyio.Event()]

    async def on_message(message: Any) -> None:
        if "ToolListChanged" in type(message).__name__:
            heard[-1].set()

    async with stdio_client(mode="legacy", message_handler=on_message, cache=None) as client:
        await wait_for_tool(client, "todo_explode")
        todo.run("import kaimon_kernel\nkaimon_kernel.unregister('explode')")
        with anyio.fail_after(10):
            while True:  # the one sent when the session connected may come first: wait for ours
                await heard[-1].wait()
                heard.append(anyio.Event())
                names = [t.name for t in (await client.list_tools()).tools]
                if "todo_explode" not in names:
                    break
    assert "todo_explode" not in names
    assert "todo_add_task" in names


async def test_two_sessions_with_one_namespace_get_suffixes(make_person) -> None:
    code = (
        "import kaimon_kernel\ndef who() -> str:\n    return {me!r}\n"
        "kaimon_kernel.serve(namespace='dup', tools=[kaimon_kernel.GateTool('who', who)])"
    )
    make_person(serve=False).run(code.format(me="first"))
    make_person(serve=False).run(code.format(me="second"))
    async with stdio_client(cache=None) as client:
        await wait_for_tool(client, "dup_2_who")
        first = await client.call_tool("dup_who", {})
        second = await client.call_tool("dup_2_who", {})
    assert (text_of(first), text_of(second)) == ("first", "second")
