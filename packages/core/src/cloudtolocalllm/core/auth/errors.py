"""Why a credential was refused, in words safe to show the caller (never the token itself)."""

from __future__ import annotations

__all__ = ["AuthError", "InsufficientScope", "InvalidToken", "KeysUnavailable", "MissingCredentials"]


class AuthError(Exception):
    """Base class; ``code`` is the RFC 6750 error code for WWW-Authenticate."""

    code = "invalid_token"
    status = 401


class MissingCredentials(AuthError):
    """No bearer token was sent (RFC 6750 says: no error code in that case)."""

    code = ""


class InvalidToken(AuthError):
    """The token is malformed, expired, not yet valid, for another issuer/audience, or badly signed."""


class KeysUnavailable(AuthError):
    """The issuer's signing keys cannot be fetched right now: the caller may retry, it is not their fault."""

    code = "temporarily_unavailable"
    status = 503


class InsufficientScope(AuthError):
    """A valid token that lacks a scope the endpoint requires."""

    code = "insufficient_scope"
    status = 403
