"""The local LLM server, behind one small seam: :class:`Backend`.

The tunnel code knows only this interface::

    class Backend(Protocol):
        kind: BackendKind          # what the bridge announces in its Hello
        base_url: str              # for messages and the status file
        async def request(method, path, query, headers, body) -> BackendResponse
        async def probe() -> BackendState
        async def aclose() -> None

``request`` sends one HTTP request (``body`` is an async iterator of bytes, or None) and returns as soon
as the response head has arrived; the caller reads ``BackendResponse.body`` chunk by chunk and must
``await response.aclose()`` (or use ``async with``) - closing it early is what aborts the request and
makes Ollama stop generating. Failures are :class:`BackendError` with the ErrorCode the tunnel sends.

Implementations here:

- :class:`HttpBackend`: passthrough to the configured base URL (Ollama, or the /v1 paths of any
  OpenAI-compatible server). It never follows redirects, ignores proxy environment variables and
  builds every URL from the configured base, so the cloud cannot steer it to another host.
- :class:`OpenAIBackend`: for llama.cpp server, LM Studio, vLLM...: /v1 paths pass through; Ollama-native
  paths go to a *translator* (``cloudtolocalllm.bridge.openai_compat.translate`` unless another is given,
  see :class:`Translator`); an OpenAIBackend built without one fails them with BACKEND_ERROR "translation
  not available yet".
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import aiohttp
from yarl import URL

from cloudtolocalllm.bridge.version import __version__
from cloudtolocalllm.protocol import BackendKind, ErrorCode, Headers
from cloudtolocalllm.protocol.hop_by_hop import drop_hop_by_hop
from cloudtolocalllm.protocol.routes import RouteFamily, route_at

__all__ = [
    "Backend",
    "BackendError",
    "BackendResponse",
    "BackendState",
    "HttpBackend",
    "OpenAIBackend",
    "Translator",
    "detect_kind",
    "load_translator",
    "make_backend",
    "response_headers",
]

logger = logging.getLogger(__name__)

# Never forwarded to the backend, whatever the cloud sends (besides hop-by-hop fields): the cloud's own Host,
# and credentials (the cloud strips the caller's; this is the second line of defence).
_REQUEST_DROP = frozenset({"host", "authorization", "cookie", "expect"})
_PROBE_TIMEOUT = 10.0
_MAX_MODELS = 1000
_MAX_MODEL_NAME = 256


class BackendError(Exception):
    """The backend request failed; ``code`` and ``message`` go into the StreamError."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class BackendState:
    """Result of a probe: whether the backend answered, and the models it lists."""

    reachable: bool
    models: tuple[str, ...] = ()
    detail: str = ""
    """Why it is unreachable (for the status file and logs)."""


