"""Key scopes, and telling an API key's principal from a signed-in user's (which path needs which scope is
routing's ``scope_for_path``, read from the route table)."""

from __future__ import annotations

from typing import Final

from cloudtolocalllm.core.auth import InsufficientScope, Principal

__all__ = [
    "ALL_SCOPES",
    "BRIDGE",
    "INFERENCE",
    "KEY_ID_CLAIM",
    "MODELS_WRITE",
    "key_id_of",
    "missing_scope",
]

INFERENCE: Final = "inference"
MODELS_WRITE: Final = "models:write"
BRIDGE: Final = "bridge"
ALL_SCOPES: Final = (INFERENCE, MODELS_WRITE, BRIDGE)

KEY_ID_CLAIM: Final = "ctllm_key_id"
"""Set in the claims of a principal that an API key (not a JWT) authenticated."""


def key_id_of(principal: Principal) -> str | None:
    """The id of the API key behind ``principal``; None for a signed-in user's JWT."""
    value = principal.claims.get(KEY_ID_CLAIM)
    return value if isinstance(value, str) else None


def missing_scope(principal: Principal, scope: str) -> InsufficientScope | None:
    """Why an API key may not do this (a JWT carries the user's full rights here: scopes limit keys only)."""
    if key_id_of(principal) is None or scope in principal.scopes:
        return None
    return InsufficientScope(f"this API key lacks the '{scope}' scope")
