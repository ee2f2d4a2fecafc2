"""How a kernel kaimon starts is run: which Python (the project's own ``.venv`` when it can),
under which launcher prefix (a sandbox such as bubblewrap), and whether its ipykernel can
encrypt its channels (CurveZMQ)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .._errors import KaimonError

__all__ = ["kernel_prefix", "project_python", "supports_curve"]

PROBE_TIMEOUT = 60.0
#: bwrap options that give the kernel pids of its own: kaimon tells whether a kernel runs by its
#: pid, so under them a live kernel would look gone (or another process like it).
_HIDES_PID = ("--unshare-pid", "--unshare-all")
# An ipykernel that reads CurveZMQ keys from the connection file declares this trait (7.4+).
_CURVE_PROBE = (
    "import importlib.util, sys; o = importlib.util.find_spec('ipykernel.kernelapp').origin; "
    "sys.exit(0 if 'curve_secretkey' in open(o, encoding='utf-8').read() else 1)"
)
_curve: dict[str, bool] = {}


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


def kernel_prefix(launcher: Sequence[str], *, project: str, runtime_dir: str) -> list[str]:
    """The ``kernel_launcher`` setting as a command prefix: ``{project}`` and ``{runtime_dir}``
    filled in. A :class:`KaimonError` says why a launcher cannot work."""
    if not launcher:
        return []
    where = "kernel_launcher (kaimon.json or $KAIMON_KERNEL_LAUNCHER)"
    if shutil.which(launcher[0]) is None:
        raise KaimonError(f"{where}: {launcher[0]!r} is not an executable found on PATH")
    if Path(launcher[0]).name == "bwrap":
        hiding = [o for o in _HIDES_PID if o in launcher]
        if hiding:
            raise KaimonError(
                f"{where}: bwrap's {hiding[0]} gives the kernel a pid of its own, and kaimon "
                "tells whether a kernel runs by its pid; unshare the network, ipc, uts or "
                "cgroup namespaces one by one instead (--unshare-net ...)"
            )
    return [
        part.replace("{project}", project).replace("{runtime_dir}", runtime_dir)
        for part in launcher
    ]


def _reads_curve_keys() -> bool:
    spec = importlib.util.find_spec("ipykernel.kernelapp")
    if spec is None or spec.origin is None:
        return False
    try:
        return "curve_secretkey" in Path(spec.origin).read_text("utf-8")
    except OSError:
        return False


async def supports_curve(python: str) -> bool:
    """Whether ``python``'s ipykernel reads CurveZMQ keys from its connection file (an older
    one would listen unencrypted, and a client with keys would then hear nothing). Probed once
    per interpreter, without importing IPython."""
    if python in _curve:
        return _curve[python]
    if python == sys.executable:
        found = _reads_curve_keys()
    else:
        try:
            probe = await asyncio.create_subprocess_exec(
                python,
                "-c",
                _CURVE_PROBE,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError:
            return False  # the launch itself will say why this Python cannot run
        try:
            found = await asyncio.wait_for(probe.wait(), PROBE_TIMEOUT) == 0
        except asyncio.TimeoutError:
            found = False
        finally:
            if probe.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    probe.kill()
                await probe.wait()
    _curve[python] = found
    return found
