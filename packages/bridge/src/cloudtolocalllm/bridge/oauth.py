"""The OAuth client side of ``login`` and of token renewal: discovery, the Device Authorization Grant
(RFC 8628) and the refresh-token grant, over aiohttp (the bridge's one HTTP client). Works with Auth0 and
with the dev issuer.

Each flow (one ``login``, one renewal) opens its own :func:`issuer_session` and closes it when done. TLS
certificates are always verified (the system's trust store; ``SSL_CERT_FILE``/``SSL_CERT_DIR`` honoured), no
redirect is followed, and requests go through the proxy in ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``
unless ``NO_PROXY`` matches the issuer.

Nothing here logs a token; errors carry the issuer's ``error`` code and description only.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from cloudtolocalllm.bridge.version import __version__

__all__ = [
    "DEVICE_CODE_GRANT",
    "DeviceAuthorization",
    "Endpoints",
    "IssuerUnreachable",
    "OAuthError",
    "TokenResponse",
    "discover",
    "issuer_session",
    "poll_for_token",
    "proxy_for",
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


def issuer_session(timeout_s: float) -> aiohttp.ClientSession:
    """The HTTP session for one flow, to use as ``async with issuer_session(timeout_s) as http:``.

    ``timeout_s`` bounds connecting (waiting for a pooled connection included) and every wait for data;
    there is no total limit, so a slow but live issuer is not cut off. TLS verification is aiohttp's default
    and is never turned off. Not ``trust_env``: it would also send ``~/.netrc`` credentials to the issuer;
    proxies come from :func:`proxy_for` instead.
    """
    timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_connect=timeout_s, sock_read=timeout_s)
    return aiohttp.ClientSession(
        timeout=timeout, trust_env=False, headers={"user-agent": f"cloudtolocalllm-bridge/{__version__}"}
    )


def proxy_for(url: str) -> str | None:
    """The proxy for ``url`` from the environment (``https_proxy`` or ``http_proxy`` by its scheme, else
    ``all_proxy``; either case, lower case first), or None when there is none or ``NO_PROXY`` covers it."""
    target = URL(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(target.scheme) or proxies.get("all")
    # With a *_proxy variable set, proxy_bypass() consults NO_PROXY (and nothing else) on every platform.
    if not proxy or not target.host or urllib.request.proxy_bypass(target.host):
        return None
    return proxy


@dataclass(frozen=True)
class _Answer:
    status: int
    url: str
    body: bytes


def _reason(exc: BaseException) -> str:
    detail = str(exc)
    if not detail:
        return "no answer in time" if isinstance(exc, TimeoutError) else exc.__class__.__name__
    return f"{exc.__class__.__name__}: {detail}"


async def _send(
    http: aiohttp.ClientSession, method: str, url: str, *, form: Mapping[str, str] | None = None
) -> _Answer:
    """One request with its whole answer read; a transport failure or timeout is IssuerUnreachable."""
    try:
        async with http.request(method, url, data=form, allow_redirects=False, proxy=proxy_for(url)) as response:
            return _Answer(response.status, str(response.url), await response.read())
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise IssuerUnreachable(f"cannot reach the issuer at {url}: {_reason(exc)}") from None


def _parse(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:  # not JSON, or not text (UnicodeDecodeError is a ValueError)
        return None


def _json(response: _Answer) -> dict[str, Any]:
    body = _parse(response.body)
    if not isinstance(body, dict):
        raise IssuerUnreachable(f"the issuer answered HTTP {response.status} at {response.url} without JSON")
    if response.status >= 400 or "error" in body:
        if "error" not in body:
            raise IssuerUnreachable(f"the issuer answered HTTP {response.status} at {response.url}")
        raise OAuthError(str(body["error"]), str(body.get("error_description") or ""))
    return body


async def discover(http: aiohttp.ClientSession, issuer_url: str) -> Endpoints:
    """The device and token endpoints from the issuer's OIDC discovery document (Auth0's paths if absent)."""
    base = issuer_url.rstrip("/")
    response = await _send(http, "GET", base + "/.well-known/openid-configuration")
    doc: dict[str, Any] = {}
    if response.status == 200:
        parsed = _parse(response.body)
        if isinstance(parsed, dict):
            doc = parsed
    elif response.status != 404:
        raise IssuerUnreachable(f"the issuer's discovery document answered HTTP {response.status}")
    return Endpoints(
        issuer_url=issuer_url,
        device_authorization_endpoint=str(doc.get("device_authorization_endpoint") or base + "/oauth/device/code"),
        token_endpoint=str(doc.get("token_endpoint") or base + "/oauth/token"),
    )


async def start_device_flow(
    http: aiohttp.ClientSession, endpoints: Endpoints, *, client_id: str, audience: str, scope: str
) -> DeviceAuthorization:
    """Ask for a device code (RFC 8628 §3.1). Auth0 needs ``audience`` for an access token for the API."""
    form = {"client_id": client_id, "scope": scope, "audience": audience}
    body = _json(await _send(http, "POST", endpoints.device_authorization_endpoint, form=form))
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
    http: aiohttp.ClientSession,
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
            return _token_response(_json(await _send(http, "POST", endpoints.token_endpoint, form=form)))
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
    http: aiohttp.ClientSession, token_endpoint: str, *, client_id: str, refresh_token: str
) -> TokenResponse:
    """Trade a refresh token for new tokens. With rotation the answer holds a new refresh token."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
    return _token_response(_json(await _send(http, "POST", token_endpoint, form=form)))
