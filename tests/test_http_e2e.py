"""The agent's side over streamable HTTP: token required, loopback by default."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator

import httpx2
import pytest
from conftest import HttpServer, PersonKernel, free_port, server_args, text_of, wait_until
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.transport_security import TransportSecurityMiddleware

from kaimon_kernel.server._http import transport_security

pytestmark = pytest.mark.anyio

TOKEN = "test-token-" + "x" * 20


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    server = HttpServer(env={"KAIMON_TOKEN": TOKEN})
    yield server
    server.stop()


def authed(token: str | None) -> httpx2.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120))


async def test_ex_over_http_with_the_token(person: PersonKernel, http_server: HttpServer) -> None:
    person.run("z = 'from the person'")
    async with (
        authed(TOKEN) as http,
        Client(streamable_http_client(http_server.url, http_client=http)) as client,
    ):
        result = await client.call_tool("ex", {"code": "z.upper()"})
        listing = await client.call_tool("list_sessions", {})
    assert text_of(result).strip() == "'FROM THE PERSON'"
    assert listing.structured_content["sessions"][0]["key"] == person.key


async def test_the_older_protocol_version_works_too(person: PersonKernel, http_server) -> None:
    async with (
        authed(TOKEN) as http,
        Client(streamable_http_client(http_server.url, http_client=http), mode="legacy") as client,
    ):
        result = await client.call_tool("ex", {"code": "2 ** 10"})
    assert text_of(result).strip() == "1024"


@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_requests_without_the_right_token_get_401(http_server: HttpServer, token) -> None:
    async with authed(token) as http:
        response = await http.post(
            http_server.url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
            headers={"Accept": "application/json, text/event-stream"},
        )
    assert response.status_code == 401
    assert "kaimon token" in response.json()["message"]
    assert response.headers["www-authenticate"].startswith("Bearer")


def kaimon(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kaimon_kernel", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_binding_beyond_loopback_without_a_token_is_refused() -> None:
    done = kaimon("serve", "--http", "--host", "0.0.0.0", "--no-auth")
    assert done.returncode == 2
    assert "refusing to serve HTTP on 0.0.0.0 without a token" in done.stderr


def test_the_token_is_generated_once_and_stored_private() -> None:
    first = kaimon("token").stdout.strip()
    second = kaimon("token").stdout.strip()
    assert first == second and len(first) >= 32
    path = kaimon("token", "--path").stdout.strip()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert kaimon("token", env={"KAIMON_TOKEN": "from-env"}).stdout.strip() == "from-env"


@pytest.fixture
def other_loopback() -> Iterator[str]:
    """A server with --no-auth on 127.0.0.2; yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            *server_args("--http", "--host", "127.0.0.2", "--port", str(port), "--no-auth"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode())  # type: ignore[union-attr]
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.2", port)) == 0

    wait_until(listening, what="the server on 127.0.0.2")
    yield f"http://127.0.0.2:{port}/mcp"
    proc.terminate()
    proc.wait(15)


async def test_a_wrong_host_header_is_refused_on_any_loopback_address(other_loopback) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    accept = {"Accept": "application/json, text/event-stream"}
    async with authed(None) as http:
        rebound = await http.post(
            other_loopback, json=body, headers={**accept, "Host": "evil.test"}
        )
        foreign = await http.post(
            other_loopback, json=body, headers={**accept, "Origin": "http://evil.test"}
        )
        honest = await http.post(other_loopback, json=body, headers=accept)
    assert rebound.status_code == 421
    assert foreign.status_code == 403
    assert honest.status_code not in (403, 421)


@pytest.mark.parametrize(
    ("host", "allowed", "refused"),
    [
        ("127.0.0.1", ["127.0.0.1:2828", "localhost:2828"], ["127.0.0.2:2828", "evil:2828"]),
        ("127.0.0.2", ["127.0.0.2:2828"], ["localhost:2828", "127.0.0.1:2828"]),
        ("::1", ["[::1]:2828", "localhost:2828"], ["127.0.0.1:2828"]),
        ("localhost", ["localhost:1", "127.0.0.1:1", "[::1]:1"], ["evil:1"]),
    ],
)
def test_host_checks_fit_the_address_bound(host: str, allowed: list[str], refused: list[str]):
    settings = transport_security(host)
    middleware = TransportSecurityMiddleware(settings)
    assert settings.enable_dns_rebinding_protection
    assert all(middleware._validate_host(h) for h in allowed)
    assert not any(middleware._validate_host(h) for h in refused)


def test_beyond_loopback_the_token_guards_instead_of_host_checks() -> None:
    assert not transport_security("0.0.0.0").enable_dns_rebinding_protection
