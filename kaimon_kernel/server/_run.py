"""Running ``kaimon serve``: the server core plus one transport, with clean shutdown.

SIGINT, SIGTERM and SIGHUP all end the server the same way: the transport stops, then
:meth:`Kaimon.running` cleans up (kernels this server started, their session, owner, resume
and connection files). For HTTP the port is bound before anything is announced or started,
so a port in use is an error that names it, not a server that says it serves and then dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .._errors import KaimonError
from .._settings import Settings
from ..extensions import supervising
from ._activity import ActivityRecorder
from ._core import Kaimon, ServerOptions
from ._follow_config import ConfigFollower
from ._http import BearerAuth, check_bind, transport_security
from ._jupyter_api import JupyterAPI
from ._mcp import build_mcp
from ._sessions import Registry
from .providers import JupyterServerProvider, KernelProvider, LocalProvider

__all__ = ["bind", "jupyter_providers", "run_http", "run_stdio", "serve_forever", "server_options"]

logger = logging.getLogger(__name__)

STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
# How long open HTTP streams (a client's GET stream) may hold up the shutdown.
GRACEFUL_SHUTDOWN = 3.0
BACKLOG = 2048
# How long a cancelled stdio transport may take; its stdin reader thread never does.
STDIO_STOP = 0.5


def server_options(settings: Settings) -> ServerOptions:
    """The core's options from the validated settings."""
    return ServerOptions(
        auto_start=settings.auto_start,
        promote_after=settings.promote_after,
        cancel_grace=settings.cancel_grace,
        cwd=str(settings.cwd),
        extension_backoff=tuple(settings.extension_backoff),
    )


def jupyter_providers(settings: Settings) -> list[KernelProvider]:
    """A provider for every Jupyter Server in the settings (tokens read now)."""
    providers: list[KernelProvider] = []
    for server in settings.jupyter:
        token, source = server.token()
        api = JupyterAPI(server.url, token, token_source=source)
        providers.append(JupyterServerProvider(api, projects=server.projects))
    return providers


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for ``host:port`` (every address the name has), or a KaimonError
    that names the port."""
    host = host.strip().removeprefix("[").removesuffix("]")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise KaimonError(f"cannot serve HTTP on {host!r}: {err.strerror}") from None
    sockets: list[socket.socket] = []
    failure: OSError | None = None
    for family, kind, proto, _, address in dict.fromkeys(
        (i[0], i[1], i[2], "", i[4]) for i in infos
    ):
        sock = socket.socket(family, kind, proto)
        try:
            if os.name != "nt":  # on Windows it would let a second server share the port
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
        except OSError as err:
            sock.close()
            if err.errno == errno.EADDRINUSE:
                for s in sockets:
                    s.close()
                raise KaimonError(
                    f"port {port} on {host} is already in use (another `kaimon serve "
                    f"--http`?): stop that server, or pick another port with --port"
                ) from None
            failure = err
            continue
        sockets.append(sock)
    if not sockets:
        why = failure.strerror if failure is not None else "no address"
        raise KaimonError(f"cannot serve HTTP on {host} port {port}: {why}")
    return sockets


async def run_stdio(kaimon: Kaimon, settings: Settings | None = None) -> None:
    mcp = build_mcp(kaimon, settings)
    await mcp.run_stdio_async()


def _uvicorn_server(config: Any) -> Any:
    """uvicorn, minus its signal handling: serve_forever owns the signals (uvicorn re-raises
    SIGTERM once it has stopped, which killed the process before the cleanup ran). Imported
    here: a stdio server never needs uvicorn."""
    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return _Server(config)


async def run_http(
    kaimon: Kaimon,
    host: str,
    port: int,
    token: str | None,
    *,
    sockets: list[socket.socket] | None = None,
    stop: asyncio.Event | None = None,
    settings: Settings | None = None,
) -> None:
    """Serve streamable HTTP until ``stop`` is set (binds ``host:port`` unless ``sockets``)."""
    check_bind(host, token)
    if sockets is None:
        sockets = bind(host, port)
    import uvicorn

    mcp = build_mcp(kaimon, settings)
    app = mcp.streamable_http_app(host=host, transport_security=transport_security(host))
    asgi = BearerAuth(app, token) if token else app
    config = uvicorn.Config(
        asgi,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
    )
    server = _uvicorn_server(config)
    shown = f"[{host}]" if ":" in host else host
    print(f"kaimon: MCP over streamable HTTP at http://{shown}:{port}/mcp", file=sys.stderr)

    async def stop_when_asked() -> None:
        assert stop is not None
        await stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(stop_when_asked()) if stop is not None else None
    try:
        await server.serve(sockets=sockets)
    finally:
        if watcher is not None:
            watcher.cancel()
        for sock in sockets:
            sock.close()


def _tool_names(kaimon: Kaimon) -> Any:
    """A session's gate tools as agents see them (for the activity log's readers)."""

    def names(key: str) -> list[str] | None:
        if key not in kaimon.registry.sessions:
            return None
        return sorted(n for n, ref in kaimon.gate_tools().items() if ref.session.key == key)

    return names


def _remote_session(kaimon: Kaimon) -> Any:
    """A session's provider and info (JSON) when not local: other processes cannot see it."""

    def remote(key: str) -> tuple[str, str] | None:
        session = kaimon.registry.sessions.get(key)
        name = getattr(session.provider, "name", "local") if session else "local"
        if session is None or name == "local":
            return None
        return name, session.info.model_dump_json()

    return remote


