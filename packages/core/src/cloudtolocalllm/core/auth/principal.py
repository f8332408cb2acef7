"""Who a request speaks for, and what turns a token into that: all the auth middleware needs (no JWT library)."""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

__all__ = ["Principal", "Verifier"]


class Principal(msgspec.Struct, frozen=True):
    """Who a verified token speaks for."""

    subject: str
    scopes: frozenset[str]
    expires_at: float
    claims: dict[str, Any]


class Verifier(Protocol):
    """Turns a bearer token into the :class:`Principal` it speaks for, or raises an ``AuthError``.

    :class:`TokenVerifier` (JWTs) is one; a service may put others in front of it (e.g. API keys).
    """

    async def verify(self, token: str) -> Principal: ...
