"""Streamable HTTP transport: loopback by default, bearer token required."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from typing import Any

from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

from .._errors import KaimonError

__all__ = ["BearerAuth", "check_bind", "is_loopback", "transport_security"]

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


def transport_security(host: str) -> TransportSecuritySettings:
    """Host and Origin checks (against DNS rebinding) for whatever address is bound.

    The SDK turns them on only for 127.0.0.1, localhost and ::1; any other loopback address
    (127.0.0.2, a name for ::1) would accept a page's request under any Host.
    """
    host = host.strip().removeprefix("[").removesuffix("]")
    if not is_loopback(host):
        # Beyond loopback the bearer token is required (check_bind), and a page that rebinds
        # a name to this address cannot send it; the names clients use are not known here.
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    names = {host}
    if host in ("localhost", "127.0.0.1", "::1"):
        names |= {"localhost", "127.0.0.1", "::1"} if host == "localhost" else {"localhost"}
    hosts = sorted(f"[{n}]" if ":" in n else n for n in names)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[*hosts, *(f"{h}:*" for h in hosts)],
        allowed_origins=[o for h in hosts for o in (f"http://{h}", f"http://{h}:*")],
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
