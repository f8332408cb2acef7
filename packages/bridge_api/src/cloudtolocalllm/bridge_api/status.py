"""``GET /api/bridge/status``: the caller's bridges, and nobody else's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from cloudtolocalllm.bridge_api.registry import BridgeRegistry
from cloudtolocalllm.bridge_api.session import BridgeSession
from cloudtolocalllm.core.auth import requires_auth

__all__ = ["BridgeInfo", "status_endpoint"]


class BridgeInfo(msgspec.Struct):
    id: str
    name: str
    version: str
    platform: str
    backend_kind: str
    backend_reachable: bool
    models: list[str]
    connected_since: float
    last_heartbeat: float
    streams_in_flight: int


class StatusReport(msgspec.Struct):
    bridges: list[BridgeInfo]


def _info(session: BridgeSession) -> BridgeInfo:
    return BridgeInfo(
        id=session.bridge_id,
        name=session.name,
        version=session.software_version,
        platform=session.platform,
        backend_kind=str(session.backend_kind),
        backend_reachable=session.backend_reachable,
        models=session.models,
        connected_since=session.connected_at,
        last_heartbeat=session.last_heartbeat,
        streams_in_flight=session.in_flight,
    )


def status_endpoint(registry: BridgeRegistry) -> Callable[[Request], Awaitable[Response]]:
    encoder = msgspec.json.Encoder()

    @requires_auth()
    async def bridge_status(request: Request) -> Response:
        sessions = sorted(registry.bridges_for(request.user.identity), key=lambda s: s.connected_at)
        body = encoder.encode(StatusReport([_info(s) for s in sessions]))
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})

    return bridge_status
