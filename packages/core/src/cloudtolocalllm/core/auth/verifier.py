"""JWT verification: signature, algorithm allowlist, issuer, audience, expiry, not-before.

The allowed algorithms come from configuration, never from the token: a token's ``alg`` header only
selects among them, and must also match the algorithm of the key its ``kid`` names. That closes ``alg:
none`` and the HS256-with-the-RSA-public-key confusion attack.

Verified tokens are remembered in a small bounded cache (keyed by the SHA-256 of the exact token string)
so a client sending the same token on every request does not pay for a signature check each time. A hit
is only used while the token's time claims still hold (``exp``, ``nbf`` and ``iat`` are checked against the
clock with the same leeway on every hit) and while its ``kid`` still resolves to the very key that verified
it; otherwise the token goes through the full verification again. Failures are never cached.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

import jwt

from cloudtolocalllm.core.auth.errors import AuthError, InvalidToken
from cloudtolocalllm.core.auth.jwks import KeySource
from cloudtolocalllm.core.auth.principal import Principal, Verifier

__all__ = ["ASYMMETRIC_ALGORITHMS", "Principal", "TokenVerifier", "Verifier"]

ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_REQUIRED_CLAIMS: Final = ["exp", "iss", "aud", "sub"]
DEFAULT_CACHE_SIZE: Final = 1024


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


class _Verified(NamedTuple):
    principal: Principal
    key: jwt.PyJWK
    kid: str
    expires: int  # the claims as PyJWT compares them (int())
    not_before: int | None
    issued_at: int | None


def _int_claim(claims: dict[str, Any], name: str) -> int | None:
    return int(claims[name]) if name in claims else None


class TokenVerifier:
    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        keys: KeySource,
        algorithms: Sequence[str] = ("RS256", "ES256"),
        leeway_s: float = 30.0,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        unsafe = set(algorithms) - ASYMMETRIC_ALGORITHMS
        if unsafe or not algorithms:
            raise ValueError(f"only asymmetric algorithms may be allowed, got {sorted(unsafe) or 'none'}")
        self.issuer = issuer
        self.audience = audience
        self.keys = keys
        self.algorithms = frozenset(algorithms)
        self.leeway_s = leeway_s
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0 (0 disables the cache)")
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, _Verified] = OrderedDict()

    @property
    def cached_tokens(self) -> int:
        """How many verified tokens are remembered now (at most ``cache_size``)."""
        return len(self._cache)

    async def aclose(self) -> None:
        """Release the key source's HTTP client, if it has one."""
        close = getattr(self.keys, "aclose", None)
        if close is not None:
            await close()

    async def verify(self, token: str) -> Principal:
        if not self.cache_size:
            return (await self._verify(token)).principal
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._cache.get(digest)
        if hit is not None:
            if await self._still_valid(hit):
                self._cache.move_to_end(digest)
                principal = hit.principal
                # A fresh claims dict: a caller that mutates its copy cannot alter the cached one.
                return Principal(principal.subject, principal.scopes, principal.expires_at, dict(principal.claims))
            del self._cache[digest]
        verified = await self._verify(token)  # raises on failure: failures are never cached
        self._cache[digest] = verified
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        principal = verified.principal
        return Principal(principal.subject, principal.scopes, principal.expires_at, dict(principal.claims))

    async def _still_valid(self, hit: _Verified) -> bool:
        """The cached verification still holds: same time checks as PyJWT's, and the same key."""
        now = time.time()
        leeway = self.leeway_s
        if hit.expires <= now - leeway:
            return False
        if hit.not_before is not None and hit.not_before > now + leeway:
            return False
        if hit.issued_at is not None and hit.issued_at > now + leeway:
            return False
        try:
            key = await self.keys.get_key(hit.kid)
        except AuthError:
            return False  # the key left the key set (rotation): verify again, which fails properly
        return key is hit.key

    async def _verify(self, token: str) -> _Verified:
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
        principal = Principal(subject=subject, scopes=_scopes(claims), expires_at=float(claims["exp"]), claims=claims)
        return _Verified(principal, key, kid, int(claims["exp"]), _int_claim(claims, "nbf"), _int_claim(claims, "iat"))
