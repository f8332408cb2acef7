"""The dev issuer's device flow (RFC 8628) and rotating refresh tokens, over a real server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from starlette.routing import Mount

from cloudtolocalllm.core.app import ServiceInfo, create_app
from cloudtolocalllm.core.auth import TokenVerifier
from cloudtolocalllm.core.testing import running_server
from cloudtolocalllm.dev_issuer.device_flow import DEVICE_CODE_GRANT, DevDeviceFlow, dev_issuer_routes
from cloudtolocalllm.dev_issuer.issuer import DevIssuer

ISSUER = "http://issuer.test/dev-issuer"
AUDIENCE = "aud-device"
CLIENT = "cloudtolocalllm-bridge"


class ManualClock:
    """The flow's clock, moved by the test: poll intervals and expiry without sleeping or racing the load."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Issuer:
    flow: DevDeviceFlow
    base: str  # where the issuer's routes are served
    http: httpx.AsyncClient
    clock: ManualClock

    async def start(self, **overrides: str) -> dict[str, Any]:
        form = {"client_id": CLIENT, "scope": "openid offline_access", "audience": AUDIENCE, **overrides}
        response = await self.http.post(self.base + "/oauth/device/code", data=form)
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        body: dict[str, Any] = response.json()
        return body

    async def poll(self, device_code: str, client_id: str = CLIENT) -> httpx.Response:
        form = {"grant_type": DEVICE_CODE_GRANT, "device_code": device_code, "client_id": client_id}
        return await self.http.post(self.base + "/oauth/token", data=form)

    async def refresh(self, refresh_token: str) -> httpx.Response:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": CLIENT}
        return await self.http.post(self.base + "/oauth/token", data=form)

    async def activate(self, user_code: str, subject: str = "dev-user", action: str = "approve") -> httpx.Response:
        form = {"user_code": user_code, "subject": subject, "action": action}
        return await self.http.post(self.base + "/activate", data=form)


@asynccontextmanager
async def _serve(tmp_path: Path, **flow_options: Any) -> AsyncIterator[Issuer]:
    dev = DevIssuer(tmp_path / "keys", issuer=ISSUER, audience=AUDIENCE)
    clock = ManualClock()
    flow = DevDeviceFlow(dev, clock=clock, **flow_options)
    app = create_app(ServiceInfo("dev-issuer", "1"), [Mount("/dev-issuer", routes=dev_issuer_routes(dev, flow))])
    async with running_server(app) as url, httpx.AsyncClient(timeout=10) as http:
        yield Issuer(flow, url + "/dev-issuer", http, clock)


@pytest.fixture
async def issuer(tmp_path: Path) -> AsyncIterator[Issuer]:
    async with _serve(tmp_path, interval_s=0.3, access_token_ttl_s=120) as running:
        yield running


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


async def _next_wall_clock_second(after: int) -> None:
    await asyncio.sleep(max(0.0, after + 1 - time.time()) + 0.01)
    assert int(time.time()) > after


def _error(response: httpx.Response) -> str:
    assert response.status_code in (400, 401), response.text
    assert response.headers["cache-control"] == "no-store"
    error: str = response.json()["error"]
    return error


async def test_discovery_names_the_device_and_token_endpoints(issuer: Issuer) -> None:
    doc = (await issuer.http.get(issuer.base + "/.well-known/openid-configuration")).json()
    assert doc["issuer"] == ISSUER
    assert doc["device_authorization_endpoint"] == issuer.base + "/oauth/device/code"
    assert doc["token_endpoint"] == issuer.base + "/oauth/token"
    assert DEVICE_CODE_GRANT in doc["grant_types_supported"]
    assert "refresh_token" in doc["grant_types_supported"]
    jwks = (await issuer.http.get(issuer.base + "/.well-known/jwks.json")).json()
    assert jwks["keys"][0]["kid"] == issuer.flow.issuer.kid


