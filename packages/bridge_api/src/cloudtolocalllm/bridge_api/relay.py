"""``/api/ollama/{path}``: relay one Ollama or OpenAI API call through the caller's bridge, streaming.

A raw ASGI endpoint (it is the hot path). This module decides where a call goes: it checks scope and body
limits, reads a JSON body whole to route by the model it names, and picks the bridge. A bridge held here is
then relayed by one ``exchange.Exchange`` (stream <-> ASGI); a bridge held by another replica is reached
through that replica (forward.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

import msgspec
from starlette.types import Receive, Scope, Send

from cloudtolocalllm.bridge_api.body_budget import BodyBudget, Reservation
from cloudtolocalllm.bridge_api.directory import RemoteBridge
from cloudtolocalllm.bridge_api.errors import (
    RelayError,
    directory_down,
    error_response,
)
from cloudtolocalllm.bridge_api.exchange import Exchange
from cloudtolocalllm.bridge_api.forward import ClientGone, ReplicaForwarder, ReplicaUnreachable
from cloudtolocalllm.bridge_api.keys.scopes import missing_scope
from cloudtolocalllm.bridge_api.merge import merged_response
from cloudtolocalllm.bridge_api.metrics import TunnelMetrics
from cloudtolocalllm.bridge_api.registry import Bridge, BridgeRegistry
from cloudtolocalllm.bridge_api.routing import BRIDGE_HEADER, FORWARDED_HEADER, choose_bridge, scope_for_path
from cloudtolocalllm.bridge_api.settings import ApiSettings
from cloudtolocalllm.core.auth import MissingCredentials, auth_error_response
from cloudtolocalllm.protocol.routes import ApiRoute, route_for

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


@dataclass(frozen=True, slots=True)
class _Call:
    """One call on its way: the ASGI triple, and what the endpoint read from its scope once."""

    scope: Scope
    receive: Receive
    send: Send
    user: str
    method: str
    path: str
    forwarded: bool  # sent on by another replica: only this replica's bridges may take it
    has_body: bool


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
            call = _Call(scope, receive, send, user.identity, method, path, forwarded, _has_body(scope))
            await self._relay(call, route)
        except RelayError as exc:
            self.metrics.errors.labels(f"http_{exc.status}").inc()
            await error_response(exc)(scope, receive, send)
        except ClientGone:
            self.metrics.errors.labels("client_gone").inc()

    async def _relay(self, call: _Call, route: ApiRoute | None) -> None:
        # A JSON body that names the model (``route``'s field: None for a method or path the table does not
        # hold) is read whole, up to max_json_body_bytes, to route by that model.
        model_field = route.model_field if route is not None and call.has_body else None
        json_body = model_field is not None
        limit = self.settings.max_json_body_bytes if json_body else self.settings.max_request_body_bytes
        length = _content_length(call.scope)
        if length is not None and length > limit:  # refused before a byte of the body is read
            raise RelayError(413, f"request body larger than {limit} bytes")
        with self.json_budget.reservation(call.user) as reservation:
            body: bytes | None = None
            model: str | None = None
            if model_field is not None:
                reservation.take(length or 0)  # what it announces, before reading it (429 if over budget)
                body = await _read_body(call.receive, limit, reservation)
                model = _model_in(body, model_field)
            await self._route(call, body, model)

    async def _route(self, call: _Call, body: bytes | None, model: str | None) -> None:
        pinned = _header(call.scope, _BRIDGE)
        candidates, complete = await self.registry.candidates(
            call.user, local_only=call.forwarded, reconnect_grace_s=self.settings.reconnect_grace_s
        )
        unreachable = False
        while True:
            try:
                target = self._choose(candidates, complete, call.forwarded, call.path, model, pinned)
            except RelayError as exc:
                if unreachable and exc.status in (404, 503):
                    raise _replica_gone() from None
                raise
            if not isinstance(target, RemoteBridge):
                break
            try:
                await self.forwarder.forward(
                    call.scope, call.receive, call.send, target, call.path, body, call.has_body
                )
                return
            except ReplicaUnreachable as exc:  # nothing was sent: try a bridge on another replica
                self.registry.suspect(exc.replica)
                candidates = [c for c in candidates if not _on_replica(c, exc.replica)]
                unreachable = True
        exchange = Exchange(
            target, self.settings, self.metrics, call.scope, call.receive, call.send, has_body=call.has_body
        )
        await exchange.run(call.method, call.path, body)

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
