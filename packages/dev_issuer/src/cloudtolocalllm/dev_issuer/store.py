"""The refresh tokens of both flows, in one store: rotated on every use, a reused one revokes its login.

A refresh token is opaque and random; only its SHA-256 is kept. Every token rotated from one sign-in shares
a ``family``: presenting a token that was already rotated out revokes the whole family (Auth0's reuse
detection), whichever flow issued it. State is in memory and bounded (the oldest entries go first).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cloudtolocalllm.dev_issuer.errors import OAuthError

__all__ = ["Grant", "RefreshTokens", "digest"]


def digest(secret: str) -> str:
    """How a secret is kept: its SHA-256, never the secret itself."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Grant:
    """What a refresh token stands for; ``flow`` names the flow that issued it (and answers its refresh)."""

    flow: str
    family: str
    subject: str
    client_id: str
    scope: tuple[str, ...]
    audience: str | None
    expires_at: float


class RefreshTokens:
    def __init__(self, *, max_tokens: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_tokens = max_tokens
        self.clock = clock
        self._grants: OrderedDict[str, Grant] = OrderedDict()  # by SHA-256 of the token
        self._rotated: OrderedDict[str, tuple[str, str]] = OrderedDict()  # used token digest -> (family, flow)

    @staticmethod
    def new_family() -> str:
        return secrets.token_hex(8)

    def issue(self, grant: Grant) -> str:
        token = secrets.token_urlsafe(32)
        self._grants[digest(token)] = grant
        while len(self._grants) > self.max_tokens:
            self._grants.popitem(last=False)
        return token

    def flow_of(self, token: str) -> str | None:
        """The flow that issued ``token`` (still valid or already rotated out); None if unknown."""
        key = digest(token)
        if (grant := self._grants.get(key)) is not None:
            return grant.flow
        rotated = self._rotated.get(key)
        return rotated[1] if rotated else None

    def rotate(self, token: str, client_id: str) -> Grant:
        """Spend ``token``: its grant, to issue the next token of the family with. A reused token revokes it."""
        key = digest(token)
        if (rotated := self._rotated.get(key)) is not None:
            self._revoke(rotated[0])
            raise OAuthError("invalid_grant", "refresh token already used; the login was revoked")
        grant = self._grants.get(key)
        if grant is None or grant.client_id != client_id:
            raise OAuthError("invalid_grant", "unknown or revoked refresh token")
        del self._grants[key]
        self._rotated[key] = (grant.family, grant.flow)
        while len(self._rotated) > 4 * self.max_tokens:
            self._rotated.popitem(last=False)
        if self.clock() >= grant.expires_at:
            raise OAuthError("invalid_grant", "the refresh token expired")
        return grant

    def _revoke(self, family: str) -> None:
        for key in [k for k, g in self._grants.items() if g.family == family]:
            del self._grants[key]
