"""The "Python 3 (Kaimon)" kernelspec: ipykernel with the gate served at start."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager

__all__ = ["KERNEL_NAME", "get_kernel_dict", "install", "make_cmd"]

KERNEL_NAME = "python3-kaimon"


def make_cmd(executable: str | None = None) -> list[str]:
    return [
        executable or sys.executable,
        "-m",
        "ipykernel_launcher",
        "-f",
        "{connection_file}",
        "--ext=kaimon_kernel",
    ]


def get_kernel_dict(executable: str | None = None) -> dict[str, Any]:
    return {
        "argv": make_cmd(executable),
        "display_name": "Python 3 (Kaimon)",
        "language": "python",
        "env": {"KAIMON_AUTOSERVE": "1"},
        # A Jupyter Server run with KernelManager.transport_encryption=auto gives it CurveZMQ keys.
        "metadata": {"debugger": True, "supported_encryption": ["curve"]},
    }


def write_kernel_spec(path: Path, executable: str | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "kernel.json").write_text(json.dumps(get_kernel_dict(executable), indent=1))
    return path


def install(*, user: bool = False, prefix: str | None = None, name: str = KERNEL_NAME) -> str:
    """Install the kernelspec; returns where it went."""
    with tempfile.TemporaryDirectory() as tmp:
        source = write_kernel_spec(Path(tmp) / name)
        return KernelSpecManager().install_kernel_spec(
            str(source), kernel_name=name, user=user, prefix=prefix
        )
