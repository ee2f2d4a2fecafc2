"""Exceptions raised by kaimon. The MCP layer maps each to a tool error in one place.

KaimonError
├── ProtocolMismatch                gate and server speak different protocol versions
├── SessionNotFound(LookupError)    no session matches what the agent named
├── AmbiguousSession(LookupError)   several sessions and none named
├── JobNotFound(LookupError)        no background job has that id
├── NotAllowed(PermissionError)     the person's settings forbid it (allow_restart, projects)
├── InvalidArgument(ValueError)     an argument the tool cannot use (a path, a name)
├── StoreError                      the job/block store failed (the message says what ran)
├── DeadKernelError(RuntimeError)   the kernel died or stopped answering
└── KernelTimeout(TimeoutError)     a kernel did not answer before a deadline
"""

from __future__ import annotations

__all__ = [
    "AmbiguousSession",
    "DeadKernelError",
    "InvalidArgument",
    "JobNotFound",
    "KaimonError",
    "KernelTimeout",
    "NotAllowed",
    "ProtocolMismatch",
    "SessionNotFound",
    "StoreError",
]


class KaimonError(Exception):
    """Base class of every kaimon error."""


class ProtocolMismatch(KaimonError):
    """The gate and the server were built for different protocol versions."""


class SessionNotFound(KaimonError, LookupError):
    """No served session matches the given key, label or namespace."""


class AmbiguousSession(KaimonError, LookupError):
    """Several sessions are served and the call did not say which one."""


class JobNotFound(KaimonError, LookupError):
    """No background job matches the given eval id."""


class NotAllowed(KaimonError, PermissionError):
    """The person's settings forbid what was asked (restarts, directories)."""


class InvalidArgument(KaimonError, ValueError):
    """An argument the tool cannot use; the message says what to give instead."""


class StoreError(KaimonError):
    """The job or block store could not read or write."""


class DeadKernelError(KaimonError, RuntimeError):
    """The kernel behind a session died."""


class KernelTimeout(KaimonError, TimeoutError):
    """A kernel did not answer before a deadline."""
