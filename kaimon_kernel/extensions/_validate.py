"""``kaimon extensions add`` checks an extension before registering it: the manifest here,
then its code in its own interpreter (a subprocess: importing it runs the person's code, and
the interpreter may not be ours)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from ._host import CHECK_PREFIX
from ._manifest import Manifest, ManifestError, load_manifest

__all__ = ["CHECK_TIMEOUT", "validate"]

CHECK_TIMEOUT = 120.0


def validate(project: str | Path) -> tuple[Manifest, list[dict[str, Any]]]:
    """The manifest and its tools' specs; raises :class:`ManifestError` saying which field is
    at fault and what to do."""
    manifest = load_manifest(project)
    python = manifest.interpreter()
    if not Path(python).exists():
        raise ManifestError(
            f"python: the interpreter {python} does not exist; fix `python` in the manifest "
            "(relative paths are relative to the project), or remove it to use the project's "
            ".venv or kaimon's own Python"
        )
    env = {**os.environ, **manifest.environment()}
    try:
        done = subprocess.run(
            [python, "-m", "kaimon_kernel.extensions._host", "check", str(manifest.project)],
            cwd=manifest.project,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise ManifestError(
            f"module: importing {manifest.module} and calling {manifest.tools_function}() did "
            f"not finish within {CHECK_TIMEOUT:g} s; make the import and tools_function quick"
        ) from None
    except OSError as err:
        raise ManifestError(f"python: cannot run {python}: {err.strerror or err}") from None
    answer = next(
        (line for line in reversed(done.stdout.splitlines()) if line.startswith(CHECK_PREFIX)),
        None,
    )
    if answer is None:
        stderr = done.stderr.strip()
        if "kaimon_kernel" in stderr or "ModuleNotFoundError" in stderr or "ImportError" in stderr:
            last = stderr.splitlines()[-1] if stderr else ""
            raise ManifestError(
                f"python: {python} cannot run kaimon-kernel ({last}); install it there "
                f"(`{python} -m pip install kaimon-kernel`), or point `python` in the manifest "
                "at an interpreter that has it"
            )
        raise ManifestError(
            f"python: checking the extension in {python} failed (exit code {done.returncode}):"
            f"\n{stderr[-3000:]}"
        )
    result = json.loads(answer.removeprefix(CHECK_PREFIX))
    if "error" in result:
        raise ManifestError(f"{result['field']}: {result['error']}")
    return manifest, result["tools"]
