"""Listings that span all of a user's bridges: ``/api/tags``, ``/api/ps`` and ``/v1/models``.

This replica asks its own bridges through their tunnels, and every other replica holding one of the user's
bridges for its part of the listing (one request per replica, merged there over its own bridges)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import aiohttp
import msgspec
from starlette.responses import JSONResponse, Response

from cloudtolocalllm.bridge_api.directory import RemoteBridge
from cloudtolocalllm.bridge_api.errors import RelayError, directory_down, error_response
from cloudtolocalllm.bridge_api.forward import ReplicaForwarder
from cloudtolocalllm.bridge_api.registry import BridgeRegistry
from cloudtolocalllm.bridge_api.session import BridgeSession
from cloudtolocalllm.bridge_api.settings import ApiSettings
from cloudtolocalllm.protocol.routes import Listing
from cloudtolocalllm.protocol.tunnel import StreamFailed

__all__ = ["fetch_from_bridge", "merged_response"]

log = logging.getLogger(__name__)

_MAX_LISTING_BYTES: Final = 8 * 1024 * 1024


async def fetch_from_bridge(session: BridgeSession, path: str, timeout_s: float) -> tuple[int, bytes]:
    """A small GET through the tunnel, read whole (listings only; never for user content)."""
    stream = session.open_stream("GET", path, "", [("accept", "application/json")], False)
    completed = False
    try:
        async with asyncio.timeout(timeout_s):
            head = await stream.head
            chunks: list[bytes] = []
            size = 0
            while (chunk := await stream.read()) is not None:
                size += len(chunk)
                if size > _MAX_LISTING_BYTES:
                    raise RelayError(502, "model listing from the bridge is too large")
                chunks.append(chunk)
                stream.consumed(len(chunk))
        completed = True
        return head.status, b"".join(chunks)
    finally:
        session.end_stream(stream, None if completed else "listing abandoned")


async def merged_response(
    registry: BridgeRegistry,
    forwarder: ReplicaForwarder,
    user: str,
    path: str,
    listing: Listing,
    settings: ApiSettings,
    authorization: str,
    local_only: bool,
) -> Response:
    """``listing`` (the route table's column for ``path``) says where the entries are and what names one;
    entries with the same name are listed once."""
    candidates, complete = await registry.candidates(
        user, local_only=local_only, reconnect_grace_s=settings.reconnect_grace_s
    )
    if not candidates and not complete:
        return error_response(directory_down())
    usable = [b for b in candidates if b.backend_reachable]
    bridges = [b for b in usable if isinstance(b, BridgeSession)]
    replicas = sorted({b.record.replica for b in usable if isinstance(b, RemoteBridge)})
    if not usable:
        message = (
            "your bridge is connected but cannot reach its local LLM server: is Ollama (or your backend) running?"
            if candidates
            else "no bridge is connected for your account: start the bridge on your computer"
        )
        return error_response(RelayError(503, message, retry_after_s=5))
    sources = [f"bridge {b.bridge_id}" for b in bridges] + [f"replica {r}" for r in replicas]
    list_key, id_key = listing.list_key, listing.id_key
    results = await asyncio.gather(
        *(fetch_from_bridge(b, path, settings.first_byte_timeout_s) for b in bridges),
        *(forwarder.listing(replica, path, authorization) for replica in replicas),
        return_exceptions=True,
    )
    merged: list[Any] = []
    seen: set[str] = set()
    failures = 0
    for source, result in zip(sources, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, (StreamFailed, RelayError, TimeoutError, ConnectionError, aiohttp.ClientError)):
                raise result
            failures += 1
            log.warning("listing failed", extra={"source": source, "path": path})
            continue
        status, body = result
        try:
            document = msgspec.json.decode(body)
            entries = document.get(list_key, []) if isinstance(document, dict) and status == 200 else None
        except msgspec.DecodeError:
            entries = None
        if not isinstance(entries, list):
            failures += 1
            continue
        for entry in entries:
            identity = entry.get(id_key) if isinstance(entry, dict) else None
            if isinstance(identity, str) and identity not in seen:
                seen.add(identity)
                merged.append(entry)
    if failures == len(sources):
        return error_response(RelayError(502, "no bridge could list its models"))
    if list_key == "data":
        return JSONResponse({"object": "list", "data": merged})
    return JSONResponse({list_key: merged})
