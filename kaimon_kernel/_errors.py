"""Exceptions raised by kaimon.

KaimonError
├── ProtocolMismatch          gate and server speak different protocol versions
├── SessionNotFound(LookupError)   no session matches what the agent named
├── AmbiguousSession(LookupError)  several sessions and none named
├── DeadKernelError(RuntimeError)  the kernel died or stopped answering
├── KernelTimeout(TimeoutError)    a kernel did not answer before a deadline
└── StoreError                the job/block store (SQLite, block files) failed or is damaged
"""

from __future__ import annotations

__all__ = [
    "AmbiguousSession",
    "DeadKernelError",
    "KaimonError",
    "KernelTimeout",
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


class DeadKernelError(KaimonError, RuntimeError):
    """The kernel behind a session died."""


class KernelTimeout(KaimonError, TimeoutError):
    """A kernel did not answer before a deadline."""


class StoreError(KaimonError):
    """The store of jobs and blocks could not do what was asked (the message says why and
    what to do); the caller must not act as if it had been recorded."""
