"""Key scopes and which one each relayed path needs.

No new path list: the model-changing paths are routing's model-management paths minus ``/api/show`` (a
read), plus blob uploads; everything else the relay carries (chat, generate, embed, tags, show, ps, version
and every ``/v1`` path) is inference. When one route table serves the allowlist, relay, routing and merge,
the scope becomes a column of it.
"""

from __future__ import annotations

from typing import Final

from cloudtolocalllm.bridge_api.routing import MODEL_MANAGEMENT_PATHS
from cloudtolocalllm.core.auth import InsufficientScope, Principal

__all__ = [
    "ALL_SCOPES",
    "BRIDGE",
    "INFERENCE",
    "KEY_ID_CLAIM",
    "MODELS_WRITE",
    "key_id_of",
    "missing_scope",
    "scope_for_path",
]

INFERENCE: Final = "inference"
MODELS_WRITE: Final = "models:write"
BRIDGE: Final = "bridge"
ALL_SCOPES: Final = (INFERENCE, MODELS_WRITE, BRIDGE)

KEY_ID_CLAIM: Final = "ctllm_key_id"
"""Set in the claims of a principal that an API key (not a JWT) authenticated."""

_MODEL_WRITE_PATHS: Final = MODEL_MANAGEMENT_PATHS - {"/api/show"}
_BLOBS: Final = "/api/blobs/"


def scope_for_path(path: str) -> str:
    """The scope a key needs for ``/api/ollama{path}``."""
    if path in _MODEL_WRITE_PATHS or path.startswith(_BLOBS):
        return MODELS_WRITE
    return INFERENCE


def key_id_of(principal: Principal) -> str | None:
    """The id of the API key behind ``principal``; None for a signed-in user's JWT."""
    value = principal.claims.get(KEY_ID_CLAIM)
    return value if isinstance(value, str) else None


def missing_scope(principal: Principal, scope: str) -> InsufficientScope | None:
    """Why an API key may not do this (a JWT carries the user's full rights here: scopes limit keys only)."""
    if key_id_of(principal) is None or scope in principal.scopes:
        return None
    return InsufficientScope(f"this API key lacks the '{scope}' scope")
