"""Relay a request to the replica that holds the chosen bridge, streaming both ways.

The owner is called at its ordinary ``/api/ollama/{path}`` with the caller's own Authorization (it verifies
the token itself: no trust between replicas is added), the bridge pinned by id, and FORWARDED_HEADER so it
serves the request with its local bridges only. Cancelling works as for any client: when our client goes
away, the upstream connection is closed, the owner sees a disconnect and sends Cancel to the bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
from starlette.types import Receive, Scope, Send

from cloudtolocalllm.bridge_api.directory import RemoteBridge
from cloudtolocalllm.bridge_api.errors import RelayError, stream_error_tail
from cloudtolocalllm.bridge_api.metrics import TunnelMetrics
from cloudtolocalllm.bridge_api.routing import BRIDGE_HEADER, FORWARDED_HEADER
from cloudtolocalllm.bridge_api.settings import ApiSettings
from cloudtolocalllm.protocol.hop_by_hop import drop_hop_by_hop

__all__ = ["ClientGone", "ReplicaForwarder", "ReplicaUnreachable"]

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S: Final = 2.0
_MAX_LISTING_BYTES: Final = 8 * 1024 * 1024
_NOT_TO_OWNER: Final = frozenset({"host", BRIDGE_HEADER, FORWARDED_HEADER})
_NOT_FROM: Final = frozenset({"server", "date"})
_LOST: Final = "the server holding your bridge stopped answering"


class ReplicaUnreachable(Exception):
    """No connection to the owner: nothing was sent, so another bridge may be tried."""

    def __init__(self, replica: str) -> None:
        super().__init__(replica)
        self.replica = replica


class ClientGone(Exception):
    """Our client disconnected."""


def _headers_to_owner(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    kept = drop_hop_by_hop(raw, also=_NOT_TO_OWNER)
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in kept]


class ReplicaForwarder:
    def __init__(self, settings: ApiSettings, metrics: TunnelMetrics) -> None:
        self.metrics = metrics
        # The owner enforces the first-byte and idle timeouts and reports them; ours only catch a peer that
        # went silent without closing (a partition), so they sit above the owner's.
        read_timeout = max(settings.first_byte_timeout_s, settings.idle_timeout_s) + 30
        self._timeout = aiohttp.ClientTimeout(total=None, connect=_CONNECT_TIMEOUT_S, sock_read=read_timeout)
        self._listing_timeout = aiohttp.ClientTimeout(total=settings.first_byte_timeout_s, connect=_CONNECT_TIMEOUT_S)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created on first use, inside the running loop
            self._session = aiohttp.ClientSession(
                # Pooled keep-alive connections to peers; no cap on concurrent streams (generations are long).
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60, enable_cleanup_closed=True),
                timeout=self._timeout,
                auto_decompress=False,  # bytes pass through as the owner sent them
                cookie_jar=aiohttp.DummyCookieJar(),  # a relay keeps no cookies (and skips their cost)
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        target: RemoteBridge,
        path: str,
        body: bytes | None,
        has_body: bool,
    ) -> None:
        """Relay the request to ``target``'s replica; ``body`` is the request body if it was already read
        (None: stream it from ``receive``). Raises ReplicaUnreachable, RelayError or ClientGone."""
        replica = target.record.replica
        query = scope.get("query_string", b"").decode("latin-1")
        url = f"{replica}/api/ollama{path}" + (f"?{query}" if query else "")
        headers = _headers_to_owner(scope["headers"])
        headers += [(BRIDGE_HEADER, target.bridge_id), (FORWARDED_HEADER, "1")]
        client = _ClientWatch(receive)
        data: bytes | AsyncIterator[bytes] | None = body
        if body is None and has_body:
            data = client.body()
        else:
            client.body_done.set()
        exchange = asyncio.create_task(self._exchange(scope["method"], url, headers, data, send, replica))
        watcher = asyncio.create_task(client.wait_gone())
        try:
            await asyncio.wait({exchange, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (exchange, watcher):
                task.cancel()
            await asyncio.gather(exchange, watcher, return_exceptions=True)
        if not exchange.cancelled() and exchange.exception() is None:
            self.metrics.forwarded.labels("ok").inc()
            return
        if exchange.cancelled() or client.gone:
            # Our client left: closing the upstream connection (done) is the owner's cue to Cancel.
            self.metrics.forwarded.labels("client_gone").inc()
            raise ClientGone
        raise exchange.exception()  # type: ignore[misc]

    async def _exchange(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        data: bytes | AsyncIterator[bytes] | None,
        send: Send,
        replica: str,
    ) -> None:
        try:
            response = await self._client().request(method, url, headers=headers, data=data, allow_redirects=False)
        except aiohttp.ClientConnectorError:
            self.metrics.forwarded.labels("unreachable").inc()
            raise ReplicaUnreachable(replica) from None
        except (aiohttp.ClientError, TimeoutError, ClientGone) as exc:
            if isinstance(exc, ClientGone):
                raise
            self.metrics.forwarded.labels("lost_before_head").inc()
            log.warning("forwarding failed", extra={"replica": replica, "error": type(exc).__name__})
            raise RelayError(502, _LOST) from None
        content_type = response.headers.get("content-type", "")
        try:
            out = [(k.lower(), v) for k, v in drop_hop_by_hop(response.raw_headers, also=_NOT_FROM)]
            await send({"type": "http.response.start", "status": response.status, "headers": out})
            try:
                content = response.content
                async for chunk in content.iter_any():
                    # The end rides with the last chunk when it is already known: one write less.
                    last = content.at_eof()
                    await send({"type": "http.response.body", "body": chunk, "more_body": not last})
                    if last:
                        return
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.metrics.forwarded.labels("lost_mid_stream").inc()
                log.warning("forwarded stream lost", extra={"replica": replica, "error": type(exc).__name__})
                tail = stream_error_tail(content_type, f"stream interrupted: {_LOST}")
                if tail is None:
                    raise ConnectionAbortedError(_LOST) from None  # the server aborts: the client sees truncation
                with contextlib.suppress(OSError):
                    await send({"type": "http.response.body", "body": tail, "more_body": False})
                return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            response.close()  # unread (cancelled) responses close their connection: the owner sees it

    async def listing(self, replica: str, path: str, authorization: str) -> tuple[int, bytes]:
        """A small GET of a merged listing (``/api/tags`` ...) from another replica's own bridges."""
        headers = {"Authorization": authorization, "Accept": "application/json", FORWARDED_HEADER: "1"}
        async with self._client().get(
            f"{replica}/api/ollama{path}", headers=headers, timeout=self._listing_timeout, allow_redirects=False
        ) as response:
            body = await response.content.read(_MAX_LISTING_BYTES + 1)
            if len(body) > _MAX_LISTING_BYTES:
                raise RelayError(502, "model listing from another server is too large")
            return response.status, body


class _ClientWatch:
    """Our client's side of a forwarded exchange: its request body, then its disconnect."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.body_done = asyncio.Event()
        self.gone = False

    async def body(self) -> AsyncIterator[bytes]:
        try:
            while True:
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    self.gone = True
                    raise ClientGone
                chunk = message.get("body", b"")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    return
        finally:
            self.body_done.set()

    async def wait_gone(self) -> None:
        await self.body_done.wait()  # until then, body() reads ``receive``
        if self.gone:
            return
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.gone = True
