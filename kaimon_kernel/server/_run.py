"""Running ``kaimon serve``: the server core plus one transport, with clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from ._core import Kaimon, ServerOptions
from ._http import BearerAuth, check_bind
from ._mcp import build_mcp

__all__ = ["run_http", "run_stdio", "serve_forever"]

logger = logging.getLogger(__name__)


async def run_stdio(kaimon: Kaimon) -> None:
    mcp = build_mcp(kaimon)
    await mcp.run_stdio_async()


async def run_http(kaimon: Kaimon, host: str, port: int, token: str | None) -> None:
    import uvicorn

    check_bind(host, token)
    mcp = build_mcp(kaimon)
    app = mcp.streamable_http_app(host=host)
    asgi = BearerAuth(app, token) if token else app
    config = uvicorn.Config(
        asgi, host=host, port=port, log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    print(f"kaimon: MCP over streamable HTTP at http://{host}:{port}/mcp", file=sys.stderr)
    await server.serve()


def serve_forever(
    options: ServerOptions,
    *,
    http: bool = False,
    host: str = "127.0.0.1",
    port: int = 2828,
    token: str | None = None,
) -> None:
    """Run the server until stdin closes (stdio), or until SIGINT/SIGTERM."""

    async def main() -> None:
        kaimon = Kaimon(options)
        async with kaimon.running():
            task = asyncio.create_task(
                run_http(kaimon, host, port, token) if http else run_stdio(kaimon)
            )
            loop = asyncio.get_running_loop()
            if not http:  # uvicorn handles its own signals
                for sig in (signal.SIGINT, signal.SIGTERM):
                    with contextlib.suppress(NotImplementedError):
                        loop.add_signal_handler(sig, task.cancel)
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())
