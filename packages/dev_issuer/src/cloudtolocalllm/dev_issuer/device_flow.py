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

import html
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cloudtolocalllm.dev_issuer.errors import NO_STORE, OAuthError
from cloudtolocalllm.dev_issuer.forms import parse_form, read_body, read_form, replay
from cloudtolocalllm.dev_issuer.issuer import ALGORITHM, DevIssuer
from cloudtolocalllm.dev_issuer.store import Grant, RefreshTokens, digest

__all__ = ["DEVICE_CODE_GRANT", "DEVICE_FLOW", "DevDeviceFlow", "OtherFlow", "dev_issuer_routes"]

DEVICE_CODE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"
DEVICE_FLOW: Final = "device"  # the refresh tokens this flow issued (and refreshes), in a shared store
REFRESH_GRANT: Final = "refresh_token"
OFFLINE_ACCESS: Final = "offline_access"
# RFC 8628 §6.1: base-20 consonants, no vowels (no words) and nothing easily confused.
_USER_CODE_ALPHABET: Final = "BCDFGHJKLMNPQRSTVWXZ"
_EXPIRED_KEPT_S: Final = 60.0


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
        refresh_tokens: RefreshTokens | None = None,
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
        # Shared with the code flow in api-backend (pass its store): one store, one reuse detection for both.
        self.refresh_tokens = refresh_tokens or RefreshTokens(max_tokens=max_refresh_tokens, clock=clock)
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
            form = await read_form(request)
            client_id = form.get("client_id", "")
            if not client_id:
                raise OAuthError("invalid_request", "client_id is required")
            audience = form.get("audience", "")
            if not audience:
                raise OAuthError(
                    "invalid_request", "audience is required: the API identifier the cloud verifies tokens for"
                )
            if audience != self.issuer.audience:
                raise OAuthError("invalid_request", f"unknown audience; this issuer serves {self.issuer.audience!r}")
            self._purge()
            while len(self._pending) >= self.max_pending:
                _, oldest = self._pending.popitem(last=False)
                self._by_user_code.pop(oldest.user_code, None)
        except OAuthError as exc:
            return exc.response()
        device_code = secrets.token_urlsafe(32)
        user_code = self._new_user_code()
        self._pending[digest(device_code)] = _Pending(
            user_code=user_code,
            client_id=client_id,
            scope=tuple(form.get("scope", "").split()),
            audience=audience,
            expires_at=self._clock() + self.device_code_ttl_s,
            interval_s=self.interval_s,
        )
        self._by_user_code[user_code] = digest(device_code)
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
            headers=NO_STORE,
        )

    def _new_user_code(self) -> str:
        while True:
            code = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(8))
            if code not in self._by_user_code:
                return code

    async def _token(self, request: Request) -> Response:
        try:
            raw = await read_body(request)
            form = parse_form(request, raw)
            grant_type = form.get("grant_type", "")
            mine = grant_type == DEVICE_CODE_GRANT or (
                grant_type == REFRESH_GRANT and self._knows(form.get("refresh_token", ""))
            )
            if not mine and self._behind is not None:
                return await self._behind.token(replay(request, raw))
            client_id = form.get("client_id", "")
            if not client_id:
                raise OAuthError("invalid_request", "client_id is required")
            if grant_type == DEVICE_CODE_GRANT:
                body = self._device_grant(form.get("device_code", ""), client_id)
            elif grant_type == REFRESH_GRANT:
                body = self._refresh_grant(form.get("refresh_token", ""), client_id)
            else:
                raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
        except OAuthError as exc:
            return exc.response()
        return JSONResponse(body, headers=NO_STORE)

    def _knows(self, refresh_token: str) -> bool:
        return self.refresh_tokens.flow_of(refresh_token) == DEVICE_FLOW

    def _device_grant(self, device_code: str, client_id: str) -> dict[str, Any]:
        key = digest(device_code)
        pending = self._pending.get(key)
        if pending is None or pending.client_id != client_id:
            raise OAuthError("invalid_grant", "unknown device code")
        now = self._clock()
        if now >= pending.expires_at:
            self._forget(key)
            raise OAuthError("expired_token", "the device code expired; start again")
        if pending.denied:
            self._forget(key)
            raise OAuthError("access_denied", "the request was denied")
        too_soon = pending.last_poll is not None and now - pending.last_poll < 0.9 * pending.interval_s
        pending.last_poll = now
        if too_soon:
            raise OAuthError("slow_down", f"poll at most every {pending.interval_s} s")
        if pending.subject is None:
            raise OAuthError("authorization_pending", "waiting for the user to approve the code")
        self._forget(key)  # a device code is good for one set of tokens
        grant = Grant(
            flow=DEVICE_FLOW,
            family=self.refresh_tokens.new_family(),
            subject=pending.subject,
            client_id=pending.client_id,
            scope=pending.scope,
            audience=pending.audience,
            expires_at=now + self.refresh_token_ttl_s,
        )
        return self._issue(grant)

    def _refresh_grant(self, refresh_token: str, client_id: str) -> dict[str, Any]:
        return self._issue(self.refresh_tokens.rotate(refresh_token, client_id))

    def _issue(self, grant: Grant) -> dict[str, Any]:
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
            body["refresh_token"] = self.refresh_tokens.issue(grant)
        return body

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
            form = await read_form(request)
        except OAuthError as exc:
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
        return HTMLResponse(body, status_code=status, headers=NO_STORE)


def dev_issuer_routes(issuer: DevIssuer, flow: DevDeviceFlow | None = None) -> list[BaseRoute]:
    """The dev issuer's routes with the device flow in front (mount at the issuer URL's path)."""
    flow = flow or DevDeviceFlow(issuer)
    return [*flow.routes(), *issuer.routes()]
