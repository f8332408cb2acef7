"""Pick the bridge for a request: the caller's bridges only (on any replica), by model, then by fewest
streams in flight, preferring this replica's own bridge on a tie (no extra hop)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from cloudtolocalllm.bridge_api.directory import RemoteBridge
from cloudtolocalllm.bridge_api.errors import RelayError
from cloudtolocalllm.bridge_api.keys.scopes import INFERENCE, MODELS_WRITE
from cloudtolocalllm.bridge_api.registry import Bridge
from cloudtolocalllm.bridge_api.settings import ApiSettings
from cloudtolocalllm.protocol.routes import route_at

__all__ = ["BRIDGE_HEADER", "FORWARDED_HEADER", "choose_bridge", "scope_for_path"]

BRIDGE_HEADER: Final = "x-cloudtolocalllm-bridge"
"""Pins a request to one of the caller's bridges by id (e.g. a blob upload and the create that uses it)."""

FORWARDED_HEADER: Final = "x-cloudtolocalllm-forwarded"
"""Set on a request one replica relays to another: it is served there with local bridges only, never
relayed again (no loops). A client setting it only limits itself to the replica it reached."""


def scope_for_path(path: str) -> str:
    """The scope an API key needs for ``/api/ollama{path}``: ``models:write`` for every method of a path that
    read-only mode guards (a blob's HEAD too: it only precedes an upload), ``inference`` for the rest.

    A path the table does not hold needs ``inference``: the bridge refuses it anyway.
    """
    route = route_at(path)
    return MODELS_WRITE if route is not None and route.mutating else INFERENCE


def choose_bridge(
    candidates: Sequence[Bridge],
    settings: ApiSettings,
    *,
    path: str,
    model: str | None,
    pinned: str | None,
) -> Bridge:
    bridges = [b for b in candidates if b.accepting]
    if not bridges:
        raise RelayError(
            503, "no bridge is connected for your account: start the bridge on your computer", retry_after_s=5
        )
    if sum(b.in_flight for b in bridges) >= settings.max_streams_per_user:
        raise RelayError(429, f"too many requests in flight (limit {settings.max_streams_per_user})", retry_after_s=1)
    if pinned is not None:
        bridges = [b for b in bridges if b.bridge_id == pinned]
        if not bridges:
            raise RelayError(404, f"bridge {pinned!r} is not connected")
    if model:
        with_model = [b for b in bridges if b.has_model(model)]
        if with_model:
            bridges = with_model
        elif (route := route_at(path)) is None or route.needs_listed_model:
            # An OpenAI-compatible backend would silently answer with whatever model it serves.
            if not any(b.backend_reachable for b in bridges):
                raise RelayError(503, _UNREACHABLE, retry_after_s=5)
            raise RelayError(404, f"model '{model}' not found, try pulling it first")
    reachable = [b for b in bridges if b.backend_reachable]
    if not reachable:
        raise RelayError(503, _UNREACHABLE, retry_after_s=5)
    limit = settings.max_streams_per_bridge
    free = [b for b in reachable if b.in_flight < limit]
    if not free:
        raise RelayError(429, f"your bridge is busy ({limit} requests in flight)", retry_after_s=1)
    return min(free, key=lambda b: (b.in_flight, isinstance(b, RemoteBridge)))


_UNREACHABLE: Final = (
    "your bridge is connected but cannot reach its local LLM server: is Ollama (or your backend) running?"
)
