"""Which Python an agent-started kernel runs: the project's own ``.venv`` when it can."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path

__all__ = ["project_python"]

PROBE_TIMEOUT = 60.0


async def project_python(project: Path) -> tuple[str | None, str]:
    """The project's own interpreter when its ``.venv`` can run a kaimon kernel, and why.

    Runs that interpreter (which runs the project's code: ``.pth`` files, sitecustomize), so
    call it only for a project the person allowed. It does not block the event loop.
    """
    for candidate in (
        project / ".venv" / "bin" / "python",
        project / ".venv" / "Scripts" / "python.exe",
    ):
        if not candidate.exists():
            continue
        try:
            probe = await asyncio.create_subprocess_exec(
                str(candidate),
                "-c",
                "import ipykernel, kaimon_kernel",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError as err:
            return None, f"the project's .venv ({candidate}) could not be run: {err}"
        try:
            code = await asyncio.wait_for(probe.wait(), PROBE_TIMEOUT)
        except asyncio.TimeoutError:
            return None, (
                f"the project's .venv ({candidate}) did not answer within {PROBE_TIMEOUT:g} s"
            )
        finally:
            if probe.returncode is None:  # timed out, or the call was cancelled
                with contextlib.suppress(ProcessLookupError):
                    probe.kill()
                await probe.wait()
        if code == 0:
            return str(candidate), f"the project's .venv ({candidate})"
        return None, (
            f"the project's .venv ({candidate}) lacks ipykernel or kaimon-kernel "
            "(`pip install kaimon-kernel` there to use it)"
        )
    return None, "no project .venv"
