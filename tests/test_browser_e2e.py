"""The person's side in a real JupyterLab, driven by headless Chromium through Playwright.

A notebook runs ``%kaimon serve``; an agent runs code through MCP; the serve cell's live view
in the page shows the agent's code and output while it runs, then the finished block.
Skipped only where Debian's Chromium is absent (``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import JupyterServer, stdio_client, text_of

pytestmark = pytest.mark.anyio

CHROMIUM = os.environ.get("KAIMON_TEST_CHROMIUM") or shutil.which("chromium") or ""
if not CHROMIUM:
    pytest.skip(
        "Chromium is not installed (apt-get install chromium)",
        allow_module_level=True,
    )

from playwright.async_api import Page, async_playwright  # noqa: E402

# What this machine's closed network needs: no sandbox as root, no background connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
DEADLINE_MS = 60_000


def notebook(path: Path, *sources: str) -> None:
    cells = [
        {"cell_type": "code", "metadata": {}, "source": s, "outputs": [], "execution_count": None}
        for s in sources
    ]
    path.write_text(
        json.dumps(
            {
                "cells": cells,
                "metadata": {
                    "kernelspec": {
                        "name": "python3",
                        "display_name": "Python 3",
                        "language": "python",
                    }
                },
                "nbformat": 4,
                "nbformat_minor": 5,
            }
        )
    )


class Lab:
    """One JupyterLab page on ``shared.ipynb``, driven like the person does it."""

    def __init__(self, page: Page, server: JupyterServer, shots: Path) -> None:
        self.page, self.server, self.shots = page, server, shots

    async def open(self) -> None:
        url = f"http://127.0.0.1:{self.server.port}/lab/tree/shared.ipynb?token={self.server.token}"
        await self.page.goto(url)
        # the kernel must be up before a cell runs: the status bar says so
        await self.page.get_by_text("Python 3 (ipykernel) | Idle").wait_for()

    def cell(self, index: int) -> Any:
        return self.page.locator(".jp-Notebook .jp-CodeCell").nth(index)

    async def run(self, index: int) -> None:
        """Click into the cell, Shift+Enter, and wait until its prompt shows it ran."""
        await self.cell(index).locator(".jp-InputArea-editor").click()
        await self.page.keyboard.press("Shift+Enter")
        await (
            self.cell(index).locator(".jp-InputPrompt", has_text=re.compile(r"\[\d+\]")).wait_for()
        )

    def outputs(self, index: int) -> Any:
        return self.cell(index).locator(".jp-OutputArea-output")

    async def wait_for(self, index: int, *needles: str) -> str:
        """Poll the cell's outputs in the page until they show every needle."""
        text = ""
        with anyio.move_on_after(DEADLINE_MS / 1000):
            while True:
                text = "\n".join(await self.outputs(index).all_inner_texts())
                if all(n in text for n in needles):
                    return text
                await anyio.sleep(0.1)
        shot = self.shots / "live-view-failure.png"
        await self.page.screenshot(path=str(shot))
        raise AssertionError(
            f"cell {index} never showed {needles!r} (see {shot}); it shows:\n{text}"
        )


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    notebook(
        tmp_path / "shared.ipynb",
        "%load_ext kaimon_kernel\n%kaimon serve --label lab",
        "%kaimon mirror on",
    )
    server = JupyterServer(tmp_path, app="jupyterlab")
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(DEADLINE_MS)
                lab = Lab(page, server, tmp_path)
                await lab.open()
                yield lab
            finally:
                await browser.close()
    finally:
        server.stop()


async def agent_runs_while(index: int, lab: Lab) -> str:
    """The agent runs code through MCP; returns what cell ``index`` showed while it ran."""
    # the printed markers are computed, so seeing them in the page means output, not code
    code = (
        "import time\nprint('marker', 6 * 7, flush=True)\ntime.sleep(4)\nprint('finished', 2 * 3)"
    )
    result: dict[str, Any] = {}
    async with stdio_client("--no-auto-start") as client:

        async def agent() -> None:
            result["ex"] = await client.call_tool("ex", {"code": code, "session": "lab"})

        async with anyio.create_task_group() as tg:
            tg.start_soon(agent)
            live = await lab.wait_for(index, "the agent is running", "marker 42")
    assert not result["ex"].is_error, text_of(result["ex"])
    assert "marker 42" in text_of(result["ex"])
    return live


async def test_the_serve_cell_shows_the_agents_code_and_output_live(lab: Lab) -> None:
    await lab.run(0)
    await lab.wait_for(0, "serving session", "idle: the agent runs nothing right now")
    shown = await lab.outputs(0).count()

    live = await agent_runs_while(0, lab)
    # while the agent's code ran, the finished serve cell showed it and its output so far
    assert "time.sleep(4)" in live
    assert "finished 6" not in live

    done = await lab.wait_for(0, "recent:", "idle: the agent runs nothing right now")
    assert "import time" in done.split("recent:", 1)[1]
    assert "the agent is running" not in done
    # the agent's output went to the agent: no new outputs in the person's cell
    assert "finished 6" not in done
    assert await lab.outputs(0).count() == shown


async def test_after_a_page_reload_mirror_on_brings_the_view_back(lab: Lab) -> None:
    await lab.run(0)
    await lab.wait_for(0, "serving session", "idle")
    await lab.page.reload()
    await lab.page.get_by_text("Python 3 (ipykernel) | Idle").wait_for()
    await lab.run(1)
    await lab.wait_for(1, "live view on", "kaimon: this kernel is shared with agents")

    live = await agent_runs_while(1, lab)
    assert "time.sleep(4)" in live
    await lab.wait_for(1, "recent:", "idle: the agent runs nothing right now")
