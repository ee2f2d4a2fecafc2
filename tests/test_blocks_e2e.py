"""Blocks: every ex kept whole on disk, paged with read_block, exported as a notebook."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from conftest import PersonKernel, stdio_client, text_of
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
    person: PersonKernel, tmp_path: Path
) -> None:
    target = tmp_path / "agent.ipynb"
    async with stdio_client(cwd=tmp_path) as client:
        await client.call_tool("ex", {"code": "numbers = [1, 2, 3]"})
        await client.call_tool("ex", {"code": "print(sum(numbers))"})
        await client.call_tool("ex", {"code": "1 / 0"})
        exported = await client.call_tool("export_notebook", {"path": "agent.ipynb"})
        outside = await client.call_tool("export_notebook", {"path": "/etc/agent.ipynb"})
    assert not exported.is_error, text_of(exported)
    assert outside.is_error and "outside the allowed projects" in text_of(outside)
    nb = nbformat.read(target, as_version=4)
    nbformat.validate(nb)
    assert [c.source for c in nb.cells] == ["numbers = [1, 2, 3]", "print(sum(numbers))", "1 / 0"]
    assert nb.cells[1].outputs[0].text == "6\n"
    assert nb.cells[2].outputs[-1].ename == "ZeroDivisionError"
    del nb.cells[2]  # re-run what succeeded
    NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    assert nb.cells[1].outputs[0].text == "6\n"
