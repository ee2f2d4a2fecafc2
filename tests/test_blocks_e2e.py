"""Blocks: every ex kept whole on disk, paged with read_block, exported as a notebook."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nbformat
import pytest
from conftest import stdio_client, text_of
from nbclient import NotebookClient

pytestmark = pytest.mark.anyio


async def test_history_and_read_block_page_through_a_multi_megabyte_output(person) -> None:
    code = "for i in range(100_000):\n    print(f'line {i:06d} ' + 'x' * 40)"
    async with stdio_client() as client:
        result = await client.call_tool("ex", {"code": code, "max_output": 1000})
        await client.call_tool("ex", {"code": "'second'"})
        history = await client.call_tool("history", {"limit": 5})
        rows = history.structured_content["blocks"]
        big = rows[1]
        assert rows[0]["code"] == "'second'"
        assert big["chars"] == 100_000 * 53
        assert f"read_block(block_id={big['block_id']!r}" in text_of(result)
        middle = await client.call_tool(
            "read_block", {"block_id": big["block_id"][:6], "offset": 53 * 50_000, "limit": 106}
        )
        last = await client.call_tool(
            "read_block", {"block_id": big["block_id"], "offset": 53 * 99_999, "limit": 4000}
        )
        missing = await client.call_tool("read_block", {"block_id": "nope"})
    body = text_of(middle).split("]\n", 1)[1]
    assert body == f"line 050000 {'x' * 40}\nline 050001 {'x' * 40}\n"
    assert middle.structured_content["total"] == 5_300_000
    assert "next: read_block" in text_of(middle)
    assert text_of(last).endswith(f"line 099999 {'x' * 40}\n")
    assert "next:" not in text_of(last)
    assert missing.is_error and "no block has id 'nope'" in text_of(missing)


async def test_export_notebook_writes_a_valid_notebook_that_reruns(
    make_person: Any, tmp_path: Path
) -> None:
    make_person("--label person", cwd=tmp_path)
    target = tmp_path / "agent.ipynb"
    async with stdio_client(cwd=tmp_path) as client:
        await client.call_tool("ex", {"code": "numbers = [1, 2, 3]"})
        await client.call_tool("ex", {"code": "print(sum(numbers))"})
        await client.call_tool("ex", {"code": "1 / 0"})
        exported = await client.call_tool("export_notebook", {"path": "agent.ipynb"})
        outside = await client.call_tool("export_notebook", {"path": "/etc/agent.ipynb"})
    assert not exported.is_error, text_of(exported)
    assert outside.is_error and "not in an allowed project" in text_of(outside)
    nb = nbformat.read(target, as_version=4)
    nbformat.validate(nb)
    assert [c.source for c in nb.cells] == ["numbers = [1, 2, 3]", "print(sum(numbers))", "1 / 0"]
    assert nb.cells[1].outputs[0].text == "6\n"
    assert nb.cells[2].outputs[-1].ename == "ZeroDivisionError"
    del nb.cells[2]  # re-run what succeeded
    NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    assert nb.cells[1].outputs[0].text == "6\n"


async def test_export_notebook_writes_in_the_sessions_folder_and_replaces_only_when_asked(
    make_person: Any, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    (project / "folder.ipynb").mkdir(parents=True)
    make_person("--label nb", cwd=project)
    calls = {
        "first": {"path": "agent.ipynb"},
        "again": {"path": "agent.ipynb"},
        "forced": {"path": "agent.ipynb", "overwrite": True},
        "nul": {"path": "a\0b.ipynb"},
        "long": {"path": "x" * 300 + ".ipynb"},
        "folder": {"path": "folder.ipynb"},
    }
    async with stdio_client(cwd=tmp_path) as client:  # the server's folder is not the session's
        await client.call_tool("ex", {"code": "x = 1"})
        results = {name: await client.call_tool("export_notebook", a) for name, a in calls.items()}
    text = {name: text_of(r) for name, r in results.items()}
    assert not results["first"].is_error and not results["forced"].is_error, text
    assert (project / "agent.ipynb").exists() and not (tmp_path / "agent.ipynb").exists()
    assert results["again"].is_error and "already exists; pass overwrite=true" in text["again"]
    assert "NUL byte" in text["nul"]
    assert "limited to 255" in text["long"]
    assert "is a folder" in text["folder"]
    assert all(results[n].is_error for n in ("nul", "long", "folder"))


async def test_code_that_cannot_be_recorded_is_not_run_and_the_agent_is_told(person) -> None:
    blocks = Path(os.environ["JUPYTER_DATA_DIR"]) / "kaimon" / "blocks"
    async with stdio_client() as client:
        await client.call_tool("ex", {"code": "counter = 0"})
        aside = blocks.with_name("blocks-aside")
        blocks.rename(aside)
        blocks.write_text("a file where the blocks folder was")
        try:
            tries = [await client.call_tool("ex", {"code": "counter += 1"}) for _ in range(3)]
        finally:
            blocks.unlink()
            aside.rename(blocks)
        after = await client.call_tool("ex", {"code": "counter"})
    for result in tries:
        assert result.is_error and "the code was not run" in text_of(result), text_of(result)
    assert text_of(after).strip() == "0"
