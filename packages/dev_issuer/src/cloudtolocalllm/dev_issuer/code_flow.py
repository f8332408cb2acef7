"""OIDC authorization code + PKCE for the dev issuer, so a browser app's real sign-in code runs offline.

``GET {issuer}/authorize`` shows a one-field sign-in page for a dev user; submitting it redirects to the
client's ``redirect_uri`` (exact match against ``DEV_REDIRECT_URIS``) with a single-use, short-lived code.
``POST {issuer}/oauth/token`` exchanges the code (the PKCE S256 verifier is checked, and the redirect URI
must match) or a refresh token (rotated on every use; presenting a rotated one revokes its whole family)
for an access token minted by :class:`DevIssuer` for the requested ``audience``, an ID token and a new
refresh token. The token endpoint dispatches on ``grant_type``; other grants (the device flow) plug in with
:meth:`DevCodeFlow.register_grant`. ``GET {issuer}/logout`` is the end-session endpoint.

Like Auth0, an authorization request without ``audience`` still succeeds but yields an access token for no
API (``aud`` is the issuer's userinfo URL), so an app that forgets the audience fails against the API in
dev exactly as it would in production.

Browsers on the app's origins (those of ``DEV_REDIRECT_URIS``) may call the token endpoint and, in dev where
the app and the API are served from different ports, the API: :meth:`DevCodeFlow.install_cors`.
State lives in memory: restarting the service signs everyone out, which is fine for development.
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final
from urllib.parse import urlencode, urlsplit

import msgspec
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from cloudtolocalllm.core.settings import load_settings
from cloudtolocalllm.dev_issuer.errors import NO_STORE, OAuthError
from cloudtolocalllm.dev_issuer.forms import read_form
from cloudtolocalllm.dev_issuer.issuer import ALGORITHM, DevIssuer
from cloudtolocalllm.dev_issuer.store import Grant, RefreshTokens

__all__ = ["CODE_FLOW", "DevCodeFlow", "DevCodeFlowSettings", "GrantHandler", "dev_code_flow_from_env"]

DEV_CLIENT_ID: Final = "cloudtolocalllm-web"
DEV_USER: Final = "dev-user"
CODE_FLOW: Final = "code"  # the refresh tokens this flow issued (and refreshes), in a shared store
# PKCE verifier: 43-128 characters of [A-Za-z0-9-._~] (RFC 7636 section 4.1).
_VERIFIER_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SUBJECT_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._@|")
# The sign-in page loads nothing: no script, no style, no frame may embed it.
_PAGE_CSP: Final = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"

Seconds = Annotated[float, msgspec.Meta(gt=0, le=30 * 86400)]


class DevCodeFlowSettings(msgspec.Struct, frozen=True, kw_only=True):
    """``DEV_REDIRECT_URIS`` (comma separated, exact match), ``DEV_CLIENT_ID`` and lifetimes."""

    dev_redirect_uris: list[str] = msgspec.field(default_factory=list)
    dev_client_id: str = DEV_CLIENT_ID
    dev_code_ttl_s: Seconds = 60.0
    dev_access_token_ttl_s: Seconds = 3600.0
    dev_refresh_token_ttl_s: Seconds = 7 * 86400.0

    def __post_init__(self) -> None:
        for uri in self.dev_redirect_uris:
            parts = urlsplit(uri)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
                raise ValueError(f"DEV_REDIRECT_URIS: {uri!r} is not an absolute http(s) URL without a fragment")

    @property
    def origins(self) -> list[str]:
        """The browser origins of the allowed redirect URIs (the app's origins)."""
        seen: dict[str, None] = {}
        for uri in self.dev_redirect_uris:
            parts = urlsplit(uri)
            seen[f"{parts.scheme}://{parts.netloc}"] = None
        return list(seen)


GrantHandler = Callable[[dict[str, str]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class _Code:
    subject: str
    client_id: str
    redirect_uri: str
    challenge: str
    audience: str | None
    scope: str
    nonce: str | None
    expires: float


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


class _AuthorizeError(Exception):
    """A request we cannot redirect back (unknown client or redirect URI): shown to the user as a 400."""


class DevCodeFlow:
    def __init__(
        self, issuer: DevIssuer, settings: DevCodeFlowSettings, refresh_tokens: RefreshTokens | None = None
    ) -> None:
        self.issuer = issuer
        self.settings = settings
        # Shared with the device flow in api-backend: one store, one reuse detection for both.
        self.refresh_tokens = refresh_tokens or RefreshTokens()
        self._codes: dict[str, _Code] = {}
        self._grants: dict[str, GrantHandler] = {
            "authorization_code": self._grant_code,
            "refresh_token": self._grant_refresh,
        }

    # --- extension point -------------------------------------------------------------------------

    def register_grant(self, grant_type: str, handler: GrantHandler) -> None:
        """Serve another grant (e.g. the device code) from the same token endpoint."""
        if grant_type in self._grants:
            raise ValueError(f"grant {grant_type!r} is already served")
        self._grants[grant_type] = handler

    @property
    def base(self) -> str:
        return self.issuer.issuer.rstrip("/")

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer.issuer,
            "jwks_uri": self.base + "/.well-known/jwks.json",
            "authorization_endpoint": self.base + "/authorize",
            "token_endpoint": self.base + "/oauth/token",
            "end_session_endpoint": self.base + "/logout",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": sorted(self._grants),
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": True,
            "token_endpoint_auth_methods_supported": ["none"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "subject_types_supported": ["public"],
        }

    # --- authorize -------------------------------------------------------------------------------

    def _check_client(self, params: dict[str, str]) -> str:
        if params.get("client_id") != self.settings.dev_client_id:
            raise _AuthorizeError("unknown client_id")
        redirect_uri = params.get("redirect_uri", "")
        if redirect_uri not in self.settings.dev_redirect_uris:
            raise _AuthorizeError("redirect_uri is not in DEV_REDIRECT_URIS")
        return redirect_uri

    def _redirect(self, redirect_uri: str, **params: str | None) -> RedirectResponse:
        # RFC 9207: every authorization response names its issuer, so a client can tell a response
        # from another issuer (a mix-up attack) apart from ours.
        params["iss"] = self.issuer.issuer
        query = urlencode({k: v for k, v in params.items() if v is not None})
        sep = "&" if urlsplit(redirect_uri).query else "?"
        return RedirectResponse(redirect_uri + sep + query, status_code=303, headers={"Cache-Control": "no-store"})

    def _request_error(self, params: dict[str, str]) -> str | None:
        if params.get("response_type") != "code":
            return "response_type must be code"
        if params.get("code_challenge_method") != "S256":
            return "PKCE with code_challenge_method=S256 is required"
        challenge = params.get("code_challenge", "")
        if len(challenge) != 43 or not set(challenge) <= _VERIFIER_CHARS:
            return "code_challenge must be a base64url SHA-256 (43 characters)"
        audience = params.get("audience")
        if audience is not None and audience != self.issuer.audience:
            return f"unknown audience {audience!r}"
        return None

    def _page(self, params: dict[str, str], *, subject: str = DEV_USER, status: int = 200) -> HTMLResponse:
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in params.items()
            if k != "subject"
        )
        body = (
            "<!doctype html><html lang=en><head><meta charset=utf-8>"
            '<meta name=viewport content="width=device-width, initial-scale=1">'
            "<title>Dev sign-in</title></head><body><main>"
            "<h1>CloudToLocalLLM dev sign-in</h1>"
            "<p>This is the embedded development issuer (DEV_AUTH=true). "
            "Any user id signs in; there is no password.</p>"
            f'<form method="post" action="{html.escape(self.base)}/authorize">{hidden}'
            '<label for="subject">User id</label> '
            f'<input id="subject" name="subject" value="{html.escape(subject)}" required maxlength="64" '
            'autocomplete="username" autofocus> '
            '<button type="submit" id="sign-in">Sign in</button></form></main></body></html>'
        )
        return HTMLResponse(
            body, status_code=status, headers={"Content-Security-Policy": _PAGE_CSP, "Cache-Control": "no-store"}
        )

    async def authorize(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                params = await read_form(request)
            except OAuthError as exc:
                return exc.response()
        else:
            params = dict(request.query_params)
        try:
            redirect_uri = self._check_client(params)
        except _AuthorizeError as exc:
            return HTMLResponse(
                f"<!doctype html><title>Sign-in error</title><p>{html.escape(str(exc))}</p>",
                status_code=400,
                headers={"Content-Security-Policy": _PAGE_CSP, "Cache-Control": "no-store"},
            )
        state = params.get("state")
        if problem := self._request_error(params):
            return self._redirect(redirect_uri, error="invalid_request", error_description=problem, state=state)
        if request.method == "GET":
            if params.get("prompt") == "none":
                return self._redirect(redirect_uri, error="login_required", state=state)
            return self._page(params)
        subject = params.get("subject", "").strip()
        if not subject or len(subject) > 64 or not set(subject) <= _SUBJECT_CHARS:
            return self._page(params, subject=subject[:64], status=400)
        self._sweep()
        code = secrets.token_urlsafe(32)
        self._codes[code] = _Code(
            subject=subject,
            client_id=params["client_id"],
            redirect_uri=redirect_uri,
            challenge=params["code_challenge"],
            audience=params.get("audience"),
            scope=params.get("scope", "openid"),
            nonce=params.get("nonce"),
            expires=time.monotonic() + self.settings.dev_code_ttl_s,
        )
        return self._redirect(redirect_uri, code=code, state=state)

    # --- token -----------------------------------------------------------------------------------

    async def token(self, request: Request) -> Response:
        try:
            params = await read_form(request)
            grant = self._grants.get(params.get("grant_type", ""))
            if grant is None:
                raise OAuthError("unsupported_grant_type", f"supported: {', '.join(sorted(self._grants))}")
            body = await grant(params)
        except OAuthError as exc:
            return exc.response()
        return JSONResponse(body, headers=NO_STORE)

    def _client(self, params: dict[str, str]) -> str:
        client_id = params.get("client_id", "")
        if client_id != self.settings.dev_client_id:
            raise OAuthError("invalid_client", "unknown client_id", status=401)
        return client_id

    async def _grant_code(self, params: dict[str, str]) -> dict[str, Any]:
        client_id = self._client(params)
        # Single use: the code is gone whatever happens next.
        code = self._codes.pop(params.get("code", ""), None)
        if code is None or code.expires < time.monotonic():
            raise OAuthError("invalid_grant", "unknown, used or expired authorization code")
        if code.client_id != client_id or params.get("redirect_uri") != code.redirect_uri:
            raise OAuthError("invalid_grant", "client_id or redirect_uri does not match the authorization request")
        verifier = params.get("code_verifier", "")
        if not 43 <= len(verifier) <= 128 or not set(verifier) <= _VERIFIER_CHARS:
            raise OAuthError("invalid_grant", "code_verifier is missing or malformed")
        if not secrets.compare_digest(_s256(verifier), code.challenge):
            raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
        return self._issue(code.subject, client_id, code.audience, code.scope, family=None, nonce=code.nonce)

    async def _grant_refresh(self, params: dict[str, str]) -> dict[str, Any]:
        client_id = self._client(params)
        grant = self.refresh_tokens.rotate(params.get("refresh_token", ""), client_id)
        return self._issue(grant.subject, client_id, grant.audience, " ".join(grant.scope), family=grant.family)

    def _issue(
        self,
        subject: str,
        client_id: str,
        audience: str | None,
        scope: str,
        *,
        family: str | None,
        nonce: str | None = None,
    ) -> dict[str, Any]:
        ttl = self.settings.dev_access_token_ttl_s
        api_scopes = [s for s in scope.split() if s not in ("openid", "profile", "email", "offline_access")]
        access = self.issuer.mint(
            subject,
            scopes=api_scopes,
            ttl_s=ttl,
            # Auth0 without an audience: a token for its userinfo endpoint, which no API of ours accepts.
            audience=audience or self.base + "/userinfo",
        )
        id_claims: dict[str, Any] = {"name": subject, "preferred_username": subject}
        if nonce:
            id_claims["nonce"] = nonce
        id_token = self.issuer.mint(subject, ttl_s=ttl, audience=client_id, extra_claims=id_claims)
        refresh = self.refresh_tokens.issue(
            Grant(
                flow=CODE_FLOW,
                family=family or self.refresh_tokens.new_family(),
                subject=subject,
                client_id=client_id,
                scope=tuple(scope.split()),
                audience=audience,
                expires_at=self.refresh_tokens.clock() + self.settings.dev_refresh_token_ttl_s,
            )
        )
        return {
            "access_token": access,
            "id_token": id_token,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": int(ttl),
            "scope": scope,
        }

    def _sweep(self) -> None:
        now = time.monotonic()
        for code in [c for c, v in self._codes.items() if v.expires < now]:
            del self._codes[code]

    # --- logout ----------------------------------------------------------------------------------

    async def logout(self, request: Request) -> Response:
        """End-session: forget nothing server-side (tokens are stateless) and go back to an allowed page."""
        target = request.query_params.get("post_logout_redirect_uri") or request.query_params.get("returnTo")
        allowed = {*self.settings.dev_redirect_uris, *(o + "/" for o in self.settings.origins)}
        if target and target in allowed:
            return RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
        return HTMLResponse(
            "<!doctype html><title>Signed out</title><p>Signed out of the dev issuer.</p>",
            headers={"Content-Security-Policy": _PAGE_CSP, "Cache-Control": "no-store"},
        )

    # --- wiring ----------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        """Mount at the issuer URL's path, *before* the dev issuer's own routes (this discovery extends it)."""

        async def discovery(request: Request) -> JSONResponse:
            return JSONResponse(self.discovery(), headers={"Cache-Control": "public, max-age=300"})

        return [
            Route("/.well-known/openid-configuration", discovery),
            Route("/authorize", self.authorize, methods=["GET", "POST"]),
            Route("/oauth/token", self.token, methods=["POST"]),
            Route("/logout", self.logout, methods=["GET"]),
        ]

    def install_cors(self, app: Starlette) -> None:
        """Let the dev app's origins call this service (token endpoint and API) with a bearer token.

        Outermost, so refusals from the auth middleware (401) carry the CORS headers and the app can read
        them. No credentials mode: bearer tokens are not ambient, cookies are never sent.
        """
        if not self.settings.origins:
            return
        app.add_middleware(
            CORSMiddleware,
            allow_origins=self.settings.origins,
            allow_methods=["GET", "POST", "DELETE", "HEAD"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Retry-After", "WWW-Authenticate"],
            max_age=600,
        )


def dev_code_flow_from_env(issuer: DevIssuer) -> DevCodeFlow:
    """The code flow for ``issuer`` with its settings from the environment (``DEV_*``)."""
    return DevCodeFlow(issuer, load_settings(DevCodeFlowSettings))
