"""Bearer-token auth: JWT verification against a JWKS, a starlette backend, and the embedded dev issuer."""

from cloudtolocalllm.core.auth.backend import (
    AuthenticatedUser,
    AuthMiddleware,
    BearerAuthBackend,
    auth_error_response,
    bearer_token,
    deny_websocket,
    requires_auth,
)
from cloudtolocalllm.core.auth.config import AuthSettings, build_verifier, dev_issuer_from
from cloudtolocalllm.core.auth.dev_issuer import DevIssuer
from cloudtolocalllm.core.auth.errors import (
    AuthError,
    InsufficientScope,
    InvalidToken,
    KeysUnavailable,
    MissingCredentials,
)
from cloudtolocalllm.core.auth.jwks import KeySource, RemoteJwks, StaticJwks
from cloudtolocalllm.core.auth.verifier import Principal, TokenVerifier, Verifier

__all__ = [
    "AuthError",
    "AuthMiddleware",
    "AuthSettings",
    "AuthenticatedUser",
    "BearerAuthBackend",
    "DevIssuer",
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
    "dev_issuer_from",
    "requires_auth",
]
