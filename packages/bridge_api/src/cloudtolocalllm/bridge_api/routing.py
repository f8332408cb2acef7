"""Pick the bridge for a request: the caller's bridges only, by model, then by fewest streams in flight."""

from __future__ import annotations

from typing import Final

from cloudtolocalllm.bridge_api.errors import RelayError
from cloudtolocalllm.bridge_api.registry import BridgeRegistry
from cloudtolocalllm.bridge_api.session import BridgeSession
from cloudtolocalllm.bridge_api.settings import ApiSettings

__all__ = ["BRIDGE_HEADER", "MODEL_MANAGEMENT_PATHS", "choose_bridge"]

BRIDGE_HEADER: Final = "x-cloudtolocalllm-bridge"
"""Pins a request to one of the caller's bridges by id (e.g. a blob upload and the create that uses it)."""

# Model management: the backend itself knows best whether the model exists (a bridge's model list can
# lag a local `ollama pull` by one status interval), so these are never refused for an unlisted model.
# Inference requests are: an OpenAI-compatible backend would silently answer with whatever it serves.
MODEL_MANAGEMENT_PATHS: Final = frozenset(
    {"/api/pull", "/api/create", "/api/push", "/api/copy", "/api/delete", "/api/show"}
)


def choose_bridge(
    registry: BridgeRegistry,
    settings: ApiSettings,
    *,
    user: str,
    path: str,
    model: str | None,
    pinned: str | None,
) -> BridgeSession:
    bridges = [b for b in registry.bridges_for(user) if b.accepting]
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
        elif path not in MODEL_MANAGEMENT_PATHS:
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
    return min(free, key=lambda b: b.in_flight)


_UNREACHABLE: Final = (
    "your bridge is connected but cannot reach its local LLM server: is Ollama (or your backend) running?"
)