async def test_pending_then_approved_then_tokens_the_api_accepts(issuer: Issuer) -> None:
    start = await issuer.start()
    assert start["verification_uri"] == issuer.base + "/activate"
    assert start["verification_uri_complete"] == f"{issuer.base}/activate?user_code={start['user_code']}"
    assert len(start["user_code"]) == 9 and start["user_code"][4] == "-"
    assert start["interval"] == 0.3 and start["expires_in"] == 600

    assert _error(await issuer.poll(start["device_code"])) == "authorization_pending"
    page = await issuer.http.get(start["verification_uri_complete"])
    assert page.status_code == 200
    assert f"value='{start['user_code']}'" in page.text and "value='dev-user'" in page.text
    approved = await issuer.activate(start["user_code"].lower(), subject="alice")  # case and dash forgiven
    assert approved.status_code == 200 and "signed in as alice" in approved.text

    issuer.clock.advance(0.3)
    response = await issuer.poll(start["device_code"])
    assert response.status_code == 200, response.text
    tokens = response.json()
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 120
    assert tokens["refresh_token"] and "." not in tokens["refresh_token"]  # opaque
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, keys=issuer.flow.issuer.key_source())
    principal = await verifier.verify(tokens["access_token"])
    assert principal.subject == "alice"
    # A device code yields one set of tokens.
    issuer.clock.advance(0.3)
    assert _error(await issuer.poll(start["device_code"])) == "invalid_grant"


async def test_polling_faster_than_the_interval_gets_slow_down(issuer: Issuer) -> None:
    start = await issuer.start()
    assert _error(await issuer.poll(start["device_code"])) == "authorization_pending"
    assert _error(await issuer.poll(start["device_code"])) == "slow_down"
    assert _error(await issuer.poll(start["device_code"])) == "slow_down"  # every early poll counts
    issuer.clock.advance(0.3)
    assert _error(await issuer.poll(start["device_code"])) == "authorization_pending"


async def test_a_denied_request_gets_access_denied(issuer: Issuer) -> None:
    start = await issuer.start()
    denied = await issuer.activate(start["user_code"], action="deny")
    assert denied.status_code == 200 and "Denied" in denied.text
    assert _error(await issuer.poll(start["device_code"])) == "access_denied"
    # Decided codes cannot be approved afterwards.
    assert (await issuer.activate(start["user_code"])).status_code == 404


async def test_an_expired_code_gets_expired_token(tmp_path: Path) -> None:
    async with _serve(tmp_path, interval_s=0.1, device_code_ttl_s=0.5) as issuer:
        start = await issuer.start()
        issuer.clock.advance(0.6)
        assert (await issuer.activate(start["user_code"])).status_code == 404
        assert _error(await issuer.poll(start["device_code"])) == "expired_token"


async def test_refresh_tokens_rotate_and_a_reused_one_revokes_the_login(issuer: Issuer) -> None:
    start = await issuer.start()
    assert issuer.flow.approve(start["user_code"], "bob")
    first = (await issuer.poll(start["device_code"])).json()
    # Tokens carry whole-second times (RS256 is deterministic): refresh in the next second to tell them apart.
    await _next_wall_clock_second(_claims(first["access_token"])["iat"])
    second = await issuer.refresh(first["refresh_token"])
    assert second.status_code == 200, second.text
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    # A new access token, minted at the refresh: later than the first (whole seconds), for the same user.
    assert _claims(rotated["access_token"])["iat"] > _claims(first["access_token"])["iat"]
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, keys=issuer.flow.issuer.key_source())
    assert (await verifier.verify(rotated["access_token"])).subject == "bob"
    third = await issuer.refresh(rotated["refresh_token"])
    assert third.status_code == 200
    latest = third.json()["refresh_token"]
    # The first token again: refused, and the whole login (including the latest token) is revoked.
    assert _error(await issuer.refresh(first["refresh_token"])) == "invalid_grant"
    assert _error(await issuer.refresh(latest)) == "invalid_grant"
    assert _error(await issuer.refresh("never-issued")) == "invalid_grant"


