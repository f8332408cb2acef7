"""Signing keys: a JWKS fetched from the issuer and cached, or a static set (the dev issuer, tests).

An unknown ``kid`` triggers a refetch (that is how key rotation is picked up) at most once per
``min_refetch_interval_s``, and concurrent misses share one fetch, so a caller sending random kids cannot
make us hammer the identity provider.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

import httpx
import jwt
import msgspec

from cloudtolocalllm.core.auth.errors import InvalidToken, KeysUnavailable

__all__ = ["KeySource", "RemoteJwks", "StaticJwks", "parse_jwks"]

log = logging.getLogger(__name__)


class KeySource(Protocol):
    async def get_key(self, kid: str) -> jwt.PyJWK: ...


def parse_jwks(document: Mapping[str, Any]) -> dict[str, jwt.PyJWK]:
    """Index a JWKS by kid, keeping only asymmetric signing keys (an ``oct`` key would allow forgery)."""
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document.get("keys", ()):
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if entry.get("use", "sig") != "sig" or not isinstance(entry.get("kid"), str):
            continue
        try:
            keys[entry["kid"]] = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            log.warning("skipping unusable key in JWKS", extra={"kid": entry["kid"]})
    return keys


class StaticJwks:
    """A fixed key set: the dev issuer's own keys, or a JWKS file (``OIDC_JWKS_FILE``)."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self._keys = parse_jwks(document)

    async def get_key(self, kid: str) -> jwt.PyJWK:
        try:
            return self._keys[kid]
        except KeyError:
            raise InvalidToken("unknown signing key") from None


class _Discovery(msgspec.Struct):
    jwks_uri: str


class RemoteJwks:
    """A JWKS URL (or an OIDC issuer whose discovery document names it), cached in memory."""

    def __init__(
        self,
        *,
        jwks_url: str | None = None,
        issuer: str | None = None,
        cache_ttl_s: float = 600.0,
        min_refetch_interval_s: float = 30.0,
        timeout_s: float = 5.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not jwks_url and not issuer:
            raise ValueError("RemoteJwks needs jwks_url or issuer")
        self._jwks_url = jwks_url
        self._issuer = issuer
        self._cache_ttl_s = cache_ttl_s
        self._min_refetch_interval_s = min_refetch_interval_s
        self._client = client or httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")  # last successful fetch
        self._attempted_at = float("-inf")  # last attempt, successful or not
        self._lock = asyncio.Lock()
        self.fetch_count = 0

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get_key(self, kid: str) -> jwt.PyJWK:
        now = time.monotonic()
        if now - self._fetched_at > self._cache_ttl_s or (
            kid not in self._keys and now - self._attempted_at >= self._min_refetch_interval_s
        ):
            await self._refresh(seen_attempt=self._attempted_at)
        key = self._keys.get(kid)
        if key is not None:
            return key
        if not self._keys:
            raise KeysUnavailable("the identity provider's signing keys could not be fetched")
        raise InvalidToken("unknown signing key")

    async def _refresh(self, *, seen_attempt: float) -> None:
        async with self._lock:
            if self._attempted_at != seen_attempt:
                return  # another task fetched while we waited: share its result
            self._attempted_at = time.monotonic()
            try:
                self._keys = parse_jwks(await self._fetch_document())
                self._fetched_at = time.monotonic()
            except (httpx.HTTPError, msgspec.DecodeError, ValueError) as exc:
                # Keep serving the keys we have: an IdP blip must not log everyone out.
                log.warning("JWKS fetch failed", extra={"error": f"{type(exc).__name__}: {exc}"})

    async def _fetch_document(self) -> dict[str, Any]:
        self.fetch_count += 1
        if self._jwks_url is None:
            assert self._issuer is not None
            url = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
            response = await self._client.get(url)
            response.raise_for_status()
            self._jwks_url = msgspec.json.decode(response.content, type=_Discovery).jwks_uri
        response = await self._client.get(self._jwks_url)
        response.raise_for_status()
        document = msgspec.json.decode(response.content)
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("JWKS document has no 'keys' list")
        return document
