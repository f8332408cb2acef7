"""The dev issuer's Device Authorization Grant (RFC 8628) and rotating refresh tokens, so a bridge can
``login`` offline exactly as it does against Auth0.

Endpoints, relative to the issuer URL (Auth0's paths):

- ``POST /oauth/device/code`` (form: ``client_id``, ``scope``, ``audience``) starts a flow and answers
  ``device_code``, ``user_code``, ``verification_uri``, ``verification_uri_complete``, ``expires_in`` and
  ``interval``. ``audience`` is required, as Auth0 needs it for a JWT access token for the API.
- ``GET /activate`` shows a small HTML form (user id prefilled ``dev-user``); ``POST /activate`` approves
  or denies a pending user code. No JavaScript; POST only; the user code must match a pending request,
  and a cross-origin ``Origin`` header is refused.
- ``POST /oauth/token`` with ``grant_type=urn:ietf:params:oauth:grant-type:device_code`` answers
  ``authorization_pending``, ``slow_down`` (polled faster than ``interval``), ``expired_token`` or
  ``access_denied`` (RFC 8628 §3.5) until the code is approved, then the tokens; with
  ``grant_type=refresh_token`` it rotates the refresh token. A refresh token that was already rotated out
  is refused with ``invalid_grant`` and revokes every token of that login (Auth0's reuse detection).

Tokens: the access token is a JWT from :meth:`DevIssuer.mint` for the requested audience; a refresh token is
issued when ``offline_access`` was requested, and is opaque and random. **All state is in memory** (the
pending codes and the SHA-256 of each refresh token): restarting the process logs every device out. It is a
development tool and bounded (``max_pending``, ``max_refresh_tokens``; the oldest entries go first).

Its routes go in front of the issuer's (:func:`dev_issuer_routes`) and, in api-backend, in front of the
authorization-code flow's (``routes(behind=code_flow)``): one token endpoint, one discovery document.
"""

from __future__ import annotations

import hashlib
import html
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import parse_qs, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message

from cloudtolocalllm.core.auth.dev_issuer import ALGORITHM, DevIssuer

__all__ = ["DEVICE_CODE_GRANT", "DevDeviceFlow", "OtherFlow", "dev_issuer_routes"]

DEVICE_CODE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"
REFRESH_GRANT: Final = "refresh_token"
OFFLINE_ACCESS: Final = "offline_access"
# RFC 8628 §6.1: base-20 consonants, no vowels (no words) and nothing easily confused.
_USER_CODE_ALPHABET: Final = "BCDFGHJKLMNPQRSTVWXZ"
_MAX_FORM_BYTES: Final = 16 * 1024
_EXPIRED_KEPT_S: Final = 60.0
_NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _normalise_user_code(raw: str) -> str:
    return "".join(ch for ch in raw.upper() if ch in _USER_CODE_ALPHABET)


@dataclass
class _Pending:
    user_code: str
    client_id: str
    scope: tuple[str, ...]
    audience: str
    expires_at: float
    interval_s: float
    last_poll: float | None = None
    subject: str | None = None
    denied: bool = False


@dataclass
class _Grant:
    """What a refresh token stands for. ``family`` ties together every token rotated from one login."""

    family: str
    subject: str
    client_id: str
    scope: tuple[str, ...]
    audience: str
    expires_at: float


class _OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def response(self) -> JSONResponse:
        body = {"error": self.error, "error_description": self.description}
        return JSONResponse(body, status_code=self.status, headers=_NO_STORE)


async def _read_body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            raise _OAuthError("invalid_request", "the body is too large")
    return body


