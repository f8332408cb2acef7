"""Bearer-token authentication for starlette HTTP and WebSocket routes.

:class:`BearerAuthBackend` is a starlette ``AuthenticationBackend``. :class:`AuthMiddleware` runs it and,
unlike starlette's own middleware, answers a refused WebSocket handshake with a real HTTP 401 (through the
ASGI WebSocket Denial Response extension) before the upgrade completes. :func:`requires_auth` guards an
endpoint: no credentials → 401 with ``WWW-Authenticate`` (RFC 6750), missing scope → 403.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    BaseUser,
    UnauthenticatedUser,
)
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from cloudtolocalllm.core.auth.errors import AuthError, InsufficientScope, InvalidToken, MissingCredentials
from cloudtolocalllm.core.auth.principal import Principal, Verifier

__all__ = [
    "AuthMiddleware",
    "AuthenticatedUser",
    "BearerAuthBackend",
    "auth_error_response",
    "bearer_token",
    "deny_websocket",
    "requires_auth",
]

REALM = "cloudtolocalllm"


class AuthenticatedUser(BaseUser):
    def __init__(self, principal: Principal) -> None:
        self.principal = principal

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.principal.subject

    @property
    def identity(self) -> str:
        return self.principal.subject


class _AuthFailure(AuthenticationError):
    def __init__(self, error: AuthError) -> None:
        super().__init__(str(error))
        self.error = error


def bearer_token(conn: HTTPConnection) -> str | None:
    """The token of an ``Authorization: Bearer`` header; ``None`` when absent. Never from the URL."""
    header = conn.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("Authorization header must be 'Bearer <token>'")
    return token.strip()


class BearerAuthBackend(AuthenticationBackend):
    def __init__(self, verifier: Verifier) -> None:
        self.verifier = verifier

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        try:
            token = bearer_token(conn)
            if token is None:
                return None
            principal = await self.verifier.verify(token)
        except AuthError as exc:
            raise _AuthFailure(exc) from None
        return AuthCredentials(sorted(principal.scopes)), AuthenticatedUser(principal)


def _www_authenticate(error: AuthError, scope: str | None = None) -> str:
    parts = [f'Bearer realm="{REALM}"']
    if error.code:
        parts.append(f'error="{error.code}"')
        parts.append(f'error_description="{error}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return ", ".join(parts)


def auth_error_response(error: AuthError, *, status: int | None = None, scope: str | None = None) -> Response:
    """An Ollama-shaped JSON error (``{"error": ...}``) with the RFC 6750 challenge header."""
    status = status or error.status
    headers = {"WWW-Authenticate": _www_authenticate(error, scope)} if status in (401, 403) else {}
    if status == 503:
        headers["Retry-After"] = "5"
    return JSONResponse({"error": str(error) or "authentication required"}, status_code=status, headers=headers)


async def deny_websocket(websocket: WebSocket, response: Response) -> None:
    """Refuse a WebSocket handshake with ``response`` (a real HTTP answer where the server supports it)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:  # servers without the extension can only refuse with a bare 403
        await websocket.close(code=1008, reason=bytes(response.body).decode()[:120])


async def _refuse(scope: Scope, receive: Receive, send: Send, response: Response) -> None:
    if scope["type"] == "http":
        await response(scope, receive, send)
    else:
        await deny_websocket(WebSocket(scope, receive, send), response)


class AuthMiddleware:
    """Authenticates every HTTP/WebSocket request that carries credentials; refuses bad ones at once."""

    def __init__(self, app: ASGIApp, backend: AuthenticationBackend) -> None:
        self.app = app
        self.backend = backend

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            result = await self.backend.authenticate(HTTPConnection(scope))
        except _AuthFailure as failure:
            await _refuse(scope, receive, send, auth_error_response(failure.error))
            return
        except AuthenticationError as exc:
            await _refuse(scope, receive, send, auth_error_response(InvalidToken(str(exc))))
            return
        scope["auth"], scope["user"] = result or (AuthCredentials(), UnauthenticatedUser())
        await self.app(scope, receive, send)


Endpoint = TypeVar("Endpoint", bound=Callable[..., Awaitable[Any]])


def requires_auth(*scopes: str) -> Callable[[Endpoint], Endpoint]:
    """Guard an endpoint taking a ``Request`` or ``WebSocket``: 401 when anonymous, 403 when a scope lacks."""

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(conn: HTTPConnection, *args: Any, **kwargs: Any) -> Any:
            response: Response | None = None
            if not conn.user.is_authenticated:
                response = auth_error_response(MissingCredentials("authentication required"))
            elif missing := [s for s in scopes if s not in conn.auth.scopes]:
                response = auth_error_response(
                    InsufficientScope(f"token lacks scope {' '.join(missing)}"), scope=" ".join(scopes)
                )
            if response is None:
                return await endpoint(conn, *args, **kwargs)
            if isinstance(conn, WebSocket):
                await deny_websocket(conn, response)
                return None
            return response

        return guarded  # type: ignore[return-value]

    return decorate
