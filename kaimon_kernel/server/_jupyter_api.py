"""A small async client for a Jupyter Server's REST API (kernels, sessions, kernelspecs).

Also serves a Jupyter Kernel Gateway and Enterprise Gateway, which speak the same
``/api/kernels`` API. Every call has a timeout; every failure is a :class:`JupyterServerError`
(a :class:`~kaimon_kernel._errors.KaimonError`) whose message says what to check. The token
is sent as ``Authorization: token …`` and never appears in a repr, a log line or an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from .._errors import DeadKernelError, KaimonError, NotAllowed

__all__ = [
    "JupyterAPI",
    "JupyterServerError",
    "KernelGone",
    "RemoteKernel",
    "TokenRefused",
    "Unreachable",
    "redact",
]

logger = logging.getLogger(__name__)

TIMEOUT = 10.0


class JupyterServerError(KaimonError):
    """A Jupyter Server answered with an error, or not at all."""


class Unreachable(JupyterServerError, ConnectionError):
    """The server could not be reached."""


class TokenRefused(JupyterServerError, NotAllowed):
    """The server refused the token (401/403)."""


class KernelGone(JupyterServerError, DeadKernelError):
    """The kernel is not on the server any more (culled or deleted)."""


def redact(text: str, token: str | None) -> str:
    """``text`` with every occurrence of ``token`` replaced (errors of libraries may echo it)."""
    if token:
        text = text.replace(token, "<token>")
        text = text.replace(quote(token, safe=""), "<token>")
    return text


@dataclass(frozen=True)
class RemoteKernel:
    """A kernel as ``/api/kernels`` lists it."""

    id: str
    name: str
    execution_state: str = ""
    last_activity: str = ""
    connections: int = 0

    @classmethod
    def of(cls, model: dict[str, Any]) -> RemoteKernel:
        return cls(
            id=str(model["id"]),
            name=str(model.get("name", "")),
            execution_state=str(model.get("execution_state", "")),
            last_activity=str(model.get("last_activity", "")),
            connections=int(model.get("connections", 0) or 0),
        )


def _base(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise KaimonError(
            f"{url!r} is not a Jupyter Server URL: give http(s)://host:port/base/ "
            "(e.g. https://hub.example.org/user/alice/)"
        )
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    # a token in the query is the person's copy-paste from a browser: never keep it
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _kernel_path(kernel_id: str, tail: str = "") -> str:
    return f"api/kernels/{quote(kernel_id, safe='')}{tail}"


@dataclass
class JupyterAPI:
    """One Jupyter Server: ``url`` (its base URL, without the token) and its ``token``."""

    url: str
    token: str | None = field(default=None, repr=False)
    timeout: float = TIMEOUT
    token_source: str = "JUPYTER_TOKEN"
    _client: httpx.AsyncClient | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.url = _base(self.url)

    def __repr__(self) -> str:
        return f"JupyterAPI(url={self.url!r})"

    @property
    def ws_base(self) -> str:
        """The base URL for WebSockets (ws:// or wss://)."""
        return "ws" + self.url[len("http") :]

    def headers(self) -> dict[str, str]:
        """The auth header (for the kernel WebSocket too)."""
        return {"Authorization": f"token {self.token}"} if self.token else {}

    def channels_url(self, kernel_id: str, session_id: str) -> str:
        """The kernel's WebSocket URL (no token: it goes in the header)."""
        return (
            f"{self.ws_base}{_kernel_path(kernel_id, '/channels')}"
            f"?session_id={quote(session_id, safe='')}"
        )

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.url,
                headers=self.headers(),
                timeout=self.timeout,
                # no cookies: a login cookie would outlive the token (a revoked token must
                # stop working at once)
                cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            )
        return self._client

    async def request(
        self, method: str, path: str, *, json: Any = None, kernel_id: str | None = None
    ) -> Any:
        """One call; the parsed JSON answer (None when empty). Raises a JupyterServerError."""
        try:
            response = await self._http().request(method, path, json=json)
        except httpx.TimeoutException:
            raise Unreachable(
                f"the Jupyter server at {self.url} did not answer {method} /{path} within "
                f"{self.timeout:g} s: check that it runs and that the network reaches it"
            ) from None
        except httpx.HTTPError as err:
            raise Unreachable(
                f"cannot reach the Jupyter server at {self.url} "
                f"({redact(type(err).__name__ + ': ' + str(err), self.token)}): check the URL, "
                "that the server runs, and that this machine can reach it"
            ) from None
        status = response.status_code
        if status in (401, 403):
            raise TokenRefused(
                f"the Jupyter server at {self.url} refused the token (HTTP {status}) "
                f"for {method} /{path}. The token comes from {self.token_source}"
                + ("" if self.token else " (none was given)")
                + "; give a valid one (it may have expired or the server restarted)."
                + (
                    " If the token is right, the server forbids this call: a Jupyter Kernel "
                    "Gateway lists its kernels only with KG_LIST_KERNELS=True."
                    if status == 403
                    else ""
                )
            )
        if status == 404 and kernel_id is not None:
            raise KernelGone(
                f"kernel {kernel_id} is gone from the Jupyter server at {self.url} (culled "
                "for idleness, or shut down by someone); its state is lost"
            )
        if status >= 400:
            text = redact(response.text[:300], self.token)
            raise JupyterServerError(
                f"the Jupyter server at {self.url} answered {method} /{path} with HTTP "
                f"{status}: {text}"
            )
        return response.json() if response.content else None

    # -- kernels ---------------------------------------------------------------------------

    async def kernels(self) -> list[RemoteKernel]:
        """Every running kernel."""
        return [RemoteKernel.of(k) for k in await self.request("GET", "api/kernels") or []]

    async def kernel(self, kernel_id: str) -> RemoteKernel:
        """One kernel; :class:`KernelGone` when the server no longer has it."""
        path = _kernel_path(kernel_id)
        return RemoteKernel.of(await self.request("GET", path, kernel_id=kernel_id))

    async def sessions(self) -> dict[str, str]:
        """Notebook path by kernel id, from ``/api/sessions`` (empty where the server, e.g. a
        kernel gateway, has no sessions)."""
        try:
            models = await self.request("GET", "api/sessions") or []
        except JupyterServerError as err:
            if isinstance(err, Unreachable | TokenRefused):
                raise
            return {}
        return {
            str(m["kernel"]["id"]): str(m.get("path") or m.get("notebook", {}).get("path", ""))
            for m in models
            if isinstance(m, dict) and isinstance(m.get("kernel"), dict)
        }

    async def kernelspecs(self) -> dict[str, Any]:
        """The kernelspecs the server can start, by name."""
        answer = await self.request("GET", "api/kernelspecs") or {}
        return dict(answer.get("kernelspecs", {}))

    async def start_kernel(
        self, name: str | None = None, path: str | None = None, env: dict[str, str] | None = None
    ) -> RemoteKernel:
        """Start a kernel of kernelspec ``name`` in ``path`` (relative to the server's root)."""
        body: dict[str, Any] = {}
        if name:
            body["name"] = name
        if path is not None:
            body["path"] = path
        if env:
            body["env"] = env
        return RemoteKernel.of(await self.request("POST", "api/kernels", json=body))

    async def restart(self, kernel_id: str) -> RemoteKernel:
        """Restart by the server (same kernel id: JupyterLab shows an ordinary restart)."""
        path = _kernel_path(kernel_id, "/restart")
        return RemoteKernel.of(await self.request("POST", path, kernel_id=kernel_id))

    async def interrupt(self, kernel_id: str) -> None:
        """Interrupt by the server (it knows the kernelspec's interrupt mode)."""
        path = _kernel_path(kernel_id, "/interrupt")
        await self.request("POST", path, kernel_id=kernel_id)

    async def shutdown(self, kernel_id: str) -> None:
        """Stop the kernel; a kernel already gone is not an error."""
        try:
            await self.request("DELETE", _kernel_path(kernel_id), kernel_id=kernel_id)
        except KernelGone:
            pass

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