async def test_bad_requests_are_refused_with_oauth_errors(issuer: Issuer) -> None:
    url = issuer.base + "/oauth/device/code"
    missing_audience = await issuer.http.post(url, data={"client_id": CLIENT, "scope": "offline_access"})
    assert _error(missing_audience) == "invalid_request"
    assert "audience is required" in missing_audience.json()["error_description"]
    wrong = await issuer.http.post(url, data={"client_id": CLIENT, "audience": "other"})
    assert _error(wrong) == "invalid_request"
    assert _error(await issuer.http.post(url, data={"audience": AUDIENCE})) == "invalid_request"
    assert _error(await issuer.http.post(url, json={"client_id": CLIENT, "audience": AUDIENCE})) == "invalid_request"
    token_url = issuer.base + "/oauth/token"
    assert _error(await issuer.http.post(token_url, data={"grant_type": "password", "client_id": CLIENT})) == (
        "unsupported_grant_type"
    )
    start = await issuer.start()
    assert _error(await issuer.poll(start["device_code"], client_id="another-client")) == "invalid_grant"
    # No refresh token without offline_access.
    start = await issuer.start(scope="openid")
    issuer.flow.approve(start["user_code"])
    assert "refresh_token" not in (await issuer.poll(start["device_code"])).json()


async def test_activation_refuses_cross_site_posts_and_unknown_codes(issuer: Issuer) -> None:
    start = await issuer.start()
    form = {"user_code": start["user_code"], "subject": "mallory", "action": "approve"}
    cross = await issuer.http.post(issuer.base + "/activate", data=form, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403
    assert (await issuer.activate("BCDF-GHJK")).status_code == 404
    assert _error(await issuer.poll(start["device_code"])) == "authorization_pending"
    page = await issuer.http.get(issuer.base + "/activate", params={"user_code": "<script>"})
    assert "<script>" not in page.text


async def test_pending_requests_are_bounded(tmp_path: Path) -> None:
    async with _serve(tmp_path, max_pending=3) as issuer:
        starts = [await issuer.start() for _ in range(5)]
        assert len(issuer.flow._pending) == 3
        assert _error(await issuer.poll(starts[0]["device_code"])) == "invalid_grant"  # the oldest went first
        assert _error(await issuer.poll(starts[-1]["device_code"])) == "authorization_pending"


class _CodeFlowStandIn:
    """A flow mounted behind the device flow (as api-backend mounts the authorization-code flow)."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def discovery(self) -> dict[str, Any]:
        return {"authorization_endpoint": "http://x/authorize", "grant_types_supported": ["authorization_code"]}

    async def token(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        self.seen.append(await request.body())
        return JSONResponse({"error": "handled_behind"}, status_code=400, headers={"Cache-Control": "no-store"})


async def test_grants_it_does_not_serve_go_to_the_flow_behind_it(tmp_path: Path) -> None:
    dev = DevIssuer(tmp_path / "keys", issuer=ISSUER, audience=AUDIENCE)
    clock = ManualClock()
    flow = DevDeviceFlow(dev, interval_s=0.1, clock=clock)
    behind = _CodeFlowStandIn()
    routes = [*flow.routes(behind=behind), *dev.routes()]
    app = create_app(ServiceInfo("dev-issuer", "1"), [Mount("/dev-issuer", routes=routes)])
    async with running_server(app) as url, httpx.AsyncClient(timeout=10) as http:
        issuer = Issuer(flow, url + "/dev-issuer", http, clock)
        doc = (await http.get(issuer.base + "/.well-known/openid-configuration")).json()
        assert doc["authorization_endpoint"] == "http://x/authorize"
        assert {"authorization_code", DEVICE_CODE_GRANT, "refresh_token"} <= set(doc["grant_types_supported"])
        code = {"grant_type": "authorization_code", "code": "c", "client_id": "web"}
        assert _error(await http.post(issuer.base + "/oauth/token", data=code)) == "handled_behind"
        assert behind.seen == [b"grant_type=authorization_code&code=c&client_id=web"]
        assert _error(await issuer.refresh("not-mine")) == "handled_behind"
        start = await issuer.start()
        flow.approve(start["user_code"])
        tokens = (await issuer.poll(start["device_code"])).json()
        assert (await issuer.refresh(tokens["refresh_token"])).status_code == 200  # its own: served here
