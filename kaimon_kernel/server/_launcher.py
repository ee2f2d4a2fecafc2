"""Which Python an agent-started kernel runs: the project's own ``.venv`` when it can."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["project_python"]


def project_python(project: Path) -> tuple[str | None, str]:
    """The project's own interpreter when its ``.venv`` can run a kaimon kernel, and why."""
    for candidate in (
        project / ".venv" / "bin" / "python",
        project / ".venv" / "Scripts" / "python.exe",
    ):
        if not candidate.exists():
            continue
        try:
            probe = subprocess.run(
                [str(candidate), "-c", "import ipykernel, kaimon_kernel"],
                capture_output=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            return None, f"the project's .venv ({candidate}) could not be run: {err}"
        if probe.returncode == 0:
            return str(candidate), f"the project's .venv ({candidate})"
        return None, (
            f"the project's .venv ({candidate}) lacks ipykernel or kaimon-kernel "
            "(`pip install kaimon-kernel` there to use it)"
        )
    return None, "no project .venv"