def _on_signal(sig: int, stop: asyncio.Event) -> None:
    logger.info("signal %s: shutting down", sig)
    stop.set()


def serve_forever(
    options: ServerOptions,
    *,
    http: bool = False,
    host: str = "127.0.0.1",
    port: int = 2828,
    token: str | None = None,
    settings: Settings | None = None,
    flags: Mapping[str, Any] | None = None,
    providers: Sequence[KernelProvider] = (),
) -> None:
    """Run the server until stdin closes (stdio), or until SIGINT, SIGTERM or SIGHUP.
    Kernels are found on this machine and with ``providers`` (e.g. Jupyter Servers).

    Its tool calls go to the activity log in the store. Given ``settings`` (and the command
    line ``flags`` they were loaded with), it follows changes of kaimon.json while it runs.
    Raises KaimonError before starting anything when the HTTP address cannot be bound.
    """
    sockets = None
    if http:
        check_bind(host, token)
        sockets = bind(host, port)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows
                loop.add_signal_handler(sig, _on_signal, sig, stop)
        task: asyncio.Task[None] | None = None
        following: asyncio.Task[None] | None = None
        recorder: ActivityRecorder | None = None
        try:
            registry = Registry([LocalProvider(), *providers]) if providers else None
            kaimon = Kaimon(options, registry)
            recorder = ActivityRecorder(
                kaimon.store,
                kaimon.bus,
                "http" if http else "stdio",
                _tool_names(kaimon),
                _remote_session(kaimon),
            )
            async with (
                kaimon.running(),
                supervising(options.extension_backoff, kaimon),
                recorder,
            ):
                if stop.is_set():
                    return
                if settings is not None:
                    follower = ConfigFollower(kaimon, flags or {}, settings)
                    following = asyncio.create_task(follower.run(), name="kaimon-config")
                task = asyncio.create_task(
                    run_http(
                        kaimon, host, port, token, sockets=sockets, stop=stop, settings=settings
                    )
                    if http
                    else run_stdio(kaimon, settings)
                )
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not task.done():
                    if not http:  # HTTP stops by itself once `stop` is set
                        task.cancel()
                    patience = GRACEFUL_SHUTDOWN + 2 if http else STDIO_STOP
                    await asyncio.wait({task}, timeout=patience)
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            if following is not None:
                following.cancel()
            if recorder is not None:
                recorder.close()
            for sig in STOP_SIGNALS:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        if task is not None and not task.done():
            # The transport did not stop: over stdio, stdin is read in a thread that cannot be
            # cancelled while the client keeps the pipe open, and asyncio.run would wait for it
            # forever. Everything is cleaned up by now.
            logger.info("stopped; not waiting for stdin to close")
            logging.shutdown()
            sys.stderr.flush()
            os._exit(0)

    try:
        asyncio.run(main())
    finally:
        for sock in sockets or []:
            sock.close()
