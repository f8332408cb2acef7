"""Bearer-token auth: the starlette backend and middleware (``core[service]``), and JWT verification against a
JWKS (``core[auth]``: pyjwt, httpx). The development issuer is its own distribution, ``cloudtolocalllm-dev-issuer``.

The re-exports load on first use (PEP 562), so a service that only runs the middleware (``create_app``) never
imports the JWT stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cloudtolocalllm.core.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from cloudtolocalllm.core.auth.backend import (
        AuthenticatedUser,
        AuthMiddleware,
        BearerAuthBackend,
        auth_error_response,
        bearer_token,
        deny_websocket,
        requires_auth,
    )
    from cloudtolocalllm.core.auth.config import AuthSettings, build_verifier, load_jwks_file
    from cloudtolocalllm.core.auth.errors import (
        AuthError,
        InsufficientScope,
        InvalidToken,
        KeysUnavailable,
        MissingCredentials,
    )
    from cloudtolocalllm.core.auth.jwks import KeySource, RemoteJwks, StaticJwks
    from cloudtolocalllm.core.auth.principal import Principal, Verifier
    from cloudtolocalllm.core.auth.verifier import TokenVerifier

_EXPORTS = {
    "AuthenticatedUser": "backend",
    "AuthMiddleware": "backend",
    "BearerAuthBackend": "backend",
    "auth_error_response": "backend",
    "bearer_token": "backend",
    "deny_websocket": "backend",
    "requires_auth": "backend",
    "AuthSettings": "config",
    "build_verifier": "config",
    "load_jwks_file": "config",
    "AuthError": "errors",
    "InsufficientScope": "errors",
    "InvalidToken": "errors",
    "KeysUnavailable": "errors",
    "MissingCredentials": "errors",
    "KeySource": "jwks",
    "RemoteJwks": "jwks",
    "StaticJwks": "jwks",
    "Principal": "principal",
    "Verifier": "principal",
    "TokenVerifier": "verifier",
}

__all__ = [
    "AuthError",
    "AuthMiddleware",
    "AuthSettings",
    "AuthenticatedUser",
    "BearerAuthBackend",
    "InsufficientScope",
    "InvalidToken",
    "KeySource",
    "KeysUnavailable",
    "MissingCredentials",
    "Principal",
    "RemoteJwks",
    "StaticJwks",
    "TokenVerifier",
    "Verifier",
    "auth_error_response",
    "bearer_token",
    "build_verifier",
    "deny_websocket",
    "load_jwks_file",
    "requires_auth",
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, __all__)
