"""``cloudtolocalllm-bridge connect``: client mode, the cloud's Ollama API on this machine's loopback.

Tools that take only a URL (the ``ollama`` CLI with ``OLLAMA_HOST``, Open WebUI's Ollama connection, IDE
plugins, LangChain's ``ChatOllama``) cannot send an Authorization header. ``connect`` listens on
127.0.0.1:11434 (Ollama's own address) and forwards every request to ``<cloud>/api/ollama/...`` with the
stored sign-in (renewed as ``run`` renews it) or a key, so they work with no token in their config.

- Streams both ways: request bodies are sent as they arrive, answers are written chunk by chunk as the cloud
  sends them (``iter_any``: nothing is held back); a client that disconnects cancels the handler, which
  closes the request to the cloud, which cancels the generation on the bridge.
- Loopback only unless ``--allow-remote-clients``: whoever reaches the port uses the account. On loopback,
  a request whose Host is not a loopback name (DNS rebinding) or whose Origin is a web page elsewhere is
  refused with 403, so a web site cannot use the account through the user's browser.
- A refused sign-in (401 from the cloud) renews the stored login once; when the issuer refuses the renewal,
  or a key from the environment is refused, ``connect`` says "sign in again with: ..." and stops with exit
  status 3 instead of answering 401 forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Final
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from cloudtolocalllm.bridge.config import is_loopback_host
from cloudtolocalllm.bridge.credentials import sign_in_hint
from cloudtolocalllm.bridge.exits import EXIT_OK, EXIT_SIGN_IN
from cloudtolocalllm.bridge.oauth import proxy_for
from cloudtolocalllm.bridge.token import SignInRefused, TokenError, TokenSource
from cloudtolocalllm.bridge.version import __version__

__all__ = ["ClientMode"]

logger = logging.getLogger(__name__)

# Request headers a tool's request keeps on its way to the cloud (Authorization is always ours).
_REQUEST_HEADERS: Final = ("content-type", "content-length", "accept", "accept-encoding", "user-agent")
# Response headers passed back (hop-by-hop ones and the cloud's security headers are not).
_RESPONSE_HEADERS: Final = (
    "content-type",
    "content-length",
    "content-encoding",
    "retry-after",
    "x-request-id",
    "cache-control",
)
_READ_SIZE: Final = 64 * 1024


def _error(status: int, message: str) -> web.Response:
    """Ollama-shaped: the clients show ``error`` to the user."""
    return web.json_response({"error": message}, status=status)


def _loopback_name(host_header: str) -> bool:
    host = urlsplit(f"//{host_header}").hostname or ""
    return host == "localhost" or host.endswith(".localhost") or is_loopback_host(host)


class ClientMode:
    """The loopback server; :meth:`serve` runs it until :meth:`stop` or the end of the sign-in."""

    def __init__(
        self,
        api_base: str,
        source: TokenSource,
        *,
        cloud_url: str,
        allow_remote_clients: bool = False,
        connect_timeout_s: float = 15.0,
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self.source = source
        self.cloud_url = cloud_url
        self.allow_remote_clients = allow_remote_clients
        self._connect_timeout_s = connect_timeout_s
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._done: asyncio.Future[int] | None = None
        self.exit_message: str | None = None
        self.address: tuple[str, int] | None = None

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port`` (0: any free port); returns the bound address."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout_s)
        self._http = aiohttp.ClientSession(
            timeout=timeout,
            trust_env=False,
            auto_decompress=False,  # bytes pass through as the cloud encoded them
            headers={"user-agent": f"cloudtolocalllm-bridge/{__version__} (connect)"},
        )
        self._done = asyncio.get_running_loop().create_future()
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a client that goes away cancels its handler, which closes the cloud request.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self.address = (str(bound[0]), int(bound[1]))
        return self.address

    async def wait(self) -> int:
        """Until stopped: EXIT_OK, or EXIT_SIGN_IN when the sign-in is over."""
        assert self._done is not None
        return await self._done

    def stop(self, code: int = EXIT_OK) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(code)

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    # --- requests -------------------------------------------------------------------------------------

    def _refusal(self, request: web.Request) -> web.Response | None:
        if self.allow_remote_clients:
            return None
        if not _loopback_name(request.host):
            return _error(403, "connect serves loopback names only (Host header): see --allow-remote-clients")
        origin = request.headers.get("origin")
        if origin and origin != "null" and not _loopback_name(urlsplit(origin).netloc):
            return _error(403, "connect refuses requests from web pages of other sites (Origin header)")
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        if request.path == "/" and request.method in ("GET", "HEAD"):
            return web.Response(text="Ollama is running")  # what Ollama answers; tools probe it
        try:
            token = await self.source.fresh()
        except SignInRefused as exc:
            return self._sign_in_over(str(exc))
        except TokenError as exc:
            return _error(503, f"no usable sign-in: {exc}")
        headers = CIMultiDict(
            (name, value) for name, value in request.headers.items() if name.lower() in _REQUEST_HEADERS
        )
        headers.setdefault("Accept-Encoding", "identity")  # not aiohttp's default gzip: pass bytes through
        headers["Authorization"] = f"Bearer {token}"
        url = URL(self.api_base + request.raw_path, encoded=True)
        body = _body(request) if request.body_exists else None
        assert self._http is not None
        try:
            async with self._http.request(
                request.method, url, headers=headers, data=body, allow_redirects=False, proxy=proxy_for(str(url))
            ) as upstream:
                if upstream.status == 401:
                    refused = await self._refused(token)
                    if refused is not None:
                        return refused
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for name in _RESPONSE_HEADERS:
                    if name in upstream.headers:
                        response.headers[name] = upstream.headers[name]
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            logger.warning("cannot reach the cloud at %s: %s", self.cloud_url, exc or type(exc).__name__)
            return _error(502, f"cannot reach the cloud at {self.cloud_url}")

    async def _refused(self, token: str) -> web.Response | None:
        """The cloud answered 401: renew the stored login for the next request, or end the sign-in."""
        if self.source.renews_itself:
            try:
                renewed = await self.source.fresh(rejected=token)
            except SignInRefused as exc:
                return self._sign_in_over(str(exc))
            except TokenError as exc:
                logger.warning("the cloud refused the sign-in and it cannot be renewed yet: %s", exc)
                return None
            if renewed == token:
                return self._sign_in_over("the cloud refused the sign-in, renewed just before")
            return None
        if not self.source.can_change:
            return self._sign_in_over(f"the cloud refused the key from {self.source.describe()}")
        logger.error("the cloud refused the key in %s: write a valid one there", self.source.describe())
        return None

    def _sign_in_over(self, reason: str) -> web.Response:
        hint = sign_in_hint(self.cloud_url)
        self.exit_message = f"{reason.removesuffix(': ' + hint)}\n{hint}"  # the advice alone on the last line
        logger.error(reason)
        self.stop(EXIT_SIGN_IN)
        return _error(401, self.exit_message.replace("\n", ": "))


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    """The request body as it arrives (model blobs are gigabytes: never held whole)."""
    while chunk := await request.content.read(_READ_SIZE):
        yield chunk
