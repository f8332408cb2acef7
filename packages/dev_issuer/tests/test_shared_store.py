"""Both flows behind one token endpoint (as api-backend serves them) share one refresh-token store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.routing import Mount

from cloudtolocalllm.core.app import ServiceInfo, create_app
from cloudtolocalllm.dev_issuer import DevCodeFlow, DevCodeFlowSettings, DevDeviceFlow, DevIssuer, OAuthError
from cloudtolocalllm.dev_issuer.store import Grant, RefreshTokens

from .test_code_flow import AUDIENCE, CLIENT, ISSUER, REDIRECT, exchange, pkce, sign_in


@pytest.fixture
def flows(tmp_path: Path) -> tuple[DevCodeFlow, DevDeviceFlow]:
    issuer = DevIssuer(tmp_path / "k", issuer=ISSUER, audience=AUDIENCE)
    code = DevCodeFlow(issuer, DevCodeFlowSettings(dev_redirect_uris=[REDIRECT]))
    return code, DevDeviceFlow(issuer, refresh_tokens=code.refresh_tokens)


@pytest.fixture
async def client(flows: tuple[DevCodeFlow, DevDeviceFlow]) -> AsyncIterator[httpx.AsyncClient]:
    code, device = flows
    routes = device.routes(behind=code) + code.routes() + code.issuer.routes()
    app = create_app(ServiceInfo("t", "1"), [Mount("/dev-issuer", routes=routes)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        yield c


async def _refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    data = {"grant_type": "refresh_token", "client_id": CLIENT, "refresh_token": token}
    return await client.post("/dev-issuer/oauth/token", data=data)


async def test_a_browser_refresh_token_rotates_through_the_shared_endpoint_and_its_reuse_revokes_the_login(
    client: httpx.AsyncClient, flows: tuple[DevCodeFlow, DevDeviceFlow]
) -> None:
    code, device = flows
    assert code.refresh_tokens is device.refresh_tokens
    verifier, challenge = pkce()
    first = (await exchange(client, await sign_in(client, challenge), verifier)).json()["refresh_token"]
    second = await _refresh(client, first)
    assert second.status_code == 200
    assert "id_token" in second.json(), "the code flow answered its own refresh token"
    assert (await _refresh(client, first)).json()["error"] == "invalid_grant"  # reused: the login is revoked
    assert (await _refresh(client, second.json()["refresh_token"])).json()["error"] == "invalid_grant"


def test_the_store_keeps_digests_names_the_issuing_flow_and_expires_tokens() -> None:
    now = [100.0]
    store = RefreshTokens(clock=lambda: now[0])
    grant = Grant("device", store.new_family(), "alice", "bridge", ("offline_access",), AUDIENCE, expires_at=110.0)
    token = store.issue(grant)
    assert token not in repr(vars(store))
    assert store.flow_of(token) == "device" and store.flow_of("other") is None
    assert store.rotate(token, "bridge") == grant
    assert store.flow_of(token) == "device", "a rotated-out token is still known (to detect its reuse)"
    now[0] = 111.0
    with pytest.raises(OAuthError, match="expired"):
        store.rotate(store.issue(grant), "bridge")
