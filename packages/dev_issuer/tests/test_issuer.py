"""The dev issuer: stable keys on disk, a CLI that mints tokens services accept, and its HTTP endpoints."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import jwt
from starlette.routing import Mount

from cloudtolocalllm.core.app import ServiceInfo, create_app
from cloudtolocalllm.core.auth import AuthSettings, RemoteJwks, TokenVerifier, build_verifier
from cloudtolocalllm.core.settings import load_settings
from cloudtolocalllm.core.testing import running_server
from cloudtolocalllm.dev_issuer.issuer import KEY_FILE, DevIssuer, dev_verifier


def test_key_is_created_private_and_reused(tmp_path: Path) -> None:
    first = DevIssuer(tmp_path / "k", issuer="i", audience="a")
    mode = stat.S_IMODE((tmp_path / "k" / KEY_FILE).stat().st_mode)
    assert mode == 0o600
    second = DevIssuer(tmp_path / "k", issuer="i", audience="a")
    assert first.kid == second.kid
    assert first.jwks() == second.jwks()
    assert "d" not in first.jwks()["keys"][0], "the JWKS must never contain the private exponent"


async def test_cli_token_is_accepted_by_a_service_configured_with_dev_auth(tmp_path: Path) -> None:
    env = {**os.environ, "DEV_ISSUER_DIR": str(tmp_path / "dev"), "DEV_AUDIENCE": "aud-x"}
    token = subprocess.run(  # noqa: ASYNC221 - a one-shot CLI call; the test has nothing else to run
        [
            sys.executable,
            "-m",
            "cloudtolocalllm.dev_issuer.cli",
            "token",
            "--sub",
            "alice",
            "--scope",
            "s1",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    settings = load_settings(AuthSettings, environ={**env, "DEV_AUTH": "true"})
    principal = await dev_verifier(settings).verify(token)
    assert principal.subject == "alice"
    assert principal.scopes == {"s1"}
    assert jwt.get_unverified_header(token)["alg"] == "RS256"


async def test_served_discovery_and_jwks_verify_its_tokens(tmp_path: Path) -> None:
    issuer_url_path = "/dev-issuer"
    app = create_app(ServiceInfo("dev-issuer", "1"))
    async with running_server(app) as base_url:
        dev = DevIssuer(tmp_path / "d", issuer=base_url + issuer_url_path, audience="aud")
        app.router.routes.append(Mount(issuer_url_path, routes=dev.routes()))
        async with httpx.AsyncClient() as client:
            discovery = (await client.get(dev.issuer + "/.well-known/openid-configuration")).json()
        assert discovery["issuer"] == dev.issuer
        verifier = TokenVerifier(issuer=dev.issuer, audience="aud", keys=RemoteJwks(issuer=dev.issuer))
        try:
            assert (await verifier.verify(dev.mint("bob"))).subject == "bob"
        finally:
            await verifier.aclose()


async def test_cli_jwks_lets_a_service_without_the_dev_issuer_accept_its_tokens(tmp_path: Path) -> None:
    env = {**os.environ, "DEV_ISSUER_DIR": str(tmp_path / "dev"), "DEV_AUDIENCE": "aud-x"}
    cli = [sys.executable, "-m", "cloudtolocalllm.dev_issuer.cli"]
    jwks = subprocess.run([*cli, "jwks"], env=env, capture_output=True, text=True, check=True).stdout  # noqa: ASYNC221
    token = subprocess.run(  # noqa: ASYNC221 - one-shot CLI calls; the test has nothing else to run
        [*cli, "token", "--sub", "carol"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    (tmp_path / "jwks.json").write_text(jwks)
    oidc = {
        "OIDC_ISSUER": "http://localhost:8080/dev-issuer",  # DEV_ISSUER_URL's default
        "OIDC_AUDIENCE": "aud-x",
        "OIDC_JWKS_FILE": str(tmp_path / "jwks.json"),
    }
    assert (await build_verifier(load_settings(AuthSettings, environ=oidc)).verify(token)).subject == "carol"
