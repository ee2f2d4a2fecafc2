"""The activity log: every server records its tool calls in the shared store."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from conftest import PersonKernel, stdio_client, wait_until

pytestmark = pytest.mark.anyio


def store() -> Path:
    return Path(os.environ["JUPYTER_DATA_DIR"]) / "kaimon" / "jobs.sqlite3"


def activity_rows() -> list[dict]:
    with sqlite3.connect(store()) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM activity ORDER BY id")]


async def test_an_ex_is_recorded_with_client_server_block_and_outcome(
    person: PersonKernel,
) -> None:
    async with stdio_client() as client:
        await client.call_tool("ex", {"code": "print('hello activity')"})
        await client.call_tool("ex", {"code": "1/0"})
        await client.call_tool("list_sessions", {})
        seen = {r["id"] for r in activity_rows()}

        def done() -> list[dict]:
            rows = [r for r in activity_rows() if r["status"] != "running"]
            return rows if len(rows) >= 3 else []

        rows = wait_until(done, what="three finished calls in the activity log")
    assert seen
    ok, failed, listed = rows[-3:]
    assert ok["tool"] == "ex" and ok["status"] == "ok"
    assert json.loads(ok["arguments"]) == {"code": "print('hello activity')"}
    assert ok["client"] == "mcp"  # the SDK client's clientInfo name
    assert ok["transport"] == "stdio" and ok["server_pid"] > 0
    assert ok["session_key"] == person.key and ok["block_id"]
    assert ok["duration"] > 0
    assert failed["status"] == "error" and failed["block_id"]
    assert listed["tool"] == "list_sessions" and listed["block_id"] is None


async def test_long_arguments_are_shortened() -> None:
    from kaimon_kernel.server._activity import ARGUMENTS_MAX, shorten_arguments

    text = shorten_arguments({"code": "x" * 10_000})
    assert len(text) == ARGUMENTS_MAX and text.endswith("…")


async def test_a_server_writes_its_log_to_a_file_the_dashboard_reads(
    person: PersonKernel,
) -> None:
    logs = Path(os.environ["JUPYTER_DATA_DIR"]) / "kaimon" / "logs"
    async with stdio_client("--log-level", "INFO") as client:
        await client.call_tool("ex", {"code": "1"})
        files = wait_until(lambda: list(logs.glob("server-*.log")), what="a log file")
    text = "".join(f.read_text() for f in files)
    assert " stdio " in text


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_call_over_http_names_its_client_in_either_protocol(
    person: PersonKernel, mode: str
) -> None:
    import httpx2
    from conftest import HttpServer
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.types import Implementation

    token = "activity-token-" + "x" * 20
    server = HttpServer(env={"KAIMON_TOKEN": token})
    name = f"agent-{mode}"
    try:
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
            Client(
                streamable_http_client(server.url, http_client=http),
                mode=mode,
                client_info=Implementation(name=name, version="1.0"),
            ) as client,
        ):
            await client.call_tool("ex", {"code": "'over http'"})

            def recorded() -> list[dict]:
                return [r for r in activity_rows() if r["client"] == name and r["duration"]]

            (row,) = wait_until(recorded, what="the call in the activity log")
    finally:
        server.stop()
    assert row["transport"] == "http" and row["server_pid"] == server.proc.pid
    assert row["session_key"] == person.key and row["status"] == "ok"
