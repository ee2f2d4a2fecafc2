"""Where kernels live: the provider interface, this machine, and Jupyter Servers."""

from ._base import KernelProvider, LaunchRequest
from ._jupyter import JupyterServerProvider
from ._local import LocalProvider, ProcessIdentity, pid_alive, reap_orphans

__all__ = [
    "JupyterServerProvider",
    "KernelProvider",
    "LaunchRequest",
    "LocalProvider",
    "ProcessIdentity",
    "pid_alive",
    "reap_orphans",
]
