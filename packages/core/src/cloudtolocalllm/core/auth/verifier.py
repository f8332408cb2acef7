"""JWT verification: signature, algorithm allowlist, issuer, audience, expiry, not-before.

The allowed algorithms come from configuration, never from the token: a token's ``alg`` header only
selects among them, and must also match the algorithm of the key its ``kid`` names. That closes ``alg:
none`` and the HS256-with-the-RSA-public-key confusion attack.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import jwt
import msgspec

from cloudtolocalllm.core.auth.errors import InvalidToken
from cloudtolocalllm.core.auth.jwks import KeySource

__all__ = ["ASYMMETRIC_ALGORITHMS", "Principal", "TokenVerifier"]

ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_REQUIRED_CLAIMS: Final = ["exp", "iss", "aud", "sub"]


class Principal(msgspec.Struct, frozen=True):
    """Who a verified token speaks for."""

    subject: str
    scopes: frozenset[str]
    expires_at: float
    claims: dict[str, Any]


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    # Auth0 puts OAuth scopes in "scope" (space separated) and RBAC permissions in "permissions".
    found: set[str] = set()
    scope = claims.get("scope")
    if isinstance(scope, str):
        found.update(scope.split())
    for key in ("scp", "permissions"):
        value = claims.get(key)
        if isinstance(value, list):
            found.update(item for item in value if isinstance(item, str))
    return frozenset(found)


class TokenVerifier:
    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        keys: KeySource,
        algorithms: Sequence[str] = ("RS256", "ES256"),
        leeway_s: float = 30.0,
    ) -> None:
        unsafe = set(algorithms) - ASYMMETRIC_ALGORITHMS
        if unsafe or not algorithms:
            raise ValueError(f"only asymmetric algorithms may be allowed, got {sorted(unsafe) or 'none'}")
        self.issuer = issuer
        self.audience = audience
        self.keys = keys
        self.algorithms = frozenset(algorithms)
        self.leeway_s = leeway_s

    async def aclose(self) -> None:
        """Release the key source's HTTP client, if it has one."""
        close = getattr(self.keys, "aclose", None)
        if close is not None:
            await close()

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise InvalidToken("token algorithm not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("token has no key id")
        key = await self.keys.get_key(kid)
        if key.algorithm_name != alg:
            raise InvalidToken("token algorithm does not match its key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("token is from another issuer") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("token signature invalid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"token lacks the {exc.claim!r} claim") from None
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise InvalidToken("token subject invalid")
        return Principal(subject=subject, scopes=_scopes(claims), expires_at=float(claims["exp"]), claims=claims)
