"""``/ws/bridge``: the bridge's WebSocket. The token is verified before the upgrade (core's auth
middleware answers 401 to a bad one); the first frame must be a compatible Hello, answered by a Welcome."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Final

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from cloudtolocalllm.bridge_api.keys.scopes import BRIDGE, key_id_of, missing_scope
from cloudtolocalllm.bridge_api.metrics import TunnelMetrics
from cloudtolocalllm.bridge_api.registry import BridgeRegistry
from cloudtolocalllm.bridge_api.session import BridgeSession
from cloudtolocalllm.bridge_api.settings import ApiSettings
from cloudtolocalllm.core.auth import Verifier, auth_error_response, deny_websocket, requires_auth
from cloudtolocalllm.protocol import (
    PROTOCOL_VERSION,
    CloseCode,
    Connection,
    Hello,
    Limits,
    Role,
    Welcome,
    agreed_features,
    close_reason,
)
from cloudtolocalllm.protocol.tunnel import HandshakeFailed, accept_hello, send_welcome
from cloudtolocalllm.protocol.tunnel.asgi_transport import AsgiTransport

__all__ = ["bridge_socket_endpoint"]

_BRIDGE_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_MAX_MODELS: Final = 4096
POLICY_VIOLATION: Final = 1008
TRY_AGAIN_LATER: Final = 1013


def _hello_problem(hello: Hello) -> str | None:
    if not _BRIDGE_ID.fullmatch(hello.bridge_id):
        return "bridge_id must be 1-64 characters of A-Z a-z 0-9 . _ -"
    if len(hello.name) > 128 or len(hello.models) > _MAX_MODELS:
        return "Hello too large (name > 128 characters or too many models)"
    return None


def bridge_socket_endpoint(
    registry: BridgeRegistry, settings: ApiSettings, verifier: Verifier, metrics: TunnelMetrics
) -> Callable[[WebSocket], Awaitable[None]]:
    limits = Limits(
        max_frame_bytes=settings.max_frame_bytes,
        initial_window=settings.stream_window_bytes,
        max_concurrent_streams=settings.max_streams_per_bridge,
    )

    @requires_auth()
    async def bridge_socket(websocket: WebSocket) -> None:
        if registry.draining:
            if "websocket.http.response" in websocket.scope.get("extensions", {}):
                response = JSONResponse({"error": "server is shutting down"}, 503, headers={"Retry-After": "1"})
                await websocket.send_denial_response(response)
            else:
                await websocket.close(TRY_AGAIN_LATER, "server is shutting down")
            return
        principal = websocket.user.principal
        if refusal := missing_scope(principal, BRIDGE):
            await deny_websocket(websocket, auth_error_response(refusal, scope=BRIDGE))
            return
        await websocket.accept()
        transport = AsgiTransport(websocket)
        conn = Connection(Role.CLOUD, max_recv_window=settings.max_stream_window_bytes)
        try:
            hello = await accept_hello(transport, conn, timeout_s=settings.handshake_timeout_s)
        except HandshakeFailed as exc:
            if exc.error is not None:
                metrics.errors.labels("handshake").inc()
            if exc.close_code is not None:
                await transport.close(exc.close_code, exc.close_reason)
            return
        if problem := _hello_problem(hello):
            await websocket.close(CloseCode.PROTOCOL_VIOLATION, close_reason(CloseCode.PROTOCOL_VIOLATION, problem))
            return
        user = principal.subject
        # No set of the user's bridge ids here: it would stay alive in this frame for the whole session.
        # Counted over every replica: the limit is per account, not per server.
        if await registry.count_everywhere(user, other_than=hello.bridge_id) >= settings.max_bridges_per_user:
            limit = settings.max_bridges_per_user
            await websocket.close(POLICY_VIOLATION, f"too many bridges for this account (limit {limit})")
            return
        session = BridgeSession(
            transport=transport,
            conn=conn,
            hello=hello,
            user=user,
            token_expires_at=principal.expires_at,
            settings=settings,
            verifier=verifier,
            metrics=metrics,
        )
        session.key_id = key_id_of(principal)
        welcome = Welcome(
            version=PROTOCOL_VERSION,
            session_id=session.session_id,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            limits=limits,
            token_expires_at=principal.expires_at,
            features=agreed_features(hello.features),
        )
        try:
            await send_welcome(transport, conn, welcome)
        except HandshakeFailed:
            return
        await registry.add(session)
        try:
            await session.run()
        finally:
            registry.remove(session)

    return bridge_socket