def _parse_form(request: Request, body: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (first value of each field)."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise _OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        raise _OAuthError("invalid_request", "the body is not UTF-8") from None
    return {key: values[0] for key, values in fields.items()}


async def _form(request: Request) -> dict[str, str]:
    return _parse_form(request, await _read_body(request))


def _replay(request: Request, body: bytes) -> Request:
    """The same request with its (already read) body readable again, for the flow behind this one."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


class OtherFlow(Protocol):
    """What :meth:`DevDeviceFlow.routes` needs from a flow mounted behind it (the code flow has it)."""

    def discovery(self) -> dict[str, Any]: ...

    async def token(self, request: Request) -> Response: ...


class DevDeviceFlow:
    """Device flow and refresh-token endpoints for a :class:`DevIssuer`, with in-memory, bounded state."""

    def __init__(
        self,
        issuer: DevIssuer,
        *,
        access_token_ttl_s: float = 3600.0,
        refresh_token_ttl_s: float = 30 * 86400.0,
        device_code_ttl_s: float = 600.0,
        interval_s: float = 5,
        max_pending: int = 256,
        max_refresh_tokens: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self.access_token_ttl_s = access_token_ttl_s
        self.refresh_token_ttl_s = refresh_token_ttl_s
        self.device_code_ttl_s = device_code_ttl_s
        self.interval_s = interval_s
        self.max_pending = max_pending
        self.max_refresh_tokens = max_refresh_tokens
        self._clock = clock
        self._pending: OrderedDict[str, _Pending] = OrderedDict()  # by SHA-256 of the device code
        self._by_user_code: dict[str, str] = {}  # user code -> device code digest
        self._grants: OrderedDict[str, _Grant] = OrderedDict()  # by SHA-256 of the refresh token
        self._rotated: OrderedDict[str, str] = OrderedDict()  # used refresh token digest -> family
        self._behind: OtherFlow | None = None

    # --- the developer's side (the /activate page calls these; so can tests) --------------------------

    def approve(self, user_code: str, subject: str = "dev-user") -> bool:
        """Approve a pending user code for ``subject``; False if no such code is pending."""
        pending = self._pending_for(user_code)
        if pending is None or not subject:
            return False
        pending.subject = subject
        return True

    def deny(self, user_code: str) -> bool:
        pending = self._pending_for(user_code)
        if pending is None:
            return False
        pending.denied = True
        return True

    def _pending_for(self, user_code: str) -> _Pending | None:
        self._purge()
        key = self._by_user_code.get(_normalise_user_code(user_code))
        pending = self._pending.get(key) if key else None
        if pending is None or pending.subject is not None or pending.denied:
            return None
        if self._clock() >= pending.expires_at:
            return None
        return pending

    # --- routes ---------------------------------------------------------------------------------------

    def metadata(self, request: Request) -> dict[str, Any]:
        """The discovery document: the issuer's members, then ``behind``'s, then this flow's endpoints.

        Endpoints are absolute URLs on the host the request reached (in development the issuer URL and the
        address a client uses often differ), so a client can discover them wherever it found the issuer.
        """
        doc: dict[str, Any] = {
            "issuer": self.issuer.issuer,
            "jwks_uri": self.issuer.issuer.rstrip("/") + "/.well-known/jwks.json",
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "subject_types_supported": ["public"],
        }
        if self._behind is not None:
            doc.update(self._behind.discovery())
        grants = {*doc.get("grant_types_supported", ()), DEVICE_CODE_GRANT, REFRESH_GRANT}
        doc.update(
            {
                "device_authorization_endpoint": str(request.url_for("dev_device_code")),
                "token_endpoint": str(request.url_for("dev_token")),
                "grant_types_supported": sorted(grants),
            }
        )
        return doc

    def routes(self, *, behind: OtherFlow | None = None) -> list[BaseRoute]:
        """Mount at the issuer URL's path, *before* the issuer's own routes (this discovery extends it).

        ``behind``: another flow of the same issuer (the authorization-code flow) whose routes come after
        these: its discovery document is extended, and its token endpoint gets every grant this flow does
        not serve (the ``authorization_code`` grant and refresh tokens it issued itself).
        """
        self._behind = behind

        async def discovery(request: Request) -> JSONResponse:
            return JSONResponse(self.metadata(request), headers={"Cache-Control": "public, max-age=300"})

        return [
            Route("/.well-known/openid-configuration", discovery),
            Route("/oauth/device/code", self._device_code, methods=["POST"], name="dev_device_code"),
            Route("/oauth/token", self._token, methods=["POST"], name="dev_token"),
            Route("/activate", self._activate, methods=["GET", "POST"], name="dev_activate"),
        ]

    async def _device_code(self, request: Request) -> Response:
        try:
            form = await _form(request)
            client_id = form.get("client_id", "")
            if not client_id:
                raise _OAuthError("invalid_request", "client_id is required")
            audience = form.get("audience", "")
            if not audience:
                raise _OAuthError(
                    "invalid_request", "audience is required: the API identifier the cloud verifies tokens for"
                )
            if audience != self.issuer.audience:
                raise _OAuthError("invalid_request", f"unknown audience; this issuer serves {self.issuer.audience!r}")
            self._purge()
            while len(self._pending) >= self.max_pending:
                _, oldest = self._pending.popitem(last=False)
                self._by_user_code.pop(oldest.user_code, None)
        except _OAuthError as exc:
            return exc.response()
        device_code = secrets.token_urlsafe(32)
        user_code = self._new_user_code()
        self._pending[_digest(device_code)] = _Pending(
            user_code=user_code,
            client_id=client_id,
            scope=tuple(form.get("scope", "").split()),
            audience=audience,
            expires_at=self._clock() + self.device_code_ttl_s,
            interval_s=self.interval_s,
        )
        self._by_user_code[user_code] = _digest(device_code)
        shown = f"{user_code[:4]}-{user_code[4:]}"
        verification_uri = str(request.url_for("dev_activate"))
        return JSONResponse(
            {
                "device_code": device_code,
                "user_code": shown,
                "verification_uri": verification_uri,
                "verification_uri_complete": f"{verification_uri}?{urlencode({'user_code': shown})}",
                "expires_in": int(self.device_code_ttl_s),
                "interval": int(self.interval_s) if self.interval_s == int(self.interval_s) else self.interval_s,
            },
            headers=_NO_STORE,
        )

    def _new_user_code(self) -> str:
        while True:
            code = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(8))
            if code not in self._by_user_code:
                return code

    async def _token(self, request: Request) -> Response:
        try:
            raw = await _read_body(request)
            form = _parse_form(request, raw)
            grant_type = form.get("grant_type", "")
            mine = grant_type == DEVICE_CODE_GRANT or (
                grant_type == REFRESH_GRANT and self._knows(form.get("refresh_token", ""))
            )
            if not mine and self._behind is not None:
                return await self._behind.token(_replay(request, raw))
            client_id = form.get("client_id", "")
            if not client_id:
                raise _OAuthError("invalid_request", "client_id is required")
            if grant_type == DEVICE_CODE_GRANT:
                body = self._device_grant(form.get("device_code", ""), client_id)
            elif grant_type == REFRESH_GRANT:
                body = self._refresh_grant(form.get("refresh_token", ""), client_id)
            else:
                raise _OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
        except _OAuthError as exc:
            return exc.response()
        return JSONResponse(body, headers=_NO_STORE)

    def _knows(self, refresh_token: str) -> bool:
        key = _digest(refresh_token)
        return key in self._grants or key in self._rotated

    def _device_grant(self, device_code: str, client_id: str) -> dict[str, Any]:
        key = _digest(device_code)
        pending = self._pending.get(key)
        if pending is None or pending.client_id != client_id:
            raise _OAuthError("invalid_grant", "unknown device code")
        now = self._clock()
        if now >= pending.expires_at:
            self._forget(key)
            raise _OAuthError("expired_token", "the device code expired; start again")
        if pending.denied:
            self._forget(key)
            raise _OAuthError("access_denied", "the request was denied")
        too_soon = pending.last_poll is not None and now - pending.last_poll < 0.9 * pending.interval_s
        pending.last_poll = now
        if too_soon:
            raise _OAuthError("slow_down", f"poll at most every {pending.interval_s} s")
        if pending.subject is None:
            raise _OAuthError("authorization_pending", "waiting for the user to approve the code")
        self._forget(key)  # a device code is good for one set of tokens
        grant = _Grant(
            family=secrets.token_hex(8),
            subject=pending.subject,
            client_id=pending.client_id,
            scope=pending.scope,
            audience=pending.audience,
            expires_at=now + self.refresh_token_ttl_s,
        )
        return self._issue(grant)

    def _refresh_grant(self, refresh_token: str, client_id: str) -> dict[str, Any]:
        key = _digest(refresh_token)
        family = self._rotated.get(key)
        if family is not None:
            self._revoke_family(family)
            raise _OAuthError("invalid_grant", "refresh token already used; the login was revoked")
        grant = self._grants.get(key)
        if grant is None or grant.client_id != client_id:
            raise _OAuthError("invalid_grant", "unknown or revoked refresh token")
        del self._grants[key]
        if self._clock() >= grant.expires_at:
            raise _OAuthError("invalid_grant", "the refresh token expired")
        self._rotated[key] = grant.family
        while len(self._rotated) > 4 * self.max_refresh_tokens:
            self._rotated.popitem(last=False)
        return self._issue(grant)

    def _issue(self, grant: _Grant) -> dict[str, Any]:
        access_token = self.issuer.mint(
            grant.subject,
            scopes=grant.scope,
            ttl_s=self.access_token_ttl_s,
            audience=grant.audience,
            extra_claims={"azp": grant.client_id},
        )
        body: dict[str, Any] = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": int(self.access_token_ttl_s),
            "scope": " ".join(grant.scope),
        }
        if OFFLINE_ACCESS in grant.scope:
            refresh_token = secrets.token_urlsafe(32)
            self._grants[_digest(refresh_token)] = grant
            while len(self._grants) > self.max_refresh_tokens:
                self._grants.popitem(last=False)
            body["refresh_token"] = refresh_token
        return body

    def _revoke_family(self, family: str) -> None:
        for key in [k for k, g in self._grants.items() if g.family == family]:
            del self._grants[key]

    def _forget(self, key: str) -> None:
        pending = self._pending.pop(key, None)
        if pending is not None:
            self._by_user_code.pop(pending.user_code, None)

    def _purge(self) -> None:
        # Expired codes are kept a little longer so a client still polling is told expired_token.
        cutoff = self._clock() - _EXPIRED_KEPT_S
        for key in [k for k, p in self._pending.items() if cutoff >= p.expires_at]:
            self._forget(key)

    # --- the verification page -------------------------------------------------------------------------

    async def _activate(self, request: Request) -> Response:
        if request.method == "GET":
            return self._page(request.query_params.get("user_code", ""))
        origin = request.headers.get("origin")
        if origin and origin != "null":
            expected = urlsplit(str(request.url))
            got = urlsplit(origin)
            if (got.scheme, got.netloc) != (expected.scheme, expected.netloc):
                return self._page("", message="Refused: the form was posted from another site.", status=403)
        try:
            form = await _form(request)
        except _OAuthError as exc:
            return self._page("", message=exc.description, status=400)
        user_code = form.get("user_code", "")
        subject = form.get("subject", "").strip()
        if form.get("action") == "deny":
            if not self.deny(user_code):
                return self._page(user_code, message="No pending request has that code.", status=404)
            return self._page("", message="Denied. The device was not signed in.")
        if not subject:
            return self._page(user_code, message="Enter a user id.", status=400)
        if not self.approve(user_code, subject):
            return self._page(user_code, message="No pending request has that code (or it expired).", status=404)
        return self._page("", message=f"Approved: the device is signed in as {subject}. You can close this page.")

    def _page(self, user_code: str, *, message: str = "", status: int = 200) -> HTMLResponse:
        esc = html.escape
        notice = f"<p><strong>{esc(message)}</strong></p>" if message else ""
        body = (
            "<!doctype html><html><head><meta charset='utf-8'><title>Dev issuer: activate a device</title>"
            "</head><body><h1>Activate a device (dev issuer)</h1>"
            f"{notice}"
            "<form method='post'>"
            f"<p><label>Code shown by the device <input name='user_code' value='{esc(user_code, quote=True)}' "
            "autocomplete='off' required></label></p>"
            "<p><label>Sign in as user id <input name='subject' value='dev-user' required></label></p>"
            "<p><button name='action' value='approve'>Approve</button> "
            "<button name='action' value='deny' formnovalidate>Deny</button></p>"
            "</form><p>Development only: any user id is accepted.</p></body></html>"
        )
        return HTMLResponse(body, status_code=status, headers=_NO_STORE)


def dev_issuer_routes(issuer: DevIssuer, flow: DevDeviceFlow | None = None) -> list[BaseRoute]:
    """The dev issuer's routes with the device flow in front (mount at the issuer URL's path)."""
    flow = flow or DevDeviceFlow(issuer)
    return [*flow.routes(), *issuer.routes()]
