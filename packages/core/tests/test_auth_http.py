"""The auth backend on HTTP and WebSocket routes, through a real server where the behaviour is on the wire."""

from __future__ import annotations

import httpx
import pytest
import websockets
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from cloudtolocalllm.core import ServiceInfo, create_app
from cloudtolocalllm.core.app import ServiceApp
from cloudtolocalllm.core.auth import BearerAuthBackend, TokenVerifier, requires_auth
from cloudtolocalllm.core.testing import running_server
from cloudtolocalllm.dev_issuer import DevIssuer

from .conftest import AUDIENCE, ISSUER


@requires_auth()
async def whoami(request: Request) -> JSONResponse:
    return JSONResponse({"sub": request.user.identity})


@requires_auth("admin")
async def admin(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


@requires_auth()
async def echo_ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(websocket.user.identity)
    await websocket.close()


async def public(request: Request) -> JSONResponse:
    return JSONResponse({"user": request.user.is_authenticated})


@pytest.fixture
def app(issuer: DevIssuer) -> ServiceApp:
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, keys=issuer.key_source())
    return create_app(
        ServiceInfo("test", "1.0"),
        [
            Route("/me", whoami),
            Route("/admin", admin),
            Route("/public", public),
            WebSocketRoute("/ws", echo_ws),
        ],
        auth=BearerAuthBackend(verifier),
    )


@pytest.fixture
async def client(app: ServiceApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_valid_token_reaches_the_endpoint(client: httpx.AsyncClient, issuer: DevIssuer) -> None:
    response = await client.get("/me", headers={"Authorization": f"Bearer {issuer.mint('alice')}"})
    assert response.status_code == 200
    assert response.json() == {"sub": "alice"}


async def test_missing_credentials_get_401_with_a_bare_challenge(client: httpx.AsyncClient) -> None:
    response = await client.get("/me")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="cloudtolocalllm"'
    assert response.json() == {"error": "authentication required"}


@pytest.mark.parametrize("header", ["Bearer nope", "Basic dXNlcjpwYXNz", "Bearer ", "bearer a.b.c"])
async def test_bad_credentials_get_401_invalid_token(client: httpx.AsyncClient, header: str) -> None:
    response = await client.get("/public", headers={"Authorization": header})
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert "error" in response.json()


async def test_missing_scope_gets_403_insufficient_scope(client: httpx.AsyncClient, issuer: DevIssuer) -> None:
    response = await client.get("/admin", headers={"Authorization": f"Bearer {issuer.mint('alice')}"})
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert 'scope="admin"' in response.headers["www-authenticate"]
    granted = await client.get("/admin", headers={"Authorization": f"Bearer {issuer.mint('root', scopes=['admin'])}"})
    assert granted.status_code == 200


async def test_anonymous_access_to_public_routes(client: httpx.AsyncClient) -> None:
    assert (await client.get("/public")).json() == {"user": False}


async def test_websocket_with_valid_token_is_accepted(app: ServiceApp, issuer: DevIssuer) -> None:
    async with running_server(app) as base_url:
        url = base_url.replace("http", "ws") + "/ws"
        headers = {"Authorization": f"Bearer {issuer.mint('alice')}"}
        async with websockets.connect(url, additional_headers=headers) as ws:
            assert await ws.recv() == "alice"


@pytest.mark.parametrize("token", [None, "forged.token.value", "expired"])
async def test_websocket_refused_before_the_upgrade(app: ServiceApp, issuer: DevIssuer, token: str | None) -> None:
    if token == "expired":
        token = issuer.mint("alice", extra_claims={"exp": 1_000_000, "iat": 999_000, "nbf": 999_000})
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with running_server(app) as base_url:
        url = base_url.replace("http", "ws") + "/ws"
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url, additional_headers=headers):
                pytest.fail("the upgrade must not complete")
    response = refused.value.response
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="cloudtolocalllm"')
    assert b"error" in response.body
