"""``/api/ollama/{path}``: relay one Ollama or OpenAI API call through the caller's bridge, streaming.

A raw ASGI endpoint (it is the hot path): the request body streams to the bridge under the protocol's
credit window, the response head is sent as soon as the bridge has it, and every body chunk is flushed
to the client as it arrives. There is a first-byte and an idle timeout, never a total-time limit. When the
client disconnects, a Cancel reaches the bridge, which aborts its local request (stopping generation).
A bridge held by another replica is reached through that replica (forward.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any, Final

import msgspec
from starlette.types import Message, Receive, Scope, Send

from cloudtolocalllm.bridge_api.body_budget import BodyBudget, Reservation
from cloudtolocalllm.bridge_api.directory import RemoteBridge
from cloudtolocalllm.bridge_api.errors import (
    RelayError,
    directory_down,
    error_response,
    status_for_stream_error,
    stream_error_tail,
)
from cloudtolocalllm.bridge_api.forward import ClientGone, ReplicaForwarder, ReplicaUnreachable
from cloudtolocalllm.bridge_api.headers import request_headers_for_bridge, response_headers_for_client
from cloudtolocalllm.bridge_api.keys.scopes import missing_scope
from cloudtolocalllm.bridge_api.merge import merged_response
from cloudtolocalllm.bridge_api.metrics import TunnelMetrics
from cloudtolocalllm.bridge_api.registry import Bridge, BridgeRegistry
from cloudtolocalllm.bridge_api.routing import BRIDGE_HEADER, FORWARDED_HEADER, choose_bridge, scope_for_path
from cloudtolocalllm.bridge_api.session import BridgeSession
from cloudtolocalllm.bridge_api.settings import ApiSettings
from cloudtolocalllm.bridge_api.stream import RelayStream, StreamFailed
from cloudtolocalllm.core.auth import MissingCredentials, auth_error_response
from cloudtolocalllm.protocol import ErrorCode, LocalProtocolError, ResponseHead, StreamClosedError
from cloudtolocalllm.protocol.routes import route_for

__all__ = ["RelayEndpoint"]

log = logging.getLogger(__name__)


class _ModelProbe(msgspec.Struct):
    model: str | None = None
    name: str | None = None  # older Ollama clients send "name"
    source: str | None = None


_probe_decoder = msgspec.json.Decoder(_ModelProbe)


def _model_in(body: bytes, field: str) -> str | None:
    """The model a JSON body names; a body that is not a JSON object is refused here, not by the backend."""
    try:
        probe = _probe_decoder.decode(body)
    except msgspec.DecodeError as exc:  # msgspec's message names the position, never the content
        raise RelayError(400, f"request body is not a valid JSON object: {exc}") from None
    value = getattr(probe, field) or probe.name
    return value if isinstance(value, str) and value else None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None  # the HTTP parser refuses a malformed one before the app sees it


def _has_body(scope: Scope) -> bool:
    length = _header(scope, b"content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return _header(scope, b"transfer-encoding") is not None


async def _read_body(receive: Receive, limit: int, reservation: Reservation) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RelayError(413, f"request body larger than {limit} bytes")
        reservation.grow_to(size)  # a body without Content-Length reserves as it arrives
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class RelayEndpoint:
    def __init__(
        self, registry: BridgeRegistry, settings: ApiSettings, metrics: TunnelMetrics, forwarder: ReplicaForwarder
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.forwarder = forwarder
        self.json_budget = BodyBudget(settings.max_json_bytes_per_account)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user")
        if user is None or not user.is_authenticated:
            await auth_error_response(MissingCredentials("authentication required"))(scope, receive, send)
            return
        path = "/" + scope["path_params"]["path"]
        method: str = scope["method"]
        needed = scope_for_path(path)
        if problem := missing_scope(user.principal, needed):
            await auth_error_response(problem, scope=needed)(scope, receive, send)
            return
        forwarded = _header(scope, _FORWARDED) is not None
        try:
            route = route_for(method, path)
            # Only GET: a HEAD is answered by one bridge, as it has no listing to merge.
            if method == "GET" and route is not None and route.merged is not None:
                authorization = _header(scope, b"authorization") or ""
                response = await merged_response(
                    self.registry,
                    self.forwarder,
                    user.identity,
                    path,
                    route.merged,
                    self.settings,
                    authorization,
                    forwarded,
                )
                await response(scope, receive, send)
                return
            await self._relay(scope, receive, send, user.identity, method, path, forwarded)
        except RelayError as exc:
            self.metrics.errors.labels(f"http_{exc.status}").inc()
            await error_response(exc)(scope, receive, send)
        except ClientGone:
            self.metrics.errors.labels("client_gone").inc()

    async def _relay(
        self, scope: Scope, receive: Receive, send: Send, user: str, method: str, path: str, forwarded: bool
    ) -> None:
        # A JSON body that names the model (the route table says which field) is read whole, up to
        # max_json_body_bytes, to route by that model.
        has_body = _has_body(scope)
        route = route_for(method, path)
        model_field = route.model_field if route is not None and has_body else None
        json_body = model_field is not None
        limit = self.settings.max_json_body_bytes if json_body else self.settings.max_request_body_bytes
        length = _content_length(scope)
        if length is not None and length > limit:  # refused before a byte of the body is read
            raise RelayError(413, f"request body larger than {limit} bytes")
        with self.json_budget.reservation(user) as reservation:
            body: bytes | None = None
            model: str | None = None
            if model_field is not None:
                reservation.take(length or 0)  # what it announces, before reading it (429 if over budget)
                body = await _read_body(receive, limit, reservation)
                model = _model_in(body, model_field)
            await self._route(scope, receive, send, user, method, path, forwarded, has_body, body, model)

    async def _route(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        user: str,
        method: str,
        path: str,
        forwarded: bool,
        has_body: bool,
        body: bytes | None,
        model: str | None,
    ) -> None:
        pinned = _header(scope, _BRIDGE)
        candidates, complete = await self.registry.candidates(
            user, local_only=forwarded, reconnect_grace_s=self.settings.reconnect_grace_s
        )
        unreachable = False
        while True:
            try:
                target = self._choose(candidates, complete, forwarded, path, model, pinned)
            except RelayError as exc:
                if unreachable and exc.status in (404, 503):
                    raise _replica_gone() from None
                raise
            if not isinstance(target, RemoteBridge):
                break
            try:
                await self.forwarder.forward(scope, receive, send, target, path, body, has_body)
                return
            except ReplicaUnreachable as exc:  # nothing was sent: try a bridge on another replica
                self.registry.suspect(exc.replica)
                candidates = [c for c in candidates if not _on_replica(c, exc.replica)]
                unreachable = True
        session = target
        query = scope.get("query_string", b"").decode("latin-1")
        headers = request_headers_for_bridge(scope["headers"])
        started = time.perf_counter()
        try:
            stream = await session.open_stream(method, path, query, headers, has_body)
        except (LocalProtocolError, ConnectionError) as exc:
            raise RelayError(503, f"bridge not accepting requests: {exc}", retry_after_s=1) from None
        exchange = _Exchange(self, session, stream, scope, receive, send, started)
        await exchange.run(body or b"", buffered=body is not None or not has_body)

    def _choose(
        self,
        candidates: list[Bridge],
        complete: bool,
        forwarded: bool,
        path: str,
        model: str | None,
        pinned: str | None,
    ) -> Bridge:
        if forwarded and pinned is not None and not any(b.bridge_id == pinned for b in candidates):
            # The replica that sent this saw the bridge here a moment ago: it has just moved.
            raise RelayError(503, "your bridge is reconnecting to another server: try again", retry_after_s=1)
        try:
            return choose_bridge(candidates, self.settings, path=path, model=model, pinned=pinned)
        except RelayError as exc:
            if not complete and exc.status in (404, 503):
                raise directory_down() from None  # the bridge or model may well be on another replica
            raise


def _on_replica(bridge: Bridge, replica: str) -> bool:
    return isinstance(bridge, RemoteBridge) and bridge.record.replica == replica


def _replica_gone() -> RelayError:
    # Its bridges reconnect to the other replicas within seconds (their backoff); the client retries.
    return RelayError(
        503, "the server holding your bridge went away; your bridge is reconnecting to another one", retry_after_s=2
    )


_BRIDGE: Final = BRIDGE_HEADER.encode()
_FORWARDED: Final = FORWARDED_HEADER.encode()


class _Exchange:
    """One request/response through one stream; owns its helper tasks and always cleans up."""

    def __init__(
        self,
        endpoint: RelayEndpoint,
        session: BridgeSession,
        stream: RelayStream,
        scope: Scope,
        receive: Receive,
        send: Send,
        started: float,
    ) -> None:
        self.endpoint = endpoint
        self.settings = endpoint.settings
        self.metrics = endpoint.metrics
        self.session = session
        self.stream = stream
        self.scope = scope
        self.receive = receive
        self.send = send
        self.started = started
        self.client_gone = False
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self, body: bytes, *, buffered: bool) -> None:
        completed = False
        try:
            uploader: asyncio.Task[None] | None = None
            if buffered and not body and not _has_body(self.scope):
                self._watch_disconnect()  # nothing to upload: no task for it
            else:
                uploader = self._spawn(self._send_buffered(body) if buffered else self._pump_body())
            head = await self._await_head(uploader)
            completed = await self._respond(head)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if completed:
                self.session.release(self.stream)
            else:
                reason = "client disconnected" if self.client_gone else "relay ended early"
                await self.session.cancel_stream(self.stream, reason)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        return task

    # --- request body -----------------------------------------------------------------------------

    async def _send_buffered(self, body: bytes) -> None:
        if body:
            await self.stream.send_body_chunk(body)
        if _has_body(self.scope):
            await self.stream.end_body()
        self._watch_disconnect()

    async def _pump_body(self) -> None:
        limit = self.settings.max_request_body_bytes
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self._client_disconnected()
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                self.stream.fail(ErrorCode.TOO_LARGE, f"request body larger than {limit} bytes")
                return
            if chunk:
                await self.stream.send_body_chunk(chunk)
            if not message.get("more_body", False):
                await self.stream.end_body()
                break
        self._watch_disconnect()

    def _watch_disconnect(self) -> None:
        self._spawn(self._wait_disconnect())

    async def _wait_disconnect(self) -> None:
        while True:
            message: Message = await self.receive()
            if message["type"] == "http.disconnect":
                self._client_disconnected()
                return

    def _client_disconnected(self) -> None:
        self.client_gone = True
        self.stream.fail(ErrorCode.CANCELLED, "client disconnected")

    # --- response -------------------------------------------------------------------------------------

    async def _await_head(self, uploader: asyncio.Task[None] | None) -> ResponseHead:
        timeout = self.settings.first_byte_timeout_s
        try:
            async with asyncio.timeout(timeout):
                head = await self.stream.head
        except TimeoutError:
            self.metrics.errors.labels("first_byte_timeout").inc()
            raise RelayError(504, f"the bridge's backend sent nothing within {timeout:g} s") from None
        except StreamFailed as failure:
            if self.client_gone:
                raise ClientGone from None
            upload_error = None
            if uploader is not None and uploader.done() and not uploader.cancelled():
                upload_error = uploader.exception()
            if upload_error is not None and not isinstance(upload_error, StreamClosedError):
                raise upload_error from None
            self.metrics.errors.labels(failure.code.value).inc()
            raise RelayError(status_for_stream_error(failure.code), failure.message) from None
        self.metrics.ttfb.observe(time.perf_counter() - self.started)
        return head

    async def _respond(self, head: ResponseHead) -> bool:
        headers = response_headers_for_client(head.headers)
        content_type = next((v.decode("latin-1") for k, v in headers if k == b"content-type"), "")
        if content_type.startswith(("application/x-ndjson", "text/event-stream")):
            headers.append((b"x-accel-buffering", b"no"))  # belt and braces for any proxy in front
        await self.send({"type": "http.response.start", "status": head.status, "headers": headers})
        idle = self.settings.idle_timeout_s
        stream = self.stream
        try:
            while True:
                if stream.has_chunk:  # already here: no timer to arm
                    chunk = await stream.next_chunk()
                else:
                    async with asyncio.timeout(idle):
                        chunk = await stream.next_chunk()
                if chunk is None:
                    await self.send({"type": "http.response.body", "body": b"", "more_body": False})
                    return True
                await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
                await stream.consumed(len(chunk))
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
