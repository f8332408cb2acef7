"""Every way a token must be refused, and the ways it must be accepted, against a real JWKS endpoint."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from starlette.applications import Starlette

from cloudtolocalllm.core.auth import (
    AuthSettings,
    InvalidToken,
    KeysUnavailable,
    RemoteJwks,
    TokenVerifier,
    build_verifier,
)
from cloudtolocalllm.core.settings import SettingsError, load_settings
from cloudtolocalllm.core.testing import refused_port, running_server
from cloudtolocalllm.dev_issuer import DevIssuer

from .conftest import AUDIENCE, ISSUER, JwksServer

_open: list[TokenVerifier] = []


def _verifier(url: str, *, min_refetch_interval_s: float = 0.0) -> TokenVerifier:
    keys = RemoteJwks(jwks_url=url, min_refetch_interval_s=min_refetch_interval_s)
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, keys=keys, algorithms=["RS256", "ES256"], leeway_s=5)
    _open.append(verifier)
    return verifier


@pytest.fixture(autouse=True)
async def _close_verifiers() -> AsyncIterator[None]:
    yield
    while _open:
        await _open.pop().aclose()


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def _refused(verifier: TokenVerifier, token: str, reason: str) -> None:
    with pytest.raises(InvalidToken, match=reason):
        await verifier.verify(token)


async def test_valid_token_is_accepted_with_subject_and_scopes(issuer: DevIssuer, jwks_server: JwksServer) -> None:
    verifier = _verifier(jwks_server.url)
    token = issuer.mint("alice", scopes=["bridge:connect", "models:read"])
    principal = await verifier.verify(token)
    assert principal.subject == "alice"
    assert principal.scopes == {"bridge:connect", "models:read"}


async def test_auth0_style_audience_list_and_permissions(issuer: DevIssuer, jwks_server: JwksServer) -> None:
    token = issuer.mint(
        "auth0|123",
        audience=None,
        extra_claims={"aud": [AUDIENCE, "https://t.auth0.com/userinfo"], "permissions": ["chat"]},
    )
    principal = await _verifier(jwks_server.url).verify(token)
    assert principal.scopes == {"chat"}


async def test_alg_none_is_refused(issuer: DevIssuer, jwks_server: JwksServer) -> None:
    claims = jwt.decode(issuer.mint("alice"), options={"verify_signature": False})
    token = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': issuer.kid})}.{_b64(claims)}."
    await _refused(_verifier(jwks_server.url), token, "algorithm not allowed")


async def test_hs256_signed_with_the_rsa_public_key_is_refused(issuer: DevIssuer, jwks_server: JwksServer) -> None:
    public_pem = jwt.PyJWK(issuer.jwks()["keys"][0]).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = jwt.decode(issuer.mint("alice"), options={"verify_signature": False})
    header = _b64({"alg": "HS256", "typ": "JWT", "kid": issuer.kid})
    payload = _b64(claims)
    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    token = f"{header}.{payload}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    await _refused(_verifier(jwks_server.url), token, "algorithm not allowed")


async def test_allowed_algorithm_that_does_not_match_the_key_is_refused(
    issuer: DevIssuer, jwks_server: JwksServer
) -> None:
    token = issuer.mint("alice")
    _, payload, signature = token.split(".")
    forged = f"{_b64({'alg': 'ES256', 'typ': 'JWT', 'kid': issuer.kid})}.{payload}.{signature}"
    await _refused(_verifier(jwks_server.url), forged, "does not match its key")


async def test_expired_token_is_refused(issuer: DevIssuer, jwks_server: JwksServer) -> None:
    past = int(time.time()) - 3600
    token = issuer.mint("alice", extra_claims={"iat": past - 60, "nbf": past - 60, "exp": past})
    await _refused(_verifier(jwks_server.url), token, "expired")


async def test_token_within_clock_skew_is_accepted(issuer: DevIssuer, jwks_server: JwksServer) -> None:
    token = issuer.mint("alice", extra_claims={"exp": int(time.time()) - 2})
    assert (await _verifier(jwks_server.url).verify(token)).subject == "alice"


async def test_not_yet_valid_token_is_refused(issuer: DevIssuer, jwks_server: JwksServer) -> None:
    token = issuer.mint("alice", extra_claims={"nbf": int(time.time()) + 600})
    await _refused(_verifier(jwks_server.url), token, "not yet valid")


async def test_wrong_issuer_is_refused(issuer: DevIssuer, jwks_server: JwksServer) -> None:
    token = issuer.mint("alice", extra_claims={"iss": "https://evil.test/"})
    await _refused(_verifier(jwks_server.url), token, "another issuer")


async def test_wrong_audience_is_refused(issuer: DevIssuer, jwks_server: JwksServer) -> None:
    token = issuer.mint("alice", audience="https://other-api.test")
    await _refused(_verifier(jwks_server.url), token, "another audience")


async def test_tampered_payload_is_refused(issuer: DevIssuer, jwks_server: JwksServer) -> None:
    header, _, signature = issuer.mint("alice").split(".")
    claims = jwt.decode(issuer.mint("alice"), options={"verify_signature": False})
    tampered = f"{header}.{_b64({**claims, 'sub': 'bob'})}.{signature}"
    await _refused(_verifier(jwks_server.url), tampered, "signature invalid")


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "Bearer x.y.z", "e30.e30.e30"])
async def test_malformed_tokens_are_refused(garbage: str, jwks_server: JwksServer) -> None:
    await _refused(_verifier(jwks_server.url), garbage, "malformed|no key id|algorithm")


async def test_missing_subject_is_refused(issuer: DevIssuer, jwks_server: JwksServer) -> None:
    token = issuer.mint("", extra_claims={"sub": ""})
    await _refused(_verifier(jwks_server.url), token, "subject|sub")


async def test_rotation_new_key_picked_up_old_key_refused(
    tmp_path: Path, issuer: DevIssuer, jwks_server: JwksServer
) -> None:
    verifier = _verifier(jwks_server.url)
    old_token = issuer.mint("alice")
    assert (await verifier.verify(old_token)).subject == "alice"

    rotated = DevIssuer(tmp_path / "rotated", issuer=ISSUER, audience=AUDIENCE)
    jwks_server.document = rotated.jwks()
    assert (await verifier.verify(rotated.mint("alice"))).subject == "alice"
    await _refused(verifier, old_token, "unknown signing key")


async def test_unknown_kids_cannot_make_it_hammer_the_issuer(issuer: DevIssuer, jwks_server: JwksServer) -> None:
    verifier = _verifier(jwks_server.url, min_refetch_interval_s=60)
    await verifier.verify(issuer.mint("alice"))
    fetches_after_first = jwks_server.fetches
    token = issuer.mint("alice")
    _, payload, signature = token.split(".")
    for i in range(50):
        forged = f"{_b64({'alg': 'RS256', 'typ': 'JWT', 'kid': f'random-{i}'})}.{payload}.{signature}"
        await _refused(verifier, forged, "unknown signing key")
    # The first unknown kid may refetch once at most; the other 49 are answered from the cache.
    assert jwks_server.fetches - fetches_after_first <= 1


async def test_unreachable_jwks_is_a_retryable_error_not_a_bad_token(issuer: DevIssuer) -> None:
    with refused_port() as port:
        verifier = _verifier(f"http://127.0.0.1:{port}/.well-known/jwks.json")
        with pytest.raises(KeysUnavailable):
            await verifier.verify(issuer.mint("alice"))


def test_symmetric_algorithms_cannot_be_configured(issuer: DevIssuer) -> None:
    with pytest.raises(ValueError, match="asymmetric"):
        TokenVerifier(issuer=ISSUER, audience=AUDIENCE, keys=issuer.key_source(), algorithms=["HS256"])


async def test_oidc_discovery_finds_the_jwks(tmp_path: Path) -> None:
    app = Starlette()
    async with running_server(app) as base_url:
        # The issuer URL is only known once the server has its port; routes are added after binding.
        dev = DevIssuer(tmp_path / "oidc", issuer=base_url, audience=AUDIENCE)
        app.router.routes.extend(dev.routes())
        verifier = TokenVerifier(issuer=base_url, audience=AUDIENCE, keys=RemoteJwks(issuer=base_url))
        _open.append(verifier)
        assert (await verifier.verify(dev.mint("carol"))).subject == "carol"


async def test_oidc_jwks_file_trusts_the_keys_in_it_and_fetches_nothing(tmp_path: Path, issuer: DevIssuer) -> None:
    (tmp_path / "jwks.json").write_text(json.dumps(issuer.jwks()))
    settings = load_settings(
        AuthSettings,
        environ={"OIDC_ISSUER": ISSUER, "OIDC_AUDIENCE": AUDIENCE, "OIDC_JWKS_FILE": str(tmp_path / "jwks.json")},
    )
    verifier = build_verifier(settings)  # the issuer's URL is not served anywhere: only the file can answer
    assert (await verifier.verify(issuer.mint("alice"))).subject == "alice"
    stranger = DevIssuer(tmp_path / "stranger", issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(InvalidToken):
        await verifier.verify(stranger.mint("mallory"))


def test_dev_auth_needs_the_dev_issuer_to_give_its_keys() -> None:
    settings = load_settings(AuthSettings, environ={"DEV_AUTH": "true"})
    with pytest.raises(SettingsError) as info:
        build_verifier(settings)
    assert "cloudtolocalllm-dev-issuer" in info.value.problems["DEV_AUTH"]
