"""Streamable HTTP transport: loopback by default, bearer token required."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from .._errors import KaimonError

__all__ = ["BearerAuth", "check_bind", "is_loopback"]

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose kernels beyond this machine without a token."""
    if not token and not is_loopback(host):
        raise KaimonError(
            f"refusing to serve HTTP on {host} without a token: anyone who reaches it could "
            "run code in your kernels. Drop --no-auth, or bind 127.0.0.1."
        )


class BearerAuth:
    """ASGI middleware: every HTTP request needs ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if hmac.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        reason = "missing" if not given else "wrong"
        body = json.dumps(
            {
                "error": "unauthorized",
                "message": f"kaimon needs 'Authorization: Bearer <token>' ({reason} token); "
                "`kaimon token` prints it",
            }
        ).encode()
        headers: list[Any] = [
            (b"content-type", b"application/json"),
            (b"www-authenticate", b'Bearer realm="kaimon"'),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})
