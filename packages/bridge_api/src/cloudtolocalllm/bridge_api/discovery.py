"""``GET /.well-known/cloudtolocalllm``: what a bridge needs to sign in, so a user types only the cloud's URL.

``cloudtolocalllm-bridge login https://app.example.com`` reads this document, then runs the device flow
against ``issuer`` with ``client_id``/``audience``/``scope``, dials ``websocket_url`` and (client mode)
forwards to ``api_base``. Public, no authentication, no secrets; cached for five minutes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from cloudtolocalllm.bridge_api.settings import ApiSettings
from cloudtolocalllm.core.auth import AuthSettings

__all__ = ["BRIDGE_SCOPE", "DISCOVERY_PATH", "CloudDocument", "discovery_endpoint"]

DISCOVERY_PATH: Final = "/.well-known/cloudtolocalllm"
BRIDGE_SCOPE: Final = "openid profile offline_access"
"""offline_access: a refresh token, so the bridge renews its sign-in without the user."""
_CACHE: Final = {"Cache-Control": "public, max-age=300"}


class CloudDocument(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    issuer: str
    client_id: str
    audience: str
    scope: str
    websocket_url: str
    api_base: str


def _document(public_url: str, settings: ApiSettings, auth: AuthSettings) -> CloudDocument:
    scheme, _, rest = public_url.partition("://")
    ws_scheme = "wss" if scheme == "https" else "ws"
    return CloudDocument(
        version=1,
        issuer=auth.issuer,
        client_id=settings.bridge_client_id,
        audience=auth.audience,
        scope=BRIDGE_SCOPE,
        websocket_url=f"{ws_scheme}://{rest}/ws/bridge",
        api_base=f"{public_url}/api/ollama",
    )


def discovery_endpoint(settings: ApiSettings, auth: AuthSettings) -> Callable[[Request], Awaitable[Response]]:
    configured = settings.public_url.rstrip("/")
    fixed = msgspec.json.encode(_document(configured, settings, auth)) if configured else None

    async def discovery(request: Request) -> Response:
        body = fixed
        if body is None:
            origin = f"{request.url.scheme}://{request.url.netloc}"
            body = msgspec.json.encode(_document(origin, settings, auth))
        return Response(body, media_type="application/json", headers=_CACHE)

    return discovery
