"""The in-kernel half of kaimon."""

from ._gate import Gate, current_gate, serve, stop
from ._magics import KaimonMagics, autoserve_from_env

__all__ = ["Gate", "KaimonMagics", "autoserve_from_env", "current_gate", "serve", "stop"]
