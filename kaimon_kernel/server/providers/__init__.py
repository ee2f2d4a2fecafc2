"""Where kernels live: the provider interface and the local provider."""

from ._base import KernelProvider, LaunchRequest
from ._local import LocalProvider, ProcessIdentity, pid_alive, reap_orphans

__all__ = [
    "KernelProvider",
    "LaunchRequest",
    "LocalProvider",
    "ProcessIdentity",
    "pid_alive",
    "reap_orphans",
]
