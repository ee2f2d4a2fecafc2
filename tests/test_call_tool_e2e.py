"""``kaimon_kernel.call_tool``: kernels and extensions calling the server's tools."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import eventually, stdio_client, text_of

pytestmark = pytest.mark.anyio

DEADLINE = 60.0

PERSON_TOOL = """\
import kaimon_kernel
def double(x: int) -> int:
    return 2 * x
kaimon_kernel.serve(namespace='lab', label='lab', tools=[kaimon_kernel.GateTool('double', double)])
"""

RELAY = """\
import kaimon_kernel
from kaimon_kernel import GateTool

def run(code: str, session: str) -> str:
    \"\"\"Run code in another session, through kaimon.\"\"\"
    return kaimon_kernel.call_tool("ex", {"code": code, "session": session})

def double(x: int) -> int:
    \"\"\"The person's lab_double, called from here.\"\"\"
    return kaimon_kernel.call_tool("lab_double", {"x": x})

def create_tools():
    return [GateTool("run", run), GateTool("double", double)]
"""


until = functools.partial(eventually, timeout=DEADLINE)


async def listed(client: Any, name: str) -> bool:
    return name in {t.name for t in (await client.list_tools()).tools}


async def test_a_kernel_calls_ex_on_another_session_and_a_gate_tool(make_person: Any) -> None:
    lab = make_person(serve=False)
    lab.run(PERSON_TOOL)
    me = make_person("--label me")
    async with stdio_client("--no-auto-start") as client:
        await until(lambda: listed(client, "lab_double"), "lab_double")
        await until(
            lambda: (
                "server_calls"
                in me.run(
                    "from kaimon_kernel.gate import current_gate\n"
                    "print([sorted(l.features) for l in current_gate().servers.values()])"
                )[1]
            ),
            "the server to connect to the calling kernel",
        )
        status, out = me.run(
            "import kaimon_kernel\n"
            "print(repr(kaimon_kernel.call_tool('ex', {'code': '6 * 7', 'session': 'lab'})))\n"
            "print(kaimon_kernel.call_tool('lab_double', {'x': 21}))\n"
            "print('ex' in [t.name for t in kaimon_kernel.server_tools()])"
        )
        assert status == "ok", out
        assert out.splitlines() == ["'42\\n'", "42", "True"]

        status, out = me.run(
            "try:\n"
            "    kaimon_kernel.call_tool('ex', {'code': '1', 'session': 'me'})\n"
            "except kaimon_kernel.ToolCallError as err:\n"
            "    print('refused:', err)"
        )
        assert "refused:" in out and "would wait on itself" in out, out
        status, out = me.run(
            "try:\n"
            "    kaimon_kernel.call_tool('lab_nope', {})\n"
            "except kaimon_kernel.ToolCallError as err:\n"
            "    print('error:', err)"
        )
        assert "error:" in out and "lab_nope" in out, out
        status, out = me.run(
            "import time\nt = time.monotonic()\n"
            "try:\n"
            "    kaimon_kernel.call_tool('ex', {'code': 'import time; time.sleep(30)', "
            "'session': 'lab'}, timeout=1)\n"
            "except kaimon_kernel.ToolCallError as err:\n"
            "    print('timeout:', err, round(time.monotonic() - t))"
        )
        assert "timeout: ex did not finish within 1 s 1" in out, out


async def test_an_extension_tool_calls_ex_and_a_persons_gate_tool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_person: Any
) -> None:
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR"):
        (tmp_path / name.lower()).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    root = tmp_path / "relay"
    root.mkdir()
    (root / "kaimon.toml").write_text(
        '[extension]\nnamespace = "relay"\nmodule = "relay_ext"\ntools_function = "create_tools"\n'
    )
    (root / "relay_ext.py").write_text(textwrap.dedent(RELAY))
    done = subprocess.run(
        [sys.executable, "-m", "kaimon_kernel", "extensions", "add", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr
    lab = make_person(serve=False)
    lab.run(PERSON_TOOL + "secret = 'from the lab'\n")
    async with stdio_client("--no-auto-start") as client:
        await until(lambda: listed(client, "relay_run"), "the extension's tools")
        await until(lambda: listed(client, "lab_double"), "the person's tool")
        result = await client.call_tool("relay_run", {"code": "secret", "session": "lab"})
        assert text_of(result) == "'from the lab'\n", text_of(result)
        result = await client.call_tool("relay_double", {"x": 4})
        assert not result.is_error, text_of(result)
        assert result.structured_content == {"result": 8}
