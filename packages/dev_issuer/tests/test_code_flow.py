"""The dev issuer's browser sign-in: authorization code + PKCE, refresh rotation, discovery, logout, CORS."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from starlette.routing import Mount

from cloudtolocalllm.core.app import ServiceApp, ServiceInfo, create_app
from cloudtolocalllm.core.auth import TokenVerifier
from cloudtolocalllm.core.settings import SettingsError
from cloudtolocalllm.dev_issuer import DevIssuer
from cloudtolocalllm.dev_issuer.code_flow import DevCodeFlow, DevCodeFlowSettings, dev_code_flow_from_env

ISSUER = "http://testserver/dev-issuer"
AUDIENCE = "aud-web"
APP = "http://app.test:8000"
REDIRECT = APP + "/callback"
CLIENT = "cloudtolocalllm-web"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


@pytest.fixture
def flow(tmp_path: Path) -> DevCodeFlow:
    issuer = DevIssuer(tmp_path / "k", issuer=ISSUER, audience=AUDIENCE)
    return DevCodeFlow(issuer, DevCodeFlowSettings(dev_redirect_uris=[REDIRECT], dev_code_ttl_s=5))


@pytest.fixture
def app(flow: DevCodeFlow) -> ServiceApp:
    service = create_app(ServiceInfo("t", "1"), [Mount("/dev-issuer", routes=flow.routes() + flow.issuer.routes())])
    flow.install_cors(service)
    return service


@pytest.fixture
async def client(app: ServiceApp) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        yield c


def authorize_params(challenge: str, **extra: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": CLIENT,
        "redirect_uri": REDIRECT,
        "scope": "openid profile offline_access",
        "state": "st4te",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "audience": AUDIENCE,
        **extra,
    }


async def sign_in(client: httpx.AsyncClient, challenge: str, subject: str = "dev-user", **extra: str) -> str:
    page = await client.get("/dev-issuer/authorize", params=authorize_params(challenge, **extra))
    assert page.status_code == 200
    assert 'value="dev-user"' in page.text
    assert "script" not in page.headers["content-security-policy"]
    posted = await client.post(
        "/dev-issuer/authorize", data={**authorize_params(challenge, **extra), "subject": subject}
    )
    assert posted.status_code == 303
    location = urlsplit(posted.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    query = parse_qs(location.query)
    assert query["state"] == ["st4te"]
    assert query["iss"] == [ISSUER], "RFC 9207: the response names its issuer"
    return query["code"][0]


async def exchange(client: httpx.AsyncClient, code: str, verifier: str, **extra: str) -> httpx.Response:
    data = {
        "grant_type": "authorization_code",
        "client_id": CLIENT,
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": REDIRECT,
        **extra,
    }
    return await client.post("/dev-issuer/oauth/token", data=data)


async def test_code_flow_issues_tokens_the_api_accepts(client: httpx.AsyncClient, flow: DevCodeFlow) -> None:
    verifier, challenge = pkce()
    code = await sign_in(client, challenge, subject="carol", nonce="n0")
    response = await exchange(client, code, verifier)
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["cache-control"] == "no-store"
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["refresh_token"]
    principal = await TokenVerifier(issuer=ISSUER, audience=AUDIENCE, keys=flow.issuer.key_source()).verify(
        body["access_token"]
    )
    assert principal.subject == "carol"
    id_claims = jwt.decode(body["id_token"], options={"verify_signature": False})
    assert id_claims["aud"] == CLIENT and id_claims["nonce"] == "n0" and id_claims["sub"] == "carol"


async def test_code_is_single_use_and_checks_verifier_and_redirect(client: httpx.AsyncClient) -> None:
    verifier, challenge = pkce()
    code = await sign_in(client, challenge)
    wrong = await exchange(client, code, pkce()[0])
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    # The failed attempt consumed the code: the right verifier is now too late.
    assert (await exchange(client, code, verifier)).json()["error"] == "invalid_grant"

    code = await sign_in(client, challenge)
    mismatch = await exchange(client, code, verifier, redirect_uri=APP + "/other")
    assert mismatch.json()["error"] == "invalid_grant"

    code = await sign_in(client, challenge)
    assert (await exchange(client, code, verifier)).status_code == 200
    assert (await exchange(client, code, verifier)).json()["error"] == "invalid_grant"


async def test_code_expires(client: httpx.AsyncClient, flow: DevCodeFlow, monkeypatch: pytest.MonkeyPatch) -> None:
    verifier, challenge = pkce()
    code = await sign_in(client, challenge)
    later = time.monotonic() + 6
    monkeypatch.setattr("cloudtolocalllm.dev_issuer.code_flow.time.monotonic", lambda: later)
    assert (await exchange(client, code, verifier)).json()["error"] == "invalid_grant"


async def test_refresh_rotates_and_reuse_revokes_the_family(client: httpx.AsyncClient) -> None:
    verifier, challenge = pkce()
    first = (await exchange(client, await sign_in(client, challenge), verifier)).json()

    async def refresh(token: str) -> httpx.Response:
        data = {"grant_type": "refresh_token", "client_id": CLIENT, "refresh_token": token}
        return await client.post("/dev-issuer/oauth/token", data=data)

    second = await refresh(first["refresh_token"])
    assert second.status_code == 200
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    # The old one is spent; presenting it again revokes the new one too.
    assert (await refresh(first["refresh_token"])).json()["error"] == "invalid_grant"
    assert (await refresh(rotated["refresh_token"])).json()["error"] == "invalid_grant"


async def test_bad_requests(client: httpx.AsyncClient) -> None:
    _, challenge = pkce()
    unknown_redirect = await client.get(
        "/dev-issuer/authorize", params=authorize_params(challenge, redirect_uri="http://evil.test/cb")
    )
    assert unknown_redirect.status_code == 400, "never redirect to an unlisted URI"
    assert "location" not in unknown_redirect.headers
    plain = await client.get("/dev-issuer/authorize", params=authorize_params(challenge, code_challenge_method="plain"))
    assert plain.status_code == 303
    assert parse_qs(urlsplit(plain.headers["location"]).query)["error"] == ["invalid_request"]
    silent = await client.get("/dev-issuer/authorize", params=authorize_params(challenge, prompt="none"))
    assert parse_qs(urlsplit(silent.headers["location"]).query)["error"] == ["login_required"]
    assert parse_qs(urlsplit(silent.headers["location"]).query)["iss"] == [ISSUER], "error responses too"
    other_audience = await client.get("/dev-issuer/authorize", params=authorize_params(challenge, audience="x"))
    assert "unknown audience" in parse_qs(urlsplit(other_audience.headers["location"]).query)["error_description"][0]
    grant = await client.post("/dev-issuer/oauth/token", data={"grant_type": "password"})
    assert grant.json()["error"] == "unsupported_grant_type"
    html_injection = await client.post(
        "/dev-issuer/authorize", data={**authorize_params(challenge), "subject": "<script>"}
    )
    assert html_injection.status_code == 400 and "<script>" not in html_injection.text


async def test_without_audience_the_access_token_is_not_for_the_api(
    client: httpx.AsyncClient, flow: DevCodeFlow
) -> None:
    verifier, challenge = pkce()
    params = authorize_params(challenge)
    del params["audience"]
    page = await client.post("/dev-issuer/authorize", data={**params, "subject": "dev-user"})
    code = parse_qs(urlsplit(page.headers["location"]).query)["code"][0]
    token = (await exchange(client, code, verifier)).json()["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["aud"] != AUDIENCE


async def test_discovery_logout_and_cors(client: httpx.AsyncClient, flow: DevCodeFlow) -> None:
    doc = (await client.get("/dev-issuer/.well-known/openid-configuration")).json()
    assert doc["authorization_endpoint"] == ISSUER + "/authorize"
    assert doc["token_endpoint"] == ISSUER + "/oauth/token"
    assert doc["end_session_endpoint"] == ISSUER + "/logout"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert doc["jwks_uri"] == ISSUER + "/.well-known/jwks.json"
    assert (await client.get(doc["jwks_uri"].removeprefix("http://testserver"))).json() == flow.issuer.jwks()

    out = await client.get("/dev-issuer/logout", params={"post_logout_redirect_uri": APP + "/"})
    assert out.status_code == 303 and out.headers["location"] == APP + "/"
    elsewhere = await client.get("/dev-issuer/logout", params={"post_logout_redirect_uri": "http://evil.test/"})
    assert elsewhere.status_code == 200 and "location" not in elsewhere.headers

    ok = await client.post("/dev-issuer/oauth/token", data={"grant_type": "x"}, headers={"Origin": APP})
    assert ok.headers["access-control-allow-origin"] == APP
    other = await client.post(
        "/dev-issuer/oauth/token", data={"grant_type": "x"}, headers={"Origin": "http://evil.test"}
    )
    assert "access-control-allow-origin" not in other.headers
    preflight = await client.options(
        "/health",
        headers={
            "Origin": APP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()


async def test_register_grant_dispatches_on_grant_type(client: httpx.AsyncClient, flow: DevCodeFlow) -> None:
    async def device(params: dict[str, str]) -> dict[str, object]:
        return {"access_token": "x", "device_code": params["device_code"]}

    flow.register_grant("urn:ietf:params:oauth:grant-type:device_code", device)
    with pytest.raises(ValueError, match="already"):
        flow.register_grant("refresh_token", device)
    body = (
        await client.post(
            "/dev-issuer/oauth/token",
            data={"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "device_code": "d"},
        )
    ).json()
    assert body == {"access_token": "x", "device_code": "d"}
    assert "urn:ietf:params:oauth:grant-type:device_code" in flow.discovery()["grant_types_supported"]


def test_settings_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    issuer = DevIssuer(tmp_path / "k", issuer=ISSUER, audience=AUDIENCE)
    monkeypatch.setenv("DEV_REDIRECT_URIS", f"{REDIRECT}, http://127.0.0.1:9/")
    flow = dev_code_flow_from_env(issuer)
    assert flow.settings.origins == [APP, "http://127.0.0.1:9"]
    monkeypatch.setenv("DEV_REDIRECT_URIS", "javascript:alert(1)")
    with pytest.raises(SettingsError):
        dev_code_flow_from_env(issuer)
