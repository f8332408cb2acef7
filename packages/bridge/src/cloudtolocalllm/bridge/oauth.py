"""The OAuth client side of ``login`` and of token renewal: discovery, the Device Authorization Grant
(RFC 8628) and the refresh-token grant, over httpx. Works with Auth0 and with the dev issuer.

Nothing here logs a token; errors carry the issuer's ``error`` code and description only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = [
    "DEVICE_CODE_GRANT",
    "DeviceAuthorization",
    "Endpoints",
    "IssuerUnreachable",
    "OAuthError",
    "TokenResponse",
    "discover",
    "poll_for_token",
    "refresh_tokens",
    "start_device_flow",
]

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_SLOW_DOWN_STEP_S = 5.0  # RFC 8628 §3.5: on slow_down, poll 5 s less often from then on


class OAuthError(Exception):
    """The issuer answered with an OAuth error (``error`` is its code, e.g. ``invalid_grant``)."""

    def __init__(self, error: str, description: str = "") -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description


class IssuerUnreachable(Exception):
    """The issuer could not be reached, or answered something that is not OAuth (e.g. a 5xx page)."""


@dataclass(frozen=True)
class Endpoints:
    issuer_url: str
    device_authorization_endpoint: str
    token_endpoint: str


@dataclass(frozen=True)
class DeviceAuthorization:
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float


@dataclass(frozen=True)
class TokenResponse:
    access_token: str
    expires_in: float
    refresh_token: str | None
    scope: str


async def _send(http: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    try:
        return await http.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        raise IssuerUnreachable(f"cannot reach the issuer at {url}: {exc.__class__.__name__}: {exc}") from None


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise IssuerUnreachable(f"the issuer answered HTTP {response.status_code} at {response.url} without JSON")
    if response.status_code >= 400 or "error" in body:
        if "error" not in body:
            raise IssuerUnreachable(f"the issuer answered HTTP {response.status_code} at {response.url}")
        raise OAuthError(str(body["error"]), str(body.get("error_description") or ""))
    return body


async def discover(http: httpx.AsyncClient, issuer_url: str) -> Endpoints:
    """The device and token endpoints from the issuer's OIDC discovery document (Auth0's paths if absent)."""
    base = issuer_url.rstrip("/")
    response = await _send(http, "GET", base + "/.well-known/openid-configuration")
    doc: dict[str, Any] = {}
    if response.status_code == 200:
        try:
            parsed = response.json()
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            doc = parsed
    elif response.status_code != 404:
        raise IssuerUnreachable(f"the issuer's discovery document answered HTTP {response.status_code}")
    return Endpoints(
        issuer_url=issuer_url,
        device_authorization_endpoint=str(doc.get("device_authorization_endpoint") or base + "/oauth/device/code"),
        token_endpoint=str(doc.get("token_endpoint") or base + "/oauth/token"),
    )


async def start_device_flow(
    http: httpx.AsyncClient, endpoints: Endpoints, *, client_id: str, audience: str, scope: str
) -> DeviceAuthorization:
    """Ask for a device code (RFC 8628 §3.1). Auth0 needs ``audience`` for an access token for the API."""
    form = {"client_id": client_id, "scope": scope, "audience": audience}
    body = _json(await _send(http, "POST", endpoints.device_authorization_endpoint, data=form))
    try:
        return DeviceAuthorization(
            device_code=str(body["device_code"]),
            user_code=str(body["user_code"]),
            verification_uri=str(body.get("verification_uri") or body["verification_url"]),
            verification_uri_complete=body.get("verification_uri_complete"),
            expires_in=float(body.get("expires_in", 600)),
            interval=float(body.get("interval", 5)),
        )
    except (KeyError, TypeError, ValueError):
        raise IssuerUnreachable("the issuer's device authorization answer is missing fields") from None


def _token_response(body: dict[str, Any]) -> TokenResponse:
    try:
        return TokenResponse(
            access_token=str(body["access_token"]),
            expires_in=float(body.get("expires_in", 3600)),
            refresh_token=str(body["refresh_token"]) if body.get("refresh_token") else None,
            scope=str(body.get("scope") or ""),
        )
    except (KeyError, TypeError, ValueError):
        raise IssuerUnreachable("the issuer's token answer has no access token") from None


async def poll_for_token(
    http: httpx.AsyncClient,
    endpoints: Endpoints,
    authorization: DeviceAuthorization,
    *,
    client_id: str,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_slow_down: Callable[[float], None] | None = None,
) -> TokenResponse:
    """Poll the token endpoint every ``interval`` seconds until the user approves (RFC 8628 §3.4-3.5).

    ``slow_down`` adds 5 s to the interval for the rest of the flow. Raises OAuthError for
    ``access_denied``, ``expired_token`` (also when the code's lifetime passes here) and anything else.
    """
    interval = max(authorization.interval, 0.1)
    deadline = time.monotonic() + authorization.expires_in
    form = {"grant_type": DEVICE_CODE_GRANT, "device_code": authorization.device_code, "client_id": client_id}
    while True:
        await sleep(interval)
        if time.monotonic() > deadline:
            raise OAuthError("expired_token", "the code expired before it was approved")
        try:
            return _token_response(_json(await _send(http, "POST", endpoints.token_endpoint, data=form)))
        except OAuthError as exc:
            if exc.error == "authorization_pending":
                continue
            if exc.error == "slow_down":
                interval += _SLOW_DOWN_STEP_S
                if on_slow_down is not None:
                    on_slow_down(interval)
                continue
            raise


async def refresh_tokens(
    http: httpx.AsyncClient, token_endpoint: str, *, client_id: str, refresh_token: str
) -> TokenResponse:
    """Trade a refresh token for new tokens. With rotation the answer holds a new refresh token."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
    return _token_response(_json(await _send(http, "POST", token_endpoint, data=form)))
