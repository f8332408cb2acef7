"""``GET /api/bridge/status``: the caller's bridges on every replica, and nobody else's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from cloudtolocalllm.bridge_api.directory import BridgeRecord, DirectoryUnavailable
from cloudtolocalllm.bridge_api.directory_sync import record_of
from cloudtolocalllm.bridge_api.errors import directory_down, error_response
from cloudtolocalllm.bridge_api.registry import BridgeRegistry
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


def _info_of_record(record: BridgeRecord) -> BridgeInfo:
    return BridgeInfo(
        id=record.bridge_id,
        name=record.name,
        version=record.version,
        platform=record.platform,
        backend_kind=record.backend_kind,
        backend_reachable=record.backend_reachable,
        models=record.models,
        connected_since=record.connected_since,
        last_heartbeat=record.last_heartbeat,
        streams_in_flight=record.in_flight,
    )


def status_endpoint(registry: BridgeRegistry) -> Callable[[Request], Awaitable[Response]]:
    encoder = msgspec.json.Encoder()

    @requires_auth()
    async def bridge_status(request: Request) -> Response:
        user = request.user.identity
        try:
            remote = await registry.records_for(user)
        except DirectoryUnavailable:
            return error_response(directory_down())  # a partial list would look like lost bridges
        # This replica's bridges as the record it publishes for them: one mapping from a session to its fields.
        local = [record_of(s, registry.replica_url) for s in registry.bridges_for(user)]
        infos = [_info_of_record(r) for r in local + remote]
        body = encoder.encode(StatusReport(sorted(infos, key=lambda i: i.connected_since)))
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})

    return bridge_status
