"""The verifier's cache of verified tokens: hits skip the signature check, never the time checks."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from cloudtolocalllm.core.auth import InvalidToken, StaticJwks, TokenVerifier
from cloudtolocalllm.dev_issuer import DevIssuer

ISSUER = "http://127.0.0.1/cache-issuer"
AUDIENCE = "cache-tests"


class _Keys:
    """A key set the test can change (key rotation)."""

    def __init__(self, issuer: DevIssuer) -> None:
        self.source = StaticJwks(issuer.jwks())
        self.removed = False

    async def get_key(self, kid: str) -> jwt.PyJWK:
        if self.removed:
            raise InvalidToken("unknown signing key")
        return await self.source.get_key(kid)


@pytest.fixture
def issuer(tmp_path: Path) -> DevIssuer:
    return DevIssuer(tmp_path / "issuer", issuer=ISSUER, audience=AUDIENCE)


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every full (signature-checking) decode the verifier performs."""
    calls: list[str] = []
    real = jwt.decode

    def spy(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", spy)
    return calls


def _verifier(issuer: DevIssuer, *, cache_size: int = 16, leeway_s: float = 0.0) -> TokenVerifier:
    return TokenVerifier(
        issuer=ISSUER, audience=AUDIENCE, keys=issuer.key_source(), leeway_s=leeway_s, cache_size=cache_size
    )


async def test_the_same_token_is_verified_once(issuer: DevIssuer, decodes: list[str]) -> None:
    verifier = _verifier(issuer)
    token = issuer.mint("alice", scopes=["chat"])
    first = await verifier.verify(token)
    second = await verifier.verify(token)
    assert len(decodes) == 1
    assert second == first
    assert second.subject == "alice" and second.scopes == {"chat"}


async def test_a_different_token_string_is_not_a_hit(issuer: DevIssuer, decodes: list[str]) -> None:
    verifier = _verifier(issuer)
    token = issuer.mint("alice")
    await verifier.verify(token)
    other = issuer.mint("bob")
    assert (await verifier.verify(other)).subject == "bob"
    assert len(decodes) == 2
    # The same claims with a broken signature differ as strings: refused, and not served from the cache.
    head, payload, signature = token.split(".")
    tampered = f"{head}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    with pytest.raises(InvalidToken):
        await verifier.verify(tampered)
    assert len(decodes) == 3


async def test_failures_are_never_cached(issuer: DevIssuer, decodes: list[str]) -> None:
    verifier = _verifier(issuer)
    wrong_audience = issuer.mint("alice", audience="someone-else")
    for _ in range(2):
        with pytest.raises(InvalidToken, match="another audience"):
            await verifier.verify(wrong_audience)
    assert len(decodes) == 2
    assert verifier.cached_tokens == 0


async def test_the_cache_is_bounded_and_evicts_the_least_recently_used(issuer: DevIssuer, decodes: list[str]) -> None:
    verifier = _verifier(issuer, cache_size=3)
    tokens = [issuer.mint(f"user-{i}") for i in range(5)]
    for token in tokens:
        await verifier.verify(token)
    assert verifier.cached_tokens == 3
    await verifier.verify(tokens[4])  # still cached
    assert len(decodes) == 5
    await verifier.verify(tokens[0])  # evicted: verified again
    assert len(decodes) == 6
    assert verifier.cached_tokens == 3


async def test_a_cached_token_still_expires_on_time(issuer: DevIssuer) -> None:
    verifier = _verifier(issuer, leeway_s=0.0)
    token = issuer.mint("alice", ttl_s=1)
    expires_at = (await verifier.verify(token)).expires_at
    assert verifier.cached_tokens == 1
    while time.time() < expires_at:
        await verifier.verify(token)  # a hit while valid
        await asyncio.sleep(0.05)
    with pytest.raises(InvalidToken, match="expired"):
        await verifier.verify(token)
    assert verifier.cached_tokens == 0


async def test_a_cached_token_honours_the_leeway(issuer: DevIssuer, decodes: list[str]) -> None:
    verifier = _verifier(issuer, leeway_s=30.0)
    token = issuer.mint("alice", ttl_s=-10)  # expired 10 s ago: inside the leeway
    await verifier.verify(token)
    await verifier.verify(token)
    assert len(decodes) == 1
    expired = issuer.mint("alice", ttl_s=-40)
    with pytest.raises(InvalidToken, match="expired"):
        await verifier.verify(expired)


async def test_a_not_yet_valid_token_is_refused_every_time(issuer: DevIssuer) -> None:
    verifier = _verifier(issuer, leeway_s=5.0)
    future = issuer.mint("alice", extra_claims={"nbf": int(time.time()) + 60})
    for _ in range(2):
        with pytest.raises(InvalidToken, match="not yet valid"):
            await verifier.verify(future)
    assert verifier.cached_tokens == 0


async def test_a_cached_token_is_refused_once_its_key_is_rotated_out(issuer: DevIssuer) -> None:
    keys = _Keys(issuer)
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, keys=keys, leeway_s=0.0)
    token = issuer.mint("alice")
    await verifier.verify(token)
    keys.removed = True
    with pytest.raises(InvalidToken, match="unknown signing key"):
        await verifier.verify(token)
    assert verifier.cached_tokens == 0


async def test_callers_cannot_alter_the_cached_claims(issuer: DevIssuer) -> None:
    verifier = _verifier(issuer)
    token = issuer.mint("alice")
    (await verifier.verify(token)).claims["sub"] = "mallory"
    assert (await verifier.verify(token)).claims["sub"] == "alice"


async def test_cache_size_zero_disables_the_cache(issuer: DevIssuer, decodes: list[str]) -> None:
    verifier = _verifier(issuer, cache_size=0)
    token = issuer.mint("alice")
    await verifier.verify(token)
    await verifier.verify(token)
    assert len(decodes) == 2
    assert verifier.cached_tokens == 0