class BackendResponse:
    """A response whose head has arrived; ``body`` yields the raw body bytes as the backend sends them."""

    def __init__(
        self,
        status: int,
        headers: Headers,
        body: AsyncIterator[bytes],
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self._close = close

    async def aclose(self) -> None:
        """Release the backend request; aborts it if the body was not read to the end."""
        if self._close is not None:
            close, self._close = self._close, None
            await close()

    async def __aenter__(self) -> BackendResponse:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class Backend(Protocol):
    """What the tunnel needs from a local LLM server. See the module docstring."""

    kind: BackendKind
    base_url: str

    async def request(
        self, method: str, path: str, query: str, headers: Headers, body: AsyncIterator[bytes] | None
    ) -> BackendResponse: ...

    async def probe(self) -> BackendState: ...

    async def aclose(self) -> None: ...


class Translator(Protocol):
    """The seam for ``cloudtolocalllm.bridge.openai_compat``: serve an Ollama-native request through an
    OpenAI-compatible server.

    The module must define ``async def translate(upstream, method, path, query, headers, body)`` with
    this signature; ``upstream`` is the passthrough :class:`HttpBackend` for the server (call its
    ``request`` with /v1 paths). It returns a BackendResponse in Ollama's shape (e.g. NDJSON for
    /api/chat) and raises BackendError for what it cannot translate.
    """

    async def __call__(
        self,
        upstream: HttpBackend,
        method: str,
        path: str,
        query: str,
        headers: Headers,
        body: AsyncIterator[bytes] | None,
    ) -> BackendResponse: ...


def response_headers(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The backend's raw response headers minus hop-by-hop ones (and those its Connection header names).

    Content-Length and Content-Encoding are kept: the body is relayed byte for byte, undecoded.
    """
    headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw]
    return _without_proxy_fields(drop_hop_by_hop(headers))


def _without_proxy_fields(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    # Every Proxy-* field is about some proxy on the way, never for the backend or the caller.
    return [(name, value) for name, value in headers if not name.lower().startswith("proxy-")]


def _request_headers(headers: Headers) -> list[tuple[str, str]]:
    kept = _without_proxy_fields(drop_hop_by_hop(headers, also=_REQUEST_DROP))
    if not any(name.lower() == "accept-encoding" for name, _ in kept):
        # The body is relayed undecoded: ask for what the caller asked for (nothing = identity), not
        # for the HTTP client's default gzip.
        kept.append(("accept-encoding", "identity"))
    return kept


class HttpBackend:
    """Forwards requests unchanged to ``base_url`` (which may carry a path prefix).

    The HTTP client is aiohttp: its C parser costs ~0.1 ms of CPU per streamed request where httpx
    (httpcore + anyio) cost ~0.9 ms, and every relayed request pays it (see the performance page).
    """

    def __init__(
        self,
        base_url: str,
        *,
        kind: BackendKind = BackendKind.OLLAMA,
        connect_timeout_s: float = 5.0,
        idle_timeout_s: float = 300.0,
        max_connections: int = 512,
    ) -> None:
        self.kind = kind
        self.base_url = base_url.rstrip("/")
        self._base = URL(self.base_url)
        if self._base.scheme not in ("http", "https") or not self._base.host:
            raise ValueError(f"backend URL must be http(s)://host[:port][/prefix], got {base_url!r}")
        self._prefix = self._base.raw_path.rstrip("/")
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._max_connections = max_connections
        # Idle timeouts only: sock_read applies per chunk, so a generation may run for hours as long as
        # tokens keep coming. Never a total-time limit. ``connect`` covers waiting for a pooled connection.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_read=idle_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use, inside the event loop that will run it.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0),
                timeout=self._timeout,
                auto_decompress=False,  # relayed byte for byte
                trust_env=False,  # HTTP(S)_PROXY must never route local requests elsewhere
                # A relay, not a browser: a cookie the backend sets goes to the client that asked, never
                # into the next request the bridge carries (and no jar to look up per request).
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"user-agent": f"cloudtolocalllm-bridge/{__version__}"},
                # Send the caller's headers, not the client's defaults (Accept, a guessed Content-Type).
                skip_auto_headers=("accept", "accept-encoding", "content-type"),
            )
        return self._session

    def url_for(self, path: str, query: str = "") -> URL:
        """The backend URL for ``path``: always the configured scheme, host and port."""
        raw = self._prefix + path
        if query:
            raw += "?" + query
        url = self._base.join(URL(raw, encoded=True)) if raw.startswith("/") else None
        if url is None or (url.scheme, url.host, url.port) != (self._base.scheme, self._base.host, self._base.port):
            raise BackendError(ErrorCode.PATH_NOT_ALLOWED, "path would leave the configured backend")
        return url

    def unreachable_message(self) -> str:
        hint = "is Ollama running?" if self.kind is BackendKind.OLLAMA else "is your LLM server running?"
        return f"could not connect to the local backend at {self.base_url}: {hint}"

    def _translate_error(self, exc: BaseException) -> BackendError:
        if isinstance(exc, aiohttp.ClientConnectorError):
            return BackendError(ErrorCode.BACKEND_UNREACHABLE, self.unreachable_message())
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return BackendError(
                ErrorCode.BACKEND_UNREACHABLE,
                f"no connection to the local backend within {self.connect_timeout_s:g} s "
                f"(not answering, or {self._max_connections} requests already in flight)",
            )
        if isinstance(exc, TimeoutError):
            return BackendError(ErrorCode.TIMEOUT, f"the local backend sent nothing for {self.idle_timeout_s:g} s")
        return BackendError(ErrorCode.BACKEND_ERROR, f"the local backend failed: {type(exc).__name__}")

    async def request(
        self, method: str, path: str, query: str, headers: Headers, body: AsyncIterator[bytes] | None
    ) -> BackendResponse:
        url = self.url_for(path, query)
        try:
            response = await self._client().request(
                method, url, headers=_request_headers(headers), data=body, allow_redirects=False
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._translate_error(exc) from None
        return BackendResponse(
            response.status, response_headers(response.raw_headers), self._body(response), _closer(response)
        )

    async def _body(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.content.iter_any():
                if chunk:
                    yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._translate_error(exc) from None

    async def _get_json(self, path: str) -> tuple[int, Any]:
        timeout = aiohttp.ClientTimeout(total=_PROBE_TIMEOUT, connect=self.connect_timeout_s)
        async with self._client().get(self.url_for(path), timeout=timeout, allow_redirects=False) as response:
            data = await response.read()
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, None

    async def probe(self) -> BackendState:
        """Reachability and models: GET /api/tags (Ollama) or GET /v1/models (OpenAI-compatible)."""
        path = "/api/tags" if self.kind is BackendKind.OLLAMA else "/v1/models"
        try:
            status, document = await self._get_json(path)
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = self._translate_error(exc)
            return BackendState(False, (), error.message)
        if status != 200:
            return BackendState(True, (), f"GET {path} answered {status}")
        return BackendState(True, _model_names(document, path))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _closer(response: aiohttp.ClientResponse) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        if response.content.at_eof():
            response.release()  # read to the end: the connection goes back to the pool
        else:
            response.close()  # closing the connection is what aborts the backend's work

    return close


def _model_names(document: Any, path: str) -> tuple[str, ...]:
    """The model names in the listing ``path`` answered (read as the cloud reads it when it merges)."""
    route = route_at(path)
    listing = route.merged if route is not None else None
    if listing is None or not isinstance(document, dict):
        return ()
    name_key = listing.id_key
    entries = document.get(listing.list_key)
    if not isinstance(entries, list):
        return ()
    names = {
        entry[name_key]
        for entry in entries
        if isinstance(entry, dict)
        and isinstance(entry.get(name_key), str)
        and 0 < len(entry[name_key]) <= _MAX_MODEL_NAME
    }
    return tuple(sorted(names)[:_MAX_MODELS])


class OpenAIBackend:
    """An OpenAI-compatible server: /v1 paths pass through, Ollama-native ones need the translator."""

    kind = BackendKind.OPENAI

    def __init__(self, upstream: HttpBackend, translator: Translator | None = None) -> None:
        self.upstream = upstream
        self.base_url = upstream.base_url
        self.translator = translator

    async def request(
        self, method: str, path: str, query: str, headers: Headers, body: AsyncIterator[bytes] | None
    ) -> BackendResponse:
        route = route_at(path)
        if route is not None and route.family is RouteFamily.OPENAI:
            return await self.upstream.request(method, path, query, headers, body)
        if self.translator is None:
            raise BackendError(
                ErrorCode.BACKEND_ERROR,
                "translation not available yet: this bridge's backend speaks the OpenAI API, use the /v1 endpoints",
            )
        return await self.translator(self.upstream, method, path, query, headers, body)

    async def probe(self) -> BackendState:
        return await self.upstream.probe()

    async def aclose(self) -> None:
        await self.upstream.aclose()


def load_translator() -> Translator:
    """``cloudtolocalllm.bridge.openai_compat.translate``, the translator every OpenAI backend gets."""
    # Imported here, not at the top: openai_compat imports this module (BackendResponse, HttpBackend...).
    from cloudtolocalllm.bridge.openai_compat import translate

    return translate


async def detect_kind(base_url: str, *, connect_timeout_s: float = 5.0) -> BackendKind | None:
    """Probe ``base_url``: /api/version answers -> OLLAMA, else /v1/models answers -> OPENAI, else None."""
    probe = HttpBackend(base_url, connect_timeout_s=connect_timeout_s)
    try:
        try:
            status, document = await probe._get_json("/api/version")
            if status == 200 and isinstance(document, dict) and "version" in document:
                return BackendKind.OLLAMA
            status, document = await probe._get_json("/v1/models")
            if status == 200 and isinstance(document, dict) and "data" in document:
                return BackendKind.OPENAI
        except (aiohttp.ClientError, TimeoutError):
            return None
        return None
    finally:
        await probe.aclose()


def make_backend(
    base_url: str,
    kind: BackendKind,
    *,
    connect_timeout_s: float = 5.0,
    idle_timeout_s: float = 300.0,
    translator: Translator | None = None,
) -> Backend:
    """The Backend for ``kind``: passthrough for Ollama, OpenAIBackend (+ translator if any) otherwise."""
    http = HttpBackend(base_url, kind=kind, connect_timeout_s=connect_timeout_s, idle_timeout_s=idle_timeout_s)
    if kind is BackendKind.OLLAMA:
        return http
    return OpenAIBackend(http, translator if translator is not None else load_translator())
