"""One relayed HTTP exchange, stream <-> ASGI: the one owner of its tunnel stream.

It opens the stream on the bridge's session, streams the request body to the bridge under the protocol's
credit window, answers the client with the bridge's head as soon as it arrives and flushes every body chunk
as it comes (consumption returns credit to the bridge). There is a first-byte and an idle timeout, never a
total-time limit. However it ends, it ends the stream once: released when complete, else Cancelled, so
the bridge stops its local generation when the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from cloudtolocalllm.bridge_api.errors import RelayError, status_for_stream_error, stream_error_tail
from cloudtolocalllm.bridge_api.forward import ClientGone
from cloudtolocalllm.bridge_api.headers import request_headers_for_bridge, response_headers_for_client
from cloudtolocalllm.bridge_api.metrics import TunnelMetrics
from cloudtolocalllm.bridge_api.session import BridgeSession
from cloudtolocalllm.bridge_api.settings import ApiSettings
from cloudtolocalllm.core.server_protocols import connection_lost
from cloudtolocalllm.protocol import ErrorCode, LocalProtocolError, ResponseHead, StreamClosedError
from cloudtolocalllm.protocol.tunnel import StreamFailed, TransportClosed, TunnelStream

__all__ = ["Exchange"]


class Exchange:
    """One request/response through one stream; owns its helper tasks and always cleans up."""

    def __init__(
        self,
        session: BridgeSession,
        settings: ApiSettings,
        metrics: TunnelMetrics,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        has_body: bool,
    ) -> None:
        self.session = session
        self.settings = settings
        self.metrics = metrics
        self.scope = scope
        self.receive = receive
        self.send = send
        self.has_body = has_body
        self.client_gone = False
        self._tasks: list[asyncio.Task[None]] = []
        self._unwatch: Callable[[], object] | None = None

    async def run(self, method: str, path: str, body: bytes | None) -> None:
        """Relay the request; ``body``: already read whole (JSON routed by model), else None to stream it."""
        query = self.scope.get("query_string", b"").decode("latin-1")
        headers = request_headers_for_bridge(self.scope["headers"])
        started = time.perf_counter()
        try:
            stream = self.session.open_stream(method, path, query, headers, self.has_body)
        except (LocalProtocolError, ConnectionError) as exc:
            raise RelayError(503, f"bridge not accepting requests: {exc}", retry_after_s=1) from None
        completed = False
        try:
            uploader: asyncio.Task[None] | None = None
            if not self.has_body:
                self._watch_disconnect(stream)  # nothing to upload: no task for it
            else:
                upload = self._send_buffered(stream, body) if body is not None else self._pump_body(stream)
                uploader = self._spawn(upload)
            head = await self._await_head(stream, uploader, started)
            completed = await self._respond(stream, head)
        finally:
            if self._unwatch is not None:
                self._unwatch()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            cancel = None if completed else ("client disconnected" if self.client_gone else "relay ended early")
            self.session.end_stream(stream, cancel)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        return task

    # --- request body -----------------------------------------------------------------------------

    async def _send_chunk(self, stream: TunnelStream, chunk: bytes) -> None:
        await stream.send_body(chunk)
        self.metrics.bytes_to_bridge.inc(len(chunk))

    async def _send_buffered(self, stream: TunnelStream, body: bytes) -> None:
        if body:
            await self._send_chunk(stream, body)
        await stream.end_body()
        self._watch_disconnect(stream)

    async def _pump_body(self, stream: TunnelStream) -> None:
        limit = self.settings.max_request_body_bytes
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self._client_disconnected(stream)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                stream.fail(ErrorCode.TOO_LARGE, f"request body larger than {limit} bytes")
                return
            if chunk:
                await self._send_chunk(stream, chunk)
            if not message.get("more_body", False):
                await stream.end_body()
                break
        self._watch_disconnect(stream)

    def _watch_disconnect(self, stream: TunnelStream) -> None:
        lost = connection_lost(self.scope)
        if lost is None:  # a server without the extension: ask receive(), in a task
            self._spawn(self._wait_disconnect(stream))
            return
        if lost.done():
            self._client_disconnected(stream)
            return

        def on_lost(_: object) -> None:
            self._client_disconnected(stream)

        lost.add_done_callback(on_lost)
        self._unwatch = lambda: lost.remove_done_callback(on_lost)

    async def _wait_disconnect(self, stream: TunnelStream) -> None:
        while True:
            message: Message = await self.receive()
            if message["type"] == "http.disconnect":
                self._client_disconnected(stream)
                return

    def _client_disconnected(self, stream: TunnelStream) -> None:
        if self.client_gone:
            return
        self.client_gone = True
        stream.fail(ErrorCode.CANCELLED, "client disconnected")

    # --- response -------------------------------------------------------------------------------------

    async def _await_head(
        self, stream: TunnelStream, uploader: asyncio.Task[None] | None, started: float
    ) -> ResponseHead:
        timeout = self.settings.first_byte_timeout_s
        try:
            async with asyncio.timeout(timeout):
                head = await stream.head
        except TimeoutError:
            self.metrics.errors.labels("first_byte_timeout").inc()
            raise RelayError(504, f"the bridge's backend sent nothing within {timeout:g} s") from None
        except StreamFailed as failure:
            if self.client_gone:
                raise ClientGone from None
            upload_error = None
            if uploader is not None and uploader.done() and not uploader.cancelled():
                upload_error = uploader.exception()
            if upload_error is not None and not isinstance(upload_error, StreamClosedError | TransportClosed):
                raise upload_error from None
            self.metrics.errors.labels(failure.code.value).inc()
            raise RelayError(status_for_stream_error(failure.code), failure.message) from None
        self.metrics.ttfb.observe(time.perf_counter() - started)
        return head

    async def _respond(self, stream: TunnelStream, head: ResponseHead) -> bool:
        headers = response_headers_for_client(head.headers)
        content_type = next((v.decode("latin-1") for k, v in headers if k == b"content-type"), "")
        if content_type.startswith(("application/x-ndjson", "text/event-stream")):
            headers.append((b"x-accel-buffering", b"no"))  # belt and braces for any proxy in front
        await self.send({"type": "http.response.start", "status": head.status, "headers": headers})
        idle = self.settings.idle_timeout_s
        from_bridge = self.metrics.bytes_from_bridge
        try:
            while True:
                if stream.has_chunk:  # already here: no timer to arm
                    chunk = await stream.read()
                else:
                    async with asyncio.timeout(idle):
                        chunk = await stream.read()
                if chunk is None:
                    await self.send({"type": "http.response.body", "body": b"", "more_body": False})
                    return True
                from_bridge.inc(len(chunk))
                last = stream.ends_next  # the End is here too: the last chunk and the end go in one write
                await self.send({"type": "http.response.body", "body": chunk, "more_body": not last})
                stream.consumed(len(chunk))
                if last:
                    return True
        except (StreamFailed, TimeoutError) as exc:
            if self.client_gone:
                return False
            message = f"no data from the bridge for {idle:g} s" if isinstance(exc, TimeoutError) else exc.message
            kind = "idle_timeout" if isinstance(exc, TimeoutError) else exc.code.value
            self.metrics.errors.labels(f"mid_stream_{kind}").inc()
            tail = stream_error_tail(content_type, f"stream interrupted: {message}")
            if tail is None:
                raise ConnectionAbortedError(message) from None  # the server aborts: the client sees truncation
            with contextlib.suppress(OSError):
                await self.send({"type": "http.response.body", "body": tail, "more_body": False})
            return False
